"""Reading and checking a ``folder`` dataset (see :mod:`latentseg.data.folder` for the
layout): every file is read, and every problem collected instead of stopping at the first,
with the class histogram. ``latentseg datasets check`` reports what :func:`scan_folder`
finds; the ``folder`` dataset refuses a folder with problems and keeps the fitted pairs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import AliasChoices, Field, ValidationError, model_validator

from latentseg.config import StrictModel, read_yaml_mapping
from latentseg.data.base import SPLITS
from latentseg.data.images import (
    DEFAULT_MAX_PIXELS,
    BadMask,
    FileProblem,
    Pair,
    PixelBudget,
    TooLarge,
    read_pair,
)
from latentseg.errors import DatasetError
from latentseg.validation import format_validation_error

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MASK_SUFFIXES = (".png",)
CLASSES_FILE = "classes.yaml"
SPLITS_FILE = "splits.yaml"
SHOWN = 5  # offending files named per kind of problem


class ClassesFile(StrictModel):
    """``classes.yaml``: the class names (index = position), optional colours, ignore index."""

    names: list[str] = Field(min_length=2, description="Class names; index 0 first.")
    colours: list[tuple[int, int, int]] | None = Field(
        None,
        validation_alias=AliasChoices("colours", "colors"),
        description="One [r, g, b] per class: reads RGB masks, colours plots.",
    )  # noqa: UP045
    ignore_index: int | None = Field(
        None, ge=0, le=65535, description="Mask value excluded from the loss and metrics."
    )  # noqa: UP045

    @model_validator(mode="after")
    def _check(self) -> ClassesFile:
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"names must be unique, got {self.names}")
        if self.colours is not None:
            if len(self.colours) != len(self.names):
                raise ValueError(
                    f"{len(self.colours)} colours for {len(self.names)} names: give one per class"
                )
            if any(not 0 <= c <= 255 for colour in self.colours for c in colour):
                raise ValueError("colour components must be in 0..255")
            if len(set(self.colours)) != len(self.colours):
                raise ValueError("colours must be unique: two classes cannot share a colour")
        if self.ignore_index is not None and self.ignore_index < len(self.names):
            raise ValueError(
                f"ignore_index {self.ignore_index} is a class index (0..{len(self.names) - 1})"
            )
        return self


class SplitsFile(StrictModel):
    train: list[str | int] = Field(min_length=1)
    val: list[str | int] = Field(min_length=1)
    test: list[str | int] = Field(min_length=1)


@dataclass
class Problem:
    kind: str  # e.g. "size mismatch"
    path: str  # relative to the root
    detail: str


@dataclass
class FolderScan:
    """What ``scan_folder`` found; ``problems`` empty means the folder is usable."""

    root: Path
    classes: ClassesFile | None
    ignore_index: int | None
    pairs: int = 0  # stems with both an image and a mask
    stems: list[str] = field(default_factory=list)  # paired, readable, problem-free, sorted
    problems: list[Problem] = field(default_factory=list)
    histogram: Counter = field(default_factory=Counter)  # label value -> pixels
    splits: dict[str, list[str]] | None = None  # from splits.yaml
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # stem -> native (h, w)
    grey: dict[str, bool] = field(default_factory=dict)
    samples: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        if self.classes is not None:
            return len(self.classes.names)
        labels = [v for v in self.histogram if v != self.ignore_index]
        return max(2, max(labels, default=0) + 1)

    @property
    def class_names(self) -> tuple[str, ...]:
        if self.classes is not None:
            return tuple(self.classes.names)
        return ("background", *(f"class{i}" for i in range(1, self.num_classes)))

    def summary(self, limit: int = SHOWN) -> str:
        return summarize_problems(self.problems, limit)


def summarize_problems(problems: Sequence[Problem], limit: int = SHOWN) -> str:
    """The problems grouped by kind, naming the first ``limit`` files of each."""
    by_kind: dict[str, list[Problem]] = {}
    for problem in problems:
        by_kind.setdefault(problem.kind, []).append(problem)
    lines = []
    for kind, group in by_kind.items():
        lines.append(f"{kind} ({len(group)}):")
        lines += [f"  {p.path}: {p.detail}" for p in group[:limit]]
        if len(group) > limit:
            lines.append(f"  ... and {len(group) - limit} more")
    return "\n".join(lines)


def _list(directory: Path, suffixes: Sequence[str], what: str, scan: FolderScan) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.name.startswith("."):
            continue
        rel = str(path.relative_to(scan.root))
        if path.is_dir():
            scan.problems.append(Problem("unexpected directory", rel, f"{what}/ holds files only"))
            continue
        if path.suffix.lower() not in suffixes:
            lossy = what == "masks" and path.suffix.lower() in (".jpg", ".jpeg")
            detail = (
                "masks must be PNG: JPEG's lossy compression changes label values"
                if lossy
                else f"not {' or '.join(s.lstrip('.').upper() for s in suffixes)}"
            )
            scan.problems.append(Problem("unsupported file", rel, detail))
            continue
        if path.stem in found:
            scan.problems.append(
                Problem("duplicate stem", rel, f"same stem as {found[path.stem].name}")
            )
            continue
        found[path.stem] = path
    return found


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, OSError) else str(exc)


def _file_problem(exc: FileProblem, root: Path) -> Problem:
    """The problem a failed ``read_pair`` names: which file, and why."""
    rel, cause = str(exc.path.relative_to(root)), exc.cause
    if isinstance(cause, BadMask):
        return Problem("bad mask", rel, str(cause))
    if isinstance(cause, (TooLarge, Image.DecompressionBombError)):
        return Problem("too large", rel, str(cause))
    return Problem("unreadable", rel, _reason(cause))


def read_classes(root: Path) -> ClassesFile | None:
    path = root / CLASSES_FILE
    if not path.exists():
        return None
    data, _ = read_yaml_mapping(path, what="classes")
    try:
        return ClassesFile.model_validate(data)
    except ValidationError as exc:
        raise DatasetError(format_validation_error(exc, ClassesFile, str(path))) from None


def _read_splits(root: Path, scan: FolderScan) -> None:
    path = root / SPLITS_FILE
    if not path.exists():
        return
    data, _ = read_yaml_mapping(path, what="splits")
    try:
        splits = SplitsFile.model_validate(data)
    except ValidationError as exc:
        raise DatasetError(format_validation_error(exc, SplitsFile, str(path))) from None
    seen: dict[str, str] = {}
    scan.splits = {}
    for name in SPLITS:
        stems = []
        for entry in map(str, getattr(splits, name)):  # YAML reads a stem like 7 as a number
            suffix = Path(entry).suffix.lower()
            stems.append(Path(entry).stem if suffix in IMAGE_SUFFIXES else entry)
        for stem in stems:
            if stem in seen:
                where = (
                    f"twice in {name}" if seen[stem] == name else f"in both {seen[stem]} and {name}"
                )
                scan.problems.append(Problem("split overlap", SPLITS_FILE, f"'{stem}' is {where}"))
            seen[stem] = name
        scan.splits[name] = stems


def scan_folder(
    root: str | Path,
    *,
    ignore_index: int | None = None,
    size: tuple[int, int] | None = None,
    fit: Literal["resize", "crop"] = "resize",
    load: bool = False,
    workers: int = 4,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> FolderScan:
    """Read and check every file under ``root``; with ``load``, keep each pair fitted to
    ``size`` (native size when ``None``). Files above ``max_pixels`` are problems, never
    decoded; what decodes at once stays within ``max_pixels``. Structural errors (no such directory, a malformed
    classes.yaml) raise ``DatasetError``; problems with individual files are collected."""
    root = _checked_root(root)
    classes = read_classes(root)
    ignore = (
        ignore_index if ignore_index is not None else (classes.ignore_index if classes else None)
    )
    scan = FolderScan(root, classes, ignore)
    images, masks = _list_pairs(scan)
    _read_splits(root, scan)
    pairs = sorted(images.keys() & masks.keys())
    scan.pairs = len(pairs)
    read = partial(
        read_pair,
        size=size if load else None,
        fit=fit,
        colours=classes.colours if classes else None,
        max_pixels=max_pixels,
        budget=PixelBudget(max_pixels),
    )
    check = partial(_check_pair, images=images, masks=masks, read=read, scan=scan, load=load)
    _read_pairs(scan, pairs, check, workers)
    _check_split_stems(scan, pairs)
    _check_whole(scan, ignore_given=ignore_index is not None)
    return scan


def _checked_root(root: str | Path) -> Path:
    """``root`` as a path, refused unless it holds both ``images/`` and ``masks/``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        where = f"{root} ({root.resolve()})" if not root.is_absolute() else str(root)
        raise DatasetError(f"data.params.root: {where} is not a directory")
    missing = [d for d in ("images", "masks") if not (root / d).is_dir()]
    if missing:
        raise DatasetError(
            f"{root} has no {' or '.join(d + '/' for d in missing)} directory: a folder dataset is "
            f"{root}/images/<stem>.png|jpg and {root}/masks/<stem>.png with matching stems"
        )
    return root


