"""Many finished runs written into a store fast: the seed runs of an ablation grid with
invented but plausible results, for measuring what reading a large store costs (``latentseg
bench``'s report section, ``benchmarks/report_scale.py``). Each run is one ``log_batch``
call, not a training run's hundreds of small writes.
"""

from __future__ import annotations

import itertools
import random
import time
from typing import Any

from mlflow.entities import Metric, Param

# the ablation axes: latents x heads x expert attention; seeds repeat the grid to fill
GRID = list(itertools.product([4, 8, 16, 32], [1, 2, 4], [True, False]))
EPOCHS = 8


def ablation_run(index: int, rng: random.Random) -> tuple[dict[str, Any], float, dict[str, float]]:
    """The ``index``-th seed run of the grid: its params, its best val mIoU (more latents
    and expert attention help) and its other final metrics (~20, as a training run logs)."""
    latents, heads, experts = GRID[index % len(GRID)]
    params = {
        "model.num_latents": latents,
        "model.num_heads": heads,
        "model.expert_attention": experts,
        "train.seed": index // len(GRID),
        "data.dataset": "shapes",
        "model.num_classes": 4,
    }
    value = 0.6 + 0.01 * latents / 4 + (0.05 if experts else 0) + rng.gauss(0, 0.02)
    metrics = {
        "best_val_miou": value,
        "test_miou": value + rng.gauss(0, 0.01),  # what the report compares
        "best_epoch": rng.randint(1, EPOCHS),
        "model_params": 70000 + latents * 64,
        "model_flops_per_image": 2.5e8,
        "train_images_per_s": 400 + rng.random(),
    }
    metrics.update({f"test_iou_class{c}": rng.random() for c in range(15)})
    return params, value, metrics


def log_ablation_runs(client, experiment_id: str, runs: int, seed: int = 0) -> list[str]:
    """Log ``runs`` finished seed runs (``latentseg.run_type: seed``) of :data:`GRID` into
    ``experiment_id`` with ``client`` (an ``MlflowClient``), each with a val mIoU history of
    :data:`EPOCHS` epochs; the same ``seed`` gives the same values. Returns the run ids."""
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    run_ids = []
    for index in range(runs):
        params, value, metrics = ablation_run(index, rng)
        history = [Metric("val_miou", value * (e + 1) / EPOCHS, now, e + 1) for e in range(EPOCHS)]
        run_id = client.create_run(experiment_id, tags={"latentseg.run_type": "seed"}).info.run_id
        client.log_batch(
            run_id,
            metrics=[*history, *(Metric(k, float(v), now, 0) for k, v in metrics.items())],
            params=[Param(k, str(v)) for k, v in params.items()],
        )
        client.set_terminated(run_id, "FINISHED")
        run_ids.append(run_id)
    return run_ids
