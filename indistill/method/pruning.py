"""Channel selection for InDistill's pruned auxiliary taps (docs/method.md, "Pruning").

A criterion scores the output channels of the conv that produces an intermediate tap; the k
highest (k = the student's width there; ties go to the lower index) are kept in their original
order. BN, ReLU and max-pooling act channel by channel, so the pruned feature is the auxiliary's
unpruned tap output restricted to those channels: exactly what structurally pruning that conv's
output filters (and its BN) yields when fed the unpruned path (:func:`structurally_pruned_block`).

What comes from torch-pruning and what is written here:

- ``l2`` and ``bn_scale`` use torch-pruning's ``MagnitudeImportance(p=2)`` (sqrt taken, so the
  score is the filter's L2 norm) and ``BNScaleImportance`` on a dependency group holding only a
  copy of the producing conv (and its BN), so its group reduction cannot mix in other layers;
- structural pruning (:func:`structurally_pruned_block`) uses ``tp.prune_conv_out_channels`` and
  ``tp.prune_batchnorm_out_channels``;
- ``l1`` calls ``torch.linalg.vector_norm`` exactly as ``torch.nn.utils.prune.ln_structured``
  does, because it must keep exactly what that function keeps: torch-pruning's |w| sum differs
  from it in the last bits on most layers, which could flip a near tie;
- ``fpgm`` is written out: torch-pruning's FPGMImportance measures distances between |w|^p, which
  drops the signs, not between the filters as in He et al. (2019);
- ``taylor`` is the activation-based first-order Taylor criterion (Molchanov et al. 2017) on the
  conv output; torch-pruning's TaylorImportance is the weight-gradient variant;
- ``activation`` scores the tap's own channels; torch-pruning's ActivationImportance scores the
  input channels of consuming layers;
- ``random`` needs a seeded ``torch.Generator``; torch-pruning's draws from the global RNG.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import Tensor, nn

from indistill.data.base import Split
from indistill.models.base import EMBEDDING, TapNet, TapSpec, unwrap
from indistill.common.registry import Registry

Batches = Callable[[], Iterator[tuple[Tensor, Tensor]]]


@dataclass(frozen=True)
class Criterion:
    """Scores the channels of the given intermediate taps: ``score(net, taps, batches, seed)``.

    ``batches`` yields ``(inputs, labels)`` of the train split; only ``needs_data`` criteria call it.
    """

    score: Callable[[TapNet, Sequence[TapSpec], Batches, int], dict[str, Tensor]]
    needs_data: bool
    description: str


CRITERIA: Registry[Criterion] = Registry("criterion")


# ----------------------------------------------------------------------------- weight criteria


def _conv(net: TapNet, spec: TapSpec) -> nn.Conv2d:
    if spec.conv is None:
        raise ValueError(f"tap {spec.name!r} names no producing conv, so its channels cannot be scored")
    return net.get_submodule(spec.conv)


def _bn(net: TapNet, spec: TapSpec) -> nn.BatchNorm2d:
    if spec.bn is None:
        raise ValueError(f"criterion 'bn_scale': tap {spec.name!r} has no BatchNorm after its conv")
    return net.get_submodule(spec.bn)


def _per_tap(fn: Callable[[TapNet, TapSpec], Tensor]) -> Callable[[TapNet, Sequence[TapSpec], Batches, int], dict[str, Tensor]]:
    def score(net: TapNet, taps: Sequence[TapSpec], _batches: Batches, _seed: int) -> dict[str, Tensor]:
        with torch.no_grad():
            return {t.name: fn(net, t) for t in taps}

    return score


def _fresh_copy(module: nn.Module) -> nn.Module:
    # a copy without the caller's hooks (a TapReader may be attached) for torch-pruning to trace
    new = copy.deepcopy(module)
    for m in new.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    return new


def _tp_importance(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, importance: tp.importance.Importance) -> Tensor:
    """torch-pruning's importance of the output channels of a copy of ``conv`` (+ ``bn``) alone."""
    layers = nn.Sequential(_fresh_copy(conv), *([_fresh_copy(bn)] if bn is not None else []))
    c = layers[0]
    size = [d * (k - 1) + 1 for k, d in zip(c.kernel_size, c.dilation)]
    example = torch.zeros(1, c.in_channels, *size, device=c.weight.device, dtype=c.weight.dtype)
    layers.requires_grad_(True)
    with torch.enable_grad():  # torch-pruning traces the autograd graph
        graph = tp.DependencyGraph().build_dependency(layers, example_inputs=example)
    group = graph.get_pruning_group(c, tp.prune_conv_out_channels, idxs=list(range(c.out_channels)))
    return importance(group).detach()


