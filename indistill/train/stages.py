"""The pipeline's stages, each cached in ``<cache_root>/<stage>-<key>/`` by the config that determines it."""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import RunConfig, StageConfig
from ..data import BenchmarkData, Split, normalize
from ..evaluate import evaluate_network
from ..errors import CheckpointError, UserError, one_line
from ..io import atomic_torch_save, atomic_write_json, read_json_file, read_torch, recover, stable_hash
from ..losses import LOSSES
from ..models.base import EMBEDDING, TapNet, TapReader
from ..models.checkpoint import load_checkpoint
from ..models.zoo import create_network
from ..pruning import PrunedTaps, select_channels
from ..schema import to_dict
from .batches import DeviceSplit
from .loop import EpochHook, Loop
from .methods import Method, create_method
from .runtime import autocast, is_distributed, rank, seed_everything
from .student_step import student_step

Protocol = Literal["test", "val"]


@dataclass
class Context:
    """A loaded benchmark on its device plus the config and the stage cache."""

    cfg: RunConfig
    data: BenchmarkData
    device: torch.device
    cache_root: Path
    log: Callable[[str], None] = print
    _splits: dict[str, DeviceSplit] = field(default_factory=dict)

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


# ----------------------------------------------------------------------------- cache keys
# Every key holds the protocol: a search ("val") trains teacher, auxiliary and pruning without the
# val images, the final runs ("test") on the full train split, so each is cached separately.


def _base_key(cfg: RunConfig, protocol: Protocol) -> dict:
    return {"benchmark": cfg.benchmark, "data": cfg.data.options, "seed": cfg.seed, "precision": cfg.precision,
            "protocol": protocol}


