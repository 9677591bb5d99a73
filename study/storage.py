"""The study directory on local disk, NFS or object storage (``s3://``), through pyarrow.fs.

Workers compute in local scratch directories and copy finished results here; the driver reads
and writes small files (state, tables, exported configs) through the same interface.
"""
from __future__ import annotations

import json
import os
import posixpath
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs


@dataclass(frozen=True)
class Storage:
    """A study directory: ``uri`` is a local path or a URI pyarrow understands."""

    uri: str

    @classmethod
    def create(cls, location: str | Path) -> "Storage":
        text = str(location)
        if "://" not in text:
            text = str(Path(text).expanduser().resolve())
        return cls(text.rstrip("/"))

    @property
    def is_local(self) -> bool:
        return "://" not in self.uri

    def _fs(self) -> tuple[pafs.FileSystem, str]:
        if self.is_local:
            return pafs.LocalFileSystem(), self.uri
        return pafs.FileSystem.from_uri(self.uri)

    def join(self, *parts: str) -> str:
        """A location (path or URI) under the study directory."""
        return posixpath.join(self.uri, *parts)

    def sub(self, *parts: str) -> "Storage":
        return Storage(self.join(*parts))

    def local_path(self) -> Path:
        if not self.is_local:
            raise ValueError(f"{self.uri} is not a local path")
        return Path(self.uri)

    def exists(self, rel: str = "") -> bool:
        fs, base = self._fs()
        return fs.get_file_info(posixpath.join(base, rel) if rel else base).type != pafs.FileType.NotFound

    def read_bytes(self, rel: str) -> bytes:
        fs, base = self._fs()
        with fs.open_input_stream(posixpath.join(base, rel)) as f:
            return f.read()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def write_text(self, rel: str, text: str) -> None:
        """Atomic on local disk (temporary file + rename); a single PUT on object stores."""
        fs, base = self._fs()
        target = posixpath.join(base, rel)
        fs.create_dir(posixpath.dirname(target), recursive=True)
        if self.is_local:
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=posixpath.dirname(target))
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.replace(tmp, target)
        else:
            with fs.open_output_stream(target) as f:
                f.write(text.encode())

    def read_json(self, rel: str) -> dict:
        return json.loads(self.read_text(rel))

    def write_json(self, rel: str, obj) -> None:
        self.write_text(rel, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")

    def upload(self, local_dir: Path, rel: str) -> None:
        """Copy a local directory's files under ``rel`` (existing files are overwritten)."""
        fs, base = self._fs()
        target = posixpath.join(base, rel)
        fs.create_dir(target, recursive=True)
        pafs.copy_files(str(local_dir), target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)

    def download(self, rel: str, local_dir: Path) -> Path:
        """Copy ``rel`` (a directory) to ``local_dir``; returns ``local_dir``."""
        fs, base = self._fs()
        local_dir.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(posixpath.join(base, rel), str(local_dir), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        return local_dir

    def listdir(self, rel: str = "") -> list[str]:
        fs, base = self._fs()
        path = posixpath.join(base, rel) if rel else base
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return []
        return sorted(posixpath.basename(i.path) for i in fs.get_file_info(pafs.FileSelector(path)))
