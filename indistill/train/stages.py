"""The pipeline's stages, each cached in ``<cache_root>/<stage>-<key>/`` by the config that determines it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import RunConfig, StageConfig
from ..data import BenchmarkData, Split, normalize
from ..evaluate import curve_metrics, evaluate_network
from ..errors import CheckpointError, UserError, one_line
from ..io import atomic_torch_save, atomic_write_json, read_json_file, read_torch, recover, stable_hash
from ..losses import LOSSES
from ..models.base import EMBEDDING, TapNet, TapReader
from ..models.checkpoint import load_checkpoint
from ..models.zoo import create_network
from ..pruning import PrunedTaps, select_channels
from .batches import DeviceSplit
from .keys import Protocol, stage_dirname, stage_key
from .loop import FINAL, EpochHook, Loop, load_final
from .methods import Method, create_method
from .runtime import autocast, rank, seed_everything, stage_precision
from .student_step import student_step

@dataclass
class Context:
    """A loaded benchmark on its device plus the config and the stage cache."""

    cfg: RunConfig
    data: BenchmarkData
    device: torch.device
    cache_root: Path
    log: Callable[[str], None] = print
    #: called (rank 0) with every file a stage writes under ``cache_root``, as it is written: the
    #: study mirrors a remote stage cache this way
    persist: Callable[[Path], None] | None = None
    _splits: dict[str, DeviceSplit] = field(default_factory=dict)

    def saved(self, path: Path) -> None:
        if self.persist is not None and rank() == 0:
            self.persist(path)

    def split(self, name: str) -> DeviceSplit:
        """``train`` (minus val), ``val``, ``test`` or ``train_full`` on the device."""
        if name not in self._splits:
            raw: Split = self.data.train_full() if name == "train_full" else getattr(self.data, name)
            self._splits[name] = DeviceSplit.create(raw, self.data.spec, self.device, self.cfg.channels_last)
        return self._splits[name]

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
    directory (None for a given checkpoint) and its per-epoch training history."""

    stage: str
    directory: Path | None
    network: TapNet | None = None
    pruned: PrunedTaps | None = None
    history: list[dict[str, float]] = field(default_factory=list)


INDICES = "indices.pt"
#: the file a finished stage leaves in its directory: what :func:`load_stage` reads
STAGE_FILES = {"teacher": FINAL, "auxiliary": FINAL, "prune": INDICES}


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
    return StageResult("teacher", work_dir, _freeze(model), history=history)


def auxiliary_ce_dir(ctx: Context, protocol: Protocol) -> Path:
    """Where the auxiliary stage keeps its cross-entropy start (keyed like the auxiliary itself)."""
    return ctx.stage_dir("auxiliary-ce", stage_key("auxiliary", ctx.cfg, protocol))


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
    ce_dir = auxiliary_ce_dir(ctx, protocol)
    if not (work_dir / FINAL).exists():  # a finished auxiliary needs neither its CE start nor the teacher
        with stage_precision(cfg.precision):
            _ce_loop(ctx, "auxiliary/ce", model, cfg.auxiliary.ce, ce_dir, protocol).run()
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
    return StageResult("auxiliary", work_dir, _freeze(model), history=history)


def load_stage(ctx: Context, stage: str, protocol: Protocol = "test", auxiliary: TapNet | None = None) -> StageResult:
    """A finished artifact stage (teacher | auxiliary | prune) read from its cache directory (or
    the given checkpoint), without a training loop and without data on the device; ``prune``
    checks its indices against ``auxiliary``. A stage that never finished is a UserError."""
    cfg = ctx.cfg
    given = getattr(cfg, stage).checkpoint if stage in ("teacher", "auxiliary") else None
    if given:
        return StageResult(stage, None, _load_given(ctx, ctx.network(stage), stage, given))
    work_dir = ctx.stage_path(stage, protocol)
    path = work_dir / STAGE_FILES[stage]
    if not path.exists():
        raise UserError(f"{path}: the {stage} stage ({protocol} protocol) has not finished; run it first")
    if stage == "prune":
        if auxiliary is None:
            raise ValueError("loading the prune stage needs the auxiliary network")
        pruned = _read_indices(path, auxiliary, student_widths(ctx.network("student")))
        return StageResult(stage, work_dir, pruned=pruned.to(ctx.device))
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
    model: TapNet
    history: list[dict[str, float]]
    work_dir: Path


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
