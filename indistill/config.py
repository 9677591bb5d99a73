"""The run configuration: typed, frozen dataclasses loaded from plain YAML.

A user's YAML is merged over the benchmark's default (``indistill/configs/<benchmark>.yaml``);
``save_config`` writes the complete, merged config, which ``load_config`` reads back unchanged.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from .schema import ConfigError, from_dict, to_dict

CONFIG_DIR = Path(__file__).parent / "configs"
ROLES = ("teacher", "auxiliary", "student")


def _require(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{field_name}: {message}")


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and its piecewise-constant learning rate: ``[[start_epoch, lr], ...]``."""

    name: Literal["adam", "sgd"] = "adam"
    lr_schedule: tuple[tuple[int, float], ...] = ((0, 1e-3),)
    weight_decay: float = 0.0
    momentum: float = 0.9

    def __post_init__(self) -> None:
        _require(len(self.lr_schedule) > 0, "lr_schedule", "needs at least one [epoch, lr] pair")
        starts = [s for s, _ in self.lr_schedule]
        _require(starts[0] == 0, "lr_schedule", f"must start at epoch 0, got {starts[0]}")
        _require(starts == sorted(set(starts)), "lr_schedule", f"start epochs must increase strictly, got {starts}")
        _require(all(lr > 0 for _, lr in self.lr_schedule), "lr_schedule", "learning rates must be > 0")
        _require(self.weight_decay >= 0, "weight_decay", "must be >= 0")

    def lr_at(self, epoch: int) -> float:
        lr = self.lr_schedule[0][1]
        for start, value in self.lr_schedule:
            if epoch >= start:
                lr = value
        return lr


def _adam(*schedule: tuple[int, float]) -> OptimConfig:
    return OptimConfig(name="adam", lr_schedule=tuple(schedule))


@dataclass(frozen=True)
class StageConfig:
    """A supervised or distillation training stage."""

    epochs: int = 80
    batch_size: int = 128
    optim: OptimConfig = field(default_factory=lambda: _adam((0, 1e-3), (50, 1e-4)))

    def __post_init__(self) -> None:
        _require(self.epochs >= 0, "epochs", f"must be >= 0, got {self.epochs}")
        _require(self.batch_size >= 2, "batch_size", f"must be >= 2 (PKT needs pairs), got {self.batch_size}")


@dataclass(frozen=True)
class TeacherConfig(StageConfig):
    """Teacher training; ``checkpoint`` loads the user's weights instead of training."""

    checkpoint: str | None = None


@dataclass(frozen=True)
class AuxiliaryConfig:
    """Auxiliary: cross-entropy first, then PKT from the teacher's embedding."""

    ce: StageConfig = field(default_factory=StageConfig)
    pkt: StageConfig = field(default_factory=lambda: StageConfig(epochs=30, optim=_adam((0, 1e-3))))


@dataclass(frozen=True)
class CurriculumConfig:
    """InDistill's layer-by-layer curriculum over the student's intermediate taps."""

    epochs: tuple[int, ...] = (3, 4, 5)
    losses: tuple[str, ...] = ("mse", "mse", "mse")
    weights: tuple[float, ...] = (1.0, 1.0, 1.0)
    overlap: bool = False
    embedding_loss: str = "pkt"
    embedding_weight: float = 1.0

    def __post_init__(self) -> None:
        n = len(self.epochs)
        _require(n > 0, "epochs", "needs one entry per intermediate tap")
        _require(all(e >= 0 for e in self.epochs), "epochs", f"must be >= 0, got {list(self.epochs)}")
        _require(len(self.losses) == n, "losses", f"needs {n} entries (one per tap), got {len(self.losses)}")
        _require(len(self.weights) == n, "weights", f"needs {n} entries (one per tap), got {len(self.weights)}")
        _require(all(w >= 0 for w in self.weights), "weights", f"must be >= 0, got {list(self.weights)}")
        _require(self.embedding_weight >= 0, "embedding_weight", "must be >= 0")


@dataclass(frozen=True)
class MKTConfig:
    """The all-layers-at-once baseline: PKT on every tap, intermediate weight ``weight * gamma**epoch``."""

    weight: float = 1.0
    gamma: float = 0.8

    def __post_init__(self) -> None:
        _require(self.weight >= 0, "weight", "must be >= 0")
        _require(0 < self.gamma <= 1, "gamma", f"must be in (0, 1], got {self.gamma}")


@dataclass(frozen=True)
class StudentConfig:
    """Student training shared by every method (indistill, ce, pkt, mkt)."""

    epochs: int = 70
    batch_size: int = 128
    optim: OptimConfig = field(default_factory=lambda: _adam((0, 1e-3), (60, 1e-4)))
    ce_weight: float = 0.0
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    mkt: MKTConfig = field(default_factory=MKTConfig)
    eval_every: int = 0

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        _require(self.batch_size >= 2, "batch_size", f"must be >= 2 (PKT needs pairs), got {self.batch_size}")
        _require(self.ce_weight >= 0, "ce_weight", "must be >= 0")
        _require(self.eval_every >= 0, "eval_every", "must be >= 0 (0 = only after the last epoch)")


@dataclass(frozen=True)
class PruneConfig:
    criterion: str = "l1"
    batches: int = 4

    def __post_init__(self) -> None:
        _require(self.batches >= 1, "batches", "must be >= 1")


@dataclass(frozen=True)
class DataConfig:
    root: str | None = None
    download: bool = False
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class NetworksConfig:
    """Overrides of the benchmark's zoo entry per role, e.g. ``student: {widths: [8, 16, 32]}``."""

    teacher: dict = field(default_factory=dict)
    auxiliary: dict = field(default_factory=dict)
    student: dict = field(default_factory=dict)


