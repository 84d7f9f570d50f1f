"""The studies of ``latentseg noise``: one configuration (or a variant against it), each
source of training noise varied alone (:mod:`latentseg.report.sources` measures them).

Per source, one grid study named ``<name>-<source>`` over the compared key (the baseline's
value and the variant's; a single configuration: its variant alone):

- ``weights``: ``seeds`` levels of ``train.seed`` with ``train.order_seed`` pinned to the
  reference seed, so only the initial weights change;
- ``order``: the same with ``train.init_seed`` pinned, so only the data order and
  augmentation change;
- ``data``: ``data.seed`` over the levels (a grid axis), the training seed at the reference;
- ``all``: ``seeds`` levels of ``train.seed``, nothing pinned (what a study's seeds vary).

Running the same command again resumes every study (the specs are written to the output
folder and do not change).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from latentseg.config import ExperimentConfig, flatten, parse_override
from latentseg.errors import ConfigError
from latentseg.loading import load_experiment_sourced

SOURCE_NAMES = ("weights", "order", "data", "all")
MAX_LEVELS = 100


@dataclass(frozen=True)
class NoiseDesign:
    """What ``latentseg noise`` runs: the studies' specs by source, and how to read them."""

    name: str
    specs: dict[str, Path]  # source -> spec file
    axis: str  # the grid's key: the compared key, or model.variant for one configuration
    baseline: Any  # the axis' value of the configuration measured
    variant: Any | None  # the compared value; None: the configuration's own score
    levels: int


def parse_sources(text: str) -> list[str]:
    sources = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in sources if s not in SOURCE_NAMES]
    if unknown or not sources:
        raise ConfigError(
            f"--sources {text!r}: {', '.join(unknown) or 'none given'} is not a source; "
            f"choose from {', '.join(SOURCE_NAMES)}"
        )
    return list(dict.fromkeys(sources))


def _dotted(config: ExperimentConfig, key: str) -> Any:
    values = flatten(config.model_dump(mode="json"))
    if key not in values:
        raise ConfigError(f"--versus {key}: not a config key (e.g. model.num_latents)")
    return values[key]


def check_sources(config: ExperimentConfig, sources: list[str]) -> None:
    """Refuse, with one line, a source this config or dataset cannot vary."""
    train = config.train
    for key, pinned in (("init_seed", train.init_seed), ("order_seed", train.order_seed)):
        if pinned is not None:
            raise ConfigError(
                f"train.{key} is pinned ({pinned}): latentseg noise sets it per source "
                "(it pins one seed to vary the other); leave it unset"
            )
    if "data" in sources and not _data_seed_matters(config):
        raise ConfigError(
            f"data.seed changes nothing in dataset '{config.data.dataset}' (its samples and "
            "splits are fixed): the data sample cannot vary; leave data out of --sources"
        )


def _data_seed_matters(config: ExperimentConfig) -> bool:
    """Whether two data seeds give the dataset other samples (its first train and test ones)."""
    import torch

    from latentseg.train.resolve import prepare

    batches = []
    for seed in (config.data.seed, config.data.seed + 1):
        dataset = prepare(config.with_updates({"data.seed": seed})).dataset
        batches.append([dataset.split(s).get_batch([0]) for s in ("train", "test")])
    return any(
        not torch.equal(a, b)
        for first, second in zip(*batches, strict=True)
        for a, b in zip(first, second, strict=True)
    )


def noise_design(
    experiment: str | Path,
    overrides: list[str],
    versus: str | None,
    sources: list[str],
    levels: int,
    name: str | None,
    folder: Path,
) -> NoiseDesign:
    """Validate the request and write one study spec per source into ``folder``."""
    if not 2 <= levels <= MAX_LEVELS:
        raise ConfigError(f"--levels must be between 2 and {MAX_LEVELS}, got {levels}")
    from latentseg.config import inert_keys
    from latentseg.train.resolve import prepare

    path = Path(experiment)
    config, origin = load_experiment_sourced(path, overrides)
    # the values runs log (defaults and sizes resolved); a bad value names its file or flag
    resolved = prepare(config, origin).config
    check_sources(config, sources)
    if versus is not None:
        axis, value = parse_override(versus, flag="--versus", example="model.num_latents=8")
        if axis.startswith(("tracking.", "train.", "data.seed", "data.dataset", "data.test_size")):
            raise ConfigError(
                f"--versus {versus}: {axis} is not a variant of the model or its recipe that "
                "pairs on the same test images (compare model.* keys, optim.*, data.train_size...)"
            )
        _dotted(config, axis)  # names an unknown key
        baseline = _dotted(resolved, axis)
        other = prepare(config.with_updates({axis: value})).config  # a bad value fails here
        variant = _dotted(other, axis)
        if variant == baseline:
            raise ConfigError(f"--versus {versus}: the configuration already has {axis}={baseline}")
        key = axis.removeprefix("model.")
        if axis.startswith("model.") and key in inert_keys(other.model.model_dump()):
            raise ConfigError(
                f"--versus {versus}: {key} changes nothing in this model (e.g. latents without "
                "expert attention): the two sides would be one model"
            )
    else:
        axis, baseline, variant = "model.variant", resolved.model.variant, None
    name = name or f"{path.stem}-noise"
    sets = dict(parse_override(item) for item in overrides)
    reference = config.train.seed
    folder.mkdir(parents=True, exist_ok=True)
    specs = {}
    for source in sources:
        space: dict[str, list] = {axis: [baseline] if variant is None else [baseline, variant]}
        pinned: dict[str, Any] = {}
        seeds: int | list[int] = levels
        if source == "weights":
            pinned["train.order_seed"] = reference
        elif source == "order":
            pinned["train.init_seed"] = reference
        elif source == "data":
            space["data.seed"] = [config.data.seed + i for i in range(levels)]
            seeds = [reference]
        spec = {
            "name": f"{name}-{source}",
            "experiment": str(path.resolve()),
            "overrides": {**sets, **pinned},
            "mlflow_experiment": name,  # every source's runs in one MLflow experiment
            "search_space": space,
            "sampler": {"name": "grid"},
            "seeds": seeds,
        }
        specs[source] = folder / f"{source}.yaml"
        specs[source].write_text(yaml.safe_dump(spec, sort_keys=False))
    return NoiseDesign(name, specs, axis, baseline, variant, levels)
