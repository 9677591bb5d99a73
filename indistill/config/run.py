"""The run configuration: typed, frozen dataclasses loaded from plain YAML.

The lowest layer: it knows no registry. :mod:`indistill.engine.configure` merges a user's YAML over the
benchmark's default (``indistill/config/defaults/<benchmark>.yaml``) and checks the names it holds
(benchmark, criterion, losses, networks) against their registries; ``save_config`` writes the
complete, merged config, which ``load_config`` reads back unchanged.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from indistill.config.schema import to_dict
from indistill.common.errors import ConfigError

CONFIG_DIR = Path(__file__).parent / "defaults"
#: the benchmark whose default config is the reference code's recipe (the others are our protocol)
REFERENCE_BENCHMARK = "cifar10"


def _require(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{field_name}: {message}")


#: When a training stage starts a fresh optimiser (its state, e.g. Adam's moments, dropped):
#: ``never``; ``lr_change`` when the learning-rate schedule changes value; ``phase`` at every
#: curriculum phase change; ``epoch`` at the start of every epoch (the reference code's students).
OptimReset = Literal["never", "lr_change", "phase", "epoch"]


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser, its piecewise-constant learning rate ``[[start_epoch, lr], ...]`` and its reset policy."""

    name: Literal["adam", "sgd"] = "adam"
    lr_schedule: tuple[tuple[int, float], ...] = ((0, 1e-3),)
    weight_decay: float = 0.0
    momentum: float = 0.9
    reset: OptimReset = "never"

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


def _adam(*schedule: tuple[int, float], reset: str = "never") -> OptimConfig:
    return OptimConfig(name="adam", lr_schedule=tuple(schedule), reset=reset)


# The reference code's schedules (docs/method.md, "Fidelity"): CE baselines 50 epochs at 1e-3 then 30 at
# 1e-4 with a new Adam at the drop; T -> A PKT 30 + 10 likewise; students a new Adam every epoch.
def _ce_optim() -> OptimConfig:
    return _adam((0, 1e-3), (50, 1e-4), reset="lr_change")


@dataclass(frozen=True)
class StageConfig:
    """A supervised or distillation training stage."""

    epochs: int = 80
    batch_size: int = 128
    optim: OptimConfig = field(default_factory=_ce_optim)

    def __post_init__(self) -> None:
        _require(self.epochs >= 0, "epochs", f"must be >= 0, got {self.epochs}")
        _require(self.batch_size >= 2, "batch_size", f"must be >= 2 (PKT needs pairs), got {self.batch_size}")


@dataclass(frozen=True)
class TeacherConfig(StageConfig):
    """Teacher training; ``checkpoint`` loads the user's weights instead of training."""

    checkpoint: str | None = None


@dataclass(frozen=True)
class AuxiliaryConfig:
    """Auxiliary: cross-entropy first, then PKT from the teacher's embedding.

    ``checkpoint`` loads finished auxiliary weights (e.g. the reference code's released
    ``auxiliary_cifar10.pt``) and skips both training stages.
    """

    ce: StageConfig = field(default_factory=StageConfig)
    pkt: StageConfig = field(default_factory=lambda: StageConfig(epochs=40, optim=_adam((0, 1e-3), (30, 1e-4), reset="lr_change")))
    checkpoint: str | None = None


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
    """The all-layers-at-once baseline: PKT on every tap, intermediate weight ``weight * gamma**epoch``.

    Defaults are MKT's code (passalis/pkth, ``exp2_proposed.py``): 100 * 0.7**epoch, embedding weight 1.
    """

    weight: float = 100.0
    gamma: float = 0.7

    def __post_init__(self) -> None:
        _require(self.weight >= 0, "weight", "must be >= 0")
        _require(0 < self.gamma <= 1, "gamma", f"must be in (0, 1], got {self.gamma}")


