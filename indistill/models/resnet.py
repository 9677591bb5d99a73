"""Teachers: pre-activation ResNet-18 for 32x32 inputs and a torchvision-style ResNet-18."""
from __future__ import annotations

import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from .base import EMBEDDING, TapNet, TapSpec


class PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride != 1 or c_in != c_out else None

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(TapNet):
    """3x3 stem, stages 64/128/256/512 (2 blocks each), BN-ReLU, average pool: 512-d embedding."""

    def __init__(self, num_classes: int, in_channels: int = 3, image_size: int = 32) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        stages, c, taps = [], 64, []
        for i, (w, s) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2))):
            stages.append(nn.Sequential(PreActBlock(c, w, s), PreActBlock(w, w, 1)))
            # a pre-activation stage output is the residual sum: no BN directly after its last conv
            taps.append(TapSpec(f"block{i}", f"stages.{i}", w, conv=f"stages.{i}.1.conv2", bn=None))
            c = w
        self.stages = nn.Sequential(*stages)
        self.embed = nn.Sequential(nn.BatchNorm2d(512), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(512, num_classes)
        self.taps = (*taps, TapSpec(EMBEDDING, "embed", 512))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(self.stages(self.stem(x))))


class ResNet18(TapNet):
    """torchvision's ResNet-18 modules; ``stem="imagenet"`` (7x7/2 + maxpool) or ``"small"`` (3x3/1).

    Its stage taps end in a residual add + ReLU, so they are not a channel restriction of one conv.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, stem: str = "imagenet", pretrained: bool = False,
                 image_size: int = 224) -> None:
        super().__init__()
        if stem not in ("imagenet", "small"):
            raise ValueError(f"stem: choose from imagenet, small; got {stem!r}")
        weights = None
        if pretrained:
            weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
        try:
            net = torchvision.models.resnet18(weights=weights)
        except Exception as exc:  # noqa: BLE001 - download failures have many types
            raise RuntimeError(f"ImageNet weights for resnet18 need network access ({exc.__class__.__name__}: {exc})") from None
        if stem == "small":
            net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.Sequential(net.layer1, net.layer2, net.layer3, net.layer4)
        self.embed = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(512, num_classes)
        self.taps = tuple(
            TapSpec(f"block{i}", f"stages.{i}", w, conv=f"stages.{i}.1.conv2", bn=f"stages.{i}.1.bn2")
            for i, w in enumerate((64, 128, 256, 512))
        ) + (TapSpec(EMBEDDING, "embed", 512),)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(self.stages(self.stem(x))))
