"""The fast path (what training runs) is the same model as the tutorial's reference: the
agreement tests take ``device`` (tests/models/conftest.py), the CPU and, where there is one,
a CUDA GPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from latentseg.bench.model_speed import contenders
from latentseg.cli import main
from latentseg.config import OptimConfig
from latentseg.models import create_model
from latentseg.train.evaluate import target_at
from latentseg.train.fastpath import bf16_supported, build_optimizer, prepare_model, to_device
from tests.conftest import subprocess_env

CPU = torch.device("cpu")


def batch(size=4, image=32, classes=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(size, 3, image, image, generator=gen),
        torch.randint(0, classes, (size, image, image), generator=gen),
    )


@pytest.mark.parametrize(
    "variant", ["tutorial", "deep-residual", "no-expert", "perceiver-p3", "mla-r8", "beyond-all"]
)
def test_fast_path_outputs_and_gradients_match_the_reference_in_float32(variant, device):
    torch.manual_seed(0)
    reference = create_model(variant, attention_impl="reference", num_classes=4).to(device)
    fast = create_model(variant, attention_impl="fused", num_classes=4)
    fast.load_state_dict(reference.state_dict())
    fast = prepare_model(fast, device)
    images, masks = (t.to(device) for t in batch())
    for model, inputs in ((reference, images), (fast, to_device(images, device))):
        logits = model(inputs)
        F.cross_entropy(logits, target_at(masks, logits.shape[-2:])).backward()
        model.logits = logits.detach()
    assert (
        fast.logits.is_contiguous(memory_format=torch.channels_last) or fast.logits.shape[-1] == 1
    )
    assert torch.allclose(reference.logits, fast.logits, atol=1e-5, rtol=1e-4)
    for (name, a), (_, b) in zip(
        reference.named_parameters(), fast.named_parameters(), strict=True
    ):
        scale = a.grad.abs().max().clamp(min=1e-5)  # absolute 1e-9 for vanishing gradients
        assert (a.grad - b.grad).abs().max() <= 1e-4 * scale, name


@pytest.mark.parametrize(
    "variant", ["tutorial", "deep-residual", "no-expert", "perceiver-p3", "mla-r8", "beyond-all"]
)
def test_fast_path_inference_matches_the_reference_in_float32(variant, device):
    """Without gradients the fast path takes shortcuts that training cannot (no weights or
    indices kept for a backward): the same logits and attention maps."""
    torch.manual_seed(0)
    reference = create_model(variant, attention_impl="reference", num_classes=4).to(device)
    fast = create_model(variant, attention_impl="fused", num_classes=4)
    fast.load_state_dict(reference.state_dict())
    fast = prepare_model(fast, device)
    images = batch()[0].to(device)
    expected, expected_maps = reference.eval()(images, return_attention=True)
    with torch.inference_mode():
        logits = fast.eval()(to_device(images, device))
        _, maps = fast(to_device(images, device), return_attention=True)
    torch.testing.assert_close(logits, expected.detach(), atol=1e-5, rtol=1e-4)
    if expected_maps is not None:
        for name in ("latent_to_pixel", "pixel_to_latent"):
            torch.testing.assert_close(
                getattr(maps, name), getattr(expected_maps, name).detach(), atol=1e-6, rtol=1e-5
            )


def test_the_fused_optimizer_steps_like_the_tutorials_adam():
    torch.manual_seed(0)
    reference = create_model("deep-residual", num_classes=4)
    fast = create_model("deep-residual", num_classes=4)
    fast.load_state_dict(reference.state_dict())
    plain = torch.optim.Adam(reference.parameters(), lr=1e-3)  # the tutorial's optimizer
    fused = build_optimizer(fast, OptimConfig(name="adam", lr=1e-3))
    assert fused.defaults.get("fused") is True
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):  # the same gradients into both
        for a, b in zip(reference.parameters(), fast.parameters(), strict=True):
            a.grad = torch.randn(a.shape, generator=gen)
            b.grad = a.grad.clone()
        plain.step()
        fused.step()
    for (name, a), (_, b) in zip(
        reference.named_parameters(), fast.named_parameters(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5), name


def test_bf16_logits_stay_within_the_stated_tolerance_of_float32(device):
    """bf16 keeps 8 mantissa bits: logits within 5% of their range of float32's."""
    if not bf16_supported(device):
        pytest.skip(f"no bf16 support on this {device.type} (oneDNN on a CPU, CUDA on a GPU)")
    impls = contenders("tutorial", bf16=True, device=device)
    images = batch(size=8, image=64)[0].to(device)
    with torch.no_grad():
        exact = impls["fast"].model.eval()(to_device(images, device))
        with torch.autocast(device.type, dtype=torch.bfloat16):
            approx = impls["fast_bf16"].model.eval()(to_device(images, device)).float()
    spread = exact.max() - exact.min()
    assert (approx - exact).abs().max() <= 0.05 * spread
    assert (approx.argmax(1) == exact.argmax(1)).float().mean() > 0.95


