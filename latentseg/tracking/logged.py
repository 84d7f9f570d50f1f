"""Names of what a training run logs that its readers look up again (the report shows the
best run's images by these keys). No imports: both the tracker and the report may use it."""

# the images a run logs each epoch (MLflow image keys), drawn by latentseg.plots
PLOT_KEYS = ("predictions", "latent_attention", "expert_assignment")

# the folder of a run's artifacts that holds its test split's per-image scores
# (latentseg.train.callbacks.TEST_SCORES: per-image confusion matrices, .npz)
SCORES_DIR = "scores"
TEST_SCORES_FILE = "test_per_image.npz"
