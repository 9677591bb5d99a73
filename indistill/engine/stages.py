"""The pipeline's stages, each cached in ``<cache_root>/<stage>-<key>/`` by the config that determines it.

The artifact stages (teacher, auxiliary, prune) are :class:`Stage` objects in :data:`ARTIFACT_STAGES`,
each declared once: what it reads, the file a finished one leaves, the config fields that cannot
change it, how it is built and how a finished one is loaded. The student stage is
:func:`student_stage`, one per method; :func:`evaluate_stage` scores a network.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from indistill.config.run import RunConfig, StageConfig
from indistill.data import BenchmarkData, Split, normalize
from indistill.evaluation.embedding import curve_metrics, evaluate_network
from indistill.common.errors import CheckpointError, UserError, one_line
from indistill.common.io import atomic_torch_save, atomic_write_json, read_json_file, read_torch, recover, stable_hash
from indistill.method.losses import LOSSES
from indistill.models.base import EMBEDDING, TapNet, TapReader
from indistill.models.checkpoint import load_checkpoint
from indistill.models.zoo import create_network
from indistill.method.pruning import PrunedTaps, select_channels
from indistill.config.schema import to_dict
from indistill.engine.batches import DeviceSplit
from indistill.engine.keys import EXECUTION, Protocol, given_auxiliary, hashed_key, student_excluded
from indistill.engine.loop import FINAL, EpochHook, Loop, load_final, read_history
from indistill.method.methods import METHODS, Method, create_method
from indistill.engine.runtime import rank, seed_everything
from indistill.common.precision import autocast, stage_precision
from indistill.method.student_step import student_step

@dataclass(frozen=True)
class Context:
    """A loaded benchmark on its device plus the config and the stage cache. Never changed: another
    config (a seed, a row of the table) is :meth:`with_config`, sharing the data on the device."""

    cfg: RunConfig
    data: BenchmarkData
    device: torch.device
    cache_root: Path
    log: Callable[[str], None] = print
    #: called (rank 0) with every file a stage writes under ``cache_root``, as it is written: the
    #: study mirrors a remote stage cache this way
    persist: Callable[[Path], None] | None = None
    _splits: dict[tuple[str, bool], DeviceSplit] = field(default_factory=dict)

    def with_config(self, cfg: RunConfig) -> "Context":
        """This context for ``cfg`` (same benchmark and data), the device splits shared."""
        if cfg.benchmark != self.cfg.benchmark or cfg.data != self.cfg.data:
            raise ValueError(f"a context of {self.cfg.benchmark}'s data cannot run {cfg.benchmark} with data {cfg.data}")
        return dataclasses.replace(self, cfg=cfg)

    def saved(self, path: Path) -> None:
        if self.persist is not None and rank() == 0:
            self.persist(path)

    def split(self, name: str) -> DeviceSplit:
        """``train`` (minus val), ``val``, ``test`` or ``train_full`` on the device."""
        key = (name, self.cfg.channels_last)
        if key not in self._splits:
            raw: Split = self.data.train_full() if name == "train_full" else getattr(self.data, name)
            self._splits[key] = DeviceSplit.create(raw, self.data.spec, self.device, self.cfg.channels_last)
        return self._splits[key]

    def train_split(self, protocol: Protocol) -> DeviceSplit:
        return self.split("train_full" if protocol == "test" else "train")

    def eval_splits(self, protocol: Protocol) -> tuple[DeviceSplit, DeviceSplit]:
        """(queries, database) of the retrieval protocol."""
        if protocol == "test":
            return self.split("test"), self.split("train_full")
        return self.split("val"), self.split("train")

    def network(self, role: str) -> TapNet:
        c, h, _ = self.data.input_shape
        net = create_network(
            self.cfg.benchmark, role, num_classes=self.data.num_classes, in_channels=c, image_size=h,
            overrides=getattr(self.cfg.networks, role),
        )
        net = net.to(self.device)
        if self.cfg.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net

    def stage_dir(self, stage: str, key: str) -> Path:
        return self.cache_root / f"{stage}-{key}"

    def stage_path(self, stage: str, protocol: Protocol = "test", method: str | None = None) -> Path:
        """The cache directory of ``stage`` for the current config (``student``: of ``method``)."""
        return self.cache_root / stage_dirname(stage, self.cfg, protocol, method)


# ----------------------------------------------------------------------------- helpers


def _maybe_compile(model: nn.Module, cfg: RunConfig) -> nn.Module:
    return torch.compile(model) if cfg.compile else model


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _batches(ctx: Context, split: DeviceSplit, stage: StageConfig | int, seed: int):
    batch_size = stage if isinstance(stage, int) else stage.batch_size
    spec = ctx.data.spec
    return lambda epoch: split.batches(batch_size, seed=seed, epoch=epoch, padding=spec.crop_padding, flip=spec.flip)


def _ce_loop(ctx: Context, name: str, model: TapNet, stage: StageConfig, work_dir: Path, protocol: Protocol) -> Loop:
    trainable = _maybe_compile(model, ctx.cfg)

    def step(x: Tensor, y: Tensor, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        with autocast(ctx.device, ctx.cfg.precision):
            logits = trainable(x)
        return F.cross_entropy(logits.float(), y), {}

    return Loop(work_dir, model, stage.optim, stage.epochs, step, _batches(ctx, ctx.train_split(protocol), stage, ctx.cfg.seed),
                name=name, log=ctx.log, saved=ctx.saved)


def _load_given(ctx: Context, model: TapNet, role: str, path: str) -> TapNet:
    load_checkpoint(model, path)
    ctx.log(f"[{role}] loaded {Path(path).expanduser()}")
    return _freeze(model)


# ----------------------------------------------------------------------------- stages


@dataclass
class StageResult:
    """A finished stage: its network (``pruned``: the kept indices, for ``prune``), its cache
    directory (None for a given checkpoint), its per-epoch training history, and ``curves``: the
    per-epoch history of every loop it is made of, by curve name (the auxiliary's cross-entropy start
    as ``auxiliary-ce``), for the logs."""

    stage: str
    directory: Path | None
    network: TapNet | None = None
    pruned: PrunedTaps | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    curves: dict[str, list[dict[str, float]]] = field(default_factory=dict)


INDICES = "indices.pt"


def teacher_stage(ctx: Context, protocol: Protocol = "test") -> StageResult:
    """Train the teacher with cross-entropy on the protocol's train split, or load the user's checkpoint."""
    cfg = ctx.cfg
    seed_everything(cfg.seed)
    model = ctx.network("teacher")
    if cfg.teacher.checkpoint:
        return StageResult("teacher", None, _load_given(ctx, model, "teacher", cfg.teacher.checkpoint))
    work_dir = ctx.stage_path("teacher", protocol)
    with stage_precision(cfg.precision):
        history = _ce_loop(ctx, "teacher", model, cfg.teacher, work_dir, protocol).run()
    return StageResult("teacher", work_dir, _freeze(model), history=history, curves={"teacher": history})


def _auxiliary_ce_dir(ctx: Context, protocol: Protocol) -> Path:
    """Where the auxiliary stage keeps its cross-entropy start (keyed like the auxiliary itself)."""
    return ctx.stage_dir("auxiliary-ce", stage_key("auxiliary", ctx.cfg, protocol))


def _finished_history(path: Path) -> list[dict[str, float]]:
    """The per-epoch history in a finished loop's ``final.pt``, or [] when it is missing or unreadable
    (only the logs' curves read it; the weights come from the stage's own file)."""
    try:
        return read_history(path)
    except CheckpointError:
        return []


def auxiliary_stage(ctx: Context, teacher: TapNet | None, protocol: Protocol = "test") -> StageResult:
    """Cross-entropy, then PKT from the teacher's embedding, starting from the CE weights
    (or the user's ``auxiliary.checkpoint``, when given: then ``teacher`` is not read)."""
    cfg = ctx.cfg
    seed_everything(cfg.seed + 1)
    model = ctx.network("auxiliary")
    if cfg.auxiliary.checkpoint:
        return StageResult("auxiliary", None, _load_given(ctx, model, "auxiliary", cfg.auxiliary.checkpoint))
    if teacher is None:
        raise ValueError("the auxiliary stage needs the teacher (no auxiliary.checkpoint given)")
    work_dir = ctx.stage_path("auxiliary", protocol)
    ce_dir = _auxiliary_ce_dir(ctx, protocol)
    if (work_dir / FINAL).exists():  # a finished auxiliary needs neither its CE start nor the teacher
        ce_history = _finished_history(ce_dir / FINAL)
    else:
        with stage_precision(cfg.precision):
            ce_history = _ce_loop(ctx, "auxiliary/ce", model, cfg.auxiliary.ce, ce_dir, protocol).run()
    trainable = _maybe_compile(model, cfg)
    t_reader = TapReader(teacher, (EMBEDDING,))
    a_reader = TapReader(trainable, (EMBEDDING,))
    pkt = LOSSES.get("pkt")

    def step(x: Tensor, y: Tensor, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        with autocast(ctx.device, cfg.precision):
            with torch.no_grad():
                t = t_reader(x)[1][EMBEDDING]
            a = a_reader(x)[1][EMBEDDING]
        loss = pkt(t.flatten(1), a.flatten(1))
        return loss, {"loss/embedding": loss.detach()}

    stage = cfg.auxiliary.pkt
    try:
        with stage_precision(cfg.precision):
            history = Loop(work_dir, model, stage.optim, stage.epochs, step,
                           _batches(ctx, ctx.train_split(protocol), stage, cfg.seed + 1), name="auxiliary/pkt",
                           log=ctx.log, saved=ctx.saved).run()
    finally:
        t_reader.close()
        a_reader.close()
    return StageResult("auxiliary", work_dir, _freeze(model), history=history,
                       curves={"auxiliary-ce": ce_history, "auxiliary": history})


def _load_network(ctx: Context, stage: str, protocol: Protocol) -> StageResult:
    """A finished teacher or auxiliary read from its cache directory (or the given checkpoint),
    without a training loop and without data on the device; one that never finished is a UserError."""
    given = getattr(ctx.cfg, stage).checkpoint
    if given:
        return StageResult(stage, None, _load_given(ctx, ctx.network(stage), stage, given))
    work_dir = ctx.stage_path(stage, protocol)
    path = work_dir / FINAL
    if not path.exists():
        raise UserError(f"{path}: the {stage} stage ({protocol} protocol) has not finished; run it first")
    model = ctx.network(stage)
    history = load_final(path, model)
    return StageResult(stage, work_dir, _freeze(model), history=history)


def student_widths(student: TapNet) -> dict[str, int]:
    return {t.name: t.channels for t in student.intermediate_taps}


def prune_stage(ctx: Context, auxiliary: TapNet, student: TapNet | None = None, protocol: Protocol = "test") -> StageResult:
    """Kept channel indices of every intermediate auxiliary tap (the student's widths).

    Data-driven criteria read the protocol's train split only (never the val images in a search).
    """
    cfg = ctx.cfg
    work_dir = ctx.stage_path("prune", protocol)
    path = work_dir / INDICES
    student = student or ctx.network("student")
    if path.exists():
        try:
            return StageResult("prune", work_dir, pruned=_read_indices(path, auxiliary, student_widths(student)).to(ctx.device))
        except CheckpointError as exc:
            _set_aside(ctx, "prune", path, exc, "selecting the channels again")
    spec = ctx.data.spec
    indices = select_channels(
        auxiliary, student_widths(student), cfg.prune.criterion,
        data=ctx.data.train_full() if protocol == "test" else ctx.data.train,
        normalize=lambda u8: normalize(u8, spec.mean, spec.std),
        batches=cfg.prune.batches, seed=cfg.seed, device=ctx.device,
    )
    pruned = PrunedTaps(indices)
    ctx.saved(atomic_torch_save(pruned.state_dict(), path))
    kept = ", ".join(f"{k}: {len(v)}/{auxiliary.tap(k).channels}" for k, v in indices.items())
    ctx.log(f"[prune] {cfg.prune.criterion}: kept {kept}")
    return StageResult("prune", work_dir, pruned=pruned.to(ctx.device))


def _read_indices(path: Path, auxiliary: TapNet, widths: dict[str, int]) -> PrunedTaps:
    """Kept indices saved by :func:`prune_stage`, checked against the auxiliary and the student."""
    state = read_torch(path, "kept-channel indices file")
    if not isinstance(state, dict) or set(state) != set(widths):
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: kept indices for taps {got}, expected {sorted(widths)}")
    try:
        pruned = PrunedTaps.from_state_dict(state)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: {one_line(exc)[:200]}") from None
    for name, idx in pruned.indices.items():
        channels = auxiliary.tap(name).channels
        if len(idx) != widths[name] or int(idx.min()) < 0 or int(idx.max()) >= channels:
            raise CheckpointError(f"{path}: tap {name!r} keeps {len(idx)} of channels {int(idx.min())}..{int(idx.max())}, "
                                  f"expected {widths[name]} of 0..{channels - 1}")
    return pruned


def _set_aside(ctx: Context, stage: str, path: Path, exc: Exception, then: str) -> None:
    """Rename a corrupted cached file (kept for inspection) and say so in one line."""
    if rank() != 0:
        return
    recover(path, exc, then, ctx.log, stage)


@dataclass
class StudentRun:
    """A trained student: its network, its per-epoch history and its directory."""

    model: TapNet
    history: list[dict[str, float]]
    work_dir: Path

    @property
    def checkpoint(self) -> Path:
        """The finished student's weights and history (what ``indistill-study export`` ships)."""
        return self.work_dir / FINAL


def student_stage(
    ctx: Context,
    method: str,
    auxiliary: TapNet | None,
    pruned: PrunedTaps | None = None,
    *,
    protocol: Protocol = "test",
    hooks: list[EpochHook] | None = None,
    work_dir: Path | None = None,
    resume_from: Path | None = None,
) -> StudentRun:
    """Train a student with ``method`` (indistill | ce | pkt | mkt) on the protocol's training split."""
    cfg = ctx.cfg
    seed_everything(cfg.student_seed + 2)
    model = ctx.network("student")
    epochs, optim = cfg.student.schedule(method)
    impl: Method = create_method(method, cfg.student, tuple(t.name for t in model.intermediate_taps), epochs)
    if impl.needs_pruning and pruned is None:
        raise ValueError("method 'indistill' needs the pruned auxiliary taps")
    if impl.needs_source and auxiliary is None:
        raise ValueError(f"method {method!r} needs the auxiliary network")
    work_dir = work_dir or ctx.stage_path("student", protocol, method)
    trainable = _maybe_compile(model, cfg)
    step = student_step(trainable, impl, auxiliary, pruned, cfg, ctx.device)
    queries, database = ctx.eval_splits(protocol)

    def evaluate(epoch: int) -> dict[str, float]:
        res = evaluate_network(model, queries, database, ks=cfg.eval.ks, batch_size=cfg.eval.batch_size)
        return curve_metrics(protocol, res)

    loop = Loop(
        work_dir, model, optim, epochs, step,
        _batches(ctx, ctx.train_split(protocol), cfg.student, cfg.student_seed + 2),
        name=f"student/{method}", evaluate=evaluate, eval_every=cfg.student.eval_every,
        hooks=list(hooks or []), log=ctx.log, resume_from=resume_from, phase_of=impl.phase, saved=ctx.saved,
    )
    with step:
        history = loop.run()
    return StudentRun(model.eval(), history, work_dir)


def _read_eval(path: Path) -> dict[str, dict[str, float]]:
    """Cached retrieval results: ``{metric: {key: number}}``, else a one-line UserError naming the file."""
    res = read_json_file(path, "evaluation cache")
    ok = isinstance(res, dict) and res and all(
        isinstance(vals, dict) and vals and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals.values())
        for vals in res.values())
    if not ok:
        raise UserError(f"{path}: not an evaluation cache ({{metric: {{key: number}}}})")
    return res


def evaluate_stage(ctx: Context, model: nn.Module, stage_dir: Path, protocol: Protocol = "test") -> dict[str, dict[str, float]]:
    """Retrieval results of ``model`` under ``protocol``, cached next to its checkpoint."""
    path = stage_dir / f"eval-{protocol}-{stable_hash(list(ctx.cfg.eval.ks), 6)}.json"
    if path.exists():
        try:
            return _read_eval(path)
        except UserError as exc:
            _set_aside(ctx, "eval", path, exc, "evaluating again")
    queries, database = ctx.eval_splits(protocol)
    res = evaluate_network(model, queries, database, ks=ctx.cfg.eval.ks, batch_size=ctx.cfg.eval.batch_size)
    atomic_write_json(path, res)
    ctx.saved(path)
    return res


# ----------------------------------------------------------------------------- the artifact stages

Built = Mapping[str, StageResult]  # the results of the stages built before, by name


@dataclass(frozen=True)
class Stage:
    """An artifact stage, declared once: the stages it ``reads``, the ``file`` a finished one leaves
    in its directory, the config fields besides :data:`~indistill.engine.keys.EXECUTION` that cannot
    change it (``excludes``), how it is ``build``-t (trained, or reused when finished) and how a
    finished one is ``load``-ed without training. ``row``: its network is a row of the results table.
    A given auxiliary checkpoint replaces the teacher and the auxiliary's training for every stage
    after the teacher."""

    name: str
    reads: tuple[str, ...]
    file: str
    excludes: tuple[str, ...]
    build: Callable[[Context, Built, Protocol], StageResult]
    load: Callable[[Context, Built, Protocol], StageResult]
    row: bool = False

    def excluded(self, cfg: RunConfig) -> tuple[str, ...]:
        return (*EXECUTION, *self.excludes, *(given_auxiliary(cfg) if self.name != "teacher" else ()))


def _built(done: Built, stage: str) -> TapNet | None:
    return done[stage].network if stage in done else None


#: the artifact stages in the order they are built
ARTIFACT_STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("teacher", (), FINAL, ("networks.auxiliary", "networks.student", "auxiliary", "prune", "student"),
          build=lambda ctx, _done, protocol: teacher_stage(ctx, protocol),
          load=lambda ctx, _done, protocol: _load_network(ctx, "teacher", protocol), row=True),
    # a given auxiliary checkpoint needs no teacher (then none was built under ``val``)
    Stage("auxiliary", ("teacher",), FINAL, ("networks.student", "prune", "student"),
          build=lambda ctx, done, protocol: auxiliary_stage(ctx, _built(done, "teacher"), protocol),
          load=lambda ctx, _done, protocol: _load_network(ctx, "auxiliary", protocol), row=True),
    # the kept indices depend on the auxiliary and the student's widths; the target only on how a
    # student reads them (it enters the InDistill student's key). Loading selects them from the
    # finished auxiliary when they are not cached yet (no training).
    Stage("prune", ("auxiliary",), INDICES, ("student", "prune.target"),
          build=lambda ctx, done, protocol: prune_stage(ctx, done["auxiliary"].network, protocol=protocol),
          load=lambda ctx, done, protocol: prune_stage(ctx, done["auxiliary"].network, protocol=protocol)),
)}