@pytest.mark.slow
def test_the_stock_reference_process_trains_the_same_model_with_torchs_default_memory_settings():
    """bench's baseline process: the reference with identical weights and inputs, and none of
    latentseg's process settings (huge pages, kept freed memory)."""
    from latentseg.bench.model_speed import StockReference

    stock = StockReference("tutorial", batch_size=2, image_size=32, threads=1)
    try:
        assert stock.runner("train")(2) > 0 and stock.runner("infer")(1) > 0
        probe = (
            "import os, json; from latentseg.train.fastpath import keep_freed_memory; "
            "print(json.dumps([os.environ['THP_MEM_ALLOC_ENABLE'], keep_freed_memory()]))"
        )
        settings = subprocess.run(
            [sys.executable, "-c", probe], env=stock.env, capture_output=True, text=True, check=True
        )
        assert json.loads(settings.stdout) == ["0", False]
    finally:
        stock.close()
    assert stock.process.returncode == 0


@pytest.mark.slow
def test_training_processes_keep_freed_memory_unless_turned_off():
    probe = "from latentseg.train.fastpath import keep_freed_memory; print(keep_freed_memory())"
    for value, expected in (("1", "True"), ("0", "False")):
        env = {**subprocess_env(), "LATENTSEG_MALLOC_TUNING": value}
        done = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
        )
        assert done.stdout.strip() == expected


# What README.md and docs/performance.md quote from ``latentseg bench --json``, by section
# (the tracking, study and bf16 sections train for minutes: tests/test_bench_overheads.py).
QUOTED_MODEL_FIGURES = (
    "params",
    "flops_per_image",
    *(
        f"{who}_{mode}_images_per_s"
        for who in ("reference", "reference_same_process", "fast")
        for mode in ("train", "infer")
    ),
    *(
        f"fast_{mode}_ratio{place}"
        for mode in ("train", "infer")
        for place in ("", "_same_process")
    ),
    *(f"{who}_activation_mb" for who in ("reference", "fast")),
    *(f"{who}_matmul_share" for who in ("reference", "reference_same_process", "fast")),
)
QUOTED_BF16_FIGURES = (
    "fast_bf16_train_images_per_s",
    "fast_bf16_infer_images_per_s",
    "fast_bf16_activation_mb",
    *(
        f"fast_bf16_{mode}_ratio{place}"
        for mode in ("train", "infer")
        for place in ("", "_same_process")
    ),
)