def _file_id(path: str | None) -> str | None:
    """A given checkpoint enters a key by its content, so a replaced file is never shadowed and
    copies of the same file on different nodes give the same key."""
    if not path:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        return str(p)
    st = p.stat()
    return _content_hash(str(p.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _content_hash(path: str, _size: int, _mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def teacher_key(cfg: RunConfig, protocol: Protocol = "test") -> str:
    return stable_hash({**_base_key(cfg, protocol), "net": cfg.networks.teacher, "train": to_dict(cfg.teacher),
                        "file": _file_id(cfg.teacher.checkpoint)})


def auxiliary_key(cfg: RunConfig, protocol: Protocol = "test") -> str:
    if cfg.auxiliary.checkpoint:  # the user's weights: no teacher, no training
        return stable_hash({**_base_key(cfg, protocol), "net": cfg.networks.auxiliary, "file": _file_id(cfg.auxiliary.checkpoint)})
    return stable_hash({"teacher": teacher_key(cfg, protocol), "net": cfg.networks.auxiliary, "train": to_dict(cfg.auxiliary)})


def prune_key(cfg: RunConfig, protocol: Protocol = "test") -> str:
    return stable_hash({"auxiliary": auxiliary_key(cfg, protocol), "student": cfg.networks.student, "prune": to_dict(cfg.prune)})


def student_key(cfg: RunConfig, method: str, protocol: Protocol) -> str:
    s = cfg.student
    epochs, optim = s.schedule(method)
    key = {
        "method": method, "protocol": protocol, "auxiliary": auxiliary_key(cfg, protocol), "net": cfg.networks.student,
        "seed": cfg.student_seed,
        "epochs": epochs, "batch_size": s.batch_size, "optim": to_dict(optim),
        "ce_weight": s.ce_weight if method != "ce" else None,
    }
    if method == "indistill":
        key.update(curriculum=to_dict(s.curriculum), prune=prune_key(cfg, protocol))
    if method == "mkt":
        key.update(mkt=to_dict(s.mkt))
    if method == "ce":
        key.pop("auxiliary")
        key["base"] = _base_key(cfg, protocol)
    return stable_hash(key)


# ----------------------------------------------------------------------------- helpers


def _ddp(model: nn.Module, device: torch.device, find_unused: bool = False) -> nn.Module:
    if not is_distributed():
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


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
    trainable = _maybe_compile(_ddp(model, ctx.device), ctx.cfg)

    def step(x: Tensor, y: Tensor, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        with autocast(ctx.device, ctx.cfg.precision):
            logits = trainable(x)
        return F.cross_entropy(logits.float(), y), {}

    return Loop(work_dir, model, stage.optim, stage.epochs, step, _batches(ctx, ctx.train_split(protocol), stage, ctx.cfg.seed),
                name=name, log=ctx.log)


def _load_given(ctx: Context, model: TapNet, role: str, path: str) -> TapNet:
    load_checkpoint(model, path)
    ctx.log(f"[{role}] loaded {Path(path).expanduser()}")
    return _freeze(model)


# ----------------------------------------------------------------------------- stages


def teacher_stage(ctx: Context, protocol: Protocol = "test") -> TapNet:
    """Train the teacher with cross-entropy on the protocol's train split, or load the user's checkpoint."""
    cfg = ctx.cfg
    seed_everything(cfg.seed)
    model = ctx.network("teacher")
    if cfg.teacher.checkpoint:
        return _load_given(ctx, model, "teacher", cfg.teacher.checkpoint)
    _ce_loop(ctx, "teacher", model, cfg.teacher, ctx.stage_dir("teacher", teacher_key(cfg, protocol)), protocol).run()
    return _freeze(model)


def auxiliary_stage(ctx: Context, teacher: TapNet | None, protocol: Protocol = "test") -> TapNet:
    """Cross-entropy, then PKT from the teacher's embedding, starting from the CE weights
    (or the user's ``auxiliary.checkpoint``, when given: then ``teacher`` is not read)."""
    cfg = ctx.cfg
    seed_everything(cfg.seed + 1)
    model = ctx.network("auxiliary")
    if cfg.auxiliary.checkpoint:
        return _load_given(ctx, model, "auxiliary", cfg.auxiliary.checkpoint)
    if teacher is None:
        raise ValueError("the auxiliary stage needs the teacher (no auxiliary.checkpoint given)")
    key = auxiliary_key(cfg, protocol)
    _ce_loop(ctx, "auxiliary/ce", model, cfg.auxiliary.ce, ctx.stage_dir("auxiliary-ce", key), protocol).run()
    trainable = _maybe_compile(_ddp(model, ctx.device), cfg)
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
    Loop(ctx.stage_dir("auxiliary", key), model, stage.optim, stage.epochs, step,
         _batches(ctx, ctx.train_split(protocol), stage, cfg.seed + 1), name="auxiliary/pkt", log=ctx.log).run()
    t_reader.close()
    a_reader.close()
    return _freeze(model)


def student_widths(student: TapNet) -> dict[str, int]:
    return {t.name: t.channels for t in student.intermediate_taps}


def prune_stage(ctx: Context, auxiliary: TapNet, student: TapNet | None = None, protocol: Protocol = "test") -> PrunedTaps:
    """Kept channel indices of every intermediate auxiliary tap (the student's widths).

    Data-driven criteria read the protocol's train split only (never the val images in a search).
    """
    cfg = ctx.cfg
    path = ctx.stage_dir("prune", prune_key(cfg, protocol)) / "indices.pt"
    student = student or ctx.network("student")
    if path.exists():
        try:
            return _read_indices(path, auxiliary, student_widths(student)).to(ctx.device)
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
    atomic_torch_save(pruned.state_dict(), path)
    kept = ", ".join(f"{k}: {len(v)}/{auxiliary.tap(k).channels}" for k, v in indices.items())
    ctx.log(f"[prune] {cfg.prune.criterion}: kept {kept}")
    return pruned.to(ctx.device)


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
    work_dir = work_dir or ctx.stage_dir(f"student-{method}-{protocol}", student_key(cfg, method, protocol))
    trainable = _maybe_compile(_ddp(model, ctx.device, find_unused=True), cfg)
    step = student_step(trainable, impl, auxiliary, pruned, cfg, ctx.device)
    queries, database = ctx.eval_splits(protocol)

    def evaluate(epoch: int) -> dict[str, float]:
        res = evaluate_network(model, queries, database, ks=cfg.eval.ks, batch_size=cfg.eval.batch_size)
        return {f"{protocol}/{m}/{k}": v for m, vals in res.items() for k, v in vals.items() if k in ("map", "map_legacy")}

    loop = Loop(
        work_dir, model, optim, epochs, step,
        _batches(ctx, ctx.train_split(protocol), cfg.student, cfg.student_seed + 2),
        name=f"student/{method}", evaluate=evaluate, eval_every=cfg.student.eval_every,
        hooks=list(hooks or []), log=ctx.log, resume_from=resume_from, phase_of=impl.phase,
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
    return res
