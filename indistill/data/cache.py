"""Decode-once caches of uint8 image arrays (``.npy`` files), keyed by what was read.

A cache key is ``<base>-<fingerprint>``: the fingerprint hashes the source files that were read
(relative paths, sizes, modification times, small list files by content), so a dataset that is
corrected or replaced gets a new key and is decoded again instead of being shadowed by the
stale cache. ``<base>_latest.txt`` names the key of the last complete cache, which is used when
the source is gone (the cache alone suffices).

Everything one load writes goes through a :class:`CacheWriter`: files are staged under
temporary names and published together only when every split decoded, so a failed load leaves
the cache folder as it was (and does not create it).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from indistill.common.io import temporary_beside
from indistill.data.base import DatasetFormatError, Split


def _write_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())


# ----------------------------------------------------------------------------- keys


def fingerprint(parts: Any) -> str:
    """A short stable hash of JSON-able ``parts`` (what a cache was made from)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:16]


def stat_many(paths: Sequence[Path]) -> list[tuple[int, int] | None]:
    """``(size, mtime_ns)`` of every path, None where it is not a regular file; in threads for
    many paths (on a network file system a stat is latency-bound)."""

    def one(path: Path) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return (st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else None

    if len(paths) < 256:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) * 4)) as pool:
        return list(pool.map(one, paths))


def archive_id(path: Path) -> list:
    """An archive enters a key by name, size, mtime and a hash of its first and last 64 KiB."""
    st = path.stat()
    size, mtime = st.st_size, st.st_mtime_ns
    h = hashlib.sha1()
    with open(path, "rb") as f:
        h.update(f.read(1 << 16))
        if size > 1 << 16:
            f.seek(max(1 << 16, size - (1 << 16)))
            h.update(f.read(1 << 16))
    return [path.name, size, mtime, h.hexdigest()]


# ----------------------------------------------------------------------------- reading


def split_paths(cache_dir: Path, key: str, split: str) -> tuple[Path, Path]:
    """The images and labels files of one cached split."""
    return cache_dir / f"{key}_{split}_images.npy", cache_dir / f"{key}_{split}_labels.npy"


def latest_path(cache_dir: Path, base: str) -> Path:
    """The file naming the key of the last complete cache of ``base``."""
    return cache_dir / f"{base}_latest.txt"


def load_cached_split(cache_dir: Path, key: str, split: str, shape: tuple[int, int, int] | None = None) -> Split | None:
    """The cached split, or None when it is absent, incomplete or not of ``shape`` (C, H, W)."""
    images_path, labels_path = split_paths(cache_dir, key, split)
    if not (images_path.is_file() and labels_path.is_file()):
        return None
    try:
        # copy-on-write map: pages are read on demand and the tensor is writable (no torch warning)
        images = np.load(images_path, mmap_mode="c")
        labels = np.load(labels_path)
    except (OSError, ValueError, EOFError):
        return None
    if images.dtype != np.uint8 or images.ndim != 4 or labels.shape != (images.shape[0],):
        return None
    if shape is not None and tuple(images.shape[1:]) != tuple(shape):
        return None
    if labels.dtype.kind not in "iu":
        return None
    return Split(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))


def load_cached(cache_dir: Path, key: str, shape: tuple[int, int, int], splits: Iterable[str] = ("train", "test")) -> dict[str, Split] | None:
    """Every split of one cache key, or None when any is missing."""
    out = {}
    for split in splits:
        cached = load_cached_split(cache_dir, key, split, shape)
        if cached is None:
            return None
        out[split] = cached
    return out


def load_latest(cache_dir: Path, base: str, shape: tuple[int, int, int]) -> tuple[str, dict[str, Split]] | None:
    """The last complete cache of ``base`` (for when the source is gone): ``(key, splits)`` or None."""
    try:
        key = latest_path(cache_dir, base).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if not key.startswith(f"{base}-") or "/" in key or os.sep in key:
        return None
    splits = load_cached(cache_dir, key, shape)
    return (key, splits) if splits is not None else None


# ----------------------------------------------------------------------------- writing


