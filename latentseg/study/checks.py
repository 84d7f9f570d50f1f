"""What a launch checks before it continues a study: the same spec and base experiment as
the study's first launch (its fingerprint), and the same tracking store (where the study's
trials name their runs). A launch that fails a check is refused (exit 2) before it runs
anything."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import optuna

from latentseg.errors import ConfigError
from latentseg.study.spec import LoadedStudy, redact
from latentseg.tracking.store import TrackingStore

FINGERPRINT_ATTR = "latentseg.fingerprint"
TRACKING_STORE_ATTR = "latentseg.tracking_store"


def fingerprint(loaded: LoadedStudy) -> str:
    """What a resumed launch must agree on: the spec (but its budget) and the base config."""
    spec = loaded.spec.model_dump(
        mode="json", exclude={"n_trials", "timeout", "storage", "name", "report", "resources"}
    )
    base = loaded.base.config_hash(include_seed=True)
    return hashlib.sha256(json.dumps([spec, base], sort_keys=True).encode()).hexdigest()[:16]


def check_fingerprint(study: optuna.Study, loaded: LoadedStudy, spec_path: str) -> None:
    """Record the spec's fingerprint at the study's first launch; refuse a later launch
    whose spec or base experiment differs."""
    current = fingerprint(loaded)
    stored = study.user_attrs.get(FINGERPRINT_ATTR)
    if stored is None:
        study.set_user_attr(FINGERPRINT_ATTR, current)
    elif stored != current:
        raise ConfigError(
            f"{spec_path}: study '{loaded.name}' was started with a different spec or base experiment; "
            "resuming would mix configurations. Give the study a new `name`, or restore the original spec "
            "(only n_trials, timeout and storage may change between launches). A study started "
            "before 2026-12-07 drew its initial weights from one stream: resume it with "
            "--set train.init=global."
        )


def store_id(uri: str) -> str:
    """The tracking store as one string: a SQLite path made absolute."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    return uri.rstrip("/")


def check_store(
    study: optuna.Study, loaded: LoadedStudy, store: TrackingStore, spec_path: str,
    storage_url: str | None,
) -> None:  # fmt: skip
    """A study's trials name MLflow runs in one tracking store: a launch against another store
    would find its work done and summarise runs that store lacks. The study records its store
    at its first launch; a launch with another is refused (exit 2), naming both. A study from
    before that record is checked by its trials' run ids."""
    here = store_id(store.uri)
    stored = study.user_attrs.get(TRACKING_STORE_ATTR)
    if stored is None:
        ids = [
            t.user_attrs["mlflow_run_id"] for t in study.trials if "mlflow_run_id" in t.user_attrs
        ]
        if all(store.run(run_id) is not None for run_id in ids[:3]):
            study.set_user_attr(TRACKING_STORE_ATTR, here)
            return
        stored = "another tracking store"
    if stored != here:
        where = redact(storage_url)
        raise ConfigError(
            f"{spec_path}: study '{loaded.name}' (in {where}) has its runs in {stored}, not in "
            f"{redact(here)}: relaunch with --tracking-uri {stored}, or keep this store and give "
            "the study a new `name` (or another --storage)"
        )
