"""Networks with taps, the registry of architectures and the per-benchmark zoo."""
from __future__ import annotations

import inspect
from typing import Any, Callable

from indistill.common.registry import Registry
from indistill.models.base import EMBEDDING, TapNet, TapReader, TapSpec, read_taps, unwrap
from indistill.models.checkpoint import load_checkpoint
from indistill.models.cnn import CNN
from indistill.models.resnet import PreActResNet18, ResNet18

# the classes themselves: their constructor keywords are the config's model options
MODELS: Registry[Callable[..., TapNet]] = Registry("model")
MODELS.register("cnn", CNN)
MODELS.register("preact_resnet18", PreActResNet18)
MODELS.register("resnet18", ResNet18)


def model_options(arch: str) -> list[str]:
    """Keyword options of an architecture's factory, besides num_classes and in_channels."""
    params = inspect.signature(MODELS.get(arch)).parameters
    return [n for n in params if n not in ("num_classes", "in_channels")]


def create_model(arch: str, *, num_classes: int, in_channels: int, **kwargs: Any) -> TapNet:
    """Build a registered architecture; an unknown option raises a TypeError listing the valid ones."""
    factory = MODELS.get(arch)
    unknown = sorted(set(kwargs) - set(model_options(arch)))
    if unknown:
        raise TypeError(f"model {arch!r}: unknown option(s) {', '.join(unknown)}; choose from: {', '.join(model_options(arch))}")
    return factory(num_classes=num_classes, in_channels=in_channels, **kwargs)


__all__ = [
    "CNN", "EMBEDDING", "MODELS", "PreActResNet18", "ResNet18", "TapNet", "TapReader", "TapSpec",
    "create_model", "load_checkpoint", "model_options", "read_taps", "unwrap",
]
