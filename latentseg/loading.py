"""Loading an experiment config: the YAML file, its ``--set`` overrides, and where each value
came from (:class:`Provenance`), so that an error names the file and line or the flag of
every key it involves. The schema itself is :mod:`latentseg.config`."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from latentseg.config import SECTIONS, ExperimentConfig
from latentseg.errors import ConfigError
from latentseg.validation import format_validation_error
from latentseg.yamlio import key_lines, parse_override, read_yaml_mapping, set_dotted


@dataclass(frozen=True)
class Provenance:
    """Where each value of a config came from: ``lines`` maps a key path to its line in
    ``source`` or to the ``--set`` flag that set it. Errors that involve several keys name
    each key with its origin (``cite``), never the flags that had nothing to do with them."""

    source: str = "<config>"
    lines: Mapping[tuple[str, ...], int | str] = field(default_factory=dict)

    def origin(self, key: str) -> str:
        """``file:line``, ``--set key=value``, or where an unset key's value comes from."""
        where = self.lines.get(tuple(key.split(".")))
        if isinstance(where, str):
            return where
        if where:
            return f"{self.source}:{where}"
        return "the variant's default" if key.startswith("model.") else "the default"

    def cite(self, message: str, section: str | None = None) -> str:
        """`` (key from origin; ...)`` for every config key ``message`` names: dotted keys
        (``data.batch_size``), and within ``section`` its bare field names (``num_heads``)."""
        keys = [m.group(0).rstrip(".") for m in _DOTTED.finditer(message)]
        if section in SECTIONS:
            names = "|".join(sorted(SECTIONS[section].model_fields, key=len, reverse=True))
            pattern = rf"(?<![\w.])({names})(?![\w.])" if names else None
            if pattern:
                keys += [f"{section}.{m.group(1)}" for m in re.finditer(pattern, message)]
        keys = list(dict.fromkeys(k for k in keys if k.split(".")[0] in SECTIONS))
        if not keys:
            return ""
        return " (" + "; ".join(f"{k} from {self.origin(k)}" for k in keys) + ")"

    def error(self, message: str, section: str | None = None) -> str:
        """``source: message (key from origin; ...)``."""
        return f"{self.source}: {message}{self.cite(message, section)}"


_DOTTED = re.compile(r"(?<![\w.])(?:model|data|optim|train|tracking)\.[A-Za-z_][\w.]*")


def validate_experiment(
    data: Mapping[str, Any], source: str, lines: Mapping[tuple[str, ...], int] | None = None
) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        cite = Provenance(source, lines).cite if lines else None
        raise ConfigError(
            format_validation_error(exc, ExperimentConfig, source, lines, cite=cite)
        ) from None


def load_experiment_sourced(
    path: str | Path, overrides: Iterable[str] = ()
) -> tuple[ExperimentConfig, Provenance]:
    """``load_experiment``, with where each value came from (file and line, or flag)."""
    data, text = read_yaml_mapping(path, what="experiment config")
    lines: dict[tuple[str, ...], int | str] = dict(key_lines(text))
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(data, key, value, source=f"--set {item!r}")
        lines[tuple(key.split("."))] = f"--set {item}"  # an error there blames the flag
    return validate_experiment(data, str(path), lines), Provenance(str(path), lines)


def load_experiment(path: str | Path, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Load an experiment YAML and apply ``--set`` overrides (``'model.num_latents=8'``)."""
    return load_experiment_sourced(path, overrides)[0]


def apply_overrides(config: ExperimentConfig, overrides: Iterable[str]) -> ExperimentConfig:
    """Apply ``--set`` overrides to an already loaded config."""
    return config.with_updates(dict(parse_override(item) for item in overrides))
