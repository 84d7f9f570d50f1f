"""Names of what a training run logs that its readers look up again (the report shows the
best run's images by these keys). No imports: both the tracker and the report may use it."""

# the images a run logs each epoch (MLflow image keys), drawn by latentseg.plots
PLOT_KEYS = ("predictions", "latent_attention", "expert_assignment")

# the folder of a run's artifacts that holds its test split's per-image scores
# (latentseg.train.callbacks.TEST_SCORES: per-image confusion matrices, .npz)
SCORES_DIR = "scores"
TEST_SCORES_FILE = "test_per_image.npz"

# the costs every run logs (its size and work at step 0, its training throughput), and the
# direction that is better: what a study's objectives and the report's front may weigh
COST_METRICS = {
    "model_params": "minimize",
    "model_flops_per_image": "minimize",
    "model_kv_params": "minimize",
    "model_kv_activations_per_image": "minimize",
    "train_images_per_s": "maximize",
}
