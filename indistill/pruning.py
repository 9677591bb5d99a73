"""Pruning criteria and the pruned teacher taps of InDistill (DESIGN.md section 3).

A criterion scores the output filters of the conv that produces an intermediate tap; the top-k
(k = the student's width there) are kept in their original order. Because BN (per channel), ReLU
and max-pooling act channel by channel, the pruned feature is the auxiliary's unpruned tap output
restricted to those channels: exactly what a structurally pruned conv+BN fed the unpruned path
gives (see :func:`pruned_block`). The scores are short tensor expressions written out here:
torch-pruning's importance classes score whole dependency groups (coupled layers), which is not
the per-layer ranking the method defines, and they need a traced dependency graph of the model.
"""
from __future__ import annotations

import copy
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data.base import Split
from .models.base import TapNet, TapReader
from .registry import Registry


class ScoreContext:
    """What a criterion may use: the layer, its BN, the tap, and (data-driven ones) train batches."""

    def __init__(self, model: TapNet, tap: str, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, seed: int,
                 batches: Callable[[], list[tuple[Tensor, Tensor]]]) -> None:
        self.model, self.tap, self.conv, self.bn, self.seed = model, tap, conv, bn, seed
        self._batches = batches

    def batches(self) -> list[tuple[Tensor, Tensor]]:
        return self._batches()


Criterion = Callable[[ScoreContext], Tensor]
CRITERIA: Registry[Criterion] = Registry("criterion")


def _filters(ctx: ScoreContext) -> Tensor:
    return ctx.conv.weight.detach().flatten(1).double()


@CRITERIA.register("l1")
def l1(ctx: ScoreContext) -> Tensor:
    """Sum of |w| of each output filter (the paper's criterion)."""
    return _filters(ctx).abs().sum(1)


@CRITERIA.register("l2")
def l2(ctx: ScoreContext) -> Tensor:
    return _filters(ctx).pow(2).sum(1).sqrt()


@CRITERIA.register("bn_scale")
def bn_scale(ctx: ScoreContext) -> Tensor:
    """|gamma| of the BatchNorm after the conv."""
    if ctx.bn is None:
        raise ValueError(f"criterion 'bn_scale' needs a BatchNorm after the conv of tap {ctx.tap!r}")
    return ctx.bn.weight.detach().double().abs()


@CRITERIA.register("fpgm")
def fpgm(ctx: ScoreContext) -> Tensor:
    """Sum of distances to the layer's other filters: filters near the geometric median are redundant."""
    w = _filters(ctx)
    return torch.cdist(w, w).sum(1)


@CRITERIA.register("random")
def random(ctx: ScoreContext) -> Tensor:
    g = torch.Generator().manual_seed(ctx.seed)
    return torch.rand(ctx.conv.out_channels, generator=g, dtype=torch.float64)


@CRITERIA.register("activation")
def activation(ctx: ScoreContext) -> Tensor:
    """Mean post-ReLU activation of each channel of the tap over a few train batches."""
    total = None
    with torch.no_grad(), TapReader(ctx.model, (ctx.tap,)) as reader:
        for x, _ in ctx.batches():
            feat = reader(x)[1][ctx.tap].double()
            s = feat.transpose(0, 1).flatten(1).mean(1)
            total = s if total is None else total + s
    return total


@CRITERIA.register("taylor")
def taylor(ctx: ScoreContext) -> Tensor:
    """|mean of (dCE/d out) * out| per channel of the conv output (first-order Taylor), over train batches."""
    saved: dict[str, Tensor] = {}

    def hook(_m, _i, out: Tensor) -> None:
        out.retain_grad()
        saved["out"] = out

    handle = ctx.conv.register_forward_hook(hook)
    total = None
    try:
        for x, y in ctx.batches():
            ctx.model.zero_grad(set_to_none=True)
            F.cross_entropy(ctx.model(x), y).backward()
            out = saved["out"]
            s = (out.grad * out).detach().double().transpose(0, 1).flatten(1).mean(1)
            total = s if total is None else total + s
    finally:
        handle.remove()
        ctx.model.zero_grad(set_to_none=True)
    return total.abs()


def top_k(scores: Tensor, k: int) -> Tensor:
    """Indices of the k highest scores (ties: lower index first), in ascending (original) order."""
    n = scores.numel()
    if not 0 < k <= n:
        raise ValueError(f"cannot keep {k} of {n} channels")
    order = sorted(range(n), key=lambda i: (-float(scores[i]), i))
    return torch.tensor(sorted(order[:k]), dtype=torch.int64)


def select_channels(
    model: TapNet,
    widths: Mapping[str, int],
    criterion: str,
    *,
    data: Split | None = None,
    normalize: Callable[[Tensor], Tensor] | None = None,
    batches: int = 4,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Tensor]:
    """Kept channel indices (sorted) of every tap in ``widths``; the model is left unchanged.

    Data-driven criteria read only ``data`` (pass the train split) through ``normalize``.
    """
    score = CRITERIA.get(criterion)
    device = torch.device(device)
    cache: list[tuple[Tensor, Tensor]] = []

    def get_batches() -> list[tuple[Tensor, Tensor]]:
        if data is None or normalize is None:
            raise ValueError(f"criterion {criterion!r} needs training data (data=train split, normalize=...)")
        if not cache:
            g = torch.Generator().manual_seed(seed)
            order = torch.randperm(len(data), generator=g)[: batches * batch_size]
            for start in range(0, order.numel(), batch_size):
                sub = data.subset(order[start : start + batch_size])
                cache.append((normalize(sub.images.to(device)), sub.labels.to(device)))
        return cache

    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(criterion == "taylor")
    try:
        out = {}
        for tap, k in widths.items():
            spec = model.tap(tap)
            conv = model.get_submodule(spec.conv)
            bn = model.get_submodule(spec.bn) if spec.bn else None
            scores = score(ScoreContext(model, tap, conv, bn, seed, get_batches))
            out[tap] = top_k(scores.cpu(), k)
        return out
    finally:
        model.train(was_training)
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


class PrunedTaps:
    """Kept channels per tap; ``apply`` restricts tap features to them (the pruned teacher's features)."""

    def __init__(self, indices: Mapping[str, Tensor]) -> None:
        self.indices = {k: torch.as_tensor(v, dtype=torch.int64) for k, v in indices.items()}

    def apply(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out = dict(features)
        for name, idx in self.indices.items():
            if name in out:
                out[name] = out[name].index_select(1, idx)
        return out

    def to(self, device: str | torch.device) -> "PrunedTaps":
        return PrunedTaps({k: v.to(device) for k, v in self.indices.items()})

    def state_dict(self) -> dict[str, list[int]]:
        return {k: v.cpu().tolist() for k, v in self.indices.items()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, list[int]]) -> "PrunedTaps":
        return cls({k: torch.tensor(v, dtype=torch.int64) for k, v in state.items()})


def pruned_block(block: nn.Sequential, keep: Tensor) -> nn.Sequential:
    """A copy of a (conv, BN, ...) block with only the ``keep`` output filters: weight, bias, BN affine and running stats."""
    new = copy.deepcopy(block)
    conv, bn = new[0], new[1]
    conv.weight = nn.Parameter(conv.weight.detach()[keep].clone())
    if conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias.detach()[keep].clone())
    conv.out_channels = len(keep)
    for name in ("weight", "bias"):
        setattr(bn, name, nn.Parameter(getattr(bn, name).detach()[keep].clone()))
    bn.running_mean = bn.running_mean[keep].clone()
    bn.running_var = bn.running_var[keep].clone()
    bn.num_features = len(keep)
    return new