class CacheWriter:
    """Stages the files of one load under temporary names and publishes them together.

    Used as a context manager: on a normal exit every staged file takes its final name (in the
    order staged, so stage the ``_latest`` pointer last); on an exception the staged files and
    the cache folders this writer created are removed, so a failed load changes nothing on disk.
    Scratch folders (:meth:`scratch_dir`) are removed either way.
    """

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self._staged: list[tuple[Path, Path]] = []
        self._scratch: list[Path] = []
        self._made: list[Path] = []  # folders this writer created, deepest first

    def __enter__(self) -> "CacheWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is None:
                try:
                    self.commit()
                except BaseException:
                    self.rollback()
                    raise
            else:
                self.rollback()
        finally:
            self._drop_scratch()
        return False

    def _drop_scratch(self) -> None:
        for path in self._scratch:
            shutil.rmtree(path, ignore_errors=True)
        self._scratch.clear()

    def ensure_dir(self) -> Path:
        """Create the cache folder (remembering which levels were new)."""
        missing = []
        d = self.cache_dir
        while not d.exists() and d != d.parent:
            missing.append(d)
            d = d.parent
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._made.extend(m for m in missing if m not in self._made)
        return self.cache_dir

    def stage(self, final: Path) -> Path:
        """A temporary path that becomes ``final`` on commit."""
        self.ensure_dir()
        tmp = temporary_beside(final)  # the project's one atomic-write helper, published by commit()
        self._staged.append((tmp, final))
        return tmp

    def scratch_dir(self, name: str) -> Path:
        """A new temporary folder in the cache folder, removed when the writer exits (either way)."""
        path = Path(tempfile.mkdtemp(dir=self.ensure_dir(), prefix=f".{name}.", suffix=".tmp"))
        self._scratch.append(path)
        return path

    def write_text(self, final: Path, text: str) -> None:
        """Stage ``text`` for ``final`` (nothing is written when ``final`` already holds it)."""
        try:
            if final.read_text() == text:
                return
        except (OSError, UnicodeDecodeError):
            pass
        self.stage(final).write_text(text)

    def write_npy(self, final: Path, array: np.ndarray) -> None:
        _write_npy(self.stage(final), array)

    def commit(self) -> None:
        for tmp, final in self._staged:
            os.replace(tmp, final)
        self._staged.clear()
        self._made.clear()

    def rollback(self) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged.clear()
        self._drop_scratch()
        for d in self._made:  # deepest first; only if still empty (another process may use it)
            try:
                d.rmdir()
            except OSError:
                pass
        self._made.clear()


def decode_split(
    writer: CacheWriter,
    key: str,
    split: str,
    files: Sequence[Path],
    labels: Sequence[int],
    decode: Callable[[Path], np.ndarray],
    shape: tuple[int, int, int],
    what: str,
    workers: int | None = None,
    hint: str = "",
    shown: Callable[[Path], str] = str,
) -> None:
    """Decode ``files`` (each to a uint8 ``[H, W, C]`` array) into staged cache files of ``split``.

    The images are written straight into a temporary memory-mapped ``.npy`` file, so a dataset
    larger than memory can be cached; the files take their final names when ``writer`` commits.
    A file that does not decode raises :class:`DatasetFormatError` naming it as ``shown(path)``
    (``hint`` is appended: how to fix it).
    """
    c, h, w = shape
    n = len(files)
    images_path, labels_path = split_paths(writer.cache_dir, key, split)
    workers = workers or min(16, os.cpu_count() or 1)
    chunk = 256
    step = max(1, n // 20)
    tmp = writer.stage(images_path)
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, c, h, w))

    def work(start: int) -> int:
        for i in range(start, min(start + chunk, n)):
            try:
                array = decode(files[i])
            except MemoryError:
                raise
            except Exception as e:  # name the file: a bare PIL error does not
                detail = str(e).replace(f" '{files[i]}'", "").replace(str(files[i]), "it")  # PIL repeats the path
                raise DatasetFormatError(f"{shown(files[i])}: not a readable image ({type(e).__name__}: {detail}){hint}") from None
            if array.shape != (h, w, c) or array.dtype != np.uint8:  # a decoder bug, not the user's file
                raise RuntimeError(f"{what}: {files[i]} decoded to {array.dtype} {array.shape}, expected uint8 {(h, w, c)}")
            out[i] = array.transpose(2, 0, 1)
        return min(start + chunk, n) - start

    done, reported = 0, 0
    print(f"{what}: decoding {n} images into {images_path}", file=sys.stderr, flush=True)
    # PIL releases the GIL while decoding and resizing, so threads run in parallel
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for count in pool.map(work, range(0, n, chunk)):
            done += count
            if done - reported >= step or done == n:
                reported = done
                print(f"{what}: {done}/{n} ({100 * done // max(n, 1)}%)", file=sys.stderr, flush=True)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on an error, do not decode the rest first
        out.flush()
        del out
    writer.write_npy(labels_path, np.asarray(labels, dtype=np.int64))
