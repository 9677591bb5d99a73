"""Device, precision and (optional) torch.distributed helpers. Never imports Ray."""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
import torch.distributed as dist

from ..precision import no_tf32


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        from ..schema import ConfigError

        raise ConfigError("device: 'cuda' was asked for but no CUDA GPU is visible; use --device cpu or auto")
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and dist.is_available() and dist.is_initialized():
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The networks' forward passes: bf16 autocast on CUDA for ``auto``/``bf16`` (on CPU for ``bf16``
    only: CPU bf16 is slower here); ``fp32``: full float32, TF32 off (:func:`indistill.precision.no_tf32`);
    ``auto`` on CPU: float32 as it is."""
    if device.type == "cuda" and precision in ("auto", "bf16"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return stage_precision(precision)


def stage_precision(precision: str) -> contextlib.AbstractContextManager:
    """What a whole training stage runs under, backward passes and evaluations included: TF32 off for
    ``precision: fp32``; nothing otherwise (autocast covers the forwards, see :func:`autocast`)."""
    return no_tf32() if precision == "fp32" else contextlib.nullcontext()


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
