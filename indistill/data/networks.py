"""The networks a benchmark declares (docs/benchmarks.md, "Adding a benchmark"): plain entries that ``indistill.models.zoo`` builds.

An entry is the name of an architecture registered in ``indistill.models.MODELS`` plus its options;
``num_classes``, ``in_channels`` and ``image_size`` come from the benchmark. Only cifar10's trio is
the published reference recipe; every other benchmark's networks are our own setting.
"""
from __future__ import annotations

from typing import Any

NetworkEntry = dict[str, Any]

#: the reference CIFAR-10 recipe: three unpadded conv stages, flatten (64*2*2 = 256 at 32px) -> fc
AUXILIARY: NetworkEntry = {"arch": "cnn", "widths": [16, 32, 64], "embedding_dim": 128}
STUDENT: NetworkEntry = {"arch": "cnn", "widths": [8, 16, 32], "embedding_dim": 64}
#: larger images: four padded stages ending in global average pooling
AUXILIARY_DEEP: NetworkEntry = {"arch": "cnn", "widths": [32, 64, 128, 256], "embedding_dim": 256, "padding": 1,
                                "global_pool": True}
STUDENT_DEEP: NetworkEntry = {"arch": "cnn", "widths": [16, 32, 64, 128], "embedding_dim": 128, "padding": 1,
                              "global_pool": True}
#: the reference code's pre-activation ResNet-18 for 32x32 inputs
PREACT_RESNET18: NetworkEntry = {"arch": "preact_resnet18"}


def trio(teacher: NetworkEntry, auxiliary: NetworkEntry = AUXILIARY, student: NetworkEntry = STUDENT) -> dict[str, NetworkEntry]:
    """A benchmark's ``networks``: the entry of every role."""
    return {"teacher": teacher, "auxiliary": auxiliary, "student": student}
