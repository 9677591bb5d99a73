"""The driver's console: what Ray, Tune and Python print or log goes to the study's driver log,
and the progress display writes to the console."""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Callable, Iterator, TextIO


#: the driver log's upload to a remote study directory while one is open (:func:`upload_driver_log`)
_UPLOADS: list[Callable[[], None]] = []


def upload_driver_log() -> None:
    """Upload the open driver log of a remote study directory now (a driver that stops on a signal
    exits without leaving :func:`driver_log`); nothing for a local one, whose log is in place."""
    for upload in list(_UPLOADS):
        upload()


@contextlib.contextmanager
def driver_log(storage) -> Iterator[TextIO]:
    """Everything Ray, Tune and Python print or log in the driver goes to ``<study>/logs/driver.log``,
    not the console (the study's progress display says what happens; ``--verbose`` keeps it on the
    console). Yields the console, for the progress display."""
    import logging
    import shutil
    import tempfile

    from .storage import Storage

    rel = "logs/driver.log"
    scratch = None if storage.is_local else Path(tempfile.mkdtemp(prefix="indistill-driver-"))
    local = storage.local_path() / rel if scratch is None else scratch / "driver.log"
    local.parent.mkdir(parents=True, exist_ok=True)
    if scratch is not None and storage.exists(rel):  # a resumed study continues it, as on local storage
        local.write_bytes(storage.read_bytes(rel))
    handler = logging.FileHandler(local)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in ("ray", "py.warnings", "optuna")]
    saved = [(lg, lg.handlers[:], lg.propagate) for lg in loggers]
    logging.captureWarnings(True)
    for lg in loggers:
        lg.handlers = [handler]
        lg.propagate = False
    # what libraries print (Tune's experiment box, Ray's "(raylet)" notices, some from C++) lands in
    # the same file: the process's stdout and stderr descriptors point there, and the progress
    # display writes to a duplicate of the console's
    sink = open(local, "a", buffering=1)
    upload = (lambda: Storage(storage.uri).upload_file(local, rel)) if scratch is not None else None
    if upload is not None:
        _UPLOADS.append(upload)
    try:
        with _redirected_fds(sink) as console:
            yield console
    finally:
        if upload is not None:
            _UPLOADS.remove(upload)
        sink.close()
        for lg, handlers, propagate in saved:
            lg.handlers, lg.propagate = handlers, propagate
        logging.captureWarnings(False)
        handler.close()
        if upload is not None:
            try:
                upload()
            finally:
                shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def _redirected_fds(sink: TextIO) -> Iterator[TextIO]:
    """Point file descriptors 1 and 2 (and sys.stdout/stderr) at ``sink``; yield the console."""
    try:
        out_fd, err_fd = sys.stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # not real files (an embedding host): Python level only
        console, errors = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = sink
        try:
            yield console
        finally:
            sys.stdout, sys.stderr = console, errors
        return
    sys.stdout.flush()
    sys.stderr.flush()
    console = os.fdopen(os.dup(out_fd), "w", buffering=1)
    saved = os.dup(out_fd), os.dup(err_fd)
    os.dup2(sink.fileno(), out_fd)
    os.dup2(sink.fileno(), err_fd)
    try:
        yield console
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], out_fd)
        os.dup2(saved[1], err_fd)
        os.close(saved[0])
        os.close(saved[1])
        console.close()

