"""A plain, resumable epoch loop: one checkpoint per epoch, metrics read once per epoch."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

import torch
from torch import Tensor, nn

from ..config import OptimConfig
from ..io import atomic_torch_save, torch_load
from .runtime import all_reduce_sum, barrier, rank

LAST = "last.pt"
FINAL = "final.pt"

StepFn = Callable[[Tensor, Tensor, int], tuple[Tensor, dict[str, Tensor]]]


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


class EpochHook(Protocol):
    """Called on every rank after each epoch; ``checkpoint`` is the epoch's checkpoint file on rank 0, else None."""

    def __call__(self, epoch: int, metrics: dict[str, float], checkpoint: Path | None) -> None: ...


def build_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    lr = cfg.lr_at(0)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)


def resets_at(optim: OptimConfig, epoch: int, phase_of: Callable[[int], int] | None = None) -> bool:
    """Whether ``optim.reset`` starts a fresh optimiser at the start of ``epoch`` (> 0)."""
    if epoch <= 0 or optim.reset == "never":
        return False
    if optim.reset == "epoch":
        return True
    if optim.reset == "lr_change":
        return optim.lr_at(epoch) != optim.lr_at(epoch - 1)
    if phase_of is None:  # "phase" for a method without curriculum phases
        return False
    return phase_of(epoch) != phase_of(epoch - 1)


def train_step(step: StepFn, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, epoch: int,
               sums: dict[str, Tensor]) -> None:
    """One optimisation step; adds the batch-weighted loss and its parts to ``sums``, on the device.

    Nothing is read back to the host: callers read ``sums`` once (``Loop``: once per epoch).
    """
    loss, parts = step(x, y, epoch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    n = x.shape[0]
    for key, value in {"loss": loss.detach(), **parts}.items():
        v = value.detach().float() * n
        sums[key] = sums[key] + v if key in sums else v


@dataclass
class Loop:
    """Trains ``model`` for ``epochs`` with ``step`` over ``batches(epoch)``, checkpointing in ``work_dir``.

    A finished loop leaves ``final.pt``; an interrupted one resumes from ``last.pt`` and, because
    every epoch's shuffling and augmentation depend only on (seed, epoch), replays exactly what an
    uninterrupted run would have done. ``optim.reset`` decides at which epochs a fresh optimiser
    replaces the old one (``phase_of`` maps an epoch to its curriculum phase for ``reset: phase``).
    """

    work_dir: Path
    model: nn.Module
    optim: OptimConfig
    epochs: int
    step: StepFn
    batches: Callable[[int], Iterator[tuple[Tensor, Tensor]]]
    name: str = "train"
    evaluate: Callable[[int], dict[str, float]] | None = None
    eval_every: int = 0
    hooks: list[EpochHook] = field(default_factory=list)
    log: Callable[[str], None] = print
    resume_from: Path | None = None
    phase_of: Callable[[int], int] | None = None

    def run(self) -> list[dict[str, float]]:
        """Train (or resume) to the end; returns the per-epoch metrics history."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        final = self.work_dir / FINAL
        if final.exists():
            state = torch_load(final)
            self.model.load_state_dict(state["model"])
            return state["history"]
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = build_optimizer(params, self.optim)
        start, history = self._resume(optimizer)
        for epoch in range(start, self.epochs):
            if resets_at(self.optim, epoch, self.phase_of):
                optimizer = build_optimizer(params, self.optim)
            metrics = self._epoch(epoch, optimizer)
            history.append(metrics)
            ckpt = None
            if rank() == 0:
                ckpt = atomic_torch_save(
                    {"epoch": epoch + 1, "model": self.model.state_dict(), "optimizer": optimizer.state_dict(),
                     "history": history},
                    self.work_dir / LAST,
                )
            for hook in self.hooks:
                hook(epoch, metrics, ckpt)
        if rank() == 0:
            atomic_torch_save({"model": self.model.state_dict(), "history": history}, final)
        barrier()
        return history

    def _resume(self, optimizer: torch.optim.Optimizer) -> tuple[int, list[dict[str, float]]]:
        path = self.resume_from if self.resume_from is not None else self.work_dir / LAST
        if not path.exists():
            return 0, []
        state = torch_load(path)
        self.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        self.log(f"[{self.name}] resuming after epoch {state['epoch']} from {path}")
        return int(state["epoch"]), list(state["history"])

    def _epoch(self, epoch: int, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        lr = self.optim.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        t0 = time.perf_counter()
        sums: dict[str, Tensor] = {}
        count = None
        for x, y in self.batches(epoch):
            train_step(self.step, optimizer, x, y, epoch, sums)
            n = x.shape[0]
            count = count + n if count is not None else torch.tensor(float(n), device=x.device)
        if count is None:
            raise RuntimeError(f"[{self.name}] epoch {epoch} saw no batch: is the training split empty?")
        keys = sorted(sums)
        totals = all_reduce_sum(torch.stack([sums[k] for k in keys] + [count])).tolist()
        metrics = {k: totals[i] / totals[-1] for i, k in enumerate(keys)}
        if not math.isfinite(metrics["loss"]):
            raise DivergedError(f"[{self.name}] loss became {metrics['loss']} at epoch {epoch}")
        metrics.update(epoch=epoch, lr=lr, epoch_time_s=time.perf_counter() - t0, samples=totals[-1])
        if self.evaluate is not None and self.eval_every and ((epoch + 1) % self.eval_every == 0 or epoch + 1 == self.epochs):
            t1 = time.perf_counter()
            metrics.update(self.evaluate(epoch))
            metrics["eval_time_s"] = time.perf_counter() - t1
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k not in ("epoch", "samples"))
        if rank() == 0:
            self.log(f"[{self.name}] epoch {epoch + 1}/{self.epochs} {shown}")
        return metrics
