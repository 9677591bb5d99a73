"""Atomic file writes (temporary file in the same directory + rename), checked reads of the
project's own files (one-line errors naming the file), setting a corrupted file aside, and
stable hashing.

Every file the project writes goes through :func:`temporary_beside` + ``os.replace``: directly
(:func:`atomic_write_text`, :func:`atomic_write_bytes`, :func:`atomic_torch_save`), through the
study storage, or staged by the dataset cache and published together.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

from indistill.common.errors import CheckpointError, UserError, one_line

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format (a zip archive)
PICKLE_PROTOCOL_2_PLUS = b"\x80"  # torch's legacy format starts with a pickled magic number


#: this process's umask, read once (reading it means setting it)
_UMASK = os.umask(0)
os.umask(_UMASK)


def temporary_beside(path: Path) -> Path:
    """A new, empty temporary file next to ``path`` (same file system), to be renamed onto it; with
    the permissions a plain ``open(path, "w")`` gives (mkstemp's own are owner-only)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
    finally:
        os.close(fd)
    return Path(tmp)


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(path)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return _atomic(path, lambda p: p.write_text(text))


def atomic_write_json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return _atomic(path, lambda p: p.write_bytes(data))


def atomic_torch_save(obj: Any, path: Path) -> Path:
    import torch  # imported here: the study's light commands (table, tensorboard) never need it

    return _atomic(path, lambda p: torch.save(obj, p))


def read_named_file(path: Path, what: str, error: type[UserError], limit: int | None = None) -> bytes:
    """The bytes (the first ``limit`` with one) of a file the user named; ``error`` in one line
    naming it when it is missing, a directory or unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read(limit) if limit is not None else f.read()
    except FileNotFoundError:
        raise error(f"{path}: no such {what} file", where=str(path)) from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a {what} file", where=str(path)) from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} file: {exc.strerror or exc}", where=str(path)) from None


def read_torch(path: str | Path, what: str = "checkpoint") -> Any:
    """``torch.load`` (tensors and plain containers only) with one-line errors naming the file.

    Raises :class:`CheckpointError` for a missing file, a directory, an empty file, a file that
    is not in torch's format (by its first bytes), a truncated or damaged one, and one that
    holds Python objects other than tensors and plain containers (never executed).
    """
    path = Path(path).expanduser()
    head = read_named_file(path, what, CheckpointError, limit=16)
    unreadable = f"{path}: not a readable torch {what}"
    if not head:
        raise CheckpointError(f"{unreadable}: the file is empty", where=str(path))
    if not head.startswith(ZIP_MAGIC) and not head.startswith(PICKLE_PROTOCOL_2_PLUS):
        raise CheckpointError(f"{unreadable}: the file starts with {head[:12]!r}, not a zip archive as "
                              f"torch.save writes (is it another format?)", where=str(path))
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            raise CheckpointError(f"{path}: holds a Python object ({found.group(1)}) besides tensors and plain "
                                  f"containers; refused (only state_dicts and the project's own checkpoints load)",
                                  where=str(path)) from None
        operand = re.search(r"(Unsupported operand \d+)", str(exc))
        reason = operand.group(1) if operand else _first_line(exc)
        raise CheckpointError(f"{unreadable}: truncated or damaged ({reason})", where=str(path)) from None
    except Exception as exc:  # torch's readers raise many types on damaged input; nothing runs from the file
        raise CheckpointError(f"{unreadable}: truncated or damaged ({_first_line(exc)})", where=str(path)) from None


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return one_line(lines[0])[:200] if lines else type(exc).__name__


def read_json_file(path: str | Path, what: str = "JSON file") -> Any:
    """A JSON file's content, with a one-line :class:`UserError` naming the file if it is damaged."""
    path = Path(path)
    return parse_json(path.read_text(errors="replace"), str(path), what)


def parse_json(text: str, where: str, what: str = "JSON file") -> Any:
    """``json.loads(text)``; a damaged document is a one-line :class:`UserError` naming ``where``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        problem = "empty" if not text.strip() else f"line {exc.lineno} column {exc.colno}: {exc.msg}"
        raise UserError(f"{where}: not a valid {what} ({problem}; truncated?)", where=where) from None


def check_output_dir(path: str | Path, what: str) -> Path:
    """Check (writing nothing) that ``path`` is, or can be created as, a directory we may write in.

    The nearest existing level must be a directory (not a file) and writable; ``what`` names the
    option in the message (``--out``).
    """
    path = Path(path).expanduser()
    for level in (path, *path.parents):
        try:
            is_dir = level.is_dir()
            exists = is_dir or level.exists() or level.is_symlink()
        except OSError as exc:
            raise UserError(f"{level}: cannot be used as the {what} directory: {exc.strerror or exc}", where=what) from None
        if not exists:
            continue
        if not is_dir:
            inside = f" (needed for {path})" if level != path else ""
            kind = "a broken link" if level.is_symlink() and not level.exists() else "a file"
            raise UserError(f"{level}: is {kind}, not a directory; {what} must name a directory{inside}", where=what)
        if not os.access(level, os.W_OK | os.X_OK):
            raise UserError(f"{level}: the {what} directory is not writable", where=what)
        break
    return path


def set_aside(path: Path) -> Path | None:
    """Rename a corrupted file to ``<name>.corrupt`` (``.corrupt-2``, ... if taken), keeping it for
    inspection; returns the new path, or None if the file is already gone (another process sharing
    the directory set it aside first)."""
    path = Path(path)
    target = path.with_name(f"{path.name}.corrupt")
    n = 2
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{n}")
        n += 1
    try:
        os.replace(path, target)
    except FileNotFoundError:
        return None
    return target


def recover(path: Path, problem: object, then: str, log: Callable[[str], None], tag: str) -> None:
    """Set a corrupted file aside and say so in one line: ``[tag] <problem>; set aside as X, <then>``."""
    aside = set_aside(path)
    log(f"[{tag}] {one_line(problem)}; {f'set aside as {aside.name}' if aside else 'already set aside'}, {then}")


def torch_load(path: Path) -> Any:
    """A file the project wrote itself (a stage checkpoint, kept indices); see :func:`read_torch`."""
    return read_torch(path)


def stable_hash(obj: Any, length: int = 12) -> str:
    """A short hash of a JSON-able structure, independent of dict order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
