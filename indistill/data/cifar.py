"""CIFAR-10 and CIFAR-100 from torchvision's on-disk format (the pickled python batches)."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from indistill.data.base import BenchmarkSpec, LoadRequest, RawSplits, Split
from indistill.data.errors import bad_file, not_found
from indistill.data.networks import PREACT_RESNET18, trio

_URL = "https://www.cs.toronto.edu/~kriz/{}-python.tar.gz"
_HOW = (
    "Get it with --download (torchvision downloads and verifies it into <root>), "
    "or put the extracted '{folder}' folder from {url} under <root>."
)


#: The only globals a CIFAR batch may reference: numpy arrays, dtypes and Python 2 byte strings.
#: Anything else is not a CIFAR batch (and is not executed: unpickling runs code otherwise).
_ALLOWED_GLOBALS = {
    (module, name)
    for prefix in ("numpy.core", "numpy._core")
    for module, name in ((f"{prefix}.multiarray", "_reconstruct"), (f"{prefix}.multiarray", "scalar"),
                         (f"{prefix}.numeric", "_frombuffer"))
} | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it references {module}.{name}, which no CIFAR batch holds")


_MISSING = object()


def _entry(d: dict, key: str):
    """A batch dict value; the real files have bytes keys, str keys are accepted too."""
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key, _MISSING)


def _unpickle(path: Path, fix: str) -> dict:
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            f.seek(0)
            d = _BatchUnpickler(f, encoding="latin1").load()  # latin1: Python-2 numpy arrays load intact
    except MemoryError:
        raise
    except OSError as e:
        raise bad_file(path, f"cannot be read ({e.strerror or e})", fix) from None
    except Exception as e:  # UnpicklingError, EOFError (truncated), ValueError, ...
        what = "an HTML or text page, not a pickle" if head.lstrip()[:1] == b"<" else "not a CIFAR python batch"
        raise bad_file(path, f"{what} (cannot unpickle it: {type(e).__name__}: {e})", fix) from None
    if not isinstance(d, dict):
        raise bad_file(path, f"holds a {type(d).__name__}, not a CIFAR batch (a dict with 'data' and labels)", fix)
    return d


def _read_batch(path: Path, label_key: str, num_classes: int, fix: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch, checked: uint8 ``[N, 3, 32, 32]`` images and ``N`` labels in range."""
    d = _unpickle(path, fix)
    keys = ", ".join(sorted(k.decode("latin1") if isinstance(k, bytes) else str(k) for k in d))
    data, labels = _entry(d, "data"), _entry(d, label_key)
    for name, value in (("data", data), (label_key, labels)):
        if value is _MISSING:
            raise bad_file(path, f"has no {name!r} entry (it holds: {keys or 'nothing'}), not a CIFAR batch", fix)
    try:
        data = np.asarray(data)
    except Exception:  # ragged lists and the like
        data = np.asarray(None)
    if not ((data.ndim == 2 and data.shape[1] == 3 * 32 * 32) or (data.ndim == 4 and data.shape[1:] == (3, 32, 32))):
        raise bad_file(path, f"'data' has shape {list(data.shape)}, expected [N, 3072] (N 32x32 RGB images)", fix)
    if data.dtype != np.uint8:
        if data.dtype.kind not in "iu" or (data.size and (data.min() < 0 or data.max() > 255)):
            raise bad_file(path, f"'data' holds {data.dtype} values, expected uint8 pixels", fix)
        data = data.astype(np.uint8)
    n = data.shape[0]
    if n == 0:
        raise bad_file(path, "holds no images", fix)
    try:
        labels = np.asarray(labels)
    except Exception:
        labels = np.asarray(None)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or labels.dtype == np.bool_:
        raise bad_file(path, f"{label_key!r} is not a list of integer labels ({labels.dtype} {list(labels.shape)})", fix)
    if len(labels) != n:
        raise bad_file(path, f"{len(labels)} {label_key!r} for {n} images", fix)
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise bad_file(path, f"label {bad} in {label_key!r} is out of range 0..{num_classes - 1}", fix)
    return data.reshape(n, 3, 32, 32), labels.astype(np.int64)


def _read_batches(folder: Path, files: list[str], label_key: str, num_classes: int, fix: str) -> Split:
    images, labels = [], []
    for name in files:
        x, y = _read_batch(folder / name, label_key, num_classes, fix)
        images.append(x)
        labels.append(y)
    return Split(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


def _make_loader(name: str, folder_name: str, train_files: list[str], test_files: list[str], label_key: str,
                 tv_class: str, num_classes: int, url: str):
    fix = f"run again with --download to fetch it again (torchvision replaces files that fail its checksum), or replace it from {url}"

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
            train=_read_batches(folder, train_files, label_key, num_classes, fix),
            test=_read_batches(folder, test_files, label_key, num_classes, fix),
        )

    return load


CIFAR10 = BenchmarkSpec(
    name="cifar10",
    loader=_make_loader(
        "cifar10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", "CIFAR10",
        10, _URL.format("cifar-10"),
    ),
    num_classes=10,
    input_shape=(3, 32, 32),
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    val_fraction=0.1,
    crop_padding=4,
    flip=True,
    description="CIFAR-10 (torchvision format): 50000 train / 10000 test, 32x32 RGB, 10 classes",
    how_to_get=_HOW.format(folder="cifar-10-batches-py", url=_URL.format("cifar-10")),
    networks=trio(PREACT_RESNET18),  # the reference recipe
)

CIFAR100 = BenchmarkSpec(
    name="cifar100",
    loader=_make_loader("cifar100", "cifar-100-python", ["train"], ["test"], "fine_labels", "CIFAR100", 100, _URL.format("cifar-100")),
    num_classes=100,
    input_shape=(3, 32, 32),
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    val_fraction=0.1,
    crop_padding=4,
    flip=True,
    description="CIFAR-100 (torchvision format, fine labels): 50000 train / 10000 test, 32x32 RGB, 100 classes",
    how_to_get=_HOW.format(folder="cifar-100-python", url=_URL.format("cifar-100")),
    networks=trio(PREACT_RESNET18),
)

SPECS = {"cifar10": CIFAR10, "cifar100": CIFAR100}
