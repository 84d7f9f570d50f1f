"""MLflow structure of a study: one parent run per launch, a child run per trial (and a
nested run per seed, made by :func:`latentseg.tracking.run_experiment`), and the parent's
summary at the end: best params and value, the trials table, Optuna's plots and parameter
importances (PED-ANOVA and fANOVA)."""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from latentseg.process import owner_alive, owner_record
from latentseg.tracking.run import run_tags
from latentseg.tracking.store import quote

RUN_TYPE = "latentseg.run_type"  # study | trial | seed
# Optuna's fANOVA walks every combination of a categorical's one-hot splits: its time doubles
# with each choice (a 40-point grid axis would never finish). Wider axes get PED-ANOVA only.
FANOVA_MAX_CHOICES = 16


def _params(client, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [
        Param(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v))
        for k, v in sorted(params.items())
    ]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


def _metrics(client, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def start_study_run(
    client,
    experiment_id: str,
    study_name: str,
    storage: str,
    spec_path: str,
    params: dict[str, Any],
    workers: int,
) -> str:
    tags = {
        RUN_TYPE: "study",
        "latentseg.study": study_name,
        "latentseg.storage": storage,
        "latentseg.spec": spec_path,
        "latentseg.workers": str(workers),
        "latentseg.owner": json.dumps(owner_record()),
    }
    run = client.create_run(
        experiment_id, tags=tags, run_name=f"study-{study_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    _params(client, run.info.run_id, params)
    return run.info.run_id


def start_trial_run(
    client,
    experiment_id: str,
    parent_run_id: str,
    study_name: str,
    trial_number: int,
    params: dict[str, Any],
    config,
    source: str,
    extra_tags: dict[str, str] | None = None,
) -> str:
    tags = (
        run_tags(config, source)
        | (extra_tags or {})
        | {
            RUN_TYPE: "trial",
            "mlflow.parentRunId": parent_run_id,
            "latentseg.study": study_name,
            "latentseg.trial_number": str(trial_number),
            "latentseg.optuna_state": "RUNNING",
            "latentseg.config_hash": config.config_hash(include_seed=False),
            "latentseg.owner": json.dumps(owner_record()),  # the worker process running it
        }
    )
    tags.pop("latentseg.seed", None)
    run = client.create_run(experiment_id, tags=tags, run_name=f"trial-{trial_number}")
    _params(
        client, run.info.run_id, {**config.flat(), **{f"trial.{k}": v for k, v in params.items()}}
    )
    return run.info.run_id


def end_trial_run(
    client,
    run_id: str,
    state: str,
    metrics: dict[str, float] | None = None,
    tags: dict[str, str] | None = None,
) -> None:
    """``state``: the Optuna state (COMPLETE, PRUNED, FAIL) -> FINISHED, KILLED, FAILED;
    ``KILLED`` (interrupted by a signal; Optuna records FAIL) -> KILLED."""
    if metrics:
        _metrics(client, run_id, metrics)
    optuna_state = "FAIL" if state == "KILLED" else state
    for key, value in {"latentseg.optuna_state": optuna_state, **(tags or {})}.items():
        client.set_tag(run_id, key, value)
    client.set_terminated(
        run_id,
        {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "KILLED": "KILLED"}.get(state, "FAILED"),
    )


def close_orphans(
    client, experiment_id: str, study_name: str, trial_number: int, reason: str
) -> None:
    """Close the runs a dead worker left RUNNING for one trial: the trial run and its seed
    runs (found by their tags, so even a run whose id never reached Optuna is closed)."""
    base = f"tags.`latentseg.study` = {quote(study_name)} and tags.`latentseg.trial_number` = {quote(str(trial_number))} and attributes.status = 'RUNNING'"
    for run in client.search_runs([experiment_id], filter_string=base, max_results=1000):
        client.set_tag(run.info.run_id, "latentseg.error", reason)
        if run.data.tags.get(RUN_TYPE) == "trial":
            client.set_tag(run.info.run_id, "latentseg.optuna_state", "FAIL")
        client.set_terminated(run.info.run_id, "FAILED")


def close_dead_study_runs(client, experiment_id: str, study_name: str) -> None:
    """A parent run left RUNNING by a launch whose process is gone ends KILLED."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`latentseg.study` = {quote(study_name)} and tags.`{RUN_TYPE}` = 'study' and attributes.status = 'RUNNING'",
    )
    for run in runs:
        owner = run.data.tags.get("latentseg.owner")
        if owner and not owner_alive(json.loads(owner)):
            client.set_tag(run.info.run_id, "latentseg.error", "the launching process died")
            client.set_terminated(run.info.run_id, "KILLED")


def log_round(
    client, run_id: str, round_: int, counts: dict[str, float], table: list[dict[str, Any]]
) -> None:
    """An adaptive study's look after ``round_``: the counts as metrics at step ``round_``
    (``rounds.open``, ``rounds.decided``, ``rounds.queued``, ``rounds.seed_runs``) and the
    verdict of every comparison in ``rounds/round-<k>.json``."""
    _metrics(client, run_id, {f"rounds.{k}": v for k, v in counts.items()}, step=round_)
    client.set_tag(run_id, "latentseg.round", str(round_))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"round-{round_}.json"
        path.write_text(
            json.dumps({"round": round_, **counts, "comparisons": table}, indent=2, default=str)
        )
        client.log_artifact(run_id, str(path), "rounds")


def log_study_summary(
    client, run_id: str, study, metric: str, plots: bool = True
) -> dict[str, Any]:
    """Best params/value, ``trials.csv``, Optuna's plots and importances on the parent run
    (without ``plots``: the table and counts only, for a quick stop)."""
    from optuna.trial import TrialState

    summary: dict[str, Any] = {"trials": len(study.trials)}
    states = [t.state for t in study.trials]
    for state in TrialState:
        summary[f"n_{state.name.lower()}"] = states.count(state)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        study.trials_dataframe().to_csv(folder / "trials.csv", index=False)
        client.log_artifact(run_id, str(folder / "trials.csv"))
        if complete:
            best = study.best_trial
            summary.update(best_value=best.value, best_trial=best.number, best_params=best.params)
            _metrics(
                client, run_id, {f"best_{metric}": best.value, "best_trial_number": best.number}
            )
            _params(client, run_id, {f"best.{k}": v for k, v in best.params.items()})
            client.set_tag(run_id, "latentseg.best_trial", str(best.number))
        _metrics(client, run_id, {k: v for k, v in summary.items() if k.startswith("n_")})
        if plots:
            _log_plots(client, run_id, study, metric, complete, summary, folder)
        (folder / "study_summary.json").write_text(json.dumps(summary, indent=2, default=str))
        client.log_artifact(run_id, str(folder / "study_summary.json"))
    return summary


def _log_plots(client, run_id: str, study, metric: str, complete, summary, folder: Path) -> None:
    """Optuna's plots and parameter importances, logged to the parent run (into ``summary``:
    the importances, and the plots that could not be drawn)."""
    import matplotlib.pyplot as plt
    import optuna
    from optuna.visualization import matplotlib as ovm

    plots = {
        "optimization_history": lambda: ovm.plot_optimization_history(study, target_name=metric),
        "intermediate_values": lambda: ovm.plot_intermediate_values(study),
        "parallel_coordinate": lambda: ovm.plot_parallel_coordinate(study, target_name=metric),
    }
    evaluators = {
        "ped_anova": optuna.importance.PedAnovaImportanceEvaluator,
        "fanova": optuna.importance.FanovaImportanceEvaluator,
    }
    importances: dict[str, Any] = {}
    choices, widest = max(
        (
            (len(d.choices), key)
            for t in complete
            for key, d in t.distributions.items()
            if isinstance(d, optuna.distributions.CategoricalDistribution)
        ),
        default=(0, None),
    )
    for name, evaluator in evaluators.items():
        if name == "fanova" and choices > FANOVA_MAX_CHOICES:
            importances[name] = (
                f"not computed: {widest} has {choices} choices; fANOVA's time doubles with "
                f"each choice (at most {FANOVA_MAX_CHOICES})"
            )
            continue
        try:
            with warnings.catch_warnings():  # e.g. "importances will be equal" on tiny studies
                warnings.simplefilter("ignore")
                importances[name] = optuna.importance.get_param_importances(
                    study, evaluator=evaluator()
                )
        except Exception as exc:  # too few trials, or a single value per axis
            importances[name] = f"not computed: {type(exc).__name__}: {exc}"
            continue
        plots[f"param_importances_{name}"] = lambda evaluator=evaluator, name=name: (
            ovm.plot_param_importances(
                study, evaluator=evaluator(), target_name=f"{metric} ({name})"
            )
        )
        _metrics(
            client, run_id, {f"importance.{name}.{k}": v for k, v in importances[name].items()}
        )
    summary["importances"] = importances
    skipped = {}
    for name, make in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = make()
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            figure.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
            plt.close(figure)
            client.log_artifact(run_id, str(folder / f"{name}.png"), "plots")
        except Exception as exc:
            skipped[name] = f"{type(exc).__name__}: {exc}"
    summary["plots_skipped"] = skipped
