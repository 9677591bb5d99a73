"""CIFAR-10 and CIFAR-100 from torchvision's on-disk format (the pickled python batches)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .base import BenchmarkSpec, LoadRequest, RawSplits, Split
from .errors import not_found

_HOW = (
    "Get it with --download (torchvision downloads and verifies it into <root>), "
    "or put the extracted '{folder}' folder from {url} under <root>."
)


def _entry(d: dict, key: str):
    """A batch dict value; the real files have bytes keys, str keys are accepted too."""
    if key.encode() in d:
        return d[key.encode()]
    return d[key]


def _read_batches(folder: Path, files: list[str], label_key: str) -> Split:
    images, labels = [], []
    for name in files:
        with open(folder / name, "rb") as f:
            d = pickle.load(f, encoding="latin1")  # latin1: Python-2 numpy arrays load intact
        images.append(np.asarray(_entry(d, "data"), dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(_entry(d, label_key), dtype=np.int64))
    return Split(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


def _make_loader(name: str, folder_name: str, train_files: list[str], test_files: list[str], label_key: str, tv_class: str):
    def load(request: LoadRequest) -> RawSplits:
        folder = request.root / folder_name
        if request.download:
            import torchvision.datasets as tvd

            try:
                getattr(tvd, tv_class)(root=str(request.root), train=True, download=True)
            except Exception as e:
                raise not_found(name, [folder], SPECS[name].how_to_get, request.root, f"download failed: {e}") from e
        needed = [folder / f for f in train_files + test_files]
        missing = [p for p in needed if not p.is_file()]
        if missing:
            looked_at = missing if folder.is_dir() else [folder]
            raise not_found(name, looked_at, SPECS[name].how_to_get, request.root)
        return RawSplits(
            train=_read_batches(folder, train_files, label_key),
            test=_read_batches(folder, test_files, label_key),
        )

    return load


CIFAR10 = BenchmarkSpec(
    name="cifar10",
    loader=_make_loader(
        "cifar10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", "CIFAR10"
    ),
    num_classes=10,
    input_shape=(3, 32, 32),
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    val_fraction=0.1,
    crop_padding=4,
    flip=True,
    description="CIFAR-10 (torchvision format): 50000 train / 10000 test, 32x32 RGB, 10 classes",
    how_to_get=_HOW.format(folder="cifar-10-batches-py", url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
)

CIFAR100 = BenchmarkSpec(
    name="cifar100",
    loader=_make_loader("cifar100", "cifar-100-python", ["train"], ["test"], "fine_labels", "CIFAR100"),
    num_classes=100,
    input_shape=(3, 32, 32),
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    val_fraction=0.1,
    crop_padding=4,
    flip=True,
    description="CIFAR-100 (torchvision format, fine labels): 50000 train / 10000 test, 32x32 RGB, 100 classes",
    how_to_get=_HOW.format(folder="cifar-100-python", url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
)

SPECS = {"cifar10": CIFAR10, "cifar100": CIFAR100}
