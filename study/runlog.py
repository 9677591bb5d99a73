"""Log lines in a file of the study directory: a Ray Train run's own (epochs, stages), not the driver's console, and the study's event log."""
from __future__ import annotations

import shutil
import tempfile
import time
import weakref
from pathlib import Path

from .storage import Storage


def trial_log(benchmark: str, trial_id: str) -> str:
    """A search trial's log in the study directory."""
    return f"{benchmark}/logs/trials/{trial_id}.log"


class RunLog:
    """Appends lines (timestamped unless ``stamp`` is off) to ``<study>/<rel>``: in place on local
    storage, through a local copy uploaded after every line on object storage (removed with the
    RunLog); a log already there (a retried run, a resumed study) is continued. ``echo`` also
    prints them (``--verbose``: they then reach the driver's console through Ray)."""

    def __init__(self, storage: Storage, rel: str, *, echo: bool = False, stamp: bool = True) -> None:
        self.storage, self.rel, self.echo, self.stamp = storage, rel, echo, stamp
        if storage.is_local:
            self.path = storage.local_path() / rel
            self.path.parent.mkdir(parents=True, exist_ok=True)
        else:
            local = tempfile.mkdtemp(prefix="indistill-log-")
            weakref.finalize(self, shutil.rmtree, local, ignore_errors=True)  # the copy goes with the log
            self.path = Path(local) / Path(rel).name
            if storage.exists(rel):  # a retried run continues its log
                self.path.write_bytes(storage.read_bytes(rel))

    def __call__(self, line: str) -> None:
        with open(self.path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n" if self.stamp else f"{line}\n")
        if not self.storage.is_local:
            self.storage.upload_file(self.path, self.rel)
        if self.echo:
            print(line, flush=True)
