"""The study directory on local disk, NFS or object storage (``s3://``), through pyarrow.fs.

Workers compute in local scratch directories and copy finished results here; the driver reads
and writes small files (state, tables, exported configs) through the same interface.
"""
from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from indistill.common.errors import UserError
from indistill.common.io import atomic_write_bytes, atomic_write_text, check_output_dir, parse_json

#: the file that makes a directory a study (its name, benchmarks and search-space files)
STUDY_STATE = "study.json"


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
        """Atomic on local disk (indistill.common.io's temporary file + rename); a single PUT on object stores."""
        if self.is_local:
            atomic_write_text(Path(self.uri) / rel, text)
            return
        fs, base = self._fs()
        target = posixpath.join(base, rel)
        fs.create_dir(posixpath.dirname(target), recursive=True)
        with fs.open_output_stream(target) as f:
            f.write(text.encode())

    def read_json(self, rel: str) -> dict:
        """A JSON file of the study; a damaged one is a one-line UserError naming it."""
        return parse_json(self.read_bytes(rel).decode(errors="replace"), self.join(rel), "JSON file")

    def check_writable(self, what: str = "--storage") -> None:
        """Check, writing nothing, that the study directory is (or can become) a directory: locally,
        no level of it is a file and the nearest existing one is writable; remotely, the store
        answers and the location is not a file."""
        if self.is_local:
            check_output_dir(Path(self.uri), what)
            return
        info = self._info(what)
        if info.type == pafs.FileType.File:
            raise UserError(f"{self.uri}: is a file, not a directory; {what} must name a directory", where=what)

    def check_study(self) -> dict:
        """The study's state (``study.json``), checked: a readable study directory with a valid state."""
        info = self._info("STUDY_DIR")
        if info.type == pafs.FileType.NotFound:
            raise UserError(f"{self.uri}: no such study directory", where=self.uri)
        if info.type != pafs.FileType.Directory:
            raise UserError(f"{self.uri}: is a file, not a study directory", where=self.uri)
        if not self.exists(STUDY_STATE):
            hint = ("; it looks like an `indistill run` directory (its table is results.md)"
                    if self.exists("config.yaml") and self.exists("results.md") else "")
            raise UserError(f"{self.uri}: not a study directory (no {STUDY_STATE}){hint}", where=self.uri)
        state = self.read_json(STUDY_STATE)
        benchmarks = state.get("benchmarks") if isinstance(state, dict) else None
        if not isinstance(benchmarks, list) or not all(isinstance(b, str) for b in benchmarks):
            raise UserError(f"{self.join(STUDY_STATE)}: not a study state (no list of benchmarks)",
                            where=self.join(STUDY_STATE))
        return state

    def _info(self, what: str) -> pafs.FileInfo:
        try:
            fs, base = self._fs()
            return fs.get_file_info(base)
        except Exception as exc:  # pyarrow raises OSError/ArrowInvalid subclasses by back end
            first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise UserError(f"{self.uri}: cannot reach the {what} location: {' '.join(first.split())[:200]}",
                            where=what) from None

    def write_json(self, rel: str, obj) -> None:
        self.write_text(rel, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")

    def delete(self, rel: str) -> None:
        """Remove one file of the study directory, if it is there."""
        fs, base = self._fs()
        try:
            fs.delete_file(posixpath.join(base, rel))
        except FileNotFoundError:
            pass

    def upload(self, local_dir: Path, rel: str) -> None:
        """Copy a local directory's files under ``rel`` (existing files are overwritten)."""
        fs, base = self._fs()
        target = posixpath.join(base, rel)
        fs.create_dir(target, recursive=True)
        pafs.copy_files(str(local_dir), target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)

    def upload_file(self, local: Path, rel: str) -> None:
        """Copy one local file to ``rel``: atomically (a rename locally, a single PUT on object stores)."""
        if self.is_local:
            atomic_write_bytes(Path(self.uri) / rel, Path(local).read_bytes())
            return
        fs, base = self._fs()
        target = posixpath.join(base, rel)
        fs.create_dir(posixpath.dirname(target), recursive=True)
        pafs.copy_files(str(local), target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)

    def fetch(self, rel: str, local: Path) -> bool:
        """Copy ``rel`` (a file, or a directory's files) to ``local`` if it exists; says whether it did."""
        fs, base = self._fs()
        info = fs.get_file_info(posixpath.join(base, rel) if rel else base)
        if info.type == pafs.FileType.NotFound:
            return False
        target = local if info.type == pafs.FileType.Directory else local.parent
        target.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(info.path, str(local), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        return True

    def listdir(self, rel: str = "") -> list[str]:
        fs, base = self._fs()
        path = posixpath.join(base, rel) if rel else base
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return []
        return sorted(posixpath.basename(i.path) for i in fs.get_file_info(pafs.FileSelector(path)))
