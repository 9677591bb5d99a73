"""Float32 that is float32: no autocast, and no TensorFloat-32 in CUDA matmuls and cuDNN convolutions.

The lowest layer of the package (torch only), so that the retrieval code, the evaluation and the
training code share one definition. Both context managers restore what they changed on exit.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, TypeVar

import torch

T = TypeVar("T")


@contextlib.contextmanager
def no_autocast() -> Iterator[None]:
    """Turns off any enclosing autocast (CUDA and CPU): float32 inputs are computed in float32 inside.

    Also a decorator (``@no_autocast()``), as every ``contextlib.contextmanager`` is.
    """
    with torch.autocast("cuda", enabled=False), torch.autocast("cpu", enabled=False):
        yield


#: the per-operator float32 precision flags (torch >= 2.9) that TF32 can reach: CUDA matmuls (cuBLAS),
#: the CPU's oneDNN matmuls (which ``torch.set_float32_matmul_precision`` sets too), cuDNN convolutions
#: and RNNs (``torch.backends.cudnn.allow_tf32`` sets both)
_FP32_FLAGS = (("cuda", "matmul"), ("mkldnn", "matmul"), ("cuda", "conv"), ("cuda", "rnn"))


def _legacy(getter: Callable[[], T]) -> T | None:
    """A legacy TF32 setting, or None where torch refuses to read it (a mix of the legacy and the
    per-operator APIs set the flags it summarises)."""
    try:
        return getter()
    except RuntimeError:
        return None


def _save() -> tuple[str | None, bool | None, tuple[str, ...] | None]:
    """The legacy matmul precision and cuDNN switch, and the per-operator flags where torch has them."""
    flags = None
    if hasattr(torch._C, "_get_fp32_precision_getter"):  # torch >= 2.9
        flags = tuple(torch._C._get_fp32_precision_getter(backend, op) for backend, op in _FP32_FLAGS)
    return (_legacy(torch.get_float32_matmul_precision), _legacy(lambda: torch.backends.cudnn.allow_tf32), flags)


#: torch's own legacy settings: what ``no_tf32`` restores where torch refused to read them on entry
_LEGACY_DEFAULTS = ("highest", True)


def _restore(saved: tuple[str | None, bool | None, tuple[str, ...] | None]) -> None:
    """The legacy settings first (they also set the per-operator flags), then the per-operator flags
    exactly: what the operators use comes back as it was, and so does each legacy setting torch could read."""
    matmul, cudnn, flags = saved
    torch.set_float32_matmul_precision(_LEGACY_DEFAULTS[0] if matmul is None else matmul)
    torch.backends.cudnn.allow_tf32 = _LEGACY_DEFAULTS[1] if cudnn is None else cudnn
    for (backend, op), value in zip(_FP32_FLAGS, flags or ()):
        torch._C._set_fp32_precision_setter(backend, op, value)


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Full float32 (no TF32) for matmuls and cuDNN convolutions inside; the previous settings after.

    torch's defaults allow TF32 in cuDNN convolutions on Ampere and later GPUs (matmuls: not), which
    rounds their inputs to 10 bits of mantissa. Set through the legacy API, which torch >= 2.9 keeps
    consistent with its per-operator flags, so that inside both read "off"
    (``torch.backends.cuda.matmul.allow_tf32`` and ``torch.backends.cudnn.allow_tf32`` False,
    ``torch.get_float32_matmul_precision()`` "highest", the ``fp32_precision`` flags not "tf32").
    """
    saved = _save()
    try:
        torch.set_float32_matmul_precision("highest")  # also cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        _restore(saved)


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """:func:`no_autocast` and :func:`no_tf32` together: what runs inside is float32 throughout."""
    with no_autocast(), no_tf32():
        yield


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The networks' forward passes: bf16 autocast on CUDA for ``auto``/``bf16`` (on CPU for ``bf16``
    only: CPU bf16 is slower here); ``fp32``: full float32, TF32 off (:func:`no_tf32`);
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
