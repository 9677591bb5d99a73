"""Decode-once caches of uint8 image arrays (``.npy`` files, written atomically)."""
from __future__ import annotations

import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from .base import Split


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())


def split_paths(cache_dir: Path, key: str, split: str) -> tuple[Path, Path]:
    """The images and labels files of one cached split."""
    return cache_dir / f"{key}_{split}_images.npy", cache_dir / f"{key}_{split}_labels.npy"


def load_cached_split(cache_dir: Path, key: str, split: str) -> Split | None:
    """The cached split, or None when it is absent or incomplete."""
    images_path, labels_path = split_paths(cache_dir, key, split)
    if not (images_path.is_file() and labels_path.is_file()):
        return None
    try:
        # copy-on-write map: pages are read on demand and the tensor is writable (no torch warning)
        images = np.load(images_path, mmap_mode="c")
        labels = np.load(labels_path)
    except (OSError, ValueError):
        return None
    if images.dtype != np.uint8 or images.ndim != 4 or labels.shape != (images.shape[0],):
        return None
    return Split(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))


def save_labels(cache_dir: Path, key: str, split: str, labels: np.ndarray) -> None:
    save_npy(split_paths(cache_dir, key, split)[1], np.asarray(labels, dtype=np.int64))


def decode_to_cache(
    cache_dir: Path,
    key: str,
    split: str,
    files: Sequence[Path],
    labels: Sequence[int],
    decode: Callable[[Path], np.ndarray],
    shape: tuple[int, int, int],
    what: str,
    workers: int | None = None,
) -> Split:
    """Decode ``files`` (each to a uint8 ``[H, W, C]`` array) into the cache and return the split.

    The images are written straight into a temporary memory-mapped ``.npy`` file, so a dataset
    larger than memory can be cached; the file only takes its final name once complete.
    """
    c, h, w = shape
    n = len(files)
    images_path, _ = split_paths(cache_dir, key, split)
    workers = workers or min(16, os.cpu_count() or 1)
    chunk = 256
    step = max(1, n // 20)
    with atomic_path(images_path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, c, h, w))

        def work(start: int) -> int:
            for i in range(start, min(start + chunk, n)):
                try:
                    out[i] = decode(files[i]).transpose(2, 0, 1)
                except Exception as e:  # name the file: a bare PIL error does not
                    raise RuntimeError(f"{what}: cannot decode {files[i]}: {e}") from e
            return min(start + chunk, n) - start

        done, shown = 0, 0
        print(f"{what}: decoding {n} images into {images_path}", file=sys.stderr, flush=True)
        # PIL releases the GIL while decoding and resizing, so threads run in parallel
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            for count in pool.map(work, range(0, n, chunk)):
                done += count
                if done - shown >= step or done == n:
                    shown = done
                    print(f"{what}: {done}/{n} ({100 * done // max(n, 1)}%)", file=sys.stderr, flush=True)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # on an error, do not decode the rest first
        out.flush()
        del out
    save_labels(cache_dir, key, split, np.asarray(labels, dtype=np.int64))
    cached = load_cached_split(cache_dir, key, split)
    assert cached is not None
    return cached
