"""The auxiliary/student family of the reference recipe: (conv3x3 -> BN -> ReLU -> maxpool2) x n, fc embedding."""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from .base import EMBEDDING, TapNet, TapSpec


class CNN(TapNet):
    """Conv blocks tapped after each pool, then flatten (or global pool) -> fc -> ReLU (embedding) -> fc."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        widths: Sequence[int] = (16, 32, 64),
        embedding_dim: int = 128,
        padding: int = 0,
        global_pool: bool = False,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        blocks, taps, c, size = [], [], in_channels, image_size
        for i, w in enumerate(widths):
            blocks.append(nn.Sequential(nn.Conv2d(c, w, 3, padding=padding), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2)))
            size = (size + 2 * padding - 2) // 2
            if size < 1:
                raise ValueError(f"image_size {image_size} is too small for {len(widths)} blocks with padding {padding}")
            taps.append(TapSpec(f"block{i}", f"blocks.{i}", w, conv=f"blocks.{i}.0", bn=f"blocks.{i}.1"))
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity()
        features = c if global_pool else c * size * size
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(features, embedding_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(embedding_dim, num_classes)
        self.taps = (*taps, TapSpec(EMBEDDING, "embed", embedding_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(self.pool(self.blocks(x))))
