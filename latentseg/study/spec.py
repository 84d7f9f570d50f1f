"""Study specs (``studies/*.yaml``): a base experiment, a search space over any config key,
the objective, sampler, pruner and seeds. Validated as strictly as experiment configs."""

from __future__ import annotations

import difflib
import itertools
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    Discriminator,
    Field,
    StrictInt,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from latentseg.config import (
    ExperimentConfig,
    StrictModel,
    format_validation_error,
    key_lines,
    read_yaml_mapping,
)
from latentseg.errors import ConfigError, LatentSegError
from latentseg.loading import apply_overrides, load_experiment
from latentseg.tracking.logged import COST_METRICS  # an objective of a study of several
from latentseg.tracking.store import redact  # noqa: F401 - the study's name for it

Scalar = Union[bool, int, float, str, None]  # noqa: UP007


class IntParam(StrictModel):
    type: Literal["int"]
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) > high ({self.high})")
        if self.log and (self.step != 1 or self.low < 1):
            raise ValueError("log=true needs step 1 and low >= 1")
        return self


class FloatParam(StrictModel):
    type: Literal["float"]
    low: float
    high: float
    step: Optional[float] = Field(None, gt=0)  # noqa: UP045
    log: bool = False

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) > high ({self.high})")
        if self.log and (self.step is not None or self.low <= 0):
            raise ValueError("log=true needs no step and low > 0")
        return self


