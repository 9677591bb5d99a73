"""Batched, on-device input ops for the training hot path: normalisation and crop + flip."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def _per_channel(values: Sequence[float] | float | Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
    t = torch.as_tensor(values, dtype=dtype, device=device)
    return t.reshape(1, -1, 1, 1)


def normalize(
    images_uint8: Tensor,
    mean: Sequence[float] | float | Tensor,
    std: Sequence[float] | float | Tensor,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``(x / 255 - mean) / std`` per channel, as ``dtype`` on the input's device."""
    work = torch.float64 if dtype == torch.float64 else torch.float32  # half types: compute in float32
    mean_t = _per_channel(mean, images_uint8.device, work)
    std_t = _per_channel(std, images_uint8.device, work)
    # fold /255 into the affine map: one multiply-add pass
    scale = 1.0 / (255.0 * std_t)
    shift = -mean_t / std_t
    x = torch.addcmul(shift, images_uint8.to(work), scale)
    return x if dtype == work else x.to(dtype)


def black(mean: Sequence[float] | float, std: Sequence[float] | float) -> tuple[float, ...]:
    """The normalised value of a black (0) pixel per channel: ``-mean / std``."""
    means = [mean] if isinstance(mean, (int, float)) else list(mean)
    stds = [std] * len(means) if isinstance(std, (int, float)) else list(std)
    return tuple(-m / s for m, s in zip(means, stds))


def is_channels_last(x: Tensor) -> bool:
    """Whether ``x`` ``[B, C, H, W]`` is laid out NHWC (channels_last) and not also NCHW-contiguous
    (with one channel, or 1 x 1 images, both layouts are the same memory)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def augment_batch(
    x: Tensor,
    padding: int,
    flip: bool,
    generator: torch.Generator | None = None,
    fill: Sequence[float] | float = 0.0,
) -> Tensor:
    """Random ``H x W`` crop of each padded image and random horizontal flip (p = 0.5).

    ``x`` is ``[B, C, H, W]`` (any dtype, any device; ``generator`` on the same device). Padded
    pixels take ``fill`` (per channel): on normalised images pass :func:`black` to pad with black
    as torchvision's ``RandomCrop(padding=p)`` does on the raw image. Each image draws its own
    offsets and flip. Returns a new tensor in ``x``'s layout (channels_last stays channels_last,
    with the same values and the same draws), or ``x`` itself when ``padding == 0`` and ``flip`` is False.
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding == 0 and not flip:
        return x
    b, c, h, w = x.shape
    device = x.device
    p = padding
    hp, wp = h + 2 * p, w + 2 * p
    rows = torch.arange(h, device=device).expand(b, h)  # in the padded image's coordinates
    cols = torch.arange(w, device=device).expand(b, w)
    if p > 0:
        offsets = torch.randint(0, 2 * p + 1, (2, b, 1), device=device, generator=generator)
        rows = rows + offsets[0]
        cols = cols + offsets[1]
    if flip:
        mirrored = torch.rand(b, 1, device=device, generator=generator) < 0.5
        cols = torch.where(mirrored, cols.flip(1), cols)
    if is_channels_last(x):
        return _crop_nhwc(x, rows - p, cols - p, fill if p > 0 else None)
    if p > 0:
        value = torch.as_tensor(fill, dtype=x.dtype, device=device).reshape(1, -1, 1, 1).expand(b, c, hp, wp)
        padded = value.clone()
        padded[:, :, p : p + h, p : p + w] = x
        x = padded
    # one gather over the flattened padded plane serves crop and flip together
    index = (rows.unsqueeze(2) * wp + cols.unsqueeze(1)).reshape(b, 1, h * w).expand(b, c, h * w)
    return x.reshape(b, c, hp * wp).gather(2, index).reshape(b, c, h, w)


def _crop_nhwc(x: Tensor, rows: Tensor, cols: Tensor, fill: Sequence[float] | float | None) -> Tensor:
    """``augment_batch`` on a channels_last ``x``: output pixel ``(i, j)`` of image ``n`` is the input's
    ``(rows[n, i], cols[n, j])``, ``fill`` where that lies outside the image (None: never, no
    padding); channels_last again.

    One row gather from the NHWC pixels (``C`` contiguous values each) with ``fill`` appended as one
    more pixel: no padded copy (filling an NHWC tensor per channel is slow, its innermost dimension
    is ``C``), the same values as the NCHW path.
    """
    b, c, h, w = x.shape
    image = torch.arange(b, device=x.device).reshape(b, 1, 1)
    source = (image * h + rows.unsqueeze(2)) * w + cols.unsqueeze(1)  # [b, h, w] into the b*h*w pixels
    pixels = x.permute(0, 2, 3, 1).reshape(b * h * w, c)  # a view: x is NHWC in memory
    if fill is not None:  # (not only where a pixel falls outside: that test would wait for the GPU)
        inside = ((rows >= 0) & (rows < h)).unsqueeze(2) & ((cols >= 0) & (cols < w)).unsqueeze(1)
        value = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(1, -1).expand(1, c)
        pixels = torch.cat([pixels, value])
        source = torch.where(inside, source, b * h * w)
    return pixels.index_select(0, source.reshape(-1)).reshape(b, h, w, c).permute(0, 3, 1, 2)
