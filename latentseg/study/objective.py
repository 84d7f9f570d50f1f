"""One trial: sample the config, train it with every seed (a nested MLflow run each), report
per-epoch values to the pruner, and return the mean over seeds."""

from __future__ import annotations

import math
import statistics
from typing import Any

import optuna

from latentseg.config import ExperimentConfig
from latentseg.study.context import TrialContext
from latentseg.study.spec import (
    COST_METRICS,
    CategoricalParam,
    FloatParam,
    IntParam,
    LoadedStudy,
)
from latentseg.tracking import run_experiment
from latentseg.tracking.store import POINT_TAG, RUN_TYPE, STUDY_TAG, TRIAL_TAG
from latentseg.tracking.study import end_trial_run, start_trial_run
from latentseg.tracking.tracker import model_stat_metrics
from latentseg.train import TrainCallback, TrainingInterrupted, TrainingPruned
from latentseg.train.interrupt import stop_requested


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
    """Remembers each epoch's values of the study's ``val_*`` objectives, so that each is
    the best epoch's value in its direction, and the run's costs (its model's size and work,
    its mean training throughput). With one objective it also feeds that metric to Optuna's
    pruner (raises TrainingPruned when told to); Optuna prunes no study of several.

    Seeds run one after another; seed ``i``'s epoch ``e`` is step ``i * epochs + e`` so that
    every trial is compared at the same point of the same seed."""

    def __init__(
        self, trial: optuna.Trial, metrics: list[str], step_offset: int, prune: bool = True
    ) -> None:
        self.trial = trial
        self.metrics = [epoch_metric(m) for m in metrics if m not in COST_METRICS]
        self.report = len(metrics) == 1
        self.step_offset = step_offset
        self.prune = prune and self.report
        self.values: dict[str, list[float]] = {metric: [] for metric in self.metrics}
        self.costs: dict[str, float] = {}
        self._speeds: list[float] = []

    def on_train_start(self, context) -> None:
        self.costs.update(model_stat_metrics(context.stats))

    def on_epoch_end(self, context, metrics: dict[str, float], improved: bool) -> None:
        speed = metrics.get("train_images_per_s")
        if speed is not None and math.isfinite(speed):
            self._speeds.append(speed)
            self.costs["train_images_per_s"] = statistics.fmean(self._speeds)
        for metric in self.metrics:
            value = metrics.get(metric)
            if value is not None and not math.isnan(value):
                self.values[metric].append(value)
        if not self.report or not self.metrics or not self.values[self.metrics[0]]:
            return
        self.trial.report(self.values[self.metrics[0]][-1], self.step_offset + context.state.epoch)
        if self.prune and self.trial.should_prune():
            raise TrainingPruned(context.state.epoch, "pruned by Optuna")

    def value(self, summary: dict[str, float], metric: str, direction: str) -> float:
        """The run's value of the objective ``metric`` (:func:`objective_value`)."""
        if metric in COST_METRICS:
            if metric not in self.costs:
                raise KeyError(f"objective metric {metric!r} was never reported")
            return self.costs[metric]
        return objective_value(
            summary, metric, self.values.get(epoch_metric(metric), []), direction
        )


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
    trial: optuna.Trial, trial_context: TrialContext, store, attrs: dict[str, Any] | None = None
) -> float | list[float]:
    """Train the trial's config with each seed; each objective is its mean over seeds (a
    list of them, in the spec's order, for a study of several).
    ``store`` is the :class:`~latentseg.tracking.store.TrackingStore` that gets the trial's
    run. ``attrs`` (the trial's system attributes) carry an adaptive round's seeds and why
    they run; a trial after the first round is never pruned (its pairs must stay complete)."""
    from latentseg.study.rounds import ROUND_ATTR, trial_seeds

    loaded, attrs = trial_context.study, attrs or {}
    round_ = int(attrs.get(ROUND_ATTR, 1))
    params = {key: suggest(trial, key, param) for key, param in loaded.spec.search_space.items()}
    # on the trial's run and each seed run: its point, and its round with adaptive seeds
    shared = _adaptive_tags(loaded, attrs, round_) | {POINT_TAG: point_name(params)}
    config = _trial_config(loaded, params, trial_context.threads)
    _start_nothing_when_stopping()  # a signal between trials: the worker queues it again
    run_id = start_trial_run(
        store, trial_context.experiment_id, trial_context.parent_run_id, loaded.name, trial.number, params, config,
        loaded.path, extra_tags=shared,
    )  # fmt: skip
    trial.set_user_attr("mlflow_run_id", run_id)
    state, metrics = "FAIL", [objective.metric for objective in loaded.spec.objective_list]
    values: dict[int, dict[str, float]] = {}
    tags: dict[str, str] = {}
    try:
        for index, seed in enumerate(trial_seeds(attrs, loaded.seeds)):
            _start_nothing_when_stopping()  # between two seeds: the trial ends KILLED
            offset = (seed - loaded.base.train.seed if round_ > 1 else index) * config.train.epochs
            tags["pruned_at_seed"] = str(seed)  # kept only when pruned
            values[seed] = _run_seed(
                trial, trial_context, config, run_id, seed, offset, round_, shared
            )
            for metric, value in values[seed].items():
                trial.set_user_attr(f"seed_{seed}_{metric}", value)
        state = "COMPLETE"
        every = _with_earlier_rounds(trial, params, round_, metrics, values)
        means = [statistics.fmean(v[metric] for v in every.values()) for metric in metrics]
        return means if loaded.spec.objectives else means[0]
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
        end_trial_run(store, run_id, state, _trial_metrics(values, metrics, state), tags)