class CategoricalParam(StrictModel):
    type: Literal["categorical"]
    choices: list[Scalar] = Field(min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> CategoricalParam:
        seen = [repr(c) for c in self.choices]
        if len(set(seen)) != len(seen):
            raise ValueError(
                f"choices repeat a value: {self.choices} (a grid would run that point twice)"
            )
        return self


Param = Annotated[Union[IntParam, FloatParam, CategoricalParam], Field(discriminator="type")]  # noqa: UP007


class ObjectiveSpec(StrictModel):
    metric: str = Field(
        "val_miou",
        description="A per-epoch val metric (its value at the best epoch is the objective) or a best_val_* summary metric; never test_* (the report scores the test split). In `objectives`, also a cost every run logs: model_params, model_flops_per_image, model_kv_params, model_kv_activations_per_image or train_images_per_s (the mean over epochs).",
    )
    direction: Literal["maximize", "minimize"] | None = Field(
        None,
        description="Default: minimize for losses and costs (maximize train_images_per_s), maximize otherwise.",
    )  # noqa: UP045

    @property
    def resolved_direction(self) -> str:
        if self.direction:
            return self.direction
        if self.metric in COST_METRICS:
            return COST_METRICS[self.metric]
        return "minimize" if "loss" in self.metric else "maximize"

    @property
    def is_cost(self) -> bool:
        return self.metric in COST_METRICS

    @field_validator("metric")
    @classmethod
    def _known(cls, value: str) -> str:
        if value.startswith("test_"):
            raise ValueError(
                f"{value!r}: a study must not tune on the test split, which the report scores; "
                f"use {'val_' + value.removeprefix('test_')!r} (validation picks, test scores)"
            )
        if not value.startswith(("val_", "best_val_")) and value not in COST_METRICS:
            raise ValueError(
                f"objective metric must be a val_* or best_val_* metric (e.g. val_miou), or in "
                f"objectives a cost ({', '.join(COST_METRICS)}), got {value!r}"
            )
        return value


class ReportSpec(StrictModel):
    """How the study's report decides (``latentseg report`` flags override these)."""

    sesoi: float | None = Field(
        None,
        gt=0,
        description="Smallest effect of interest: a difference within ± this is `equivalent`. Default 0.01 for metrics in [0, 1] (mIoU, accuracy, Dice); none otherwise.",
    )  # noqa: UP045
    alpha: float = Field(0.05, gt=0, lt=1, description="Family-wise error rate (or FDR with bh).")
    correction: Literal["holm", "bonferroni", "bh"] = Field(
        "holm",
        description="holm (default) or bonferroni control the family-wise error; bh the false discovery rate (exploratory sweeps; not with adaptive seeds).",
    )
    metric: str = Field(
        "miou",
        description="The primary metric, declared before the results: the report compares its test split (test_<metric>) at each run's best-validation checkpoint; a report on another metric is labelled secondary.",
    )

    @field_validator("metric")
    @classmethod
    def _primary(cls, value: str) -> str:
        name = value.removeprefix("test_").removeprefix("val_")
        if value.startswith("best_") or not name or not name.replace("_", "").isalnum():
            raise ValueError(
                f"report.metric {value!r}: name a per-run metric such as miou, mdice or "
                "pixel_accuracy (its test split at the best-validation checkpoint is compared)"
            )
        return name


class AdaptiveSeeds(StrictModel):
    """Seeds spent where the answer is open: every point runs ``min`` seeds; after each round
    the verdicts are taken (alpha spent over the planned looks, so the error control holds)
    and the points whose comparison is still inconclusive get ``step`` more, until every
    comparison is decided or ``max`` is reached."""

    min: StrictInt = Field(3, ge=2, description="Seeds every point runs in the first round.")
    max: StrictInt = Field(10, ge=2, description="The most seeds any point runs.")
    step: StrictInt | None = Field(
        None, ge=1, description="Seeds added per round to each open point; default: min."
    )  # noqa: UP045
    until: Literal["variants", "effects"] = Field(
        "variants",
        description="variants: a point gets more seeds while its comparison with the baseline is open (the baseline while any is). effects: every point gets more seeds while any main effect is open (a main effect needs every point's runs of a seed).",
    )

    @model_validator(mode="after")
    def _check(self) -> AdaptiveSeeds:
        if self.max < self.min:
            raise ValueError(f"seeds.max ({self.max}) < seeds.min ({self.min})")
        return self

    def looks(self) -> list[int]:
        """Seeds per open point after each round: min, then ``step`` more each round, ending
        at max (min 3, max 10: 3, 6, 9, 10). The verdicts are taken at each of these looks."""
        return [*range(self.min, self.max, self.step or self.min), self.max]


def _seeds_kind(value: Any) -> str:
    if isinstance(value, dict | AdaptiveSeeds):
        return "adaptive"
    return "list" if isinstance(value, list) else "count"


# One shape per kind of value, so a bad value is reported against the shape it meant.
Seeds = Annotated[
    Union[  # noqa: UP007
        Annotated[StrictInt, Tag("count")],
        Annotated[list[StrictInt], Tag("list")],
        Annotated[AdaptiveSeeds, Tag("adaptive")],
    ],
    Discriminator(_seeds_kind),
]


class SamplerSpec(StrictModel):
    name: Literal["tpe", "random", "grid", "nsga2", "gp"] = Field(
        "tpe",
        description="tpe (one or several objectives), random, grid, nsga2 (Optuna's NSGA-II, for several objectives over many trials) or gp (Optuna's Gaussian-process sampler, one or several objectives, for few costly trials; numeric params).",
    )
    seed: Optional[int] = Field(0, description="Sampler seed (null: random).")  # noqa: UP045
    n_startup_trials: int = Field(10, ge=0, description="TPE: random trials before modelling.")


class PrunerSpec(StrictModel):
    name: Literal["median", "hyperband", "none"] = "none"
    n_startup_trials: int = Field(
        4, ge=0, description="median: trials completed before pruning starts."
    )
    n_warmup_steps: int = Field(1, ge=0, description="median: epochs before a trial may be pruned.")
    min_resource: int = Field(1, ge=1, description="hyperband: smallest number of epochs.")
    reduction_factor: int = Field(3, ge=2, description="hyperband: reduction factor.")


class WorkerResources(StrictModel):
    """What each worker asks of a Ray cluster (``latentseg study SPEC --ray``); Ray places
    the workers where these are free and sets each one's visible GPUs. Local workers
    (``--workers`` alone) ignore it."""

    cpus: float = Field(
        1, gt=0, description="CPU cores per Ray worker (also its torch threads, at least 1)."
    )
    gpus: float = Field(
        0, ge=0, description="GPUs per Ray worker (0: CPU only; a fraction shares a GPU)."
    )


class StudySpec(StrictModel):
    name: str | None = Field(None, description="Optuna study name; default: the spec file's stem.")  # noqa: UP045
    experiment: str = Field(description="Base experiment YAML, relative to the spec file.")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Dotted-key overrides of the base experiment."
    )
    search_space: dict[str, Param] = Field(
        default_factory=dict,
        description="Config key -> int / float / categorical (a plain list is categorical).",
    )
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    objectives: list[ObjectiveSpec] | None = Field(
        None,
        min_length=2,
        description="Several objectives instead of `objective` (e.g. [{metric: val_miou}, {metric: model_flops_per_image}]): Optuna's multi-objective search, a trial's values its seed means; no pruner.",
    )  # noqa: UP045
    report: ReportSpec = Field(
        default_factory=ReportSpec, description="How the report decides its verdicts."
    )
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    seeds: Seeds = Field(
        1,
        description="k (train.seed = base seed + 0..k-1), an explicit list, or adaptive {min, max, step, until} (grid only); the objective is the mean over a trial's seeds.",
    )  # noqa: UP007
    n_trials: int | None = Field(
        None, ge=1, description="Trials in total (grid: its size; tpe/random: 20 by default)."
    )  # noqa: UP045
    timeout: float | None = Field(
        None, gt=0, description="Stop starting trials after this many seconds."
    )  # noqa: UP045
    mlflow_experiment: str | None = Field(
        None, description="MLflow experiment; default: the study name."
    )  # noqa: UP045
    storage: str | None = Field(
        None,
        description="Optuna storage URL; default: the journal in the tracking store's optuna/ folder (mlruns/optuna/journal.log for the default store).",
    )  # noqa: UP045
    max_retry: int = Field(1, ge=0, description="Retries of a failed trial (crash or dead worker).")
    resources: WorkerResources = Field(
        default_factory=WorkerResources,
        description="Per Ray worker: {cpus: 1, gpus: 0} by default (used with --ray only).",
    )

    @field_validator("search_space", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: {"type": "categorical", "choices": v} if isinstance(v, list) else v
                for k, v in value.items()
            }
        return value

    @property
    def objective_list(self) -> list[ObjectiveSpec]:
        """The study's objectives, in order: ``objectives``, or ``objective`` alone."""
        return list(self.objectives) if self.objectives else [self.objective]

    @property
    def directions(self) -> list[str]:
        return [objective.resolved_direction for objective in self.objective_list]

    @model_validator(mode="after")
    def _objectives(self) -> StudySpec:
        if not self.objectives:
            if self.objective.is_cost:
                raise ValueError(
                    f"objective.metric {self.objective.metric!r} is a cost alone; list it with a "
                    "quality metric under objectives, e.g. objectives: [{metric: val_miou}, "
                    f"{{metric: {self.objective.metric}}}]"
                )
            return self
        if "objective" in self.model_fields_set:
            raise ValueError("give objective (one metric) or objectives (several), not both")
        metrics = [objective.metric for objective in self.objectives]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"objectives repeat a metric: {metrics}")
        if all(objective.is_cost for objective in self.objectives):
            raise ValueError(
                f"objectives {metrics} are all costs: add a quality metric (e.g. val_miou)"
            )
        if self.pruner.name != "none":
            raise ValueError(
                f"pruner {self.pruner.name}: Optuna cannot prune a study of several "
                "objectives; remove the pruner (or use one objective)"
            )
        return self

    @model_validator(mode="after")
    def _check(self) -> StudySpec:
        if isinstance(self.seeds, list) and (
            not self.seeds or len(set(self.seeds)) != len(self.seeds)
        ):
            raise ValueError("seeds must be a non-empty list of distinct integers")
        if isinstance(self.seeds, int) and self.seeds < 1:
            raise ValueError("seeds must be >= 1")
        if isinstance(self.seeds, AdaptiveSeeds) and self.sampler.name != "grid":
            raise ValueError(
                "adaptive seeds need a grid (sampler: {name: grid}): rounds add seeds where a "
                "point's comparison with the baseline is open, and a search has no baseline"
            )
        if isinstance(self.seeds, AdaptiveSeeds) and self.report.correction == "bh":
            raise ValueError(
                "report.correction bh cannot decide after each round of adaptive seeds: that "
                "needs family-wise control (holm or bonferroni); bh's intervals are not "
                "repeated confidence intervals"
            )
        if "train.seed" in self.search_space:
            raise ValueError(
                "train.seed cannot be searched; use `seeds` (every trial is trained with each seed)"
            )
        fixed = [k for k in self.search_space if k == "train.threads" or k.startswith("tracking.")]
        if fixed:
            raise ValueError(
                f"{fixed} cannot be searched: the study sets threads per worker and tracks every trial itself"
            )
        if self.sampler.name == "grid":
            bad = [k for k, p in self.search_space.items() if not isinstance(p, CategoricalParam)]
            if bad:
                raise ValueError(
                    f"a grid is the full factorial of categorical axes; make these categorical (a list of values): {bad}"
                )
            if not self.search_space:
                raise ValueError("a grid needs a search_space")
        return self

    @property
    def adaptive(self) -> AdaptiveSeeds | None:
        return self.seeds if isinstance(self.seeds, AdaptiveSeeds) else None

    def seed_list(self, base_seed: int) -> list[int]:
        """The seeds every trial runs (adaptive: the first round's)."""
        if isinstance(self.seeds, list):
            return list(self.seeds)
        count = self.seeds.min if isinstance(self.seeds, AdaptiveSeeds) else self.seeds
        return [base_seed + i for i in range(count)]

    def grid_points(self) -> list[dict[str, Any]]:
        """Every point of the full factorial, in a stable order."""
        keys = list(self.search_space)
        choices = [self.search_space[k].choices for k in keys]  # type: ignore[union-attr]
        return [dict(zip(keys, values, strict=True)) for values in itertools.product(*choices)]

    def total_trials(self) -> int:
        if self.sampler.name == "grid":
            return self.n_trials or len(self.grid_points())
        return self.n_trials or 20


