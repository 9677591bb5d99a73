"""The pipeline's stages, each cached in ``<cache_root>/<stage>-<key>/`` by the config that determines it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import RunConfig, StageConfig
from ..data import BenchmarkData, Split, normalize
from ..evaluate import evaluate_network
from ..io import atomic_torch_save, atomic_write_json, stable_hash, torch_load
from ..losses import LOSSES
from ..models.base import EMBEDDING, TapNet, TapReader
from ..models.zoo import create_network
from ..pruning import PrunedTaps, select_channels
from ..schema import to_dict
from .batches import DeviceSplit
from .loop import EpochHook, Loop
from .methods import Method, StudentBatch, create_method
from .runtime import autocast, is_distributed, seed_everything

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


def _base_key(cfg: RunConfig) -> dict:
    return {"benchmark": cfg.benchmark, "data": cfg.data.options, "seed": cfg.seed, "precision": cfg.precision}


def teacher_key(cfg: RunConfig) -> str:
    return stable_hash({**_base_key(cfg), "net": cfg.networks.teacher, "train": to_dict(cfg.teacher)})


def auxiliary_key(cfg: RunConfig) -> str:
    return stable_hash({"teacher": teacher_key(cfg), "net": cfg.networks.auxiliary, "train": to_dict(cfg.auxiliary)})


def prune_key(cfg: RunConfig) -> str:
    return stable_hash({"auxiliary": auxiliary_key(cfg), "student": cfg.networks.student, "prune": to_dict(cfg.prune)})


def student_key(cfg: RunConfig, method: str, protocol: Protocol) -> str:
    s = cfg.student
    key = {
        "method": method, "protocol": protocol, "auxiliary": auxiliary_key(cfg), "net": cfg.networks.student,
        "epochs": s.epochs, "batch_size": s.batch_size, "optim": to_dict(s.optim),
        "ce_weight": s.ce_weight if method != "ce" else None,
    }
    if method == "indistill":
        key.update(curriculum=to_dict(s.curriculum), prune=prune_key(cfg))
    if method == "mkt":
        key.update(mkt=to_dict(s.mkt))
    if method == "ce":
        key.pop("auxiliary")
        key["base"] = _base_key(cfg)
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


def _ce_loop(ctx: Context, name: str, model: TapNet, stage: StageConfig, work_dir: Path) -> Loop:
    trainable = _maybe_compile(_ddp(model, ctx.device), ctx.cfg)

    def step(x: Tensor, y: Tensor, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        with autocast(ctx.device, ctx.cfg.precision):
            logits = trainable(x)
        return F.cross_entropy(logits.float(), y), {}

    return Loop(work_dir, model, stage.optim, stage.epochs, step, _batches(ctx, ctx.split("train_full"), stage, ctx.cfg.seed),
                name=name, log=ctx.log)


# ----------------------------------------------------------------------------- stages


def teacher_stage(ctx: Context) -> TapNet:
    """Train the teacher with cross-entropy, or load the user's checkpoint."""
    cfg = ctx.cfg
    seed_everything(cfg.seed)
    model = ctx.network("teacher")
    if cfg.teacher.checkpoint:
        path = Path(cfg.teacher.checkpoint).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"teacher.checkpoint: {path} does not exist")
        state = torch_load(path)
        model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
        ctx.log(f"[teacher] loaded {path}")
        return _freeze(model)
    _ce_loop(ctx, "teacher", model, cfg.teacher, ctx.stage_dir("teacher", teacher_key(cfg))).run()
    return _freeze(model)


def auxiliary_stage(ctx: Context, teacher: TapNet) -> TapNet:
    """Cross-entropy, then PKT from the teacher's embedding, starting from the CE weights."""
    cfg = ctx.cfg
    seed_everything(cfg.seed + 1)
    model = ctx.network("auxiliary")
    key = auxiliary_key(cfg)
    _ce_loop(ctx, "auxiliary/ce", model, cfg.auxiliary.ce, ctx.stage_dir("auxiliary-ce", key)).run()
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
         _batches(ctx, ctx.split("train_full"), stage, cfg.seed + 1), name="auxiliary/pkt", log=ctx.log).run()
    t_reader.close()
    a_reader.close()
    return _freeze(model)


def student_widths(student: TapNet) -> dict[str, int]:
    return {t.name: t.channels for t in student.intermediate_taps}


