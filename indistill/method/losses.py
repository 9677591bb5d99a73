"""Distillation losses (docs/method.md, "The method"): feature losses (MSE, PKT, cosine) and logit losses (Hinton KD).

``LOSSES`` holds the feature losses, which compare the features at a tap (what a curriculum layer or
the embedding phase may use); ``LOGIT_LOSSES`` holds the losses on class logits. Every loss has the
signature ``fn(teacher, student) -> scalar Tensor``; the teacher side is always detached, and
computation runs in at least float32 (bf16/fp16 inputs are cast up), with any enclosing autocast
turned off (:func:`indistill.common.precision.no_autocast`): under autocast, PKT's ``x @ x.t()`` kernels
would otherwise run in bf16 although their inputs are float32.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from indistill.common.precision import no_autocast
from indistill.common.registry import Registry

FeatureLoss = Callable[[Tensor, Tensor], Tensor]
LogitLoss = Callable[[Tensor, Tensor], Tensor]

#: losses on the features of a tap (curriculum layers, the embedding)
LOSSES: Registry[FeatureLoss] = Registry("loss")
#: losses on class logits
LOGIT_LOSSES: Registry[LogitLoss] = Registry("logit loss")


def _cast_pair(teacher: Tensor, student: Tensor) -> tuple[Tensor, Tensor]:
    """Detached teacher and student in a common dtype of at least float32."""
    dtype = torch.promote_types(torch.promote_types(teacher.dtype, student.dtype), torch.float32)
    return teacher.detach().to(dtype), student.to(dtype)


def cosine_kernel(x: Tensor, eps: float = 1e-7) -> Tensor:
    """``[B, B]`` cosine similarity mapped to [0, 1]: ``(s + 1) / 2`` with rows scaled by ``1 / (||x|| + eps)``."""
    xn = x / (x.norm(dim=1, keepdim=True) + eps)
    return (xn @ xn.t() + 1.0) / 2.0


def distance_kernel(x: Tensor, eps: float = 1e-7) -> Tensor:
    """``[B, B]`` kernel ``1 / (1 + sqrt(max(||x_i - x_j||^2, 0) + eps))``.

    The squared distance comes from the expansion ``|x_i|^2 + |x_j|^2 - 2 x_i.x_j`` clamped at 0 (its
    diagonal set to exactly 0); ``eps`` is added to the clamped squared distance inside the sqrt, so the
    gradient stays finite at zero distance.
    """
    sq = x.pow(2).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.t())).clamp_min(0.0)
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    d2 = torch.where(eye, torch.zeros_like(d2), d2)
    return 1.0 / (1.0 + torch.sqrt(d2 + eps))


def row_normalise(k: Tensor) -> Tensor:
    """Rows scaled to sum to 1 (the diagonal stays in)."""
    return k / k.sum(dim=1, keepdim=True)


def jeffreys(p_t: Tensor, p_s: Tensor, eps: float = 1e-7) -> Tensor:
    """Symmetric KL as the mean over all entries of ``(p_t - p_s) * (log(p_t + eps) - log(p_s + eps))``."""
    return ((p_t - p_s) * (torch.log(p_t + eps) - torch.log(p_s + eps))).mean()


@no_autocast()
def pkt_loss(teacher: Tensor, student: Tensor, eps: float = 1e-7) -> Tensor:
    """PKT loss on ``[batch, dim]`` features: Jeffreys divergence of the row-normalised cosine and
    distance kernels, summed over the two kernels. No gradient reaches the teacher."""
    if teacher.dim() != 2 or student.dim() != 2:
        raise ValueError(
            f"pkt_loss expects [batch, dim] tensors, got teacher {tuple(teacher.shape)} "
            f"and student {tuple(student.shape)}"
        )
    if teacher.shape[0] != student.shape[0]:
        raise ValueError(
            f"pkt_loss needs the same batch size, got teacher {tuple(teacher.shape)} "
            f"and student {tuple(student.shape)}"
        )
    t, s = _cast_pair(teacher, student)
    loss = t.new_zeros(())
    for kernel in (cosine_kernel, distance_kernel):
        p_t = row_normalise(kernel(t, eps))
        p_s = row_normalise(kernel(s, eps))
        loss = loss + jeffreys(p_t, p_s, eps)
    return loss


@no_autocast()
def kd_loss(teacher_logits: Tensor, student_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton KD: ``KL(softmax(t / T) || softmax(s / T)) * T^2``, averaged over the batch."""
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"kd needs logits of the same shape, got teacher {tuple(teacher_logits.shape)} "
            f"and student {tuple(student_logits.shape)}"
        )
    t, s = _cast_pair(teacher_logits, student_logits)
    log_p_t = F.log_softmax(t / temperature, dim=1)
    log_p_s = F.log_softmax(s / temperature, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * temperature**2


@LOSSES.register("mse")
@no_autocast()
def mse(teacher: Tensor, student: Tensor) -> Tensor:
    """Mean squared error between same-shape features."""
    if teacher.shape != student.shape:
        raise ValueError(
            f"mse needs features of the same shape, got teacher {tuple(teacher.shape)} "
            f"and student {tuple(student.shape)}"
        )
    t, s = _cast_pair(teacher, student)
    return F.mse_loss(s, t)


@LOSSES.register("pkt")
def pkt(teacher: Tensor, student: Tensor) -> Tensor:
    """PKT on features flattened to ``[batch, -1]`` (widths may differ)."""
    return pkt_loss(teacher.flatten(1), student.flatten(1))


@LOSSES.register("cosine")
@no_autocast()
def cosine(teacher: Tensor, student: Tensor) -> Tensor:
    """``1 - mean cosine similarity`` of the flattened features."""
    t, s = _cast_pair(teacher.flatten(1), student.flatten(1))
    if t.shape != s.shape:
        raise ValueError(
            f"cosine needs features of the same flattened shape, got teacher {tuple(teacher.shape)} "
            f"and student {tuple(student.shape)}"
        )
    return 1.0 - F.cosine_similarity(s, t, dim=1).mean()


@LOGIT_LOSSES.register("kd")
def kd(teacher: Tensor, student: Tensor) -> Tensor:
    """Hinton KD on logits with temperature 4."""
    return kd_loss(teacher, student)


def get_loss(name: str) -> FeatureLoss:
    """The registered feature loss ``name``; unknown names raise ``UnknownNameError`` listing the choices."""
    return LOSSES.get(name)
