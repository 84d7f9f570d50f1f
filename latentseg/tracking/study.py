"""MLflow structure of a study: one parent run per launch, a child run per trial (and a
nested run per seed, made by :func:`latentseg.tracking.run_experiment`), and the parent's
summary at the end: best params and value, the trials table, Optuna's plots and parameter
importances (PED-ANOVA and fANOVA)."""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from latentseg.process import owner_alive, owner_record
from latentseg.tracking.run import run_tags
from latentseg.tracking.store import RUN_TYPE, STUDY_TAG, TRIAL_TAG, TrackingStore

# Optuna's fANOVA walks every combination of a categorical's one-hot splits: its time doubles
# with each choice (a 40-point grid axis would never finish). Wider axes get PED-ANOVA only.
FANOVA_MAX_CHOICES = 16
# The Optuna state a trial ends in -> the status of its MLflow run.
RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "KILLED": "KILLED"}


def start_study_run(
    store: TrackingStore,
    experiment_id: str,
    study_name: str,
    storage: str,
    spec_path: str,
    params: dict[str, Any],
    workers: int,
) -> str:
    """The parent run of one launch of ``study_name``, with the spec's ``params``."""
    tags = {
        RUN_TYPE: "study",
        STUDY_TAG: study_name,
        "latentseg.storage": storage,
        "latentseg.spec": spec_path,
        "latentseg.workers": str(workers),
        "latentseg.owner": json.dumps(owner_record()),
    }
    run_name = f"study-{study_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_id = store.create_run(experiment_id, run_name, tags)
    store.log_params(run_id, params)
    return run_id


def start_trial_run(
    store: TrackingStore,
    experiment_id: str,
    parent_run_id: str,
    study_name: str,
    trial_number: int,
    params: dict[str, Any],
    config,
    source: str,
    extra_tags: dict[str, str] | None = None,
) -> str:
    """A trial's run under the parent run, with the sampled ``params`` and the full config."""
    tags = (
        run_tags(config, source)
        | (extra_tags or {})
        | {
            RUN_TYPE: "trial",
            "mlflow.parentRunId": parent_run_id,
            STUDY_TAG: study_name,
            TRIAL_TAG: str(trial_number),
            "latentseg.optuna_state": "RUNNING",
            "latentseg.config_hash": config.config_hash(include_seed=False),
            "latentseg.owner": json.dumps(owner_record()),  # the worker process running it
        }
    )
    tags.pop("latentseg.seed", None)
    run_id = store.create_run(experiment_id, f"trial-{trial_number}", tags)
    store.log_params(run_id, {**config.flat(), **{f"trial.{k}": v for k, v in params.items()}})
    return run_id


def end_trial_run(
    store: TrackingStore,
    run_id: str,
    state: str,
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
) -> None:
    """``state``: the Optuna state (COMPLETE, PRUNED, FAIL) -> FINISHED, KILLED, FAILED;
    ``KILLED`` (interrupted by a signal; Optuna records FAIL) -> KILLED."""
    if metrics:
        store.log_metrics(run_id, metrics)
    optuna_state = "FAIL" if state == "KILLED" else state
    store.set_tags(run_id, {"latentseg.optuna_state": optuna_state, **(tags or {})})
    store.end_run(run_id, RUN_STATUS.get(state, "FAILED"))


def close_orphans(
    store: TrackingStore, experiment_id: str, study_name: str, trial_number: int, reason: str
) -> None:
    """Close the runs a dead worker left RUNNING for one trial: the trial run and its seed
    runs (found by their tags, so even a run whose id never reached Optuna is closed)."""
    for run in store.study_runs(
        study_name, trial_number=trial_number, status="RUNNING", experiment_ids=[experiment_id]
    ):
        store.set_tags(run.info.run_id, {"latentseg.error": reason})
        if run.data.tags.get(RUN_TYPE) == "trial":
            store.set_tags(run.info.run_id, {"latentseg.optuna_state": "FAIL"})
        store.end_run(run.info.run_id, "FAILED")


def close_dead_study_runs(store: TrackingStore, experiment_id: str, study_name: str) -> None:
    """A parent run left RUNNING by a launch whose process is gone ends KILLED."""
    for run in store.study_runs(
        study_name, "study", status="RUNNING", experiment_ids=[experiment_id]
    ):
        owner = run.data.tags.get("latentseg.owner")
        if owner and not owner_alive(json.loads(owner)):
            store.set_tags(run.info.run_id, {"latentseg.error": "the launching process died"})
            store.end_run(run.info.run_id, "KILLED")


