"""Safe extraction of (part of) a tar archive."""
from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Callable


def _is_within(base: Path, target: Path) -> bool:
    try:
        target.resolve().relative_to(base.resolve())
        return True
    except ValueError:
        return False


def safe_extract(archive: Path, dest: Path, top: str, keep: Callable[[str], bool] = lambda name: True) -> Path:
    """Extract the members of ``archive`` under folder ``top`` (those ``keep`` accepts) to ``dest/top``.

    Members that would land outside ``dest`` (absolute paths, ``..``, links pointing out, devices)
    raise ``ValueError``. Extraction goes to a temporary folder first, so ``dest/top`` appears
    complete or not at all.
    """
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / top
    tmp = Path(tempfile.mkdtemp(dir=dest, prefix=f".{top}.", suffix=".tmp"))
    try:
        with tarfile.open(archive) as tar:
            members = []
            for m in tar.getmembers():
                target = tmp / m.name
                if os.path.isabs(m.name) or not _is_within(tmp, target):
                    raise ValueError(f"{archive}: member {m.name!r} would be extracted outside {dest}")
                if m.issym() or m.islnk():
                    link = (target.parent / m.linkname) if m.issym() else (tmp / m.linkname)
                    if os.path.isabs(m.linkname) or not _is_within(tmp, link):
                        raise ValueError(f"{archive}: link {m.name!r} -> {m.linkname!r} points outside {dest}")
                elif not (m.isfile() or m.isdir()):
                    raise ValueError(f"{archive}: member {m.name!r} is not a regular file or folder")
                parts = Path(m.name).parts
                if parts and parts[0] == top and keep(m.name):
                    members.append(m)
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: defence in depth
                tar.extractall(tmp, members=members, filter="data")
            else:
                tar.extractall(tmp, members=members)
        if not (tmp / top).is_dir():
            raise ValueError(f"{archive} has no folder {top!r}")
        try:
            os.replace(tmp / top, final)
        except OSError:
            if not final.is_dir():  # else another process extracted it meanwhile: use theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