def prune_stage(ctx: Context, auxiliary: TapNet, student: TapNet | None = None) -> PrunedTaps:
    """Kept channel indices of every intermediate auxiliary tap (the student's widths)."""
    cfg = ctx.cfg
    path = ctx.stage_dir("prune", prune_key(cfg)) / "indices.pt"
    if path.exists():
        return PrunedTaps.from_state_dict(torch_load(path)).to(ctx.device)
    student = student or ctx.network("student")
    spec = ctx.data.spec
    indices = select_channels(
        auxiliary, student_widths(student), cfg.prune.criterion,
        data=ctx.data.train, normalize=lambda u8: normalize(u8, spec.mean, spec.std),
        batches=cfg.prune.batches, seed=cfg.seed, device=ctx.device,
    )
    pruned = PrunedTaps(indices)
    atomic_torch_save(pruned.state_dict(), path)
    kept = ", ".join(f"{k}: {len(v)}/{auxiliary.tap(k).channels}" for k, v in indices.items())
    ctx.log(f"[prune] {cfg.prune.criterion}: kept {kept}")
    return pruned.to(ctx.device)


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
    seed_everything(cfg.seed + 2)
    model = ctx.network("student")
    impl: Method = create_method(method, cfg.student, tuple(t.name for t in model.intermediate_taps))
    if impl.needs_pruning and pruned is None:
        raise ValueError("method 'indistill' needs the pruned auxiliary taps")
    if impl.needs_source and auxiliary is None:
        raise ValueError(f"method {method!r} needs the auxiliary network")
    work_dir = work_dir or ctx.stage_dir(f"student-{method}-{protocol}", student_key(cfg, method, protocol))
    trainable = _maybe_compile(_ddp(model, ctx.device, find_unused=True), cfg)
    all_taps = tuple(t.name for t in model.taps)
    s_reader = TapReader(trainable, all_taps)
    a_reader = TapReader(auxiliary, all_taps) if impl.needs_source else None

    def step(x: Tensor, y: Tensor, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        with autocast(ctx.device, cfg.precision):
            source: dict[str, Tensor] = {}
            if a_reader is not None:
                with torch.no_grad():
                    source = a_reader(x)[1]
                if impl.needs_pruning:
                    source = pruned.apply(source)
            logits, feats = s_reader(x)
            return impl.loss(StudentBatch(epoch, y, logits, feats, source))

    queries, database = ctx.eval_splits(protocol)

    def evaluate(epoch: int) -> dict[str, float]:
        res = evaluate_network(model, queries, database, ks=cfg.eval.ks, batch_size=cfg.eval.batch_size, precision=cfg.precision)
        return {f"{protocol}/{m}/{k}": v for m, vals in res.items() for k, v in vals.items() if k in ("map", "map_legacy")}

    loop = Loop(
        work_dir, model, cfg.student.optim, cfg.student.epochs, step,
        _batches(ctx, ctx.train_split(protocol), cfg.student, cfg.seed + 2),
        name=f"student/{method}", evaluate=evaluate, eval_every=cfg.student.eval_every,
        hooks=list(hooks or []), log=ctx.log, resume_from=resume_from,
    )
    try:
        history = loop.run()
    finally:
        s_reader.close()
        if a_reader is not None:
            a_reader.close()
    return StudentRun(model.eval(), history, work_dir)


def evaluate_stage(ctx: Context, model: nn.Module, stage_dir: Path, protocol: Protocol = "test") -> dict[str, dict[str, float]]:
    """Retrieval results of ``model`` under ``protocol``, cached next to its checkpoint."""
    path = stage_dir / f"eval-{protocol}-{stable_hash(list(ctx.cfg.eval.ks), 6)}.json"
    if path.exists():
        import json

        return json.loads(path.read_text())
    queries, database = ctx.eval_splits(protocol)
    res = evaluate_network(model, queries, database, ks=ctx.cfg.eval.ks, batch_size=ctx.cfg.eval.batch_size,
                           precision=ctx.cfg.precision)
    atomic_write_json(path, res)
    return res


def replace_student(cfg: RunConfig, **changes) -> RunConfig:
    """``cfg`` with fields of ``cfg.student`` replaced (convenience for the study)."""
    return dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, **changes))
