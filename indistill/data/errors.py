"""The messages a missing or malformed dataset raises: one line naming the file."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from indistill.data.base import DatasetFormatError, DatasetNotFoundError


def not_found(name: str, looked_at: Iterable[Path], how_to_get: str, root: Path, detail: str = "") -> DatasetNotFoundError:
    """``DatasetNotFoundError`` naming every path looked at and how to get the data."""
    paths = ", ".join(str(p) for p in looked_at)
    how = how_to_get.replace("<root>", str(root))
    detail = f" ({detail})" if detail else ""
    return DatasetNotFoundError(f"{name} data not found{detail}; looked at: {paths}. {how}")


def bad_file(path: Path | str, problem: str, fix: str = "") -> DatasetFormatError:
    """``DatasetFormatError``: ``<path>: <problem>[; <fix>]``."""
    return DatasetFormatError(f"{path}: {problem}" + (f"; {fix}" if fix else ""))