@dataclass(frozen=True)
class EvalConfig:
    """Retrieval protocol: ``test`` = db train, queries test; ``val`` = db train minus val, queries val."""

    split: Literal["test", "val"] = "test"
    ks: tuple[int, ...] = (10, 50, 100)
    batch_size: int = 1024

    def __post_init__(self) -> None:
        _require(len(self.ks) > 0 and all(k >= 1 for k in self.ks), "ks", f"must be positive integers, got {list(self.ks)}")


METHOD_NAMES = ("indistill", "ce", "pkt", "mkt")


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run of the pipeline."""

    benchmark: str = "digits"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool = True  # NHWC activations: ~1.3x on the CPU student step (benchmarks/RESULTS.md), the usual choice on GPU
    compile: bool = False
    methods: tuple[str, ...] = METHOD_NAMES
    data: DataConfig = field(default_factory=DataConfig)
    networks: NetworksConfig = field(default_factory=NetworksConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    auxiliary: AuxiliaryConfig = field(default_factory=AuxiliaryConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        _require(self.seed >= 0, "seed", "must be >= 0")
        bad = [m for m in self.methods if m not in METHOD_NAMES]
        _require(not bad, "methods", f"unknown method {bad[0] if bad else ''!r}; choose from: {', '.join(METHOD_NAMES)}")
        _require(len(self.methods) > 0, "methods", "needs at least one method")

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------- loading / saving


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """``override`` over ``base``; nested mappings merge, everything else is replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and key != "options":
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__}: {exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def default_config_dict(benchmark: str) -> dict:
    """The benchmark's default config as a plain dict."""
    path = CONFIG_DIR / f"{benchmark}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"benchmark: unknown benchmark {benchmark!r}; choose from: {', '.join(known)}")
    data = read_yaml(path)
    data.setdefault("benchmark", benchmark)
    return data


def build_config(overrides: Mapping | None = None, benchmark: str | None = None) -> RunConfig:
    """Merge ``overrides`` over the default of its benchmark and validate the result."""
    overrides = dict(overrides or {})
    name = benchmark or overrides.get("benchmark") or "digits"
    if not isinstance(name, str):
        raise ConfigError(f"benchmark: expected a string, got {name!r}")
    if benchmark and overrides.get("benchmark") not in (None, benchmark):
        raise ConfigError(f"benchmark: the config says {overrides['benchmark']!r} but {benchmark!r} was asked for")
    merged = deep_merge(default_config_dict(name), overrides)
    merged["benchmark"] = name
    cfg = from_dict(RunConfig, merged)
    validate_config(cfg)
    return cfg


def load_config(path: str | Path | None = None, benchmark: str | None = None, overrides: Mapping | None = None) -> RunConfig:
    """Load a YAML config (merged over its benchmark's default), then apply ``overrides``."""
    data = read_yaml(path) if path else {}
    if overrides:
        data = deep_merge(data, overrides)
    return build_config(data, benchmark=benchmark)


def config_to_dict(cfg: RunConfig) -> dict:
    return to_dict(cfg)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def save_config(cfg: RunConfig, path: str | Path) -> Path:
    from .io import atomic_write_text

    return atomic_write_text(Path(path), dump_config(cfg))


def validate_config(cfg: RunConfig) -> None:
    """Cross-field checks against the registries (benchmarks, criteria, losses, networks)."""
    from .data import BENCHMARKS
    from .losses import LOSSES
    from .pruning import CRITERIA

    if cfg.benchmark not in BENCHMARKS:
        raise ConfigError(f"benchmark: unknown benchmark {cfg.benchmark!r}; choose from: {', '.join(BENCHMARKS.names())}")
    if cfg.prune.criterion not in CRITERIA:
        raise ConfigError(
            f"prune.criterion: unknown criterion {cfg.prune.criterion!r}; choose from: {', '.join(CRITERIA.names())}"
        )
    feature_losses = [n for n in LOSSES.names() if n != "kd"]
    for i, name in enumerate(cfg.student.curriculum.losses):
        if name not in feature_losses:
            raise ConfigError(
                f"student.curriculum.losses[{i}]: unknown loss {name!r}; choose from: {', '.join(feature_losses)}"
            )
    if cfg.student.curriculum.embedding_loss not in feature_losses:
        raise ConfigError(
            f"student.curriculum.embedding_loss: unknown loss {cfg.student.curriculum.embedding_loss!r}; "
            f"choose from: {', '.join(feature_losses)}"
        )
    from .models.zoo import BENCHMARK_NETWORKS

    n_taps = _student_intermediate_taps(cfg, BENCHMARK_NETWORKS)
    if n_taps is not None and len(cfg.student.curriculum.epochs) != n_taps:
        raise ConfigError(
            f"student.curriculum.epochs: the student has {n_taps} intermediate taps, "
            f"so the curriculum needs {n_taps} entries, got {len(cfg.student.curriculum.epochs)}"
        )
    if sum(cfg.student.curriculum.epochs) > cfg.student.epochs and "indistill" in cfg.methods:
        raise ConfigError(
            f"student.curriculum.epochs: the curriculum lasts {sum(cfg.student.curriculum.epochs)} epochs, "
            f"more than student.epochs = {cfg.student.epochs}"
        )
    for role in ROLES:
        arch = getattr(cfg.networks, role).get("arch")
        if arch is not None:
            from .models import MODELS

            if arch not in MODELS:
                raise ConfigError(f"networks.{role}.arch: unknown model {arch!r}; choose from: {', '.join(MODELS.names())}")


def _student_intermediate_taps(cfg: RunConfig, zoo: Mapping) -> int | None:
    entry = deep_merge(zoo.get(cfg.benchmark, {}).get("student", {}), cfg.networks.student)
    widths = entry.get("widths")
    return len(widths) if widths is not None else None
