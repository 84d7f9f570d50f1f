"""Many finished runs written into a store fast: the seed runs of an ablation grid with
invented but plausible results, for measuring what reading a large store costs (``latentseg
bench``'s report section, ``benchmarks/report_scale.py``). Each run is one ``log_batch``
call, not a training run's hundreds of small writes.
"""

from __future__ import annotations

import itertools
import random
import time
import uuid
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


def write_ablation_runs(uri: str, experiment_id: str, runs: int, seed: int = 0) -> list[str]:
    """The runs :func:`log_ablation_runs` logs, written at once into a database-backed store
    (``sqlite:``, ``postgresql:``, ``mysql:``): one transaction of inserts into MLflow's own
    tables (its SQLAlchemy models, so the columns are this MLflow's) instead of three
    requests per run. The same params, metrics, histories and tags as
    :func:`log_ablation_runs` with the same ``seed`` (a test compares the two frames); only
    the run ids, names and times differ. It builds a store of 10,000 runs in seconds
    (through the client, a run took 30 ms on a store of 1,000). Returns the run ids."""
    import sqlalchemy
    from mlflow.store.tracking.dbmodels import models

    tables = {
        models.SqlRun: [], models.SqlTag: [], models.SqlParam: [], models.SqlMetric: [],
        models.SqlLatestMetric: [],
    }  # fmt: skip
    engine = sqlalchemy.create_engine(uri)
    try:
        with engine.begin() as connection:
            location = connection.execute(
                sqlalchemy.select(models.SqlExperiment.artifact_location).where(
                    models.SqlExperiment.experiment_id == int(experiment_id)
                )
            ).scalar_one()
            rng, now, run_ids = random.Random(seed), int(time.time() * 1000), []
            for index in range(runs):
                run_id = uuid.uuid4().hex
                rows = _run_rows(index, rng, run_id, int(experiment_id), location, now)
                for collected, table_rows in zip(tables.values(), rows, strict=True):
                    collected.extend(table_rows)
                run_ids.append(run_id)
            for model, table_rows in tables.items():
                if table_rows:
                    connection.execute(sqlalchemy.insert(model.__table__), table_rows)
    finally:
        engine.dispose()
    return run_ids


def _run_rows(
    index: int, rng: random.Random, run_id: str, experiment_id: int, location: str, now: int
) -> tuple[list[dict[str, Any]], ...]:
    """The rows of the ``index``-th run in MLflow's tables: runs, tags, params, metrics (the
    history and the final values) and latest_metrics."""
    params, value, metrics = ablation_run(index, rng)
    name = f"synthetic-{index}"
    run = {
        "run_uuid": run_id, "name": name, "source_type": "UNKNOWN", "source_name": "",
        "entry_point_name": "", "user_id": "unknown", "status": "FINISHED", "start_time": now,
        "end_time": now, "source_version": "", "lifecycle_stage": "active",
        "artifact_uri": f"{location.rstrip('/')}/{run_id}/artifacts",
        "experiment_id": experiment_id,
    }  # fmt: skip
    tags = {"latentseg.run_type": "seed", "mlflow.runName": name}
    history = [("val_miou", value * (e + 1) / EPOCHS, e + 1) for e in range(EPOCHS)]
    logged = history + [(key, float(v), 0) for key, v in metrics.items()]
    latest = {key: (v, step) for key, v, step in logged}  # the last value of each key
    point = {"timestamp": now, "is_nan": False, "run_uuid": run_id}
    return (
        [run],
        [{"key": k, "value": v, "run_uuid": run_id} for k, v in tags.items()],
        [{"key": k, "value": str(v), "run_uuid": run_id} for k, v in params.items()],
        [{"key": k, "value": v, "step": step, **point} for k, v, step in logged],
        [{"key": k, "value": v, "step": step, **point} for k, (v, step) in latest.items()],
    )
