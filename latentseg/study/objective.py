"""One trial: sample the config, train it with every seed (a nested MLflow run each), report
per-epoch values to the pruner, and return the mean over seeds."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import optuna

from latentseg.config import ExperimentConfig
from latentseg.study.spec import CategoricalParam, FloatParam, IntParam, LoadedStudy
from latentseg.tracking import run_experiment
from latentseg.tracking.study import RUN_TYPE, end_trial_run, start_trial_run
from latentseg.train import TrainCallback, TrainingInterrupted, TrainingPruned
from latentseg.train.interrupt import stop_requested


@dataclass
class TrialContext:
    """What a worker needs to run trials (picklable: it crosses into worker processes)."""

    study: LoadedStudy
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    threads: int


def suggest(trial: optuna.Trial, key: str, param) -> Any:
    if isinstance(param, CategoricalParam):
        return trial.suggest_categorical(key, param.choices)
    if isinstance(param, IntParam):
        return trial.suggest_int(key, param.low, param.high, step=param.step, log=param.log)
    assert isinstance(param, FloatParam)
    return trial.suggest_float(key, param.low, param.high, step=param.step, log=param.log)


def epoch_metric(metric: str) -> str:
    """The per-epoch val metric that stands for ``metric`` (fed to the pruner)."""
    return metric.removeprefix("best_")


class ReportToOptuna(TrainCallback):
    """Feeds the per-epoch val metric to Optuna's pruner (raises TrainingPruned when told to)
    and remembers its values, so that a ``val_*`` objective is the best epoch's value in the
    study's direction.

    Seeds run one after another; seed ``i``'s epoch ``e`` is step ``i * epochs + e`` so that
    every trial is compared at the same point of the same seed."""

    def __init__(
        self, trial: optuna.Trial, metric: str, step_offset: int, prune: bool = True
    ) -> None:
        self.trial = trial
        self.metric = epoch_metric(metric)
        self.step_offset = step_offset
        self.prune = prune
        self.values: list[float] = []

    def on_epoch_end(self, ctx, metrics: dict[str, float], improved: bool) -> None:
        value = metrics.get(self.metric)
        if value is None or math.isnan(value):
            return
        self.values.append(value)
        self.trial.report(value, self.step_offset + ctx.state.epoch)
        if self.prune and self.trial.should_prune():
            raise TrainingPruned(ctx.state.epoch, "pruned by Optuna")


def objective_value(
    summary: dict[str, float], metric: str, epochs: list[float], direction: str
) -> float:
    """``val_x``: the best per-epoch value in ``direction``; ``best_val_x`` (at the best-mIoU
    epoch): as the run reports it. Never ``test_x``: the spec refuses it."""
    if metric.startswith("val_"):
        if not epochs:
            raise KeyError(f"objective metric {metric!r} was never reported")
        return max(epochs) if direction == "maximize" else min(epochs)
    if metric not in summary:
        raise KeyError(
            f"objective metric {metric!r} is not among the run's metrics ({', '.join(sorted(summary))})"
        )
    return summary[metric]


def run_trial(
    trial: optuna.Trial, ctx: TrialContext, client, attrs: dict[str, Any] | None = None
) -> float:
    """Train the trial's config with each seed; the objective is the mean over seeds.
    ``attrs`` (the trial's system attributes) carry an adaptive round's seeds and why they
    run; a trial after the first round is never pruned (its pairs must stay complete)."""
    from latentseg.study.rounds import FIRST_ROUND, OPEN_ATTR, ROUND_ATTR, trial_seeds

    loaded = ctx.study
    spec = loaded.spec
    attrs = attrs or {}
    round_ = int(attrs.get(ROUND_ATTR, 1))
    seeds = trial_seeds(attrs, loaded.seeds)
    adaptive = {
        "latentseg.round": str(round_),
        "latentseg.open_comparison": str(attrs.get(OPEN_ATTR, FIRST_ROUND))[:4900],
    } if spec.adaptive else {}  # fmt: skip
    params = {key: suggest(trial, key, param) for key, param in spec.search_space.items()}
    config: ExperimentConfig = loaded.base.with_updates(
        {
            **params,
            "train.threads": ctx.threads,
            "tracking.enabled": True,
            "tracking.experiment": spec.mlflow_experiment or loaded.name,
        }
    )
    stopped = stop_requested()
    if stopped:  # a signal between trials: start nothing new (the worker queues it again)
        raise TrainingInterrupted(stopped)
    run_id = start_trial_run(
        client,
        ctx.experiment_id,
        ctx.parent_run_id,
        loaded.name,
        trial.number,
        params,
        config,
        loaded.path,
        extra_tags=adaptive,
    )
    trial.set_user_attr("mlflow_run_id", run_id)
    state, metric = "FAIL", spec.objective.metric
    values: dict[int, float] = {}
    tags: dict[str, str] = {}
    try:
        for index, seed in enumerate(seeds):
            stopped = stop_requested()
            if stopped:  # between two seeds: the trial ends KILLED, no new seed run starts
                raise TrainingInterrupted(stopped)
            seed_config = config.with_updates(
                {"train.seed": seed, "tracking.run_name": f"trial-{trial.number}-seed-{seed}"}
            )
            offset = (seed - loaded.base.train.seed if round_ > 1 else index) * config.train.epochs
            reporter = ReportToOptuna(trial, metric, offset, prune=round_ == 1)
            tags["pruned_at_seed"] = str(seed)  # kept only when pruned
            result = run_experiment(
                seed_config,
                tracking_uri=ctx.tracking_uri,
                callbacks=[reporter],
                parent_run_id=run_id,
                extra_tags={
                    RUN_TYPE: "seed",
                    "latentseg.study": loaded.name,
                    "latentseg.trial_number": str(trial.number),
                    **adaptive,
                },
                progress=False,
                source=loaded.path,
            )
            values[seed] = objective_value(
                result.summary, metric, reporter.values, spec.objective.resolved_direction
            )
            trial.set_user_attr(f"seed_{seed}_{metric}", values[seed])
        state = "COMPLETE"
        return statistics.fmean(values.values())
    except TrainingPruned as exc:
        state = "PRUNED"
        tags["pruned_at_epoch"] = str(exc.epoch)
        trial.set_user_attr("pruned_at_epoch", exc.epoch)
        raise optuna.TrialPruned(str(exc)) from None
    except (TrainingInterrupted, KeyboardInterrupt) as exc:
        state = "KILLED"
        tags["latentseg.error"] = f"interrupted: {exc}"
        raise
    except BaseException as exc:
        tags["latentseg.error"] = f"{type(exc).__name__}: {exc}"[:4900]
        trial.set_user_attr("fail_reason", tags["latentseg.error"][:1000])
        raise
    finally:
        if state != "PRUNED":
            tags.pop("pruned_at_seed", None)
        # Per-seed values always; the mean and spread only when every seed finished.
        metrics = {f"seed_{s}_{metric}": v for s, v in values.items()}
        if state == "COMPLETE":
            metrics[metric] = statistics.fmean(values.values())
            metrics["n_seeds"] = len(values)
            if len(values) > 1:
                metrics[f"{metric}_std"] = statistics.stdev(values.values())
        end_trial_run(client, run_id, state, metrics, tags)
