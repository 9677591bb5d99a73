"""Networks with taps, a registry of architectures and the per-benchmark zoo."""
from __future__ import annotations

from ..registry import Registry
from .base import EMBEDDING, TapNet, TapReader, TapSpec, read_taps, unwrap
from .cnn import CNN
from .resnet import PreActResNet18, ResNet18

MODELS: Registry = Registry("model")
MODELS.register("cnn", CNN)
MODELS.register("preact_resnet18", PreActResNet18)
MODELS.register("resnet18", ResNet18)


def create_model(arch: str, *, num_classes: int, in_channels: int, **kwargs) -> TapNet:
    """Build a registered architecture; unknown keyword arguments raise a TypeError naming them."""
    return MODELS.get(arch)(num_classes=num_classes, in_channels=in_channels, **kwargs)


__all__ = ["MODELS", "create_model", "TapNet", "TapReader", "TapSpec", "read_taps", "unwrap", "EMBEDDING"]
