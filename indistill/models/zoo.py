"""Per-benchmark teacher / auxiliary / student networks (DESIGN.md section 2).

Only cifar10's trio is the published reference recipe; every other entry is our own setting.
Entries hold the architecture name and its options; ``num_classes``, ``in_channels`` and
``image_size`` come from the benchmark.
"""
from __future__ import annotations

import copy
import inspect
from typing import Mapping

from .base import TapNet

ROLES = ("teacher", "auxiliary", "student")

# reference CIFAR-10 recipe: three unpadded conv stages, flatten (64*2*2 = 256 at 32px) -> fc
_AUX = {"arch": "cnn", "widths": [16, 32, 64], "embedding_dim": 128}
_STUDENT = {"arch": "cnn", "widths": [8, 16, 32], "embedding_dim": 64}
# larger images: four padded stages ending in global average pooling
_AUX_DEEP = {"arch": "cnn", "widths": [32, 64, 128, 256], "embedding_dim": 256, "padding": 1, "global_pool": True}
_STUDENT_DEEP = {"arch": "cnn", "widths": [16, 32, 64, 128], "embedding_dim": 128, "padding": 1, "global_pool": True}

BENCHMARK_NETWORKS: dict[str, dict[str, dict]] = {
    # a small wide CNN teacher, so the embedded CPU default stays short
    "digits": {
        "teacher": {"arch": "cnn", "widths": [32, 64, 128], "embedding_dim": 256, "padding": 1},
        "auxiliary": _AUX,
        "student": _STUDENT,
    },
    "cifar10": {"teacher": {"arch": "preact_resnet18"}, "auxiliary": _AUX, "student": _STUDENT},
    "cifar100": {"teacher": {"arch": "preact_resnet18"}, "auxiliary": _AUX, "student": _STUDENT},
    "fashionmnist": {"teacher": {"arch": "preact_resnet18"}, "auxiliary": _AUX, "student": _STUDENT},
    "cub200": {
        "teacher": {"arch": "resnet18", "stem": "imagenet", "pretrained": False},
        "auxiliary": _AUX_DEEP,
        "student": _STUDENT_DEEP,
    },
    # 64px ImageNet: the stride-1 3x3 stem of downsampled-ImageNet work keeps 64x64 maps in layer1
    "imagenet": {
        "teacher": {"arch": "resnet18", "stem": "small", "pretrained": False},
        "auxiliary": _AUX_DEEP,
        "student": _STUDENT_DEEP,
    },
}


def network_entry(benchmark: str, role: str, overrides: Mapping | None = None) -> dict:
    """The zoo entry of ``role`` on ``benchmark`` with ``overrides`` merged in (a fresh dict).

    Overriding ``arch`` with another architecture drops the zoo entry's options, which belong to
    the old one.
    """
    if benchmark not in BENCHMARK_NETWORKS:
        raise KeyError(f"no networks for benchmark {benchmark!r}; known: {', '.join(BENCHMARK_NETWORKS)}")
    if role not in ROLES:
        raise KeyError(f"unknown role {role!r}; choose from: {', '.join(ROLES)}")
    base = copy.deepcopy(BENCHMARK_NETWORKS[benchmark][role])
    overrides = copy.deepcopy(dict(overrides or {}))
    if overrides.get("arch", base["arch"]) != base["arch"]:
        base = {}
    return {**base, **overrides}


def create_network(
    benchmark: str,
    role: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    overrides: Mapping | None = None,
) -> TapNet:
    """Build ``role`` of ``benchmark``; ``image_size`` goes to architectures that take it."""
    from . import MODELS, create_model

    entry = network_entry(benchmark, role, overrides)
    arch = entry.pop("arch")
    if "image_size" in inspect.signature(MODELS.get(arch)).parameters:
        entry["image_size"] = image_size
    return create_model(arch, num_classes=num_classes, in_channels=in_channels, **entry)