def _l1(net: TapNet, spec: TapSpec) -> Tensor:
    w = _conv(net, spec).weight.detach()
    # the very call of torch.nn.utils.prune._compute_norm (ln_structured, n=1, dim=0)
    return torch.linalg.vector_norm(w, ord=1, dim=list(range(1, w.dim())))


def _l2(net: TapNet, spec: TapSpec) -> Tensor:
    imp = tp.importance.MagnitudeImportance(p=2, group_reduction="first", normalizer=None, target_types=[nn.modules.conv._ConvNd])
    return _tp_importance(_conv(net, spec), None, imp).sqrt()


def _bn_scale(net: TapNet, spec: TapSpec) -> Tensor:
    imp = tp.importance.BNScaleImportance(normalizer=None)
    return _tp_importance(_conv(net, spec), _bn(net, spec), imp)


def _fpgm(net: TapNet, spec: TapSpec) -> Tensor:
    w = _conv(net, spec).weight.detach().flatten(1).double()
    # exact pairwise distances (the matmul shortcut loses precision on near-identical filters)
    return torch.cdist(w, w, compute_mode="donot_use_mm_for_euclid_dist").sum(1)


def _random(net: TapNet, taps: Sequence[TapSpec], _batches: Batches, seed: int) -> dict[str, Tensor]:
    # draw for every intermediate tap in model order, so a tap's scores do not depend on which
    # other taps were asked for
    g = torch.Generator().manual_seed(seed)
    drawn = {t.name: torch.rand(t.channels, generator=g, dtype=torch.float64) for t in net.intermediate_taps}
    return {t.name: drawn[t.name] for t in taps}


# ----------------------------------------------------------------------------- data criteria


def _activation(net: TapNet, taps: Sequence[TapSpec], batches: Batches, _seed: int) -> dict[str, Tensor]:
    """Mean of relu(tap output) per channel, over every sample and position of the given batches."""
    sums: dict[str, Tensor | float] = {t.name: 0.0 for t in taps}
    counts = {t.name: 0 for t in taps}

    def add(name: str):
        def hook(_m: nn.Module, _i, out: Tensor) -> None:
            sums[name] = sums[name] + F.relu(out).double().sum((0, 2, 3))
            counts[name] += out.shape[0] * out.shape[2] * out.shape[3]

        return hook

    handles = [net.get_submodule(t.module).register_forward_hook(add(t.name)) for t in taps]
    try:
        with torch.no_grad():
            for x, _ in batches():
                net(x)
    finally:
        for h in handles:
            h.remove()
    return {name: s / counts[name] for name, s in sums.items()}


def _taylor(net: TapNet, taps: Sequence[TapSpec], batches: Batches, _seed: int) -> dict[str, Tensor]:
    """|mean over batches of mean_(n,h,w) (dCE/d out * out)| per channel of each producing conv's output."""
    outs: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(_m: nn.Module, _i, out: Tensor) -> None:
            if not out.requires_grad:  # frozen parameters and input: make it a leaf we can differentiate
                out.requires_grad_(True)
            outs[name] = out

        return hook

    handles = [_conv(net, t).register_forward_hook(keep(t.name)) for t in taps]
    sums = {t.name: 0.0 for t in taps}
    n = 0
    try:
        with torch.enable_grad():
            for x, y in batches():
                outs.clear()
                loss = F.cross_entropy(net(x), y)
                grads = torch.autograd.grad(loss, [outs[t.name] for t in taps])
                for t, g in zip(taps, grads):
                    sums[t.name] = sums[t.name] + (g * outs[t.name]).detach().double().mean((0, 2, 3))
                n += 1
    finally:
        for h in handles:
            h.remove()
    return {name: (s / n).abs() for name, s in sums.items()}


