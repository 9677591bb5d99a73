"""The student's training step: the loss of one batch from the frozen auxiliary's (pruned) taps and the
student's taps. ``student_stage`` trains with it; the speed benchmark times it."""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from indistill.config.run import RunConfig
from indistill.models.base import TapNet, TapReader, unwrap
from indistill.method.pruning import PrunedTarget, PrunedTaps, create_target
from indistill.method.methods import Method, StudentBatch
from indistill.common.precision import autocast, stage_precision


def hooked_taps(net: TapNet, method: Method) -> tuple[str, ...]:
    """The taps of ``net`` that ``method`` reads in any of its epochs, in the network's order."""
    read = {t for epoch in range(method.epochs) for t in method.loss_taps(epoch)}
    return tuple(t.name for t in net.taps if t.name in read)


class StudentStep:
    """``step(x, y, epoch) -> (loss, parts)`` for ``Loop``, reading only ``method.loss_taps(epoch)``.

    The auxiliary runs under ``no_grad`` only as far as those taps (a frozen network: nothing after
    them changes any state), its pruned taps replaced by ``target``; the student runs in full (its BN
    statistics, logits and DDP see the whole network); both forwards inside ``autocast(device,
    precision)``. Then ``method.loss`` outside autocast, on the logits and features cast to float32
    (the losses' kernels are float32 whatever the networks ran in).

    Use it as a context manager (``with step: loop.run()``): inside, a ``precision: fp32`` run has
    TF32 off for the backward passes and the evaluations too (:func:`~indistill.common.precision.stage_precision`);
    leaving it (or :meth:`close`) removes the hooks and restores the TF32 settings.
    """

    def __init__(self, student: nn.Module, method: Method, auxiliary: TapNet | None, target: PrunedTarget | None,
                 device: torch.device, precision: str) -> None:
        if method.needs_source and auxiliary is None:
            raise ValueError("the method needs the auxiliary network")
        self.method = method
        self.target = target
        self.device = device
        self.precision = precision
        taps = hooked_taps(unwrap(student), method)
        self.student = TapReader(student, taps)
        keep_inputs = target is not None and target.needs_inputs
        self.auxiliary = TapReader(auxiliary, taps, keep_inputs=keep_inputs) if method.needs_source else None
        self._scope = contextlib.ExitStack()

    def __call__(self, x: Tensor, y: Tensor, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self.method.loss(self.batch(x, y, epoch))

    def batch(self, x: Tensor, y: Tensor, epoch: int) -> StudentBatch:
        """What ``method.loss`` sees for ``(x, y)`` at ``epoch``: the forwards under autocast, their
        outputs as float32."""
        taps = self.method.loss_taps(epoch)
        with autocast(self.device, self.precision):
            source = self.source(x, taps)
            logits, feats = self.student(x)
        return StudentBatch(epoch, y, logits.float(), _float32({t: feats[t] for t in taps}), _float32(source))

    def source(self, x: Tensor, taps: tuple[str, ...]) -> dict[str, Tensor]:
        """The auxiliary's features of ``x`` at ``taps`` (pruned targets where the method prunes)."""
        if self.auxiliary is None:
            return {}
        outputs, inputs = self.target.reads(taps) if self.target is not None else (taps, ())
        with torch.no_grad():
            features, tap_inputs = self.auxiliary.read(x, outputs, inputs)
            return self.target(features, tap_inputs, taps) if self.target is not None else features

    def close(self) -> None:
        self.student.close()
        if self.auxiliary is not None:
            self.auxiliary.close()
        self._scope.close()

    def __enter__(self) -> "StudentStep":
        self._scope.enter_context(stage_precision(self.precision))
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _float32(features: dict[str, Tensor]) -> dict[str, Tensor]:
    """``features`` as float32 (no copy where they already are)."""
    return {t: f.float() for t, f in features.items()}


def student_step(student: nn.Module, method: Method, auxiliary: TapNet | None, pruned: PrunedTaps | None,
                 cfg: RunConfig, device: torch.device) -> StudentStep:
    """The step ``student_stage`` trains ``student`` (possibly DDP-wrapped or compiled) with: the pruned
    target of ``cfg.prune.target`` when ``method`` prunes, ``cfg.precision``."""
    if method.needs_pruning and pruned is None:
        raise ValueError("method 'indistill' needs the pruned auxiliary taps")
    target = create_target(cfg.prune.target, auxiliary, pruned) if method.needs_pruning else None
    return StudentStep(student, method, auxiliary, target, device, cfg.precision)
