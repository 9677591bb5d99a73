"""Per-benchmark teacher / auxiliary / student (DESIGN.md section 2); only cifar10's trio is published."""
from __future__ import annotations

import inspect
from typing import Mapping

from .base import TapNet

_AUX = {"arch": "cnn", "widths": [16, 32, 64], "embedding_dim": 128}
_STUDENT = {"arch": "cnn", "widths": [8, 16, 32], "embedding_dim": 64}
_AUX_DEEP = {"arch": "cnn", "widths": [32, 64, 128, 256], "embedding_dim": 256, "padding": 1, "global_pool": True}
_STUDENT_DEEP = {"arch": "cnn", "widths": [16, 32, 64, 128], "embedding_dim": 128, "padding": 1, "global_pool": True}

BENCHMARK_NETWORKS: dict[str, dict[str, dict]] = {
    "cifar10": {"teacher": {"arch": "preact_resnet18"}, "auxiliary": _AUX, "student": _STUDENT},
    "cifar100": {"teacher": {"arch": "preact_resnet18"}, "auxiliary": _AUX, "student": _STUDENT},
    "fashionmnist": {"teacher": {"arch": "preact_resnet18"}, "auxiliary": _AUX, "student": _STUDENT},
    # a small wide CNN teacher, so the embedded default stays short on CPU
    "digits": {"teacher": {"arch": "cnn", "widths": [32, 64, 128], "embedding_dim": 256, "padding": 1},
               "auxiliary": _AUX, "student": _STUDENT},
    "cub200": {"teacher": {"arch": "resnet18", "stem": "imagenet"}, "auxiliary": _AUX_DEEP, "student": _STUDENT_DEEP},
    "imagenet": {"teacher": {"arch": "resnet18", "stem": "small"}, "auxiliary": _AUX_DEEP, "student": _STUDENT_DEEP},
}


def network_entry(benchmark: str, role: str, overrides: Mapping | None = None) -> dict:
    """The zoo entry of ``role`` on ``benchmark`` with ``overrides`` applied."""
    if benchmark not in BENCHMARK_NETWORKS:
        raise KeyError(f"no networks for benchmark {benchmark!r}; known: {', '.join(BENCHMARK_NETWORKS)}")
    if role not in ("teacher", "auxiliary", "student"):
        raise KeyError(f"unknown role {role!r}; choose from: teacher, auxiliary, student")
    return {**BENCHMARK_NETWORKS[benchmark][role], **dict(overrides or {})}


def create_network(benchmark: str, role: str, *, num_classes: int, in_channels: int, image_size: int,
                   overrides: Mapping | None = None) -> TapNet:
    from . import create_model

    entry = network_entry(benchmark, role, overrides)
    arch = entry.pop("arch")
    return create_model(arch, num_classes=num_classes, in_channels=in_channels, image_size=image_size, **entry)
