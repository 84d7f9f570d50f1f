"""The wording of a validation error of any strict model (an experiment config, a model
variant's spec, a dataset's options): one line per problem, naming the file, the line and the
key, with the closest allowed key for a misspelt one. Imports nothing of latentseg's configs."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence

from pydantic import BaseModel, ValidationError


def _model_at(root: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at ``loc`` (for 'did you mean')."""
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return model
        annotation = model.model_fields[part].annotation
        model = (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else None
        )
    return model


def format_validation_error(
    exc: ValidationError,
    root: type[BaseModel],
    source: str,
    lines: Mapping[tuple[str, ...], int] | None = None,
    prefix: Sequence[str] = (),
    cite: Callable[[str, str | None], str] | None = None,
) -> str:
    """One line per problem: ``file:line: key: what is wrong; did you mean ...``. ``cite``
    (a config's :meth:`~latentseg.loading.Provenance.cite`) names where each key that a
    check across keys mentions came from."""
    messages = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        full = (*prefix, *loc)
        dotted = ".".join(full) or "<top level>"
        line = (lines or {}).get(tuple(full))
        where = line if isinstance(line, str) else f"{source}:{line}" if line else source
        if err["type"] == "extra_forbidden":
            owner = _model_at(root, err["loc"][:-1])
            allowed = sorted(owner.model_fields) if owner else []
            close = difflib.get_close_matches(loc[-1], allowed, n=1, cutoff=0.6)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            messages.append(
                f"{where}: unknown key '{dotted}'.{hint} Allowed here: {', '.join(allowed)}."
            )
        else:
            msg = err["msg"].removeprefix("Value error, ")
            shown = repr(err.get("input"))
            whole = not loc  # a check across keys: the input is the whole section
            got = (
                ""
                if whole or err["type"] in {"missing"} or f"got {err.get('input')}" in msg
                else f" (got {shown})"
            )
            cited = ""
            if cite and err["type"] == "value_error" and len(full) <= 1:  # across keys
                cited = cite(msg, full[0] if full else None)
            messages.append(
                f"{where}: {msg}{cited}"
                if where == dotted
                else f"{where}: {dotted}: {msg}{got}{cited}"
            )
    return "\n".join(messages)
