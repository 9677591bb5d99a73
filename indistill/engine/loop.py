"""A plain, resumable epoch loop: one checkpoint per epoch, metrics read once per epoch."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

import torch
from torch import Tensor, nn

from indistill.config.run import OptimConfig
from indistill.common.errors import CheckpointError, one_line
from indistill.common.io import atomic_torch_save, read_torch, recover
from indistill.models.checkpoint import load_state
from indistill.engine.replicas import Replicas
from indistill.engine.runtime import all_reduce_sum, barrier, is_distributed, rank

LAST = "last.pt"
FINAL = "final.pt"
#: the keys of an epoch's metrics that count (which epoch, how many samples) rather than measure
COUNTERS = ("epoch", "samples")

StepFn = Callable[[Tensor, Tensor, int], tuple[Tensor, dict[str, Tensor]]]


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


class EpochHook(Protocol):
    """Called on every rank after each epoch; ``checkpoint`` is the epoch's checkpoint file on rank 0, else None.

    A hook that also has an ``end(history)`` method is called once more when the loop is done, with
    the whole history (also when nothing was left to train: a run resumed after its last epoch).
    """

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


def _copy_state(model: nn.Module) -> dict[str, Tensor]:
    """The model's weights as they are now, to restore if a checkpoint turns out to be corrupted."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _read_state(path: Path, keys: tuple[str, ...]) -> dict:
    """A stage checkpoint: a mapping holding ``keys``, else a one-line :class:`CheckpointError`."""
    state = read_torch(path, "stage checkpoint")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a stage checkpoint (holds a {type(state).__name__}, not a mapping)")
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a stage checkpoint (no {', '.join(missing)} entry)")
    return state


def _history(state: dict, path: Path, epochs: int | None = None) -> list[dict[str, float]]:
    history = state["history"]
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise CheckpointError(f"{path}: its history is not a list of per-epoch metrics")
    if epochs is not None and len(history) != epochs:
        raise CheckpointError(f"{path}: holds {len(history)} epochs of history for epoch {epochs}")
    return list(history)


def read_history(path: Path) -> list[dict[str, float]]:
    """The per-epoch history of a finished loop's ``final.pt`` (CheckpointError if unusable)."""
    return _history(_read_state(path, ("model", "history")), path)


def load_final(path: Path, model: nn.Module) -> list[dict[str, float]]:
    """Load a finished loop's ``final.pt`` into ``model``; returns its history (CheckpointError if unusable)."""
    state = _read_state(path, ("model", "history"))
    history = _history(state, path)
    load_state(model, state["model"], path)
    return history