@dataclass(frozen=True)
class Schedule:
    """A student method's own epochs and optimiser; unset fields take ``student.epochs`` / ``student.optim``."""

    epochs: int | None = None
    optim: OptimConfig | None = None

    def __post_init__(self) -> None:
        _require(self.epochs is None or self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")


@dataclass(frozen=True)
class MethodSchedules:
    """Per-method schedules (one field per student method, see ``METHOD_NAMES``)."""

    indistill: Schedule = field(default_factory=Schedule)
    ce: Schedule = field(default_factory=lambda: Schedule(epochs=80, optim=_ce_optim()))
    pkt: Schedule = field(default_factory=Schedule)
    mkt: Schedule = field(default_factory=lambda: Schedule(epochs=50, optim=_adam((0, 1e-3), reset="epoch")))


@dataclass(frozen=True)
class StudentConfig:
    """Student training shared by every method (indistill, ce, pkt, mkt), with per-method ``schedules``."""

    epochs: int = 70
    batch_size: int = 128
    optim: OptimConfig = field(default_factory=lambda: _adam((0, 1e-3), (60, 1e-4), reset="epoch"))
    ce_weight: float = 0.0
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    mkt: MKTConfig = field(default_factory=MKTConfig)
    schedules: MethodSchedules = field(default_factory=MethodSchedules)
    eval_every: int = 0
    seed: int | None = None  # the students' own seed (init, shuffling); None = the run's seed

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        _require(self.seed is None or self.seed >= 0, "seed", f"must be >= 0 or null, got {self.seed}")
        _require(self.batch_size >= 2, "batch_size", f"must be >= 2 (PKT needs pairs), got {self.batch_size}")
        _require(self.ce_weight >= 0, "ce_weight", "must be >= 0")
        _require(self.eval_every >= 0, "eval_every", "must be >= 0 (0 = only after the last epoch)")

    def schedule(self, method: str) -> tuple[int, OptimConfig]:
        """(epochs, optimiser) of ``method``: its own schedule where set, else the shared one."""
        own: Schedule = getattr(self.schedules, method)
        return (own.epochs if own.epochs is not None else self.epochs,
                own.optim if own.optim is not None else self.optim)


#: What InDistill's pruned-teacher feature at a tap is (docs/method.md, "Pruning"):
#: ``running_stats`` = the auxiliary's own tap restricted to the kept channels (its BN in eval mode);
#: ``batch_stats`` = the kept filters' conv output through a fresh BN using the batch's statistics
#: (gamma kept, beta = 0), then the rest of the block (the reference code).
PruneTarget = Literal["running_stats", "batch_stats"]


@dataclass(frozen=True)
class PruneConfig:
    criterion: str = "l1"
    batches: int = 4
    target: PruneTarget = "batch_stats"

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


#: the three networks of a benchmark (docs/method.md, "The method")
ROLES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(NetworksConfig))


@dataclass(frozen=True)
class EvalConfig:
    """Retrieval protocol: ``test`` = db train, queries test; ``val`` = db train minus val, queries val."""

    split: Literal["test", "val"] = "test"
    ks: tuple[int, ...] = (10, 50, 100)
    batch_size: int = 1024

    def __post_init__(self) -> None:
        _require(len(self.ks) > 0 and all(k >= 1 for k in self.ks), "ks", f"must be positive integers, got {list(self.ks)}")


METHOD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(MethodSchedules))


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run of the pipeline."""

    benchmark: str = "digits"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool = True  # NHWC activations: ~1.3x on the CPU student step (perf/RESULTS.md), the usual choice on GPU
    compile: bool = False
    threads: int | None = None  # CPU threads of torch (None: its default); part of what makes CPU numbers exact
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
        _require(self.threads is None or self.threads >= 1, "threads", f"must be >= 1 or null, got {self.threads}")
        bad = [m for m in self.methods if m not in METHOD_NAMES]
        _require(not bad, "methods", f"unknown method {bad[0] if bad else ''!r}; choose from: {', '.join(METHOD_NAMES)}")
        _require(len(self.methods) > 0, "methods", "needs at least one method")

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    @property
    def student_seed(self) -> int:
        """The seed of the student stages: ``student.seed``, else the run's ``seed``."""
        return self.student.seed if self.student.seed is not None else self.seed

    def with_student_seed(self, seed: int) -> "RunConfig":
        """The same run (teacher, auxiliary, pruning unchanged) with students trained under ``seed``."""
        return dataclasses.replace(self, student=dataclasses.replace(self.student, seed=seed))


