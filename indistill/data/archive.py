"""Safe extraction of (part of) a tar archive."""
from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Callable

from indistill.data.base import DatasetFormatError

#: What a truncated, corrupt or non-tar archive raises while it is read (other ``OSError``s,
#: such as a full disk, are the destination's and pass through).
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile)


def _is_within(base: Path, target: Path) -> bool:
    try:
        target.resolve().relative_to(base.resolve())
        return True
    except ValueError:
        return False


def safe_extract(archive: Path, dest: Path, top: str, keep: Callable[[str], bool] = lambda name: True) -> Path:
    """Extract the members of ``archive`` under folder ``top`` (those ``keep`` accepts) to ``dest/top``.

    Members that would land outside ``dest`` (absolute paths, ``..``, links pointing out, devices),
    an archive that is not a (gzipped) tar, or is truncated or corrupt, raise
    :class:`DatasetFormatError` naming it. Extraction goes to a temporary folder first, so
    ``dest/top`` appears complete or not at all.
    """
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / top
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=f".{top}.", suffix=".tmp"))
    try:
        try:
            _extract(archive, dest, tmp, top, keep)
        except DatasetFormatError:
            raise
        except _READ_ERRORS as e:
            raise DatasetFormatError(
                f"{archive}: not a complete tar.gz archive ({type(e).__name__}: {e}); download it again"
            ) from None
        if not (tmp / top).is_dir():
            raise DatasetFormatError(f"{archive}: has no folder {top!r}; download it again")
        try:
            os.replace(tmp / top, final)
        except OSError:
            if not final.is_dir():  # else another process extracted it meanwhile: use theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _extract(archive: Path, dest: Path, tmp: Path, top: str, keep: Callable[[str], bool]) -> None:
    """Check every member of ``archive``, then extract the kept ones under ``tmp``."""
    with tarfile.open(archive) as tar:
        members = []
        for m in tar.getmembers():
            target = tmp / m.name
            if os.path.isabs(m.name) or not _is_within(tmp, target):
                raise DatasetFormatError(f"{archive}: member {m.name!r} would be extracted outside {dest}")
            if m.issym() or m.islnk():
                link = (target.parent / m.linkname) if m.issym() else (tmp / m.linkname)
                if os.path.isabs(m.linkname) or not _is_within(tmp, link):
                    raise DatasetFormatError(f"{archive}: link {m.name!r} -> {m.linkname!r} points outside {dest}")
            elif not (m.isfile() or m.isdir()):
                raise DatasetFormatError(f"{archive}: member {m.name!r} is not a regular file or folder")
            parts = Path(m.name).parts
            if parts and parts[0] == top and keep(m.name):
                members.append(m)
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: defence in depth
            tar.extractall(tmp, members=members, filter="data")
        else:
            tar.extractall(tmp, members=members)