def _list_pairs(scan: FolderScan) -> tuple[dict[str, Path], dict[str, Path]]:
    """The images and the masks by stem; an image without a mask, or a mask without an
    image, is a problem."""
    images = _list(scan.root / "images", IMAGE_SUFFIXES, "images", scan)
    masks = _list(scan.root / "masks", MASK_SUFFIXES, "masks", scan)
    for stem in sorted(images.keys() - masks.keys()):
        scan.problems.append(
            Problem("missing mask", f"images/{images[stem].name}", f"no masks/{stem}.png")
        )
    for stem in sorted(masks.keys() - images.keys()):
        scan.problems.append(
            Problem("extra mask", f"masks/{masks[stem].name}", f"no images/{stem}.png|jpg")
        )
    return images, masks


@dataclass
class _Checked:
    """What reading one pair kept: ``sample`` only when loading and the pair is clean."""

    native: tuple[int, int]
    grey: bool
    histogram: dict[int, int]
    sample: tuple[np.ndarray, np.ndarray] | None


def _check_pair(
    stem: str,
    *,
    images: dict[str, Path],
    masks: dict[str, Path],
    read: Callable[[Path, Path], Pair],
    scan: FolderScan,
    load: bool,
) -> tuple[_Checked | None, list[Problem]]:
    """Read the pair ``stem`` with ``read`` and check it; ``None`` when it cannot be read."""
    image_path, mask_path = images[stem], masks[stem]
    try:
        pair = read(image_path, mask_path)
    except FileProblem as exc:
        return None, [_file_problem(exc, scan.root)]
    found = _size_mismatch(pair, image_path, mask_path)
    found += _labels_out_of_range(pair.histogram, mask_path, scan.classes, scan.ignore_index)
    sample = (pair.image, pair.mask) if load and not found else None
    return _Checked(pair.native, pair.grey, pair.histogram, sample), found


