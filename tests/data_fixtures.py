"""Tiny datasets fabricated in each benchmark's real on-disk format (for tests only)."""
from __future__ import annotations

import gzip
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def write_cifar10(root: Path, per_batch: int = 20, test: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """cifar-10-batches-py with 5 train batches; returns (train_x, train_y, test_x, test_y)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    xs, ys = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in np.arange(per_batch) % 10]
        batch = {b"batch_label": f"training batch {i} of 5".encode(), b"labels": y, b"data": x,
                 b"filenames": [f"img_{i}_{j}.png".encode() for j in range(per_batch)]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
        xs.append(x)
        ys.append(y)
    tx = rng.integers(0, 256, (test, 3072), dtype=np.uint8)
    ty = [int(v) for v in rng.permutation(np.arange(test) % 10)]
    (folder / "test_batch").write_bytes(pickle.dumps(
        {b"batch_label": b"testing batch 1 of 1", b"labels": ty, b"data": tx, b"filenames": [b"t.png"] * test}, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps(
        {b"num_cases_per_batch": per_batch, b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072}, protocol=2))
    return (np.concatenate(xs).reshape(-1, 3, 32, 32), np.concatenate(ys), tx.reshape(-1, 3, 32, 32), np.array(ty))


def write_cifar100(root: Path, train: int = 300, test: int = 100, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """cifar-100-python with train / test / meta; returns (train_x, train_y, test_x, test_y)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = []
    for name, n in (("train", train), ("test", test)):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.permutation(np.arange(n) % 100)]
        d = {b"filenames": [b"f.png"] * n, b"batch_label": name.encode(), b"fine_labels": fine,
             b"coarse_labels": [v // 5 for v in fine], b"data": x}
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
        out += [x.reshape(-1, 3, 32, 32), np.array(fine)]
    (folder / "meta").write_bytes(pickle.dumps(
        {b"fine_label_names": [f"f{i}".encode() for i in range(100)], b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}, protocol=2))
    return tuple(out)


def read_cifar_batch(path: Path) -> dict:
    """A fabricated CIFAR batch back as its dict (bytes keys), for editing."""
    return pickle.loads(path.read_bytes(), encoding="latin1")


def write_cifar_batch(path: Path, batch: dict) -> None:
    """Pickle ``batch`` the way the fixtures do (protocol 2, as the real Python-2 files)."""
    path.write_bytes(pickle.dumps(batch, protocol=2))


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """An idx file: big-endian magic, one big-endian uint32 per dimension, then the uint8 data."""
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape) + array.astype(np.uint8).tobytes()


_idx_bytes = idx_bytes


def write_fashionmnist(root: Path, train: int = 50, test: int = 20, gz: bool = True, seed: int = 2) -> tuple[np.ndarray, ...]:
    """FashionMNIST/raw idx files (gzipped or not); returns (train_x, train_y, test_x, test_y) at 28x28."""
    rng = np.random.default_rng(seed)
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    out = []
    for prefix, n in (("train", train), ("t10k", test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        for stem, arr, magic in ((f"{prefix}-images-idx3-ubyte", x, 0x803), (f"{prefix}-labels-idx1-ubyte", y, 0x801)):
            data = _idx_bytes(arr, magic)
            if gz:
                (raw / f"{stem}.gz").write_bytes(gzip.compress(data))
            else:
                (raw / stem).write_bytes(data)
        out += [x, y.astype(np.int64)]
    return tuple(out)


#: One solid colour per class so decoded images reveal their class despite JPEG loss.
COLOURS = [(230, 20, 20), (20, 230, 20), (20, 20, 230), (230, 230, 20)]


def write_cub(root: Path, classes: int = 3, per_class: int = 4) -> dict[str, list[int]]:
    """A CUB_200_2011 tree under ``root``; returns the expected 0-based labels per split (id order)."""
    base = root / "CUB_200_2011"
    images, labels, split = [], [], []
    # ids interleave the classes, like nothing in particular: the loader must sort by id
    for i in range(classes * per_class):
        c = i % classes
        rel = f"{c + 1:03d}.Bird_{c}/Bird_{c}_{i:04d}.jpg"
        path = base / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40 + i, 30), COLOURS[c]).save(path, quality=95)
        images.append(f"{i + 1} {rel}")
        labels.append(f"{i + 1} {c + 1}")
        split.append(f"{i + 1} {1 if (i // classes) % 2 == 0 else 0}")
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (base / "classes.txt").write_text("".join(f"{c + 1} {c + 1:03d}.Bird_{c}\n" for c in range(classes)))
    expected = {"train": [], "test": []}
    for i in range(classes * per_class):
        expected["train" if (i // classes) % 2 == 0 else "test"].append(i % classes)
    return expected


def tar_folder(folder: Path, archive: Path) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
        extra = folder.parent / "attributes.txt"  # the real archive has a top-level file too
        extra.write_text("1 has_bill_shape::curved\n")
        tar.add(extra, arcname="attributes.txt")


WNIDS = ["n01440764", "n01443537", "n01484850"]


def write_imagenet(folder: Path, train_per_class: int = 6, val_per_class: int = 2) -> None:
    """train/<wnid>/ and val/<wnid>/ with small non-square images, one colour per class.

    Each image is 96x64 (or 64x96) with the central 64x64 square in the class colour and
    black outside it, saved as PNG (lossless) so the centre crop can be checked exactly.
    """
    for sub, n in (("train", train_per_class), ("val", val_per_class)):
        for c, wnid in enumerate(WNIDS):
            d = folder / sub / wnid
            d.mkdir(parents=True)
            for j in range(n):
                wide = j % 2 == 0
                w, h = (96, 64) if wide else (64, 96)
                img = Image.new("RGB", (w, h), (0, 0, 0))
                box = (16, 0, 80, 64) if wide else (0, 16, 64, 80)
                img.paste(Image.new("RGB", (64, 64), COLOURS[c]), box)
                suffix = "JPEG" if sub == "val" and j == 0 else "png"
                img.save(d / f"{wnid}_{j}.{suffix}", **({"quality": 95} if suffix == "JPEG" else {}))
            (d / "notes.txt").write_text("not an image")
