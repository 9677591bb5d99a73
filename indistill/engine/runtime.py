"""Device, seeds and (optional) torch.distributed helpers. Never imports Ray."""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        from indistill.common.errors import ConfigError

        raise ConfigError("device: 'cuda' was asked for but no CUDA GPU is visible; use --device cpu or auto")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and dist.is_available() and dist.is_initialized():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


class DeviceError(RuntimeError):
    """The GPU a worker reserved cannot be used by this process's torch (one line: node, torch and CUDA)."""


@dataclass(frozen=True)
class TorchCuda:
    """What this process's torch says about CUDA (the inputs of :func:`reserved_device` that are not Ray's)."""

    torch: str  # torch.__version__
    cuda: str | None  # torch.version.cuda: the CUDA the wheel was built for, None for a CPU-only build
    available: bool  # torch.cuda.is_available()

    @classmethod
    def report(cls) -> "TorchCuda":
        return cls(torch.__version__, torch.version.cuda, torch.cuda.is_available())

    def __str__(self) -> str:
        build = f"built for CUDA {self.cuda}" if self.cuda else "a CPU-only build"
        return f"torch {self.torch} ({build}; torch.cuda.is_available() is {self.available})"


def reserved_device(requested: str, reserved: str, cuda: TorchCuda, node: str) -> str:
    """The device a worker trains on: the one Ray reserved for it, not whatever CUDA happens to see.

    ``requested`` is the run's ``device`` (auto | cpu | cuda), ``reserved`` what Ray assigned
    (``cpu`` when the worker reserved no GPU, else ``cuda:<index>``), ``node`` names the machine for
    errors. ``device: cpu`` always trains on the CPU (a test on logical GPUs); otherwise a worker that
    reserved no GPU trains on the CPU (``device: cuda`` there is a ConfigError), and one that reserved
    a GPU trains on it, or raises :class:`DeviceError` when its torch cannot use CUDA.
    """
    if requested == "cpu":
        return "cpu"
    if not reserved.startswith("cuda"):
        if requested.startswith("cuda"):
            from indistill.common.errors import ConfigError

            raise ConfigError(f"device: {requested!r}, but this worker on {node} reserved no GPU; "
                              "give the trials GPUs (--gpus-per-trial) or use device: auto")
        return "cpu"
    if not cuda.available:
        raise DeviceError(f"{node}: Ray reserved GPU {reserved} for this worker, but {cuda} cannot use it; "
                          "install a torch build for the node's NVIDIA driver (docs/devices.md) or set device: cpu")
    return reserved


#: what a CUDA process holds outside torch's caching allocator (its context and kernels), which
#: :func:`memory_fraction` sets aside from each share of a shared GPU; an estimate (a few hundred MiB
#: with CUDA's lazy module loading), not a measurement on the cluster's GPUs
CUDA_CONTEXT_BYTES = 512 * 1024**2


def memory_fraction(gpus: float, total_bytes: int, context_bytes: int = CUDA_CONTEXT_BYTES) -> float | None:
    """The fraction of its GPU's memory a worker that reserved ``gpus`` of it may allocate
    (``torch.cuda.set_per_process_memory_fraction``), or None for no cap (no GPU, or whole GPUs).

    A share below one GPU is capped at the share less this process's CUDA context
    (``context_bytes`` of the GPU's ``total_bytes``), so that the trials packed on one GPU, caps and
    contexts together, fit it; never below half the share (a GPU too small for the context estimate).
    """
    if gpus <= 0 or gpus >= 1:
        return None
    if total_bytes <= 0:
        raise ValueError(f"total_bytes must be > 0, got {total_bytes}")
    return max(gpus - context_bytes / total_bytes, gpus / 2)


def cap_memory(device: torch.device, gpus: float) -> float | None:
    """Caps this process's CUDA allocations on ``device`` to its reserved share (:func:`memory_fraction`);
    the fraction set, or None (CPU, or a whole GPU: nothing to cap). Beyond it, an allocation raises
    ``torch.OutOfMemoryError`` in this trial instead of taking a neighbour's memory."""
    if device.type != "cuda":
        return None
    fraction = memory_fraction(gpus, torch.cuda.get_device_properties(device).total_memory)
    if fraction is not None:
        torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int, device: torch.device, stream: int = 0) -> torch.Generator:
    """A generator that depends only on (seed, epoch, stream), so a resumed run replays the same epoch."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + epoch * 7919 + stream * 104_729) % (2**63))
    return g


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if is_distributed():
        dist.barrier()
