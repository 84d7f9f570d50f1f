"""The ``latentseg`` command. Thin: parses arguments, calls the library, and maps errors to
exit codes in one place (bad input: 2; interrupted: 130)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latentseg.errors import ConfigError, LatentSegError

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optim.lr=3e-4 (repeatable)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _image_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 8 or value % 4 or value > 4096:
        raise argparse.ArgumentTypeError(f"must be a multiple of 4 between 8 and 4096, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentseg",
        description="Ablations of latent-attention segmentation models, tracked in MLflow.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train",
        help="train one experiment config, tracked in MLflow",
        description="Train one experiment YAML; logs params, metrics, checkpoints, attention plots and the model to MLflow.",
    )
    p.add_argument("config", help="experiment YAML, e.g. experiments/shapes.yaml")
    _add_set(p)
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default: the config's, $MLFLOW_TRACKING_URI, or sqlite:///mlruns/mlflow.db)",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue this MLflow run from its last checkpoint (or give a last.ckpt path)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar or per-epoch lines")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "study",
        help="run or resume an Optuna study (search or ablation grid), tracked in MLflow",
        description="Run a study spec: every trial is a child MLflow run of one parent run per launch, "
        "trained with each of the spec's seeds (a nested run per seed). Running the same command again resumes it.",
    )
    p.add_argument("spec", help="study YAML, e.g. studies/quick.yaml")
    p.add_argument(
        "--n-trials", type=int, help="total trials (default: the spec's; a grid: its size)"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes on this machine (torch threads are split between them)",
    )
    p.add_argument(
        "--storage",
        help="Optuna storage URL (default: the journal in the tracking store's optuna/ folder, e.g. mlruns/optuna/journal.log; sqlite:///, postgresql://)",
    )
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default as for train)")
    _add_set(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser(
        "report",
        help="verdicts for the variants of a study or experiment: better, worse, equivalent or inconclusive",
        description="Group finished runs by the params that vary, pair each variant with a baseline by seed, and "
        "give each variant and each axis's main effect a verdict (better, worse, equivalent, inconclusive) with "
        "the family-wise error controlled over all of them (Holm by default). The metric is the test split at "
        "each run's best-validation checkpoint. Writes report.md, report.html and summary.csv (plus "
        "effects.csv, interactions.csv); for a study also logs them to its latest parent run.",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", help="study name (its seed runs)")
    which.add_argument("--experiment", help="MLflow experiment name (its training runs)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default as for train)")
    p.add_argument("-o", "--output", help="output folder (default reports/<name>/)")
    p.add_argument(
        "--metric",
        default="miou",
        help="metric to compare (default miou: test_miou, the test split at each run's best-validation checkpoint)",
    )
    p.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="baseline variant, one value per axis (default: the tutorial's configuration, else the "
        "variant closest to it; never chosen by its score)",
    )
    p.add_argument(
        "--sesoi",
        type=float,
        help="smallest effect of interest: a difference within +-SESOI is 'equivalent' "
        "(default: the study spec's report.sesoi, else 0.01 for metrics in [0, 1])",
    )
    p.add_argument(
        "--alpha", type=float, help="family-wise error rate (default: the spec's, else 0.05)"
    )
    p.add_argument(
        "--correction",
        choices=["holm", "bonferroni", "bh"],
        help="multiple-comparison control: holm (default), bonferroni, or bh (false discovery "
        "rate, for exploratory sweeps)",
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "models",
        help="list registered model variants with params and FLOPs",
        description="List model variants: name, parameters, forward FLOPs per image, and the axes that differ from 'tutorial'.",
    )
    p.add_argument("pattern", nargs="?", default="*", help="wildcard pattern, e.g. 'latents-*'")
    p.add_argument(
        "--image-size",
        type=_image_size,
        default=128,
        help="image side for the FLOP count (default 128, the tutorial's)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser(
        "datasets",
        help="list datasets, or check one",
        usage="latentseg datasets [PATTERN] [--json]\n"
        "       latentseg datasets check PATH_OR_NAME [--param KEY=VALUE ...] [--max-samples N] [--json]",
        description="List datasets (name, classes, channels, default image size, origin), or "
        "check one: a folder (images/ + masks/), an experiment YAML's data section, or a "
        "dataset name. The check reports missing or extra files, size mismatches, labels "
        "outside the classes, unreadable files and the class histogram; exit 2 on any problem.",
    )
    p.add_argument(
        "words",
        nargs="*",
        metavar="PATTERN | check PATH_OR_NAME",
        help="wildcard pattern (default *)",
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a dataset parameter for check, e.g. --param image_size=64 (repeatable)",
    )
    p.add_argument(
        "--max-samples",
        type=_positive_int,
        default=None,
        help="check: read at most N samples per split of a named dataset (default: all)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser(
        "bench",
        help="speed and memory of the fast path vs the tutorial's reference, and overheads",
        description="For each variant: params, FLOPs, training and inference images/s and "
        "activation memory of latentseg's fast path and of the tutorial's reference "
        "implementation of the same model, alternated in one run (medians and ratios), and "
        "the share of the machine's matmul speed reached; then data loading vs a training "
        "step, tracking overhead, study overhead per trial and report time.",
    )
    p.add_argument(
        "--variants",
        default="tutorial",
        metavar="PATTERN",
        help="variant pattern (default tutorial, the tutorial's model)",
    )
    p.add_argument("--batch-size", type=_positive_int, default=32, help="batch size (default 32)")
    p.add_argument("--image-size", type=_image_size, default=128, help="image side (default 128)")
    p.add_argument(
        "--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's)"
    )
    p.add_argument(
        "--windows", type=_positive_int, default=5, help="timed windows per contender (default 5)"
    )
    p.add_argument("--steps", type=_positive_int, default=5, help="steps per window (default 5)")
    p.add_argument(
        "--only",
        default="models,data,tracking,study,report,bf16",
        help="comma-separated sections: models,data,tracking,study,report,bf16 (default all)",
    )
    p.add_argument(
        "--report-runs",
        type=_positive_int,
        action="append",
        default=None,
        help="run counts for the report section (repeatable; default 1000)",
    )
    p.add_argument("--json", metavar="FILE", default=None, help="also write the results as JSON")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "ui",
        help="start the MLflow UI on the project's store",
        description="Start a lean MLflow UI (one worker) on 127.0.0.1 for the project's tracking store and print its URL.",
    )
    p.add_argument(
        "--tracking-uri",
        help="backend store (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser(
        "server",
        help="start an MLflow tracking server for a team",
        description="Start an MLflow tracking server that serves artifacts, for studies run on "
        "several machines (`latentseg study ... --tracking-uri http://HOST:PORT`). Bound to "
        "127.0.0.1 unless --host says otherwise. A PostgreSQL password is handed to the server "
        "in its environment (PGPASSWORD), never on its command line or in what it prints.",
    )
    p.add_argument(
        "--backend-store-uri",
        default=None,
        help="where runs are kept, e.g. postgresql://mlflow:PASSWORD@db-host/mlflow "
        "(default: the project's sqlite:///mlruns/mlflow.db)",
    )
    p.add_argument(
        "--artifacts-destination",
        default=None,
        help="where the server stores artifacts: a local folder or s3://..., gs://... "
        "(default: mlruns/artifacts)",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000, help="port (default 5000)")
    p.add_argument(
        "--allowed-hosts",
        default=None,
        help="comma-separated Host headers to accept, e.g. mlflow.lab.example:5000 (needed when "
        "binding beyond localhost)",
    )
    p.add_argument("--workers", type=_positive_int, default=2, help="web workers (default 2)")
    p.set_defaults(func=cmd_server)
    return parser


def _version() -> str:
    from latentseg import __version__

    return __version__


# --------------------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> int:
    from latentseg.tracking import run_experiment

    result = run_experiment(
        args.config,
        overrides=args.overrides,
        tracking_uri=args.tracking_uri,
        resume=args.resume,
        progress=not args.no_progress,
    )
    summary = result.summary
    if args.no_progress:  # otherwise the progress callback has printed it
        print(
            f"best val_miou {summary.get('best_val_miou', float('nan')):.4f} (epoch {int(summary.get('best_epoch', 0))}), test_miou {summary.get('test_miou', float('nan')):.4f}"
        )
    if result.run_id is None:
        print(f"tracking off; checkpoints in {result.checkpoint_dir}")
        return 0
    print(
        f"MLflow run {result.run_id} {result.status} (experiment {result.experiment_id}, store {result.tracking_uri})"
    )
    from latentseg.tracking.store import ui_hint

    print(ui_hint(result.tracking_uri, result.experiment_id, result.run_id))
    return 0


def cmd_study(args: argparse.Namespace) -> int:
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
    )
    s = result.summary
    if not result.workers_started:
        print(
            f"nothing left to run: study '{result.study_name}' had no trial queued "
            "(run more with --n-trials, or change the spec's name for a new study)"
        )
    counts = ", ".join(
        f"{s.get(f'n_{k}', 0)} {k}" for k in ("complete", "pruned", "fail", "waiting")
    )
    print(
        f"study '{result.study_name}': {s.get('trials', 0)} trials ({counts}) in {result.wall_time_s:.0f}s"
    )
    if "best_value" in s:
        print(f"best {s['best_value']:.4f} (trial {s['best_trial']}): {s['best_params']}")
    print(
        f"MLflow parent run {result.parent_run_id} (experiment {result.experiment_id}, store {result.tracking_uri}); Optuna storage {result.storage}"
    )
    from latentseg.tracking.store import ui_hint

    print(ui_hint(result.tracking_uri, result.experiment_id))  # the study's runs table
    if s.get("n_complete"):
        _study_verdicts(result)
    if not s.get("n_complete") and s.get("n_fail"):
        print(
            "error: no trial completed; see the failed trial runs' latentseg.error tags",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from latentseg.config import parse_override
    from latentseg.report import ablation_report
    from latentseg.report.render import verdict_lines
    from latentseg.tracking.store import connect

    name = args.study or args.experiment
    report = ablation_report(
        study=args.study,
        experiment=args.experiment,
        tracking_uri=args.tracking_uri,
        metric=args.metric,
        baseline=dict(parse_override(item) for item in args.baseline) if args.baseline else None,
        sesoi=args.sesoi,
        alpha=args.alpha,
        correction=args.correction,
        output=args.output or Path("reports") / name,
    )
    if report.parent_run_id is not None:
        from mlflow.exceptions import MlflowException

        client = connect(report.tracking_uri, create=False)
        try:
            for path in report.paths:
                client.log_artifact(report.parent_run_id, str(path), "report")
        except (OSError, MlflowException) as exc:  # a read-only store: the report still stands
            reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
            print(
                f"note: the report is not attached to the study's parent run: the store "
                f"{report.tracking_uri} cannot be written ({reason})"
            )
    print(report.notes[0])  # the runs left out
    print(
        f"baseline: {_plain(report.baseline)} ({report.baseline_reason}); {len(report.summary)} variants"
    )
    print("\n".join(verdict_lines(report)))
    print(f"report: {report.paths[0]}  {report.paths[2]}  summary: {report.paths[1]}")
    return 0


def _study_verdicts(result) -> None:
    """An ablation grid ends with its verdicts and what deciding the open ones would take."""
    from latentseg.report import ablation_report
    from latentseg.report.render import verdict_lines
    from latentseg.tracking.store import connect

    parent = connect(result.tracking_uri, create=False).get_run(result.parent_run_id)
    if parent.data.params.get("study.sampler.name") != "grid":
        return  # a search: its answer is the best trial, printed above
    try:
        report = ablation_report(
            study=result.study_name, tracking_uri=result.tracking_uri, figures=False
        )
    except LatentSegError as exc:
        print(f"no verdicts yet: {exc}")
        return
    print("verdicts against the baseline (" + _plain(report.baseline) + "):")
    print("\n".join(verdict_lines(report)))
    print(f"the whole report: latentseg report --study {result.study_name}")


def _plain(values: dict) -> str:
    return ", ".join(f"{k} = {v}" for k, v in values.items()) or "all runs"


def _axes(config, reference) -> str:
    changed = [
        f"{k}={v}"
        for k, v in config.model_dump().items()
        if v != getattr(reference, k) and k not in {"num_classes", "in_channels"}
    ]
    return ", ".join(changed) or "(tutorial)"


def cmd_models(args: argparse.Namespace) -> int:
    from latentseg.config import ModelConfig
    from latentseg.models import count_flops, count_params, create_model, kv_costs, list_models

    names = list_models(args.pattern)
    if not names:
        raise LatentSegError(
            f"no model variant matches {args.pattern!r}; `latentseg models` lists them all"
        )
    rows = []
    for name in names:
        model = create_model(name)
        rows.append(
            {
                "name": name,
                "params": count_params(model),
                "flops_per_image": count_flops(model.config, (args.image_size, args.image_size)),
                **kv_costs(model, (args.image_size, args.image_size)),
                "axes": _axes(model.config, ModelConfig()),
                "config": model.config.model_dump(mode="json"),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'variant':<16} {'params':>9} {'GFLOP/img':>9} {'KV params':>9} {'KV elems':>9}  axes (vs tutorial; per image at {args.image_size}x{args.image_size})"
    )
    for row in rows:
        print(
            f"{row['name']:<16} {row['params']:>9,} {row['flops_per_image'] / 1e9:>9.3f} "
            f"{row['kv_params']:>9,} {row['kv_activations']:>9,}  {row['axes']}"
        )
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    if args.words[:1] == ["check"]:
        if len(args.words) != 2:
            raise ConfigError("usage: latentseg datasets check PATH_OR_NAME (one target)")
        return cmd_datasets_check(args, args.words[1])
    if len(args.words) > 1:
        raise ConfigError(
            f"datasets: expected one PATTERN or 'check PATH_OR_NAME', got {' '.join(args.words)!r}"
        )
    if args.param or args.max_samples:
        raise ConfigError("--param and --max-samples apply to 'latentseg datasets check'")
    return cmd_datasets_list(args, args.words[0] if args.words else "*")


def _first_sentence(doc: str | None, limit: int = 90) -> str:
    text = " ".join((doc or "").strip().split("\n\n")[0].split()).replace("``", "")
    sentence = text.split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= limit else sentence[: limit - 3].rstrip() + "..."


def cmd_datasets_list(args: argparse.Namespace, pattern: str) -> int:
    import warnings

    from latentseg.data import DATASETS, create_dataset, list_datasets

    rows = []
    with warnings.catch_warnings(record=True) as caught:  # broken plugins: shown below the table
        warnings.simplefilter("always")
        names = list_datasets(pattern)
    for name in names:
        builder = DATASETS.get(name)
        row: dict[str, Any] = {
            "name": name,
            "origin": DATASETS.origin(name),
            "description": _first_sentence(getattr(builder, "__doc__", None)),
        }
        params = getattr(builder, "Params", None)
        required = [k for k, f in params.model_fields.items() if f.is_required()] if params else []
        if required:
            row["needs"] = [f"data.params.{k}" for k in required]
        else:
            try:
                info = create_dataset(name, split_sizes={"train": 1, "val": 1, "test": 1}).info
            except Exception as exc:  # noqa: BLE001 - a plugin's failure must not hide the list
                row["error"] = f"{type(exc).__name__}: {exc}"
            else:
                row |= {
                    "classes": list(info.class_names),
                    "num_classes": info.num_classes,
                    "in_channels": info.in_channels,
                    "image_size": list(info.image_size),
                }
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'dataset':<12} {'classes':>7} {'ch':>3} {'size':>9}  {'origin':<10} about")
        for row in rows:
            if "num_classes" in row:
                shape = f"{row['num_classes']:>7} {row['in_channels']:>3} {'x'.join(map(str, row['image_size'])):>9}"
            else:
                shape = f"{'-':>7} {'-':>3} {'-':>9}"
            origin = "built-in" if row["origin"] == "built-in" else "plugin"
            about = row["description"]
            if "needs" in row:
                about += f" [needs {', '.join(row['needs'])}]"
            if "error" in row:
                about += f" [cannot open: {row['error']}]"
            print(f"{row['name']:<12} {shape}  {origin:<10} {about}")
            if origin == "plugin":
                print(f"{'':<12} {'':>7} {'':>3} {'':>9}  {'':<10} from {row['origin']}")
    for warning in caught:  # on stderr, also with --json: a broken plugin never vanishes silently
        print(f"warning: {warning.message}", file=sys.stderr)
    return 0


def cmd_datasets_check(args: argparse.Namespace, target: str) -> int:
    from latentseg.config import parse_override
    from latentseg.data.check import check_target

    params = {}
    for item in args.param:
        key, value = parse_override(item, "--param", "image_size=64")
        params[key] = value
    report = check_target(target, params, args.max_samples)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.render())
    return 0 if report.ok else 2


def cmd_bench(args: argparse.Namespace) -> int:
    from latentseg.bench import SECTIONS, run_bench
    from latentseg.io import atomic_write_bytes
    from latentseg.models import list_models

    sections = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise ConfigError(f"--only {args.only!r}: sections are {', '.join(SECTIONS)}")
    variants = list_models(args.variants)
    if "models" in sections and not variants:
        raise ConfigError(f"--variants {args.variants!r} matches no variant (see latentseg models)")
    if args.json:
        target = Path(args.json)
        if not target.parent.is_dir():
            raise ConfigError(f"--json {args.json}: directory {target.parent} does not exist")
    result = run_bench(
        variants,
        batch_size=args.batch_size,
        image_size=args.image_size,
        threads=args.threads,
        windows=args.windows,
        steps=args.steps,
        sections=sections,
        report_runs=tuple(args.report_runs or (1000,)),
    )
    if args.json:
        atomic_write_bytes(Path(args.json), json.dumps(result, indent=2).encode())
        print(f"wrote {args.json}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from latentseg.tracking.store import (
        MODEL_TRAINING_VIEW,
        artifact_root,
        require_store,
        resolve_tracking_uri,
    )

    uri = resolve_tracking_uri(args.tracking_uri)
    if uri.startswith(("http://", "https://")):
        raise LatentSegError(f"{uri} is already a tracking server: open it in a browser")
    mlflow_bin = _mlflow_bin()
    require_store(uri)
    command = [
        mlflow_bin,
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        "1",
    ]
    root = artifact_root(uri)
    if root:
        command += ["--default-artifact-root", root]
    print(
        f"MLflow UI for {uri} at http://{args.host}:{args.port}/#/experiments?{MODEL_TRAINING_VIEW}"
        "  (Ctrl-C to stop)",
        flush=True,
    )
    # Lean: the server replaces this process (no idle latentseg parent), one web worker, and
    # no background job runner (MLflow's GenAI job queue starts eight more processes).
    os.execve(mlflow_bin, command, {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    return 0  # not reached


def _mlflow_bin() -> str:
    mlflow_bin = shutil.which(
        "mlflow",
        path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    if mlflow_bin is None:
        raise LatentSegError("the mlflow command is not installed in this environment")
    return mlflow_bin


def server_command(args: argparse.Namespace) -> tuple[list[str], dict[str, str], list[str]]:
    """The ``mlflow server`` command line, its environment and warnings for ``args``; the
    backend URI on the command line carries no password (it goes to PGPASSWORD)."""
    from urllib.parse import urlsplit, urlunsplit

    from latentseg.tracking.store import DEFAULT_STATE_DIR, DEFAULT_TRACKING_URI

    backend = args.backend_store_uri or DEFAULT_TRACKING_URI
    if backend.startswith(("http://", "https://")):
        raise ConfigError(
            f"--backend-store-uri {backend}: that is a tracking server; give a database URI "
            "(postgresql://USER@HOST/DB or sqlite:///PATH)"
        )
    if not backend.startswith(("sqlite:///", "postgresql", "mysql", "mssql")):
        raise ConfigError(
            f"--backend-store-uri {backend!r}: expected postgresql://USER[:PASSWORD]@HOST/DB, "
            "mysql://..., or sqlite:///PATH"
        )
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    parts = urlsplit(backend)
    if backend.startswith("postgresql") and parts.password:
        env["PGPASSWORD"] = parts.password
        netloc = parts.netloc.rsplit("@", 1)
        user = netloc[0].split(":", 1)[0]
        backend = urlunsplit(parts._replace(netloc=f"{user}@{netloc[1]}"))
    if backend.startswith("sqlite:///"):
        Path(backend.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    artifacts = args.artifacts_destination or str((DEFAULT_STATE_DIR / "artifacts").resolve())
    if "://" not in artifacts:
        artifacts = str(Path(artifacts).resolve())
        Path(artifacts).mkdir(parents=True, exist_ok=True)
    command = [
        _mlflow_bin(),
        "server",
        "--backend-store-uri",
        backend,
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts,
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--workers",
        str(args.workers),
    ]
    warnings = []
    if args.allowed_hosts:
        command += ["--allowed-hosts", args.allowed_hosts]
    elif args.host not in ("127.0.0.1", "localhost", "::1"):
        warnings.append(
            f"listening on {args.host} without --allowed-hosts: MLflow then accepts requests "
            "addressed to localhost or a private IP address and refuses those addressed by host "
            f"name; name the hosts clients use, e.g. --allowed-hosts {socket_name()}:{args.port}"
        )
    return command, env, warnings


def socket_name() -> str:
    import socket

    return socket.getfqdn()


def cmd_server(args: argparse.Namespace) -> int:
    from latentseg.study.spec import redact

    command, env, warnings = server_command(args)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    where = f"http://{args.host}:{args.port}"
    print(
        f"MLflow tracking server at {where}: runs in {redact(args.backend_store_uri) or command[3]}, "
        f"artifacts in {command[6]} (served)\n"
        f"  workers on any machine: latentseg study SPEC --tracking-uri {where} --storage postgresql://...\n"
        "  Ctrl-C to stop",
        flush=True,
    )
    os.execve(command[0], command, env)
    return 0  # not reached


# --------------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The command line owns its process: tuned for training speed (huge pages, malloc), and
    # figures drawn off-screen. A library import changes none of it (latentseg.tune_process).
    import matplotlib

    import latentseg
    from latentseg.train import TrainingInterrupted

    latentseg.tune_process()
    matplotlib.use("Agg")
    # Pillow warns of images above 89 megapixels as it opens them; latentseg's own limit
    # (data.params.max_pixels) is checked on the same header and names the file instead.
    import warnings

    from PIL.Image import DecompressionBombWarning

    warnings.filterwarnings("ignore", category=DecompressionBombWarning)

    try:
        with warnings.catch_warnings():
            _show_renames_as_notes()
            return args.func(args)
    except LatentSegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except TrainingInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into `head`: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _show_renames_as_notes() -> None:
    """A renamed variant (``seed`` is ``tutorial`` now) is a one-line note, not a warning with
    a source line."""
    import warnings

    from latentseg.registry import RenamedWarning

    show = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, RenamedWarning):
            print(f"note: {message}", file=sys.stderr, flush=True)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = showwarning


if __name__ == "__main__":
    sys.exit(main())