CRITERIA.register("l1", Criterion(_per_tap(_l1), False, "L1 norm of each output filter (the paper's)"))
CRITERIA.register("l2", Criterion(_per_tap(_l2), False, "L2 norm of each output filter"))
CRITERIA.register("bn_scale", Criterion(_per_tap(_bn_scale), False, "|gamma| of the BatchNorm after the conv"))
CRITERIA.register("fpgm", Criterion(_per_tap(_fpgm), False, "sum of distances to the layer's other filters (geometric median)"))
CRITERIA.register("taylor", Criterion(_taylor, True, "first-order Taylor |mean(dCE/d out * out)| on train batches"))
CRITERIA.register("activation", Criterion(_activation, True, "mean post-ReLU activation of the tap on train batches"))
CRITERIA.register("random", Criterion(_random, False, "seeded random scores (control)"))


# ----------------------------------------------------------------------------- selection


def top_k(scores: Tensor, k: int) -> Tensor:
    """Indices (int64, ascending) of the ``k`` highest scores; ties go to the lower index."""
    n = scores.numel()
    if not 0 < k <= n:
        raise ValueError(f"cannot keep {k} of {n} channels")
    if torch.isnan(scores).any():
        raise ValueError("channel scores contain NaN")
    # a stable descending sort keeps equal scores in index order
    order = torch.sort(scores.detach().cpu(), descending=True, stable=True).indices[:k]
    return order.sort().values.to(torch.int64)


def _train_batches(
    data: Split, normalize: Callable[[Tensor], Tensor], batches: int, batch_size: int, seed: int, device: torch.device
) -> Batches:
    def produce() -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
        for b in range(batches):
            idx = order[b * batch_size : (b + 1) * batch_size]
            if idx.numel() == 0:
                return
            yield normalize(data.images[idx].to(device)), data.labels[idx].to(device)

    return produce


def channel_scores(
    model: nn.Module,
    names: Sequence[str],
    criterion: str,
    *,
    data: Split | None = None,
    normalize: Callable[[Tensor], Tensor] | None = None,
    batches: int = 4,
    batch_size: int = 128,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Tensor]:
    """Scores of every output channel of the named intermediate taps (higher = keep).

    Data-driven criteria read only ``data`` (the caller passes the train split): the first
    ``batches`` batches of a permutation seeded by ``seed``, mapped by ``normalize``. The model is
    run in eval mode; its train/eval flags and ``requires_grad`` are restored afterwards.
    """
    crit = CRITERIA.get(criterion)
    net = unwrap(model)
    if not isinstance(net, TapNet):
        raise TypeError(f"{type(net).__name__} is not a TapNet")
    wanted = set(names)
    if EMBEDDING in wanted:
        raise ValueError("the embedding tap is never pruned; name intermediate taps only")
    for name in wanted:
        net.tap(name)  # raises on an unknown tap
    taps = [t for t in net.intermediate_taps if t.name in wanted]
    if crit.needs_data:
        if data is None or normalize is None:
            raise ValueError(f"criterion {criterion!r} needs data= (the train split) and normalize=")
        if batches < 1 or batch_size < 1:
            raise ValueError("batches and batch_size must be >= 1")
        source = _train_batches(data, normalize, batches, batch_size, seed, torch.device(device))
    else:
        def source() -> Iterator[tuple[Tensor, Tensor]]:
            raise AssertionError(f"criterion {criterion!r} reads no data")

    training = {m: m.training for m in net.modules()}
    grads = {p: p.requires_grad for p in net.parameters()}
    net.eval()
    try:
        if crit.needs_data:
            for p in net.parameters():  # only the conv outputs are differentiated
                p.requires_grad_(False)
        scores = crit.score(net, taps, source, seed)
    finally:
        for m, flag in training.items():
            m.training = flag
        for p, flag in grads.items():
            p.requires_grad_(flag)
    for t in taps:
        if scores[t.name].shape != (t.channels,):
            raise RuntimeError(f"criterion {criterion!r} gave {tuple(scores[t.name].shape)} scores for tap {t.name!r} of {t.channels} channels")
    return scores