class LoadedStudy(StrictModel):
    """A spec with its base experiment loaded and every override applied."""

    spec: StudySpec
    name: str
    path: str
    base: ExperimentConfig
    seeds: list[int]


def load_study_spec(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), n_trials: int | None = None
) -> LoadedStudy:
    """Load and validate a study spec; ``overrides`` (``--set``) apply to the base experiment."""
    path = Path(path)
    data, text = read_yaml_mapping(path, what="study spec")
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            format_validation_error(exc, StudySpec, str(path), key_lines(text))
        ) from None
    if n_trials is not None:
        spec = spec.model_copy(update={"n_trials": n_trials})
    base_path = (path.parent / spec.experiment).resolve()
    if not base_path.is_file():
        raise ConfigError(
            f"{path}: experiment: base experiment not found: {spec.experiment} (looked for {base_path})"
        )
    base = load_experiment(base_path)
    try:
        base = base.with_updates(spec.overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: overrides: {exc}") from None
    base = apply_overrides(base, overrides)
    _check_search_space(spec, base, path)
    name = spec.name or path.stem
    if "'" in name and '"' in name:  # MLflow's search filters could never find its runs
        raise ConfigError(
            f"{path}: name {name!r} holds both ' and \": MLflow cannot search for it; rename it"
        )
    return LoadedStudy(
        spec=spec, name=name, path=str(path), base=base, seeds=spec.seed_list(base.train.seed)
    )


def _check_search_space(spec: StudySpec, base: ExperimentConfig, path: Path) -> None:
    """Every key must be a config key and every value valid there (errors name both); the
    objective must be a metric the runs report."""
    from latentseg.train import prepare

    for key, param in spec.search_space.items():
        if isinstance(param, CategoricalParam):
            values = param.choices
        elif (
            isinstance(param, IntParam)
            and not param.log
            and (param.high - param.low) // param.step < 64
        ):
            values = list(range(param.low, param.high + 1, param.step))  # small: check them all
        else:
            values = [param.low, param.high]
        for value in values:
            try:
                prepare(base.with_updates({key: value}), str(path))
            except LatentSegError as exc:
                detail = str(exc).replace("<updated config>: ", "").replace(f"{path}: ", "")
                raise ConfigError(f"{path}: search_space.{key} = {value!r}: {detail}") from None
    if spec.sampler.name == "grid":  # a grid is small: check every point resolves
        for point in spec.grid_points():
            try:
                prepare(base.with_updates(point), f"{path} grid point {point}")
            except LatentSegError as exc:
                raise ConfigError(f"{exc}") from None
    classes = prepare(base, str(path)).dataset.info.class_names
    names = [
        "loss",
        "pixel_accuracy",
        "miou",
        "mdice",
        "latent_usage_entropy",
        "dead_latents",
        *(f"iou_{c}" for c in classes),
    ]
    if spec.report.metric not in names:
        close = difflib.get_close_matches(spec.report.metric.lower(), names, n=1, cutoff=0.6)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"{path}: report.metric {spec.report.metric!r} is not a metric the runs report.{hint} "
            f"Metrics: {', '.join(names)}."
        )
    known = {f"{prefix}_{n}" for prefix in ("val", "best_val") for n in names}
    field = "objectives" if spec.objectives else "objective"
    for index, objective in enumerate(spec.objective_list):
        metric = objective.metric
        if metric in known or objective.is_cost:
            continue
        close = difflib.get_close_matches(
            metric, sorted(known | set(COST_METRICS)), n=1, cutoff=0.6
        )
        hint = f" Did you mean '{close[0]}'?" if close else ""
        where = f"objectives[{index}].metric" if spec.objectives else "objective.metric"
        costs = f"; costs: {', '.join(COST_METRICS)}" if field == "objectives" else ""
        raise ConfigError(
            f"{path}: {where} {metric!r} is not a metric the runs report.{hint} Per-epoch: {', '.join(f'val_{n}' for n in names)}; also best_val_*{costs}."
        )