def running_launches(store: TrackingStore, experiment_id: str, study_name: str) -> set[str]:
    """The ids of the study's parent runs still RUNNING: the launches not over yet."""
    runs = store.study_runs(study_name, "study", status="RUNNING", experiment_ids=[experiment_id])
    return {run.info.run_id for run in runs}


def log_round(
    store: TrackingStore,
    run_id: str,
    round_: int,
    counts: dict[str, float],
    table: list[dict[str, Any]],
) -> None:
    """An adaptive study's look after ``round_``: the counts as metrics at step ``round_``
    (``rounds.open``, ``rounds.decided``, ``rounds.queued``, ``rounds.seed_runs``) and the
    verdict of every comparison in ``rounds/round-<k>.json``."""
    store.log_metrics(run_id, {f"rounds.{k}": v for k, v in counts.items()}, step=round_)
    store.set_tags(run_id, {"latentseg.round": str(round_)})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"round-{round_}.json"
        path.write_text(
            json.dumps({"round": round_, **counts, "comparisons": table}, indent=2, default=str)
        )
        store.log_artifact(run_id, path, "rounds")


def log_study_summary(
    store: TrackingStore, run_id: str, study, metrics: list[str], plots: bool = True
) -> dict[str, Any]:
    """Best params/value (with several objectives, ``metrics``, the trials of the front),
    ``trials.csv``, Optuna's plots and importances on the parent run (without ``plots``: the
    table and counts only, for a quick stop)."""
    from optuna.trial import TrialState

    summary: dict[str, Any] = {"trials": len(study.trials)}
    states = [t.state for t in study.trials]
    for state in TrialState:
        summary[f"n_{state.name.lower()}"] = states.count(state)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        study.trials_dataframe().to_csv(folder / "trials.csv", index=False)
        store.log_artifact(run_id, folder / "trials.csv")
        if complete and len(metrics) > 1:
            summary.update(_log_front(store, run_id, study.best_trials, metrics))
        elif complete:
            summary.update(_log_best(store, run_id, study.best_trial, metrics[0]))
        store.log_metrics(run_id, {k: v for k, v in summary.items() if k.startswith("n_")})
        if plots:
            makers, summary["importances"] = _importances(store, run_id, study, metrics, complete)
            summary["plots_skipped"] = _log_plots(store, run_id, makers, folder)
        (folder / "study_summary.json").write_text(json.dumps(summary, indent=2, default=str))
        store.log_artifact(run_id, folder / "study_summary.json")
    return summary


def _log_best(store: TrackingStore, run_id: str, best, metric: str) -> dict[str, Any]:
    """The best trial's value, number and params on the parent run; returns them."""
    store.log_metrics(run_id, {f"best_{metric}": best.value, "best_trial_number": best.number})
    store.log_params(run_id, {f"best.{k}": v for k, v in best.params.items()})
    store.set_tags(run_id, {"latentseg.best_trial": str(best.number)})
    return {"best_value": best.value, "best_trial": best.number, "best_params": best.params}


def _log_front(store: TrackingStore, run_id: str, front, metrics: list[str]) -> dict[str, Any]:
    """With several objectives: the trials no other beats in every objective (by their seed
    means; the report decides membership with the seeds' noise), on the parent run."""
    numbers = sorted(t.number for t in front)
    store.log_metrics(run_id, {"front_size": len(numbers)})
    store.set_tags(run_id, {"latentseg.front_trials": ",".join(map(str, numbers))[:4900]})
    points = [
        {"trial": t.number, "values": dict(zip(metrics, t.values, strict=True)), "params": t.params}
        for t in sorted(front, key=lambda t: t.number)
    ]
    return {"objectives": metrics, "front": points}


def _importances(
    store: TrackingStore, run_id: str, study, metrics: list[str], complete
) -> tuple[dict[str, Callable], dict[str, Any]]:
    """Optuna's parameter importances (PED-ANOVA and fANOVA), logged as metrics on the parent
    run (``importance.<evaluator>.<param>``; with several objectives, per objective:
    ``importance.<metric>.<evaluator>.<param>``). Returns the plots to draw (Optuna's
    history, intermediate values and parallel coordinates, with several objectives the front
    and those per objective, and one importance plot per evaluator that ran) and the
    importances (or why one was not computed)."""
    from optuna.visualization import matplotlib as ovm

    plots: dict[str, Callable] = {}
    if len(metrics) > 1:
        plots["pareto_front"] = lambda: ovm.plot_pareto_front(study, target_names=metrics)
    else:
        plots["intermediate_values"] = lambda: ovm.plot_intermediate_values(study)
    importances: dict[str, Any] = {}
    for index, metric in enumerate(metrics):
        several = len(metrics) > 1
        target = (lambda t, index=index: t.values[index]) if several else None
        suffix = f"_{metric}" if several else ""
        plots[f"optimization_history{suffix}"] = lambda target=target, metric=metric: (
            ovm.plot_optimization_history(study, target=target, target_name=metric)
        )
        plots[f"parallel_coordinate{suffix}"] = lambda target=target, metric=metric: (
            ovm.plot_parallel_coordinate(study, target=target, target_name=metric)
        )
        found, drawn = _importances_of(store, run_id, study, metric, complete, target, several)
        plots.update({f"{name}{suffix}": make for name, make in drawn.items()})
        if several:
            importances[metric] = found
        else:
            importances = found
    return plots, importances