def select_channels(model: nn.Module, widths: Mapping[str, int], criterion: str, **options: Any) -> dict[str, Tensor]:
    """For each tap in ``widths``, the indices (int64, ascending) of its ``widths[tap]`` best channels.

    ``options`` are :func:`channel_scores`' keywords (``data``, ``normalize``, ``batches``, ...).
    """
    scores = channel_scores(model, list(widths), criterion, **options)
    return {name: top_k(scores[name], int(k)) for name, k in widths.items()}

# ----------------------------------------------------------------------------- pruned taps


class PrunedTaps:
    """Kept channels per tap; :meth:`apply` restricts tap features to them (the pruned teacher)."""

    def __init__(self, indices: Mapping[str, Tensor | Sequence[int]]) -> None:
        self.indices: dict[str, Tensor] = {}
        for name, idx in indices.items():
            t = torch.as_tensor(idx, dtype=torch.int64)
            if t.dim() != 1 or t.numel() == 0 or (t.numel() > 1 and not bool((t[1:] > t[:-1]).all())):
                raise ValueError(f"indices of tap {name!r} must be a non-empty, strictly increasing 1-D list")
            self.indices[name] = t

    @property
    def widths(self) -> dict[str, int]:
        return {name: int(idx.numel()) for name, idx in self.indices.items()}

    def apply(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``features`` with every pruned tap restricted to its kept channels (others unchanged)."""
        return {
            name: f.index_select(1, self.indices[name]) if name in self.indices else f
            for name, f in features.items()
        }

    def to(self, device: str | torch.device) -> "PrunedTaps":
        return PrunedTaps({name: idx.to(device) for name, idx in self.indices.items()})

    def state_dict(self) -> dict[str, list[int]]:
        return {name: idx.cpu().tolist() for name, idx in self.indices.items()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Tensor | Sequence[int]]) -> "PrunedTaps":
        return cls({name: torch.as_tensor(v, dtype=torch.int64).cpu() for name, v in state.items()})

    def __repr__(self) -> str:
        return f"PrunedTaps({self.widths})"


def structurally_pruned_block(model: nn.Module, tap: str, keep: Tensor | Sequence[int]) -> nn.Module:
    """A copy of the module producing ``tap`` whose conv (and BN) keep only the ``keep`` output filters.

    Conv weight and bias, BN affine parameters and running statistics are sliced by
    torch-pruning. Fed the unpruned input of that module, it outputs the tap feature restricted to
    ``keep``, provided everything after the conv acts per channel (the ``cnn`` family; not the
    ResNets, whose stage output adds a residual).
    """
    net = unwrap(model)
    spec = net.tap(tap)
    if spec.conv is None or not spec.conv.startswith(spec.module + "."):
        raise ValueError(f"tap {tap!r}: its conv is not inside its module {spec.module!r}")
    block = _fresh_copy(net.get_submodule(spec.module))
    keep_set = {int(i) for i in torch.as_tensor(keep).tolist()}
    conv = block.get_submodule(spec.conv[len(spec.module) + 1 :])
    drop = [i for i in range(conv.out_channels) if i not in keep_set]
    tp.prune_conv_out_channels(conv, drop)
    if spec.bn is not None:
        if not spec.bn.startswith(spec.module + "."):
            raise ValueError(f"tap {tap!r}: its BN is not inside its module {spec.module!r}")
        tp.prune_batchnorm_out_channels(block.get_submodule(spec.bn[len(spec.module) + 1 :]), drop)
    return block


# ----------------------------------------------------------------------------- pruned targets


class PrunedTarget:
    """InDistill's target at the pruned taps, from the frozen auxiliary's forward pass.

    ``needs_inputs``: whether :meth:`__call__` reads the inputs of the tap modules (a
    :class:`~indistill.models.base.TapReader` with ``keep_inputs=True``).
    """

    needs_inputs = False

    def __init__(self, auxiliary: nn.Module, pruned: PrunedTaps) -> None:
        self.pruned = pruned

    def __call__(self, features: Mapping[str, Tensor], inputs: Mapping[str, Tensor], taps: Sequence[str]) -> dict[str, Tensor]:
        """``features`` with each of ``taps`` that is pruned replaced by its target (others as they are)."""
        raise NotImplementedError

    def reads(self, taps: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(tap features, tap-module inputs) of the auxiliary that :meth:`__call__` needs for ``taps``."""
        return tuple(taps), ()


TARGETS: Registry[type[PrunedTarget]] = Registry("prune target")


@TARGETS.register("running_stats")
class RunningStatsTarget(PrunedTarget):
    """The auxiliary's own tap (its BN in eval mode) restricted to the kept channels."""

    def __call__(self, features: Mapping[str, Tensor], inputs: Mapping[str, Tensor], taps: Sequence[str]) -> dict[str, Tensor]:
        return self.pruned.apply(features)


def batch_stats_block(model: nn.Module, tap: str, keep: Tensor | Sequence[int]) -> nn.Module:
    """The reference code's pruned block at ``tap``: the kept conv filters, then a fresh BN that
    normalises with the batch's statistics in every mode (gamma kept, beta = 0), then the rest of
    the block. Frozen. The conv bias cancels in the batch normalisation.
    """
    net = unwrap(model)
    spec = net.tap(tap)
    if spec.bn is None:
        raise ValueError(f"prune.target 'batch_stats': tap {tap!r} has no BatchNorm after its conv; use 'running_stats'")
    block = structurally_pruned_block(net, tap, keep)
    old: nn.BatchNorm2d = block.get_submodule(spec.bn[len(spec.module) + 1 :])
    fresh = nn.BatchNorm2d(old.num_features, eps=old.eps, affine=True, track_running_stats=False)
    with torch.no_grad():
        fresh.weight.copy_(old.weight)
        fresh.bias.zero_()
    parent_path, _, attr = spec.bn[len(spec.module) + 1 :].rpartition(".")
    setattr(block.get_submodule(parent_path) if parent_path else block, attr, fresh)
    block.to(device=old.weight.device)
    block.eval()  # track_running_stats=False: batch statistics in eval mode too
    for p in block.parameters():
        p.requires_grad_(False)
    return block


@TARGETS.register("batch_stats")
class BatchStatsTarget(PrunedTarget):
    """:func:`batch_stats_block` of every pruned tap, fed the auxiliary's unpruned input of that block."""

    needs_inputs = True

    def __init__(self, auxiliary: nn.Module, pruned: PrunedTaps) -> None:
        super().__init__(auxiliary, pruned)
        self.blocks = {name: batch_stats_block(auxiliary, name, idx.cpu()) for name, idx in pruned.indices.items()}

    def __call__(self, features: Mapping[str, Tensor], inputs: Mapping[str, Tensor], taps: Sequence[str]) -> dict[str, Tensor]:
        out = dict(features)
        for name in taps:
            if name in self.blocks:
                out[name] = self.blocks[name](inputs[name])
        return out

    def reads(self, taps: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The input of each pruned tap's block (its own output is replaced), the features of the others."""
        return tuple(t for t in taps if t not in self.blocks), tuple(t for t in taps if t in self.blocks)


def create_target(name: str, auxiliary: nn.Module, pruned: PrunedTaps) -> PrunedTarget:
    """The pruned-target semantics ``name`` (``prune.target``) for ``auxiliary`` and its kept channels."""
    return TARGETS.get(name)(auxiliary, pruned)