def _with_earlier_rounds(
    trial: optuna.Trial, params: dict[str, Any], round_: int, metrics: list[str], values: dict
) -> dict[int, dict[str, float]]:
    """With adaptive seeds, a later round's trial is valued over all its point's seeds so far:
    the earlier rounds' trials of the point (their per-seed user attributes) and its own. So
    in optuna-dashboard a point's latest trial holds its running mean, and names the trials
    it supersedes (user attributes ``supersedes`` and ``value_seeds``)."""
    if round_ <= 1:
        return values
    from latentseg.study.rounds import point_key, point_of, trial_round

    key = point_key(params)
    earlier = [
        t
        for t in trial.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if trial_round(t) < round_ and point_key(point_of(t)) == key
    ]
    every: dict[int, dict[str, float]] = {}
    for past in sorted(earlier, key=lambda t: t.number):
        for name, value in past.user_attrs.items():
            seed, _, metric = name.removeprefix("seed_").partition("_")
            if name.startswith("seed_") and seed.isdigit() and metric in metrics:
                every.setdefault(int(seed), {})[metric] = float(value)
    every = {seed: v for seed, v in every.items() if set(v) == set(metrics)}
    every.update(values)
    trial.set_user_attr("supersedes", [t.number for t in sorted(earlier, key=lambda t: t.number)])
    trial.set_user_attr("value_seeds", sorted(every))
    return every


def point_name(params: dict[str, Any]) -> str:
    """A trial's point in words: its sampled values by key, each key by its last dotted part
    unless two keys share it (``model.num_latents=8, optim.lr=0.003`` ->
    ``num_latents=8, lr=0.003``)."""
    last = [key.rsplit(".", 1)[-1] for key in params]
    names = [
        short if last.count(short) == 1 else key for key, short in zip(params, last, strict=True)
    ]
    words = (f"{name}={value}" for name, value in zip(names, params.values(), strict=True))
    return ", ".join(words)[:4900]  # MLflow's limit on a tag's value: 5,000


def _adaptive_tags(loaded: LoadedStudy, attrs: dict[str, Any], round_: int) -> dict[str, str]:
    """With adaptive seeds: the round and the open comparison a trial's runs belong to."""
    from latentseg.study.rounds import FIRST_ROUND, OPEN_ATTR

    if not loaded.spec.adaptive:
        return {}
    return {
        "latentseg.round": str(round_),
        "latentseg.open_comparison": str(attrs.get(OPEN_ATTR, FIRST_ROUND))[:4900],
    }


def _trial_config(loaded: LoadedStudy, params: dict[str, Any], threads: int) -> ExperimentConfig:
    """The base experiment with the trial's sampled ``params``, tracked in the study's
    experiment, on the worker's share of the CPU threads (``threads``), or fewer where the
    base experiment sets ``train.threads`` lower: threads beyond the free cores spin and
    slow every process on the machine (a run took 4x the CPU with 2 threads where another
    process held a core)."""
    asked = loaded.base.train.threads
    return loaded.base.with_updates(
        {
            **params,
            "train.threads": min(threads, asked) if asked else threads,
            "tracking.enabled": True,
            "tracking.experiment": loaded.spec.mlflow_experiment or loaded.name,
        }
    )


def _start_nothing_when_stopping() -> None:
    """Raise TrainingInterrupted when a stop signal has arrived."""
    stopped = stop_requested()
    if stopped:
        raise TrainingInterrupted(stopped)


def _run_seed(
    trial: optuna.Trial, trial_context: TrialContext, config: ExperimentConfig, run_id: str, seed: int,
    offset: int, round_: int, shared: dict[str, str],
) -> dict[str, float]:  # fmt: skip
    """Train ``config`` with ``seed`` as a seed run nested under the trial's run ``run_id``,
    reporting each epoch to the pruner at step ``offset + epoch`` (pruning in the first round
    only); returns the seed's value of each objective."""
    loaded = trial_context.study
    objectives = loaded.spec.objective_list
    seed_config = config.with_updates(
        {"train.seed": seed, "tracking.run_name": f"trial-{trial.number}-seed-{seed}"}
    )
    reporter = ReportToOptuna(
        trial, [objective.metric for objective in objectives], offset, prune=round_ == 1
    )
    result = run_experiment(
        seed_config,
        tracking_uri=trial_context.tracking_uri,
        callbacks=[reporter],
        parent_run_id=run_id,
        extra_tags={
            RUN_TYPE: "seed",
            STUDY_TAG: loaded.name,
            TRIAL_TAG: str(trial.number),
            **shared,
        },
        progress=False,
        source=loaded.path,
    )
    return {
        objective.metric: reporter.value(
            result.summary, objective.metric, objective.resolved_direction
        )
        for objective in objectives
    }


def _trial_metrics(
    values: dict[int, dict[str, float]], metrics: list[str], state: str
) -> dict[str, float]:
    """Per-seed values always; the mean and spread only when every seed finished."""
    out = {f"seed_{s}_{m}": v for s, by_metric in values.items() for m, v in by_metric.items()}
    if state == "COMPLETE":
        out["n_seeds"] = len(values)
        for metric in metrics:
            seeds = [by_metric[metric] for by_metric in values.values()]
            out[metric] = statistics.fmean(seeds)
            if len(seeds) > 1:
                out[f"{metric}_std"] = statistics.stdev(seeds)
    return out
