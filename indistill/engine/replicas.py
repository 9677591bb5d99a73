"""Data parallelism for networks whose losses read hooked intermediate features.

PyTorch's ``DistributedDataParallel`` reduces the gradients of the parameters it finds behind the
wrapped module's ``forward`` outputs. The distillation losses read a network's taps through hooks
and, in a curriculum phase, never touch its logits, so DDP waits for gradients that never come
("Expected to have finished reduction in the prior iteration"). :class:`Replicas` reduces exactly
the gradients a step produced instead: after ``backward`` it averages every parameter's gradient
over the ranks (one collective per step), leaving a parameter that no rank's loss reached without
a gradient, as a one-process run does.
"""
from __future__ import annotations

import torch.distributed as dist
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from indistill.engine.runtime import world_size


class Replicas:
    """Keeps ``model``'s copies on the ranks of the default process group identical.

    On creation (and :meth:`broadcast`) every rank takes rank 0's parameters and buffers;
    :meth:`average_gradients` after each ``backward`` makes every rank's gradients the mean over
    the ranks, so identical optimisers take identical steps; :meth:`sync_buffers` gives every rank
    rank 0's buffers (BatchNorm's running statistics, which each rank updates from its own batches,
    as DDP's ``broadcast_buffers`` does).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._agreed: tuple[bool, ...] | None = None  # which parameters had gradients, checked on every rank
        self.broadcast()

    def broadcast(self) -> None:
        """Every rank takes rank 0's parameters and buffers (after a start or a resume)."""
        self._broadcast([p.data for p in self.model.parameters()])
        self.sync_buffers()

    def sync_buffers(self) -> None:
        self._broadcast([b for b in self.model.buffers() if b.numel()])

    def average_gradients(self) -> None:
        """Mean gradients over the ranks, one collective per (device, dtype) of the gradients present.
        A parameter with a gradient on no rank keeps none; one with a gradient on some ranks only is
        an error (the ranks ran different losses), checked whenever the set of parameters with a
        gradient changes (a curriculum phase), so a step reads nothing back to the host."""
        present = tuple(p.grad is not None for p in self.params)
        if present != self._agreed:
            self._check_same_gradients(present)
            self._agreed = present
        grads = [p.grad for p in self.params if p.grad is not None]
        ws = world_size()
        for group in _groups(grads):
            flat = _flatten_dense_tensors(group)
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat.div_(ws)
            for grad, mean in zip(group, _unflatten_dense_tensors(flat, group)):
                grad.copy_(mean)

    def _check_same_gradients(self, present: tuple[bool, ...]) -> None:
        ws = world_size()
        everyone: list = [None] * ws
        dist.all_gather_object(everyone, present)
        for i, p in enumerate(self.params):
            count = sum(rank_present[i] for rank_present in everyone)
            if count not in (0, ws):
                raise RuntimeError(f"a parameter of shape {tuple(p.shape)} has a gradient on {count} of {ws} "
                                   "ranks: the ranks computed different losses")

    @staticmethod
    def _broadcast(tensors: list[Tensor]) -> None:
        for group in _groups(tensors):
            flat = _flatten_dense_tensors(group)
            dist.broadcast(flat, src=0)
            for t, value in zip(group, _unflatten_dense_tensors(flat, group)):
                t.copy_(value)


def _groups(tensors: list[Tensor]) -> list[list[Tensor]]:
    """``tensors`` grouped by (device, dtype), in order: each group is flattened into one buffer."""
    groups: dict[tuple, list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return list(groups.values())
