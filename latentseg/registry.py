"""One generic registry for named builders (models, datasets), with entry-point plugins.

Builders are registered under their function name (underscores become hyphens) or an
explicit name; registering a name twice raises; an unknown name raises with close matches.
"""

from __future__ import annotations

import difflib
import fnmatch
import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from latentseg.errors import RegistryError

T = TypeVar("T", bound=Callable)


def _where(builder: Callable) -> str:
    """``module.qualname`` of a builder, for error messages that must name its module."""
    name = getattr(builder, "__qualname__", None) or type(builder).__name__
    return f"{getattr(builder, '__module__', None) or '?'}.{name}"


class RenamedWarning(FutureWarning):
    """A registry name that was renamed: it still resolves; the CLI shows this as a note."""


class Registry(Generic[T]):
    """Named builders of one kind, e.g. ``Registry("model", "latentseg.models")``."""

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        self._renamed: dict[str, str] = {}  # an old name -> the name it goes by now
        self._plugins_loaded = entry_point_group is None

    def register(self, fn: T | None = None, *, name: str | None = None, origin: str = "built-in"):
        """Register ``fn`` (usable as ``@register`` or ``@register(name="x")``)."""

        def add(builder: T) -> T:
            key = name or builder.__name__.replace("_", "-")
            if key in self._entries:
                raise RegistryError(
                    f"A {self.kind} is already registered under the name '{key}' "
                    f"({self._origins[key]}: {_where(self._entries[key])}); cannot register "
                    f"{_where(builder)} under it again from {origin}."
                )
            self._entries[key] = builder
            self._origins[key] = origin
            return builder

        return add(fn) if fn is not None else add

    def unregister(self, name: str) -> None:
        """Remove an entry (for tests and interactive use)."""
        self._entries.pop(name, None)
        self._origins.pop(name, None)

    def rename(self, old: str, new: str) -> None:
        """Let ``old`` keep resolving to ``new`` (with a note) after an entry was renamed."""
        self._renamed[old] = new

    def canonical(self, name: str) -> str:
        """The name ``name`` goes by now: itself, or, for a renamed entry, its new name (with a
        :class:`RenamedWarning` saying so)."""
        new = self._renamed.get(name)
        if new is None:
            return name
        warnings.warn(
            f"the {self.kind} '{name}' is now called '{new}'; the old name still works",
            RenamedWarning,
            stacklevel=3,
        )
        return new

    def get(self, name: str) -> T:
        """Return the builder named ``name`` (or the one it was renamed to); an unknown name
        raises with close matches."""
        self._load_plugins()
        try:
            return self._entries[self._renamed.get(name, name)]
        except KeyError:
            raise RegistryError(self._unknown_message(name)) from None

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names matching an fnmatch ``pattern`` such as ``'latents-*'``."""
        self._load_plugins()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def origin(self, name: str) -> str:
        self.get(name)
        return self._origins[name]

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries or name in self._renamed

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _unknown_message(self, name: str) -> str:
        known = sorted(self._entries)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"Unknown {self.kind} '{name}'.{hint} Available: {', '.join(known)}."

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            origin = f"plugin '{ep.value}' ({ep.dist.name if ep.dist else 'unknown package'})"
            if ep.name in self._entries:
                raise RegistryError(
                    f"The {self.kind} {origin} uses the name '{ep.name}', which is already "
                    f"taken by {self._origins[ep.name]} ({_where(self._entries[ep.name])}); "
                    "rename the entry point."
                )
            try:
                builder = ep.load()
            except Exception as exc:  # a broken plugin must not hide the others
                warnings.warn(
                    f"Skipping {self.kind} plugin '{ep.name}' = {ep.value}: {type(exc).__name__}: {exc}",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            self.register(builder, name=ep.name, origin=origin)