@pytest.mark.slow
def test_bench_writes_every_quoted_figure_as_json_and_prints_the_same_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["--only", "models,data,report", "--variants", "tutorial", "--report-runs", "3",
            "--batch-size", "2", "--image-size", "32", "--windows", "1", "--steps", "1"]  # fmt: skip
    assert main(["bench", *args, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert result["machine"]["matmul_gflops"] > 0 and result["machine"]["cpu_capability"]
    assert result["settings"] == {"batch_size": 2, "image_size": 32, "windows": 1, "steps": 1}
    (row,) = result["models"]
    assert row["variant"] == "tutorial" and row["params"] == 70_596  # 4 classes: +2 x 65
    quoted = QUOTED_MODEL_FIGURES + (QUOTED_BF16_FIGURES if result["machine"]["bf16"] else ())
    assert [key for key in quoted if not row.get(key, 0) > 0] == []
    for key in ("fast_train_ratio", "fast_infer_ratio", "fast_train_ratio_same_process"):
        assert f"({row[key]:.2f}x)" in printed, key  # the console shows the JSON's ratios
    assert 0 < result["data"]["read_share_of_step"] < 1
    assert result["data"]["generate_share_of_step"] > 0
    (report,) = result["report"]
    assert report["runs"] == 3 and 0 < report["collect_s"] <= report["report_s"]
    assert "report: 3 runs in" in printed


def test_the_headline_ratios_are_speed_ups_over_the_stock_reference_and_the_same_code():
    from latentseg.bench.harness import Timings
    from latentseg.bench.model_speed import speedups

    # the stock process is slowest, the same code in latentseg's process in between
    train = Timings({"reference": [0.6], "reference_same_process": [0.4], "fast": [0.2]})
    infer = Timings({"reference": [0.3], "reference_same_process": [0.3], "fast": [0.1]})
    assert speedups(train, infer) == pytest.approx(
        {
            "fast_train_ratio": 3.0,
            "fast_infer_ratio": 3.0,
            "fast_train_ratio_same_process": 2.0,
            "fast_infer_ratio_same_process": 3.0,
        }
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--only", "models,speed"], "sections are"),
        (["--variants", "nothing-*"], "matches no variant"),
        (["--json", "/no/such/dir/out.json"], "does not exist"),
    ],
)
def test_bench_bad_flags_exit_2(args, message, capsys):
    assert main(["bench", *args]) == 2
    assert message in capsys.readouterr().err


def test_bench_activation_memory_counts_saved_tensors_once():
    """Saved activations grow linearly with the batch (weights saved once, not per sample),
    and the fast path's attention keeps no weight matrices."""
    from latentseg.bench.model_speed import activation_megabytes

    impls = contenders("tutorial", bf16=False)
    sizes = {
        n: {k: activation_megabytes(impls[k], batch(size=n, image=32)[0]) for k in impls}
        for n in (2, 4, 6)
    }
    for key in impls:
        first, second = sizes[4][key] - sizes[2][key], sizes[6][key] - sizes[4][key]
        assert first > 0 and first == pytest.approx(second, rel=1e-6), key
    assert sizes[6]["fast"] < sizes[6]["reference"]


@pytest.mark.slow
@pytest.mark.skipif(not bf16_supported(CPU), reason="this CPU has no bf16 support in oneDNN")
def test_a_bf16_trained_run_reaches_the_float32_val_miou_within_0_01(tmp_path, tiny):
    from latentseg.tracking.run import run_experiment
    from tests.data.folders import make_folder

    root = make_folder(tmp_path / "data", count=160)
    results = {}
    for bf16 in (False, True):
        config = tiny(
            {
                "data": {
                    "dataset": "folder",
                    "params": {"root": str(root)},
                    "train_size": None,
                    "val_size": None,
                    "test_size": None,
                },
                "model": {"variant": "deep-residual"},
                "optim": {"lr": 0.003},
                "train": {"epochs": 4, "bf16": bf16},
                "tracking": {"enabled": False},
            }
        )
        results[bf16] = run_experiment(config, progress=False).summary["best_val_miou"]
    assert results[False] > 0.8, results  # a task both learn, so the comparison means something
    assert abs(results[True] - results[False]) <= 0.01, results