def excluded(stage: str, cfg: RunConfig, method: str | None = None) -> tuple[str, ...]:
    """The dotted config paths that cannot change ``stage`` (``student``: of ``method``)."""
    if stage != "student":
        return ARTIFACT_STAGES[stage].excluded(cfg)
    impl = METHODS.get(method)
    return student_excluded(cfg, impl.needs_source, impl.needs_pruning, method)


def stage_key(stage: str, cfg: RunConfig, protocol: Protocol = "test", method: str | None = None) -> str:
    """The cache key of ``stage`` (teacher | auxiliary | prune | student of ``method``) under ``protocol``."""
    extra = None
    if stage == "student":
        epochs, optim = cfg.student.schedule(method)
        extra = {"method": method, "schedule": {"epochs": epochs, "optim": to_dict(optim)}}
    return hashed_key(stage, cfg, protocol, excluded(stage, cfg, method), extra)


def stage_dirname(stage: str, cfg: RunConfig, protocol: Protocol = "test", method: str | None = None) -> str:
    """The stage's directory name in the stage cache: ``<stage>-<key>`` (students: ``student-<method>-<protocol>-<key>``)."""
    name = f"student-{method}-{protocol}" if stage == "student" else stage
    return f"{name}-{stage_key(stage, cfg, protocol, method)}"