def train_step(step: StepFn, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, epoch: int,
               sums: dict[str, Tensor], replicas: Replicas | None = None) -> None:
    """One optimisation step (its gradients averaged over the ranks by ``replicas``, when given);
    adds the batch-weighted loss and its parts to ``sums``, on the device.

    Nothing is read back to the host: callers read ``sums`` once (``Loop``: once per epoch).
    """
    loss, parts = step(x, y, epoch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if replicas is not None:
        replicas.average_gradients()
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
    In a torch.distributed group each rank trains on its share of every batch and
    :class:`~indistill.engine.replicas.Replicas` keeps the ranks' models identical.
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
    saved: Callable[[Path], None] = lambda _path: None  # called with every checkpoint written (rank 0)

    def run(self) -> list[dict[str, float]]:
        """Train (or resume) to the end; returns the per-epoch metrics history."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        final = self.work_dir / FINAL
        if final.exists():
            initial = _copy_state(self.model)
            try:
                return self._end(load_final(final, self.model))
            except CheckpointError as exc:
                self.model.load_state_dict(initial)
                last = self.resume_from if self.resume_from is not None else self.work_dir / LAST
                self._set_aside(final, exc, f"resuming from {last.name}" if last.exists() else "training it again")
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = build_optimizer(params, self.optim)
        start, history = self._resume(optimizer)
        if start == 0:
            optimizer = build_optimizer(params, self.optim)  # nothing (or nothing usable) was resumed
        replicas = Replicas(self.model) if is_distributed() else None  # rank 0's weights (resumed or not) everywhere
        for epoch in range(start, self.epochs):
            if resets_at(self.optim, epoch, self.phase_of):
                optimizer = build_optimizer(params, self.optim)
            metrics = self._epoch(epoch, optimizer, replicas)
            history.append(metrics)
            ckpt = None
            if rank() == 0:
                ckpt = atomic_torch_save(
                    {"epoch": epoch + 1, "model": self.model.state_dict(), "optimizer": optimizer.state_dict(),
                     "history": history},
                    self.work_dir / LAST,
                )
                self.saved(ckpt)
            for hook in self.hooks:
                hook(epoch, metrics, ckpt)
        if rank() == 0:
            self.saved(atomic_torch_save({"model": self.model.state_dict(), "history": history}, final))
        barrier()
        return self._end(history)

    def _end(self, history: list[dict[str, float]]) -> list[dict[str, float]]:
        for hook in self.hooks:
            end = getattr(hook, "end", None)
            if end is not None:
                end(history)
        return history

    def _resume(self, optimizer: torch.optim.Optimizer) -> tuple[int, list[dict[str, float]]]:
        path = self.resume_from if self.resume_from is not None else self.work_dir / LAST
        if not path.exists():
            return 0, []
        initial = _copy_state(self.model)
        try:
            state = _read_state(path, ("epoch", "model", "optimizer", "history"))
            epoch = state["epoch"]
            if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= self.epochs:
                raise CheckpointError(f"{path}: epoch {epoch!r} is not between 0 and the stage's {self.epochs} epochs")
            history = _history(state, path, epoch)
            load_state(self.model, state["model"], path)
            try:
                optimizer.load_state_dict(state["optimizer"])
            except (ValueError, KeyError, TypeError, RuntimeError) as exc:
                raise CheckpointError(f"{path}: its optimizer state does not fit ({one_line(exc)[:200]})") from None
        except CheckpointError as exc:
            self.model.load_state_dict(initial)
            self._set_aside(path, exc, "training this stage again from its first epoch")
            return 0, []
        self.log(f"[{self.name}] resuming after epoch {epoch} from {path}")
        return epoch, history

    def _set_aside(self, path: Path, exc: CheckpointError, then: str) -> None:
        """Rename a corrupted checkpoint (kept for inspection) and say so in one line (rank 0 only)."""
        if rank() != 0:
            return
        recover(path, exc, then, self.log, self.name)

    def _epoch(self, epoch: int, optimizer: torch.optim.Optimizer, replicas: Replicas | None = None) -> dict[str, float]:
        lr = self.optim.lr_at(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        t0 = time.perf_counter()
        sums: dict[str, Tensor] = {}
        count = None
        for x, y in self.batches(epoch):
            train_step(self.step, optimizer, x, y, epoch, sums, replicas)
            n = x.shape[0]
            count = count + n if count is not None else torch.tensor(float(n), device=x.device)
        if count is None:
            raise RuntimeError(f"[{self.name}] epoch {epoch} saw no batch: is the training split empty?")
        if replicas is not None:  # checkpoint, evaluation and the next epoch see rank 0's BN statistics
            replicas.sync_buffers()
        keys = sorted(sums)
        totals = all_reduce_sum(torch.stack([sums[k] for k in keys] + [count])).tolist()
        metrics = {k: totals[i] / totals[-1] for i, k in enumerate(keys)}
        if not math.isfinite(metrics["loss"]):
            raise DivergedError(f"[{self.name}] loss became {metrics['loss']} in epoch {epoch + 1} of {self.epochs}")
        metrics.update(epoch=epoch, lr=lr, epoch_time_s=time.perf_counter() - t0, samples=totals[-1])
        if self.evaluate is not None and self.eval_every and ((epoch + 1) % self.eval_every == 0 or epoch + 1 == self.epochs):
            t1 = time.perf_counter()
            metrics.update(self.evaluate(epoch))
            metrics["eval_time_s"] = time.perf_counter() - t1
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k not in COUNTERS)
        if rank() == 0:
            self.log(f"[{self.name}] epoch {epoch + 1}/{self.epochs} {shown}")
        return metrics
