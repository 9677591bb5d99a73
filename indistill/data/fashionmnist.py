"""FashionMNIST from torchvision's raw idx files, zero-padded from 28x28 to 32x32."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .base import BenchmarkSpec, LoadRequest, RawSplits, Split
from .errors import not_found

_IMAGES_MAGIC = 0x00000803  # uint8, 3 dims
_LABELS_MAGIC = 0x00000801  # uint8, 1 dim
_PAD = 2  # 28 + 2 * 2 = 32


def read_idx(path: Path, magic: int) -> np.ndarray:
    """A uint8 idx file (gzipped or not) as an array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: bad idx magic number {found:#010x}, expected {magic:#010x}")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    array = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: idx header says {shape} but holds {array.size} bytes")
    return array.reshape(shape)


def _find(raw: Path, stem: str) -> Path | None:
    for candidate in (raw / stem, raw / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_split(raw: Path, prefix: str) -> Split:
    images = read_idx(_find(raw, f"{prefix}-images-idx3-ubyte"), _IMAGES_MAGIC)
    labels = read_idx(_find(raw, f"{prefix}-labels-idx1-ubyte"), _LABELS_MAGIC)
    x = F.pad(torch.from_numpy(images.copy()).unsqueeze(1), (_PAD, _PAD, _PAD, _PAD))
    return Split(x, torch.from_numpy(labels.astype(np.int64)))


def load_fashionmnist(request: LoadRequest) -> RawSplits:
    """The official 60000 / 10000 splits as uint8 [N, 1, 32, 32]."""
    raw = request.root / "FashionMNIST" / "raw"
    if request.download:
        import torchvision.datasets as tvd

        try:
            tvd.FashionMNIST(root=str(request.root), train=True, download=True)
        except Exception as e:
            raise not_found("fashionmnist", [raw], SPEC.how_to_get, request.root, f"download failed: {e}") from e
    stems = [f"{p}-{k}" for p in ("train", "t10k") for k in ("images-idx3-ubyte", "labels-idx1-ubyte")]
    missing = [raw / f"{s}[.gz]" for s in stems if _find(raw, s) is None]
    if missing:
        raise not_found("fashionmnist", missing if raw.is_dir() else [raw], SPEC.how_to_get, request.root)
    return RawSplits(train=_read_split(raw, "train"), test=_read_split(raw, "t10k"))


SPEC = BenchmarkSpec(
    name="fashionmnist",
    loader=load_fashionmnist,
    num_classes=10,
    input_shape=(1, 32, 32),
    mean=(0.2860,),  # the usual 28x28 statistics; the zero border is left to them
    std=(0.3530,),
    val_fraction=0.1,
    crop_padding=4,
    flip=True,
    description="FashionMNIST (torchvision raw idx files): 60000 train / 10000 test, 28x28 gray zero-padded to 32x32",
    how_to_get=(
        "Get it with --download (torchvision downloads and verifies it into <root>/FashionMNIST/raw), "
        "or put the four {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] files from "
        "https://github.com/zalandoresearch/fashion-mnist under <root>/FashionMNIST/raw."
    ),
)
