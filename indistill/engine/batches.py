"""Device-resident training data: one tensor per split, batched and augmented on the device.

A split stored channels_last (``cfg.channels_last``: NHWC in memory) yields channels_last batches,
training and evaluation alike, without a re-layout per batch: the images of a batch are gathered as
whole NHWC images and viewed back as ``[B, C, H, W]`` (no copy), and augmentation keeps the layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

from indistill.data import BenchmarkSpec, Split, augment_batch, normalize
from indistill.data.augment import black, is_channels_last
from indistill.engine.runtime import epoch_generator, rank, world_size

#: Keep a normalised float copy of a split on the device when it is at most this large;
#: bigger splits (ImageNet) are normalised per batch from the uint8 tensor.
PRENORMALIZE_BYTES = 2 * 1024**3


@dataclass
class DeviceSplit:
    """A split on the training device, ready to be batched."""

    images: Tensor  # float (normalised) or uint8
    labels: Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalized: bool

    @classmethod
    def create(cls, split: Split, spec: BenchmarkSpec, device: torch.device, channels_last: bool = False) -> "DeviceSplit":
        images = split.images.to(device, non_blocking=True)
        labels = split.labels.to(device, non_blocking=True)
        prenorm = images.numel() * 4 <= PRENORMALIZE_BYTES
        if prenorm:
            images = normalize(images, spec.mean, spec.std)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return cls(images, labels, spec.mean, spec.std, prenorm)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def black(self) -> tuple[float, ...]:
        """Padding value of the crop augmentation: a black pixel, normalised."""
        return black(self.mean, self.std)

    def prepare(self, images: Tensor) -> Tensor:
        """``images`` normalised (in their layout), unless the split is stored normalised already."""
        return images if self.normalized else normalize(images, self.mean, self.std)

    def take(self, idx: Tensor) -> Tensor:
        """The images at ``idx`` (1-D, on the device) in the stored layout. ``index_select`` on a
        channels_last ``[N, C, H, W]`` tensor returns an NCHW-contiguous copy (the network would convert
        it back, per batch); gathering the NHWC view along dim 0 and permuting back keeps NHWC."""
        if is_channels_last(self.images):
            return self.images.permute(0, 2, 3, 1).index_select(0, idx).permute(0, 3, 1, 2)
        return self.images.index_select(0, idx)

    def batches(
        self,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        padding: int = 0,
        flip: bool = False,
        shuffle: bool = True,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """This rank's shuffled, augmented batches for ``epoch`` (deterministic in seed and epoch).

        Under DDP each rank takes every ``world_size``-th sample of the shared permutation and a
        ``batch_size // world_size`` share of each global batch. Batches of fewer than 2 samples
        are skipped (PKT needs pairs).
        """
        device = self.labels.device
        n = len(self)
        g = epoch_generator(seed, epoch, device, stream=0)
        order = torch.randperm(n, device=device, generator=g) if shuffle else torch.arange(n, device=device)
        ws, r = world_size(), rank()
        if ws > 1:
            order = order[: n - n % ws][r::ws]
            batch_size = max(2, batch_size // ws)
        aug = epoch_generator(seed, epoch, device, stream=1 + r)
        for start in range(0, order.numel(), batch_size):
            idx = order[start : start + batch_size]
            if idx.numel() < 2:
                continue
            x = self.prepare(self.take(idx))
            if padding or flip:
                x = augment_batch(x, padding, flip, generator=aug, fill=self.black)
            yield x, self.labels.index_select(0, idx)

    def eval_batches(self, batch_size: int) -> Iterator[Tensor]:
        """The split in order, ``batch_size`` images at a time, normalised, in the stored layout
        (a slice along dim 0 keeps it)."""
        for start in range(0, len(self), batch_size):
            yield self.prepare(self.images[start : start + batch_size])