# ----------------------------------------------------------------------------- loading / saving


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """``override`` over ``base``; nested mappings merge, everything else is replaced."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_to_dict(cfg: RunConfig) -> dict:
    return to_dict(cfg)


class _Dumper(yaml.SafeDumper):
    """Block mappings, flow lists (``lr_schedule: [[0, 0.001], [50, 0.0001]]``)."""


_Dumper.add_representer(
    list, lambda d, data: d.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=not any(isinstance(v, dict) for v in data))
)


def dump_config(cfg: RunConfig, notes: Mapping[str, str] | None = None) -> str:
    """The complete config as YAML; ``notes`` (dotted path -> text) become end-of-line comments."""
    text = yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False)
    return _annotate(text, notes) if notes else text


def _annotate(text: str, notes: Mapping[str, str]) -> str:
    out, stack = [], []  # stack of (indent, key) of the enclosing mappings
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        indent = len(line) - len(stripped)
        key = stripped.split(":", 1)[0] if ":" in stripped and not stripped.startswith(("-", "#")) else None
        if key is not None:
            while stack and stack[-1][0] >= indent:
                stack.pop()
            path = ".".join([k for _, k in stack] + [key])
            stack.append((indent, key))
            if path in notes:
                line = f"{line}  # {notes[path]}"
        out.append(line)
    return "\n".join(out) + "\n"


def save_config(cfg: RunConfig, path: str | Path) -> Path:
    from indistill.common.io import atomic_write_text

    return atomic_write_text(Path(path), dump_config(cfg))


def check_schedules(cfg: RunConfig) -> None:
    """The curriculum fits in InDistill's student epochs (a check across sections, needing no registry)."""
    indistill_epochs, _ = cfg.student.schedule("indistill")
    if sum(cfg.student.curriculum.epochs) > indistill_epochs and "indistill" in cfg.methods:
        where = "student.schedules.indistill.epochs" if cfg.student.schedules.indistill.epochs else "student.epochs"
        raise ConfigError(
            f"student.curriculum.epochs: the curriculum lasts {sum(cfg.student.curriculum.epochs)} epochs, "
            f"more than {where} = {indistill_epochs}"
        )


def scale_schedule(optim: OptimConfig, old_epochs: int, new_epochs: int) -> OptimConfig:
    """``optim`` with its learning-rate change points moved by ``new_epochs / old_epochs`` (rounded).

    So a shortened run still gets its drops, at the same share of training; points that round
    onto each other keep the later value.
    """
    points: dict[int, float] = {}
    for start, lr in optim.lr_schedule:
        points[min(round(start * new_epochs / old_epochs), max(new_epochs - 1, 0))] = lr
    return dataclasses.replace(optim, lr_schedule=tuple(sorted(points.items())))


def with_student_budget(cfg: RunConfig, epochs: int) -> RunConfig:
    """``cfg`` with every student method trained ``epochs`` epochs, lr change points scaled alike.

    Methods whose schedule sets its own length keep it (MKT's recipe); the others share the budget.
    """
    s = cfg.student
    changes: dict[str, Any] = {"epochs": epochs, "optim": scale_schedule(s.optim, s.epochs, epochs)}
    own_lengths = {}  # budgeted methods with a length of their own: scaled like the shared schedule
    for method in BUDGETED_SCHEDULES:
        own: Schedule = getattr(s.schedules, method)
        if own.epochs is not None:
            optim = scale_schedule(own.optim, own.epochs, epochs) if own.optim is not None else None
            own_lengths[method] = Schedule(epochs=epochs, optim=optim)
    changes["schedules"] = dataclasses.replace(s.schedules, **own_lengths)
    return cfg.replace(student=dataclasses.replace(s, **changes))


#: methods whose own schedule follows a study's student budget (MKT keeps its recipe's length)
BUDGETED_SCHEDULES = ("indistill", "ce", "pkt")

