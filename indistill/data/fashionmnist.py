"""FashionMNIST from torchvision's raw idx files, zero-padded from 28x28 to 32x32."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from indistill.data.base import BenchmarkSpec, LoadRequest, RawSplits, Split
from indistill.data.errors import bad_file, not_found
from indistill.data.networks import PREACT_RESNET18, trio

_IMAGES_MAGIC = 0x00000803  # uint8, 3 dims
_LABELS_MAGIC = 0x00000801  # uint8, 1 dim
_PAD = 2  # 28 + 2 * 2 = 32


_FIX = (
    "delete it and run again with --download, or replace it with the file from "
    "https://github.com/zalandoresearch/fashion-mnist"
)


def read_idx(path: Path, magic: int, fix: str = _FIX) -> np.ndarray:
    """A uint8 idx file (gzipped or not) as an array of its declared shape.

    A file that cannot be read, is not gzip although named ``.gz``, is truncated, has another
    magic number or holds more or fewer bytes than its header declares raises
    :class:`DatasetFormatError` naming it.
    """
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise bad_file(path, f"not a complete gzip file ({type(e).__name__}: {e})", fix) from None
    except OSError as e:
        raise bad_file(path, f"cannot be read ({e.strerror or e})", fix) from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < 4:
        raise bad_file(path, f"truncated: {len(data)} bytes, an idx header needs {header}", fix)
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        note = " (gzip data: name it .gz)" if data[:2] == b"\x1f\x8b" else ""
        raise bad_file(path, f"bad idx magic number {found:#010x}, expected {magic:#010x}{note}", fix)
    if len(data) < header:
        raise bad_file(path, f"truncated: {len(data)} bytes, its idx header needs {header}", fix)
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    held = len(data) - header
    if held != expected:
        state = "truncated" if held < expected else "too long"
        raise bad_file(path, f"{state}: its idx header says {list(shape)} ({expected} bytes) but it holds {held}", fix)
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def _find(raw: Path, stem: str) -> Path | None:
    for candidate in (raw / stem, raw / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_split(raw: Path, prefix: str) -> Split:
    images_path = _find(raw, f"{prefix}-images-idx3-ubyte")
    labels_path = _find(raw, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path, _IMAGES_MAGIC)
    labels = read_idx(labels_path, _LABELS_MAGIC)
    if images.shape[1:] != (28, 28):
        raise bad_file(images_path, f"holds images of {images.shape[1]}x{images.shape[2]}, expected 28x28", _FIX)
    if images.shape[0] == 0:
        raise bad_file(images_path, "holds no images", _FIX)
    if labels.shape[0] != images.shape[0]:
        raise bad_file(labels_path, f"holds {labels.shape[0]} labels but {images_path.name} holds {images.shape[0]} images", _FIX)
    if labels.size and int(labels.max()) >= SPEC.num_classes:
        raise bad_file(labels_path, f"label {int(labels.max())} is out of range 0..{SPEC.num_classes - 1}", _FIX)
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
    networks=trio(PREACT_RESNET18),
)
