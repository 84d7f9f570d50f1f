import collections
import math

import pytest
import torch

from latentseg.models import encoder, list_models, native
from latentseg.train import NonFiniteLossError, TrainCallback, TrainingInterrupted, fit, prepare
from latentseg.train.checkpoint import load_model_file, load_training_state, read_weights


def _history(checkpoint_dir):
    """Per-epoch metrics without the wall-clock ones."""
    history = load_training_state(checkpoint_dir / "last.ckpt")["state"]["history"]
    return [
        {k: v for k, v in epoch.items() if "time" not in k and "per_s" not in k}
        for epoch in history
    ]


@pytest.mark.slow
def test_same_seed_gives_the_same_metrics_on_cpu(tiny, tmp_path):
    config = tiny({"model": {"variant": "residual"}})
    first = fit(prepare(config), tmp_path / "a")
    second = fit(prepare(config), tmp_path / "b")
    assert first == second
    assert _history(tmp_path / "a") == _history(tmp_path / "b")
    third = fit(prepare(config.with_updates({"train.seed": 8})), tmp_path / "c")
    assert third["test_loss"] != first["test_loss"]


class StopAfter(TrainCallback):
    """Asks the loop to stop after ``steps`` optimizer steps, like a Ctrl-C would."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.seen = 0

    def on_step_end(self, context, step_in_epoch, loss) -> None:
        self.seen += 1

    def __call__(self) -> bool:
        return self.seen >= self.steps


@pytest.mark.slow
@pytest.mark.parametrize("stop_after_steps", [8, 13])  # at an epoch boundary and mid-epoch
def test_interrupt_then_resume_ends_with_the_metrics_of_an_uninterrupted_run(
    tiny, tmp_path, stop_after_steps
):
    config = tiny({"train": {"epochs": 3}, "optim": {"schedule": "cosine", "warmup_steps": 3}})
    uninterrupted = fit(prepare(config), tmp_path / "full")

    stopper = StopAfter(stop_after_steps)  # 8 steps per epoch (64 samples / batch 8)
    with pytest.raises(TrainingInterrupted) as info:
        fit(prepare(config), tmp_path / "cut", callbacks=[stopper], should_stop=stopper)
    saved = load_training_state(info.value.checkpoint)
    assert saved["state"]["global_step"] == stop_after_steps
    resumed = fit(prepare(config), tmp_path / "cut", resume_from=info.value.checkpoint)
    assert resumed == uninterrupted
    assert _history(tmp_path / "cut") == _history(tmp_path / "full")


@pytest.mark.slow
@pytest.mark.skipif(
    encoder.native_first_stage_status() != "on",
    reason=f"native kernel: {encoder.native_first_stage_status()}",
)
def test_training_at_the_native_kernels_size_runs_it_with_pytorchs_metrics(
    tiny, tmp_path, monkeypatch
):
    # 16 images of 64x64: encoder.GEMM_MIN_POSITIONS pixels a batch, from which the first
    # stage trains and infers on the native kernel (the other training tests stay below it)
    batch, size = 16, 64
    pixels = batch * size * size
    assert pixels >= encoder.GEMM_MIN_POSITIONS
    config = tiny(
        {"data": {"params": {"image_size": size}, "batch_size": batch, "eval_batch_size": batch}}
    )
    calls = collections.Counter()
    library = native.kernel()
    for name in ("first_stage_forward", "first_stage_weight_grad"):
        function = getattr(library, name)

        def counted(*args, name=name, function=function):
            calls[name] += 1
            return function(*args)

        monkeypatch.setattr(library, name, counted)
    first = fit(prepare(config), tmp_path / "a")
    # 2 epochs of 4 steps; validation and test, one batch each, without gradients
    assert calls == {"first_stage_forward": 8 + 2 + 1, "first_stage_weight_grad": 8}
    assert fit(prepare(config), tmp_path / "b") == first  # the kernel is deterministic
    monkeypatch.setattr(encoder, "NATIVE_FIRST_STAGE", False)
    pytorchs = fit(prepare(config), tmp_path / "c")
    assert calls["first_stage_weight_grad"] == 16
    # the same training to float32 rounding (the kernel sums in another order): the losses
    # after 8 steps agree as far as the gradients that led there did
    for key in ("best_val_loss", "test_loss", "best_val_pixel_accuracy", "test_pixel_accuracy"):
        assert first[key] == pytest.approx(pytorchs[key], rel=1e-5), key


@pytest.mark.slow
def test_checkpoints_rebuild_the_model_alone(tiny, tmp_path):
    config = tiny({"model": {"variant": "latents-4", "pixel_residual": True}})
    prepared = prepare(config)
    summary = fit(prepared, tmp_path / "ck")
    tensors, metadata = read_weights(tmp_path / "ck" / "best.safetensors")
    assert metadata["variant"] == "latents-4" and int(metadata["epoch"]) == summary["best_epoch"]
    model = load_model_file(tmp_path / "ck" / "best.safetensors")
    assert model.config == prepared.model_config and model.variant == "latents-4"
    for key, value in model.state_dict().items():
        assert torch.equal(value, tensors[key])
    from_last = load_model_file(tmp_path / "ck" / "last.ckpt")
    assert from_last.config == prepared.model_config
    assert not model.training  # ready for inference


@pytest.mark.slow
def test_non_finite_loss_fails_with_the_epoch(tiny, tmp_path):
    config = tiny({"optim": {"lr": 1e30}, "train": {"epochs": 3}})
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch \d"):
        fit(prepare(config), tmp_path / "ck")


@pytest.mark.slow
def test_early_stopping_and_steps_per_epoch(tiny, tmp_path):
    config = tiny(
        {
            "optim": {"lr": 1e-9},
            "train": {"epochs": 6, "early_stopping_patience": 1, "steps_per_epoch": 3},
        }
    )
    seen = []

    class Count(TrainCallback):
        def on_epoch_end(self, context, metrics, improved):
            seen.append((context.state.global_step, improved))

    summary = fit(prepare(config), tmp_path / "ck", callbacks=[Count()])
    assert seen[0] == (3, True)
    assert summary["epochs_trained"] < 6 and summary["best_epoch"] >= 1
    assert all(
        not math.isnan(v) for k, v in summary.items() if k.startswith("test_") and "iou_" not in k
    )


@pytest.mark.slow
@pytest.mark.parametrize("variant", list_models())
def test_every_variant_trains_and_evaluates_end_to_end(tiny, tmp_path, variant):
    config = tiny({"model": {"variant": variant}, "train": {"epochs": 1}})
    summary = fit(prepare(config), tmp_path / "ck")
    assert summary["epochs_trained"] == 1 and 0 <= summary["test_miou"] <= 1
    assert ("test_latent_usage_entropy" in summary) == prepare(config).model_config.expert_attention


@pytest.mark.slow
def test_a_resumed_early_stopped_run_trains_no_further(tiny, tmp_path):
    config = tiny({"optim": {"lr": 1e-12}, "train": {"epochs": 6, "early_stopping_patience": 1}})
    first = fit(prepare(config), tmp_path / "ck")
    again = fit(prepare(config), tmp_path / "ck", resume_from=tmp_path / "ck" / "last.ckpt")
    assert first["epochs_trained"] == again["epochs_trained"] < 6
    assert first == again


def test_a_foreign_checkpoint_is_refused(tmp_path):
    from latentseg.errors import CheckpointError

    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.ckpt")
    with pytest.raises(CheckpointError, match="not a latentseg training checkpoint"):
        load_training_state(tmp_path / "foreign.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot load training state"):
        load_training_state(tmp_path / "junk.ckpt")
