"""``latentseg datasets check``: validate a folder, an experiment's data section, or any
dataset by name, and report the class histogram. Every problem is collected and the first
offending files (or samples) are named; any problem makes the command exit 2."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from latentseg.data.base import SPLITS, SegmentationDataset, SplitSizes, validate_params
from latentseg.data.folder import (
    SHOWN,
    Folder,
    FolderParams,
    Problem,
    load_folder,
    summarize_problems,
)
from latentseg.errors import ConfigError, DatasetError, LatentSegError


@dataclass
class CheckReport:
    target: str
    kind: str  # "folder" or "dataset"
    class_names: tuple[str, ...] = ()
    ignore_index: int | None = None
    histogram: Counter = field(default_factory=Counter)  # label value -> pixels
    counts: dict[str, int] = field(default_factory=dict)  # split or file kind -> count
    notes: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        total = sum(self.histogram.values()) or 1
        return {
            "target": self.target,
            "kind": self.kind,
            "ok": self.ok,
            "classes": list(self.class_names),
            "ignore_index": self.ignore_index,
            "counts": self.counts,
            "histogram": [
                {"value": int(v), "class": self.label_name(v), "pixels": int(n), "share": n / total}
                for v, n in sorted(self.histogram.items())
            ],
            "notes": self.notes,
            "problems": [p.__dict__ for p in self.problems],
        }

    def label_name(self, value: int) -> str:
        if value == self.ignore_index:
            return "(ignore)"
        if 0 <= value < len(self.class_names):
            return self.class_names[value]
        return "(out of range)"

    def render(self) -> str:
        lines = [f"{self.kind} {self.target}"]
        lines += [f"  {name}: {count}" for name, count in self.counts.items()]
        lines += [f"  note: {note}" for note in self.notes]
        total = sum(self.histogram.values())
        if total:
            lines.append("class histogram (pixels):")
            width = max(len(self.label_name(v)) for v in self.histogram)
            for value, count in sorted(self.histogram.items()):
                lines.append(
                    f"  {value:>5}  {self.label_name(value):<{width}}  {count:>12,}  {100 * count / total:6.2f}%"
                )
            present = {v for v in self.histogram if v != self.ignore_index}
            absent = [n for i, n in enumerate(self.class_names) if i not in present]
            if absent:
                lines.append(f"  classes with no pixels: {', '.join(absent)}")
        if self.problems:
            summary = summarize_problems(self.problems, SHOWN)
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  {line}" for line in summary.splitlines()]
        else:
            lines.append("ok: no problems found")
        return "\n".join(lines)


def check_folder(
    root: str | Path,
    params: dict[str, Any],
    split_sizes: SplitSizes | None = None,
    seed: int = 0,
) -> CheckReport:
    """Scan a folder dataset; when the files are clean, also open it with ``params`` exactly as
    training would (sizes, splits), so a clean check means training can start."""
    options = validate_params(FolderParams, {"root": str(root), **params}, "folder")
    scan = load_folder(options)  # every file read once, for the report and the dataset
    report = CheckReport(str(scan.root), "folder", scan.class_names, scan.ignore_index)
    report.histogram = scan.histogram
    report.problems = list(scan.problems)
    sizes = Counter(scan.sizes.values())
    report.counts = {
        "image+mask pairs": scan.pairs,
        "pairs without problems": len(scan.stems),
        "grey images": sum(scan.grey.values()),
    }
    if sizes:
        shown = ", ".join(f"{w}x{h} ({n})" for (h, w), n in sizes.most_common(3))
        more = f" and {len(sizes) - 3} more" if len(sizes) > 3 else ""
        report.notes.append(f"image sizes (width x height): {shown}{more}")
    if scan.classes:
        report.notes.append("classes from classes.yaml")
    elif scan.histogram:
        report.notes.append(
            f"no classes.yaml: {scan.num_classes} classes inferred from the largest label"
        )
        unused = scan.num_classes - len([v for v in scan.histogram if v != scan.ignore_index])
        if scan.histogram and unused > 0 and scan.ignore_index is None:
            top = max(scan.histogram)
            report.notes.append(
                f"{unused} of those classes have no pixels: if {top} marks pixels to ignore, "
                f"write classes.yaml with ignore_index: {top} (or --param ignore_index={top})"
            )
    if scan.splits:
        listed = {stem for stems in scan.splits.values() for stem in stems}
        unlisted = [s for s in scan.stems if s not in listed]
        more = f"; {len(unlisted)} pair(s) in no split are not used (e.g. {unlisted[0]})"
        report.notes.append("splits from splits.yaml" + (more if unlisted else ""))
    else:
        report.notes.append("splits: seeded by val/test fractions")
    if report.ok:
        try:
            dataset = Folder.from_scan(scan, options, split_sizes, seed)
        except LatentSegError as exc:
            report.problems.append(Problem("cannot open", str(scan.root), str(exc)))
        else:
            for name in SPLITS:
                report.counts[f"{name} split"] = len(dataset.split(name))
            report.notes.extend(dataset.notes)  # e.g. a split size capped at the split
    return report


def check_dataset(
    dataset: SegmentationDataset, target: str, max_samples: int | None = None, batch: int = 64
) -> CheckReport:
    """Read every sample (or the first ``max_samples`` of each split) of any dataset: shapes,
    dtypes, finite values, label range, class histogram."""
    info = dataset.info
    report = CheckReport(target, "dataset", info.class_names, info.ignore_index)
    report.notes.append(
        f"{info.num_classes} classes, {info.in_channels} channel(s), {info.image_size[1]}x{info.image_size[0]}"
    )
    for name in SPLITS:
        split = dataset.split(name)
        total = len(split) if max_samples is None else min(len(split), max_samples)
        report.counts[f"{name} split"] = len(split)
        for start in range(0, total, batch):
            indices = list(range(start, min(total, start + batch)))
            images, masks = split.get_batch(indices)
            where = f"{name}[{start}:{indices[-1] + 1}]"
            expected = (len(indices), info.in_channels, *info.image_size)
            if tuple(images.shape) != expected or images.dtype != torch.float32:
                report.problems.append(
                    Problem(
                        "bad images",
                        where,
                        f"{images.dtype} {tuple(images.shape)}, expected float32 {expected}",
                    )
                )
                continue
            if tuple(masks.shape) != (len(indices), *info.image_size) or masks.dtype != torch.long:
                report.problems.append(
                    Problem(
                        "bad masks",
                        where,
                        f"{masks.dtype} {tuple(masks.shape)}, expected int64 {(len(indices), *info.image_size)}",
                    )
                )
                continue
            if not torch.isfinite(images).all():
                report.problems.append(Problem("non-finite pixels", where, "NaN or inf in images"))
            values, counts = masks.unique(return_counts=True)
            report.histogram.update(dict(zip(values.tolist(), counts.tolist(), strict=True)))
            bad = [
                v
                for v in values.tolist()
                if not 0 <= v < info.num_classes and v != info.ignore_index
            ]
            if bad:
                report.problems.append(
                    Problem(
                        "label out of range",
                        where,
                        f"value(s) {bad[:8]} outside 0..{info.num_classes - 1}",
                    )
                )
    return report


def check_target(
    target: str, params: dict[str, Any], max_samples: int | None = None
) -> CheckReport:
    """A directory (folder dataset), an experiment YAML (its data section), or a dataset name."""
    from latentseg.data import create_dataset
    from latentseg.loading import load_experiment

    path = Path(target)
    if path.is_dir():
        if "root" in params:
            raise ConfigError(f"--param root: the folder to check is {target} already")
        return check_folder(path, params)
    if path.suffix in (".yaml", ".yml"):
        config = load_experiment(path)
        data = config.data
        merged = {**data.params, **params}
        sizes = SplitSizes(train=data.train_size, val=data.val_size, test=data.test_size)
        if data.dataset == "folder":
            root = merged.pop("root", None)
            if root is None:
                raise ConfigError(f"{path}: data.params.root is required for the folder dataset")
            return check_folder(root, merged, sizes, data.seed)
        dataset = create_dataset(data.dataset, split_sizes=sizes, seed=data.seed, **merged)
        return check_dataset(dataset, f"{data.dataset} (from {path})", max_samples)
    if "/" in target and ":" not in target:
        raise DatasetError(f"{target}: no such directory or experiment file")
    dataset = create_dataset(target, **params)
    return check_dataset(dataset, target, max_samples)
