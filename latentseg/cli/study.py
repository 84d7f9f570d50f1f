"""``latentseg study SPEC``: run or resume an Optuna study; a grid ends with its verdicts."""

from __future__ import annotations

import argparse
import sys

from latentseg.cli import flags
from latentseg.errors import LatentSegError


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "study",
        help="run or resume an Optuna study (search or ablation grid), tracked in MLflow",
        description="Run a study spec: every trial is a child MLflow run of one parent run per launch, "
        "trained with each of the spec's seeds (a nested run per seed). Running the same command again resumes it.",
    )
    parser.add_argument("spec", help="study YAML, e.g. studies/quick.yaml")
    parser.add_argument(
        "--n-trials", type=int, help="total trials (default: the spec's; a grid: its size)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes on this machine (torch threads are split between them)",
    )
    parser.add_argument(
        "--storage",
        help="Optuna storage URL (default: the journal in the tracking store's optuna/ folder, e.g. mlruns/optuna/journal.log; sqlite:///, postgresql://)",
    )
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run the workers on a Ray cluster: none (a local Ray for this launch), auto, or "
        "ray://HOST:10001; each asks for the spec's resources (default {cpus: 1, gpus: 0}); "
        "needs pip install 'latentseg[ray]'",
    )
    flags.tracking_uri(parser)
    flags.overrides(parser)
    flags.no_progress(parser, help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    from latentseg.study import run_study

    if args.n_trials is not None and args.n_trials < 1:
        raise LatentSegError(f"--n-trials must be >= 1, got {args.n_trials}")
    result = run_study(
        args.spec,
        n_trials=args.n_trials,
        workers=args.workers,
        storage=args.storage,
        tracking_uri=args.tracking_uri,
        overrides=args.overrides,
        progress=not args.no_progress,
        judge=report_judge,
        ray=args.ray,
    )
    print_outcome(result)
    summary = result.summary
    if summary.get("n_complete"):
        print_grid_verdicts(result)
    if not summary.get("n_complete") and summary.get("n_fail"):
        print(
            "error: no trial completed; see the failed trial runs' latentseg.error tags",
            file=sys.stderr,
        )
        return 1
    return 0


def report_judge(loaded, tracking_uri: str, round_: int):
    """The judge the command line hands a study with adaptive seeds: the ablation report's
    (:func:`latentseg.report.adaptive.judge`), loaded at the first round's end, so that a
    study without adaptive seeds never imports the report's statistics."""
    from latentseg.report.adaptive import judge

    return judge(loaded, tracking_uri, round_)


def print_outcome(result) -> None:
    """What this launch did: its trials by state, the best one, where the runs are."""
    from latentseg.tracking.store import ui_hint

    summary = result.summary
    if not result.workers_started:
        print(
            f"nothing left to run: study '{result.study_name}' had no trial queued "
            "(run more with --n-trials, or change the spec's name for a new study)"
        )
    counts = ", ".join(
        f"{summary.get(f'n_{k}', 0)} {k}" for k in ("complete", "pruned", "fail", "waiting")
    )
    print(
        f"study '{result.study_name}': {summary.get('trials', 0)} trials ({counts}) in {result.wall_time_s:.0f}s"
    )
    if "best_value" in summary:
        print(
            f"best {summary['best_value']:.4f} (trial {summary['best_trial']}): {summary['best_params']}"
        )
    if "front" in summary:  # several objectives: the trials no other beats in all of them
        print(
            f"front by seed means ({', '.join(summary['objectives'])}): {len(summary['front'])} "
            "trial(s); the report decides membership with the seeds' noise"
        )
        for point in summary["front"]:
            values = ", ".join(f"{k} {v:.4g}" for k, v in point["values"].items())
            print(f"  trial {point['trial']}: {values}: {point['params']}")
    print(
        f"MLflow parent run {result.parent_run_id} (experiment {result.experiment_id}, store {result.tracking_uri}); Optuna storage {result.storage}"
    )
    print(ui_hint(result.tracking_uri, result.experiment_id))  # the study's runs table


def print_grid_verdicts(result) -> None:
    """An ablation grid ends with its verdicts and what deciding the open ones would take,
    then its Pareto front; a search of several objectives with its front."""
    from latentseg.report import ablation_report
    from latentseg.report.cells import front_lines
    from latentseg.report.labels import baseline_label
    from latentseg.report.writers import verdict_lines
    from latentseg.tracking import TrackingStore

    parent = TrackingStore.open(result.tracking_uri, create=False).run(result.parent_run_id)
    params = parent.data.params if parent else {}
    grid = params.get("study.sampler.name") == "grid"
    if not grid and "front" not in result.summary:
        return  # a search of one objective: its answer is the best trial, printed above
    try:
        report = ablation_report(
            study=result.study_name, tracking_uri=result.tracking_uri, figures=False
        )
    except LatentSegError as exc:
        print(f"no verdicts yet: {exc}")
        return
    if grid:
        print("verdicts against the baseline (" + baseline_label(report.baseline) + "):")
        print("\n".join(verdict_lines(report)))
    print("\n".join(front_lines(report)))
    print(f"the whole report: latentseg report --study {result.study_name}")