def _importances_of(
    store: TrackingStore, run_id: str, study, metric: str, complete, target, several: bool
) -> tuple[dict[str, Any], dict[str, Callable]]:
    """One objective's importances by each evaluator (logged), and their plots."""
    import optuna
    from optuna.visualization import matplotlib as ovm

    evaluators = {  # Optuna's class names: optuna.importance imports scikit-learn (a second)
        "ped_anova": "PedAnovaImportanceEvaluator",
        "fanova": "FanovaImportanceEvaluator",
    }
    importances: dict[str, Any] = {}
    plots: dict[str, Callable] = {}
    choices, widest = _widest_categorical(complete)
    only = _only_axis(study, complete)
    for name, class_name in evaluators.items():
        if name == "fanova" and choices > FANOVA_MAX_CHOICES:
            importances[name] = (
                f"not computed: {widest} has {choices} choices; fANOVA's time doubles with "
                f"each choice (at most {FANOVA_MAX_CHOICES})"
            )
            continue
        if only is not None:  # what Optuna's normalized importances are, without a plot of one bar
            importances[name] = {only: 1.0}
        else:
            evaluator = getattr(optuna.importance, class_name)
            try:
                with warnings.catch_warnings():  # e.g. "importances will be equal" on tiny studies
                    warnings.simplefilter("ignore")
                    importances[name] = optuna.importance.get_param_importances(
                        study, evaluator=evaluator(), target=target
                    )
            except Exception as exc:  # too few trials, or a single value per axis
                importances[name] = f"not computed: {type(exc).__name__}: {exc}"
                continue
            plots[f"param_importances_{name}"] = lambda evaluator=evaluator, name=name: (
                ovm.plot_param_importances(
                    study, evaluator=evaluator(), target=target, target_name=f"{metric} ({name})"
                )
            )
        prefix = f"importance.{metric}.{name}" if several else f"importance.{name}"
        store.log_metrics(run_id, {f"{prefix}.{k}": v for k, v in importances[name].items()})
    return importances, plots


def _only_axis(study, complete) -> str | None:
    """The study's one axis, where it searches a single parameter (every trial's, more than
    one value) and has two complete trials: it explains all the variation there is, so each
    evaluator's normalized importance is 1 for it, and fitting fANOVA's forest (seconds)
    says nothing more. None otherwise."""
    from optuna.search_space import intersection_search_space

    if len(complete) < 2:
        return None
    space = intersection_search_space(study.get_trials(deepcopy=False))
    if len(space) != 1:
        return None
    ((name, distribution),) = space.items()
    return None if distribution.single() else name


def _widest_categorical(complete) -> tuple[int, str | None]:
    """``(choices, key)`` of the categorical axis with the most choices; ``(0, None)``."""
    import optuna

    return max(
        (
            (len(d.choices), key)
            for t in complete
            for key, d in t.distributions.items()
            if isinstance(d, optuna.distributions.CategoricalDistribution)
        ),
        default=(0, None),
    )


def _log_plots(
    store: TrackingStore, run_id: str, plots: dict[str, Callable], folder: Path
) -> dict[str, str]:
    """Draw each plot and log it under ``plots/`` of the parent run; returns the plots that
    could not be drawn, with why."""
    import matplotlib.pyplot as plt

    skipped = {}
    for name, make in plots.items():
        try:
            # Optuna's experimental warnings, and matplotlib's when a plot of hundreds of
            # trials or choices cannot be laid out tightly: nothing the user can act on
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = make()
                figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
                figure.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
            plt.close(figure)
            store.log_artifact(run_id, folder / f"{name}.png", "plots")
        except Exception as exc:
            skipped[name] = f"{type(exc).__name__}: {exc}"
    return skipped
