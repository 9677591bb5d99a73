"""Search spaces: plain YAML -> validated dataclasses, checked against the registries and the
benchmark's student, and the base config every trial starts from. What is sampled from a space and
how it is applied: :mod:`study.params`."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Mapping

from indistill.config.run import RunConfig, deep_merge, with_student_budget
from indistill.engine.configure import build_config, validate_config
from indistill.models.zoo import check_fits_auxiliary, network_entry, scaled_widths
from indistill.method.losses import LOSSES
from indistill.method.pruning import CRITERIA
from indistill.config.schema import from_dict
from indistill.common.errors import ConfigError
from indistill.config.yamlio import load_yaml_file

from .names import OBJECTIVE, SIZE_OBJECTIVES

#: the package the default search spaces are installed as (the source tree's top-level
#: ``search_spaces/``, mapped by pyproject.toml's package-dir; found through the installed package)
SPACES_PACKAGE = "study.search_spaces"


def _require(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{field_name}: {message}")


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int

    def __post_init__(self) -> None:
        _require(self.low >= 0, "low", f"must be >= 0, got {self.low}")
        _require(self.low <= self.high, "high", f"empty range: low {self.low} > high {self.high}")


@dataclass(frozen=True)
class LogRange:
    low: float
    high: float
    #: what needs ``low > 0``, for its message
    _KIND: ClassVar[str] = " for a log-uniform range"

    def __post_init__(self) -> None:
        _require(self.low > 0, "low", f"must be > 0{self._KIND}, got {self.low}")
        _require(self.low <= self.high, "high", f"empty range: low {self.low} > high {self.high}")


@dataclass(frozen=True)
class Budget:
    """How much search: trials, student epochs per trial, ASHA's grace period and reduction factor."""

    trials: int = 8
    epochs: int | None = None  # student epochs per trial; None = the benchmark config's
    grace_period: int = 5
    reduction_factor: int = 3
    seed: int = 0  # TPE sampler seed
    max_failures: int = 1  # Tune retries of a failed trial
    early_stopping: bool = True  # ASHA on embedding-phase epochs; false = every trial runs its whole budget
    final_seeds: int = 3  # student seeds of every row of the final table (teacher and auxiliary shared)
    frontier_points: int = 3  # a two-objective search: the Pareto points whose widths the final runs train
    warm_start: int = 3  # --warm-start: each source's best configs the search evaluates first (of budget.trials)

    def __post_init__(self) -> None:
        _require(self.trials >= 1, "trials", f"must be >= 1, got {self.trials}")
        _require(self.epochs is None or self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        _require(self.grace_period >= 1, "grace_period", f"must be >= 1, got {self.grace_period}")
        _require(self.reduction_factor >= 2, "reduction_factor", f"must be >= 2, got {self.reduction_factor}")
        _require(self.max_failures >= 0, "max_failures", "must be >= 0")
        _require(self.final_seeds >= 1, "final_seeds", f"must be >= 1, got {self.final_seeds}")
        _require(self.frontier_points >= 1, "frontier_points", f"must be >= 1, got {self.frontier_points}")
        _require(self.warm_start >= 1, "warm_start", f"must be >= 1, got {self.warm_start}")


@dataclass(frozen=True)
class WidthRange(LogRange):
    """Width multipliers drawn uniformly from ``[low, high]`` (the checks of a :class:`LogRange`)."""

    _KIND: ClassVar[str] = ""


@dataclass(frozen=True)
class StudentSpace:
    """The student's size: multipliers of the benchmark's student widths (every conv stage and the
    embedding), a list to choose from or a ``{low, high}`` range; None: the base config's student."""

    width: tuple[float, ...] | WidthRange | None = None

    def __post_init__(self) -> None:
        if isinstance(self.width, tuple):
            _require(len(self.width) > 0, "width", "needs at least one multiplier")
            for i, m in enumerate(self.width):
                _require(m > 0, f"width[{i}]", f"must be > 0, got {m}")


@dataclass(frozen=True)
class CurriculumSpace:
    epochs: tuple[IntRange, ...] = ()  # one range per curriculum layer
    losses: tuple[str, ...] = ("mse",)  # choices for every layer's loss
    weights: dict = field(default_factory=dict)  # loss name -> {low, high}: log-uniform, conditional on the loss
    overlap: tuple[bool, ...] = (False,)

    def __post_init__(self) -> None:
        _require(len(self.epochs) > 0, "epochs", "needs one {low, high} range per curriculum layer")
        _require(len(self.losses) > 0, "losses", "needs at least one loss")
        _require(len(self.overlap) > 0, "overlap", "needs at least one value")


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    benchmark: str | None = None
    budget: Budget = field(default_factory=Budget)
    curriculum: CurriculumSpace  # required: a space without curriculum ranges searches nothing
    criteria: tuple[str, ...] = ("l1",)
    student: StudentSpace = field(default_factory=StudentSpace)
    #: maximise val mAP; with a size objective (``params``, ``macs``) also minimise the student's size
    objectives: tuple[str, ...] = (OBJECTIVE,)
    fixed: dict = field(default_factory=dict)  # config overrides for every trial (and the final retrain)

    def __post_init__(self) -> None:
        _require(len(self.criteria) > 0, "criteria", "needs at least one pruning criterion")
        _require(self.objectives[:1] == (OBJECTIVE,) and len(self.objectives) <= 2, "objectives",
                 f"[{OBJECTIVE}] or [{OBJECTIVE}, <size>] with <size> one of {', '.join(SIZE_OBJECTIVES)}; "
                 f"got {list(self.objectives)}")
        _require(all(o in SIZE_OBJECTIVES for o in self.objectives[1:]), "objectives[1]",
                 f"one of {', '.join(SIZE_OBJECTIVES)}, got {self.objectives[1:]!r}"[:200])

    @property
    def size_objective(self) -> str | None:
        """The size objective of a two-objective search (``params``, ``macs``), else None."""
        return self.objectives[1] if len(self.objectives) > 1 else None


def weight_ranges(space: SearchSpace) -> dict[str, LogRange]:
    """Each loss of the space with its weight's log-uniform range (a loss without one: fixed at 1)."""
    out = {}
    for loss in space.curriculum.losses:
        raw = space.curriculum.weights.get(loss, {"low": 1.0, "high": 1.0})
        out[loss] = from_dict(LogRange, raw, f"curriculum.weights.{loss}")
    return out


def validate_space(space: SearchSpace, benchmark: str) -> None:
    """Check names against the registries and the shape against the benchmark's student."""
    for i, name in enumerate(space.curriculum.losses):
        LOSSES.check(name, f"curriculum.losses[{i}]")
    for name in space.curriculum.weights:
        if name not in space.curriculum.losses:
            raise ConfigError(f"curriculum.weights: {name!r} is not one of curriculum.losses ({', '.join(space.curriculum.losses)})")
    weight_ranges(space)
    for i, name in enumerate(space.criteria):
        CRITERIA.check(name, f"criteria[{i}]")
    if space.benchmark is not None and space.benchmark != benchmark:
        raise ConfigError(f"benchmark: this search space is for {space.benchmark!r}, not {benchmark!r}")
    try:
        build_config(space.fixed, benchmark=benchmark)
    except ConfigError as exc:  # the fixed overrides are a config: name the field under fixed
        raise ConfigError(f"fixed.{exc}", where=f"fixed.{exc.where}" if exc.where else "fixed") from None
    try:
        base = base_config(space, benchmark)
    except ConfigError as exc:  # only the budget is left to blame
        raise ConfigError(f"budget.epochs: {space.budget.epochs} student epochs do not fit the {benchmark} config: {exc}",
                          where="budget.epochs") from None
    if space.size_objective and space.student.width is None:
        raise ConfigError(f"objectives: {space.size_objective} as an objective needs student.width (the sizes to search)")
    check_widths(space, base)
    n = len(base.student.curriculum.epochs)
    if len(space.curriculum.epochs) != n:
        raise ConfigError(f"curriculum.epochs: the {benchmark} student has {n} curriculum layers, the space gives {len(space.curriculum.epochs)} ranges")
    epochs, longest = base.student.epochs, longest_curriculum(space)
    grace = space.budget.grace_period if space.budget.early_stopping else 1
    if longest + grace > epochs:
        after = (f"plus budget.grace_period = {grace} embedding-phase epochs before early stopping may judge it"
                 if space.budget.early_stopping else "plus one embedding-phase epoch")
        raise ConfigError(
            f"budget.epochs: {epochs} student epochs per trial are too few: the longest curriculum this space "
            f"samples lasts {longest} epochs, {after}; set budget.epochs (or --epochs) to at least {longest + grace}"
        )


def check_widths(space: SearchSpace, base: RunConfig) -> None:
    """Every width the space can sample fits the auxiliary at every tap (the widest is enough)."""
    width = space.student.width
    if width is None:
        return
    student = network_entry(base.benchmark, "student", base.networks.student)
    auxiliary = network_entry(base.benchmark, "auxiliary", base.networks.auxiliary)
    for m in (width if isinstance(width, tuple) else (width.low, width.high)):
        check_fits_auxiliary(base.benchmark, student, auxiliary, m)


def with_width(cfg: RunConfig, multiplier: float) -> RunConfig:
    """``cfg`` with its student's widths scaled by ``multiplier`` (the options of ``networks.student``)."""
    student = network_entry(cfg.benchmark, "student", cfg.networks.student)
    overrides = {**dict(cfg.networks.student), **scaled_widths(student, multiplier)}
    return cfg.replace(networks=dataclasses.replace(cfg.networks, student=overrides))


def sampled_widths(space: SearchSpace, base: RunConfig) -> list[float]:
    """One multiplier per distinct student the space can sample (widths round to integers), in
    increasing order: the list's multipliers, or for a range one inside each interval between the
    multipliers where a rounded width changes. Empty without ``student.width``."""
    width = space.student.width
    if width is None:
        return []
    entry = network_entry(base.benchmark, "student", base.networks.student)
    if isinstance(width, tuple):
        candidates = sorted(set(width))
    else:
        channels = [*entry["widths"], entry["embedding_dim"]]
        cuts = sorted({width.low, width.high, *((k + 0.5) / c for c in channels
                                                 for k in range(int(width.high * c) + 1)
                                                 if width.low < (k + 0.5) / c < width.high)})
        candidates = [width.low, *((a + b) / 2 for a, b in zip(cuts, cuts[1:])), width.high]
    seen, out = set(), []
    for m in candidates:
        student = str(scaled_widths(entry, m))
        if student not in seen:
            seen.add(student)
            out.append(m)
    return out


def longest_curriculum(space: SearchSpace) -> int:
    return sum(r.high for r in space.curriculum.epochs)


def shortest_curriculum(space: SearchSpace) -> int:
    return sum(r.low for r in space.curriculum.epochs)


def load_space(path: str | Path, benchmark: str) -> SearchSpace:
    """Read and validate a search-space YAML for ``benchmark``; errors name the file, the line and the field."""
    doc = load_yaml_file(path, "search space")
    with doc.blame():
        space = from_dict(SearchSpace, doc.data)
        validate_space(space, benchmark)
    return space


def packaged_spaces() -> Path:
    """The directory of the packaged search spaces: the installed package :data:`SPACES_PACKAGE`
    (``site-packages/study/search_spaces/`` from a wheel, the checkout's ``search_spaces/`` in an
    editable install), found by ``importlib.resources``, never by the checkout's layout."""
    from importlib import resources

    try:
        root = resources.files(SPACES_PACKAGE)
    except ModuleNotFoundError:  # an install made before the package existed (an old editable finder)
        raise ConfigError(f"--search-space: the packaged search spaces (package {SPACES_PACKAGE}) are not installed; "
                          "reinstall indistill-study (pip install -e . in a checkout) or give --search-space FILE") from None
    if not isinstance(root, Path):  # e.g. a zip import: the spaces must be files the study can name
        raise ConfigError(f"--search-space: the packaged search spaces ({root}) are not files on disk; "
                          "install indistill-study unzipped, or give --search-space FILE")
    return root.resolve()


def default_space_path(benchmark: str) -> Path:
    """The packaged ``<benchmark>.yaml`` search space if there is one, else the packaged
    ``default.yaml`` (both in :func:`packaged_spaces`)."""
    root = packaged_spaces()
    own, fallback = root / f"{benchmark}.yaml", root / "default.yaml"
    if own.is_file():
        return own
    if not fallback.is_file():
        raise ConfigError(f"--search-space: no {benchmark}.yaml nor default.yaml among the packaged search spaces "
                          f"in {root}; reinstall indistill-study or give --search-space FILE")
    return fallback


def packaged_spaces_text() -> str:
    """Where the packaged search spaces are, for ``--help``: their directory, or why there is none."""
    try:
        return str(packaged_spaces())
    except ConfigError:
        return "not installed: reinstall indistill-study"


def base_config(space: SearchSpace, benchmark: str, extra: Mapping | None = None) -> RunConfig:
    """The benchmark's default config with the space's fixed overrides and budget applied."""
    overrides = deep_merge(space.fixed, extra or {})
    overrides = deep_merge(overrides, {"student": {"eval_every": 1}})
    cfg = build_config(overrides, benchmark=benchmark)
    if space.budget.epochs is not None:
        cfg = with_student_budget(cfg, space.budget.epochs)
        validate_config(cfg)
    return cfg
