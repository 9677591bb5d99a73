"""The student's training step: the loss of one batch from the frozen auxiliary's (pruned) taps and the
student's taps. ``student_stage`` trains with it; the speed benchmark times it."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import RunConfig
from ..models.base import TapNet, TapReader, unwrap
from ..pruning import PrunedTarget, PrunedTaps, create_target
from .methods import Method, StudentBatch
from .runtime import autocast


class StudentStep:
    """``step(x, y, epoch) -> (loss, parts)`` for ``Loop``: the auxiliary through a ``TapReader`` under
    ``no_grad`` (its pruned taps replaced by ``target``), the student through a ``TapReader``, then
    ``method.loss``, all inside ``autocast(device, precision)``. Call :meth:`close` to remove the hooks."""

    def __init__(self, student: nn.Module, method: Method, auxiliary: TapNet | None, target: PrunedTarget | None,
                 device: torch.device, precision: str) -> None:
        if method.needs_source and auxiliary is None:
            raise ValueError("the method needs the auxiliary network")
        self.method = method
        self.target = target
        self.device = device
        self.precision = precision
        taps = tuple(t.name for t in unwrap(student).taps)
        self.student = TapReader(student, taps)
        keep_inputs = target is not None and target.needs_inputs
        self.auxiliary = TapReader(auxiliary, taps, keep_inputs=keep_inputs) if method.needs_source else None

    def __call__(self, x: Tensor, y: Tensor, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        with autocast(self.device, self.precision):
            source = self.source(x, epoch)
            logits, feats = self.student(x)
            return self.method.loss(StudentBatch(epoch, y, logits, feats, source))

    def source(self, x: Tensor, epoch: int) -> dict[str, Tensor]:
        """The auxiliary's features of ``x`` for ``epoch`` (pruned targets where the method prunes)."""
        if self.auxiliary is None:
            return {}
        with torch.no_grad():
            source = self.auxiliary(x)[1]
            if self.target is not None:
                source = self.target(source, self.auxiliary.inputs, self.method.source_taps(epoch))
        return source

    def close(self) -> None:
        self.student.close()
        if self.auxiliary is not None:
            self.auxiliary.close()

    def __enter__(self) -> "StudentStep":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def student_step(student: nn.Module, method: Method, auxiliary: TapNet | None, pruned: PrunedTaps | None,
                 cfg: RunConfig, device: torch.device) -> StudentStep:
    """The step ``student_stage`` trains ``student`` (possibly DDP-wrapped or compiled) with: the pruned
    target of ``cfg.prune.target`` when ``method`` prunes, ``cfg.precision``."""
    if method.needs_pruning and pruned is None:
        raise ValueError("method 'indistill' needs the pruned auxiliary taps")
    target = create_target(cfg.prune.target, auxiliary, pruned) if method.needs_pruning else None
    return StudentStep(student, method, auxiliary, target, device, cfg.precision)
