"""The plain CNN family of the reference CIFAR-10 recipe (auxiliary and student networks).

Each stage is ``Conv3x3 -> BN -> ReLU -> MaxPool2``; the stage output (post-pool) is a tap. Then
either flatten (the reference recipe) or global average pooling (deeper variants for larger
images), ``fc -> ReLU`` (the embedding tap) and a linear classifier.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from indistill.models.base import EMBEDDING, TapNet, TapSpec


def conv_stage_size(size: int, padding: int) -> int:
    """Spatial size after one stage: 3x3 conv (stride 1), then 2x2 max-pool (floor)."""
    return (size + 2 * padding - 2) // 2


class CNN(TapNet):
    """``len(widths)`` conv stages, then (flatten | global pool) -> fc embedding -> linear head."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int,
        widths: Sequence[int] = (16, 32, 64),
        embedding_dim: int = 128,
        padding: int = 0,
        global_pool: bool = False,
    ) -> None:
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1:
            raise ValueError(f"cnn: widths must be a non-empty list of positive ints, got {widths}")
        stages, c_in, size = [], in_channels, int(image_size)
        for w in widths:
            stages.append(nn.Sequential(
                nn.Conv2d(c_in, w, 3, padding=padding, bias=True),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ))
            c_in, size = w, conv_stage_size(size, padding)
            if size < 1:
                raise ValueError(f"cnn: a {image_size}px input is too small for {len(widths)} stages with padding {padding}")
        self.blocks = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity()
        features = widths[-1] if global_pool else widths[-1] * size * size
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(features, embedding_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(embedding_dim, num_classes)
        self.taps = tuple(
            TapSpec(f"block{i}", f"blocks.{i}", w, conv=f"blocks.{i}.0", bn=f"blocks.{i}.1")
            for i, w in enumerate(widths)
        ) + (TapSpec(EMBEDDING, "embed", embedding_dim),)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(self.pool(self.blocks(x))))