def _size_mismatch(pair: Pair, image_path: Path, mask_path: Path) -> list[Problem]:
    if pair.native == pair.mask_native:
        return []
    return [
        Problem(
            "size mismatch",
            f"masks/{mask_path.name}",
            f"mask is {pair.mask_native[1]}x{pair.mask_native[0]} but "
            f"images/{image_path.name} is {pair.native[1]}x{pair.native[0]} "
            "(width x height)",
        )
    ]


def _labels_out_of_range(
    histogram: dict[int, int], mask_path: Path, classes: ClassesFile | None, ignore: int | None
) -> list[Problem]:
    """Mask values that are neither a class of ``classes.yaml`` nor the ignore index."""
    if classes is None:
        return []
    bad = [v for v in histogram if v >= len(classes.names) and v != ignore]
    if not bad:
        return []
    allowed = f"classes 0..{len(classes.names) - 1}" + (
        f", ignore {ignore}" if ignore is not None else ""
    )
    return [
        Problem(
            "label out of range",
            f"masks/{mask_path.name}",
            f"value(s) {', '.join(map(str, bad[:8]))} outside {allowed}",
        )
    ]


def _read_pairs(
    scan: FolderScan,
    pairs: list[str],
    check: Callable[[str], tuple[_Checked | None, list[Problem]]],
    workers: int,
) -> None:
    """``check`` every pair on ``workers`` threads and record it in ``scan``, in stem order:
    the histogram counts every readable mask; only clean pairs join the stems."""
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(pairs) or 1))) as pool:
        for stem, (checked, found) in zip(pairs, pool.map(check, pairs), strict=True):
            scan.problems += found
            if checked is None:
                continue
            scan.histogram.update(checked.histogram)
            if found:
                continue
            scan.stems.append(stem)
            scan.sizes[stem], scan.grey[stem] = checked.native, checked.grey
            if checked.sample is not None:
                scan.samples[stem] = checked.sample


def _check_split_stems(scan: FolderScan, pairs: list[str]) -> None:
    """Every stem that ``splits.yaml`` names must be a pair."""
    if scan.splits is None:
        return
    known = set(pairs)
    for name, stems in scan.splits.items():
        for stem in stems:
            if stem not in known:
                scan.problems.append(
                    Problem(
                        "unknown stem in splits",
                        SPLITS_FILE,
                        f"{name}: '{stem}' has no image+mask pair",
                    )
                )


def _check_whole(scan: FolderScan, ignore_given: bool) -> None:
    """The folder as a whole: some pairs (when nothing else is wrong), and an ignore index
    (``ignore_given``: from the params, else classes.yaml) that is no class."""
    if not scan.pairs and not scan.problems:
        scan.problems.append(Problem("empty", "images/", "no image+mask pairs"))
    ignore = scan.ignore_index
    if ignore is not None and ignore < scan.num_classes:
        source = "data.params.ignore_index" if ignore_given else CLASSES_FILE
        scan.problems.append(
            Problem(
                "ignore index is a class",
                source,
                f"ignore_index {ignore} is class {scan.class_names[ignore]!r} "
                f"(classes 0..{scan.num_classes - 1}); use a value above the classes, e.g. 255",
            )
        )
