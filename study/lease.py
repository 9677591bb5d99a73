"""One driver per study: a lease file in the study directory (local or ``s3://``), written when a
driver starts, renewed while it lives and removed when it ends (this module imports no Ray).

A second driver finds the lease live and stops before Ray starts, naming the live driver. A lease
is stale, and may be taken over, once it has not been renewed for :data:`LEASE_ENV`'s seconds, or
at once when it names this host and a process that no longer runs (a killed driver on this machine).
"""
from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from indistill.common.errors import ConfigError, UserError

from .storage import Storage

#: the lease file, in the study directory
LEASE_FILE = "driver.lease"
#: seconds a lease lasts without renewal; the driver renews it every third of that
LEASE_ENV = ("INDISTILL_LEASE_S", "60")


def lease_seconds() -> float:
    """:data:`LEASE_ENV`'s seconds (checked before Ray starts: a malformed value is one line)."""
    text = os.environ.get(LEASE_ENV[0], LEASE_ENV[1])
    try:
        seconds = float(text)
    except ValueError:
        raise ConfigError(f"${LEASE_ENV[0]}: expected seconds, got {text!r}") from None
    if not seconds > 0:
        raise ConfigError(f"${LEASE_ENV[0]}: expected seconds > 0, got {text!r}")
    return seconds


@dataclass(frozen=True)
class Holder:
    """The driver a lease names: its host, pid, start and last renewal (epoch seconds), its token."""

    host: str
    pid: int
    since: float
    renewed: float
    token: str

    def describe(self, now: float) -> str:
        return (f"pid {self.pid} on host {self.host}, driving it since {_clock(self.since)} "
                f"(lease renewed {max(0.0, now - self.renewed):.0f} s ago)")

    def is_live(self, now: float, seconds: float) -> bool:
        """Renewed within ``seconds``, and not a process of this host that has ended."""
        if now - self.renewed > seconds:
            return False
        return self.host != socket.gethostname() or _running(self.pid)


def _clock(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def read_holder(storage: Storage) -> Holder | None:
    """The lease's holder, None when there is no lease or it cannot be read (it is then stale)."""
    if not storage.exists(LEASE_FILE):
        return None
    try:
        fields = storage.read_json(LEASE_FILE)
        return Holder(str(fields["host"]), int(fields["pid"]), float(fields["since"]), float(fields["renewed"]),
                      str(fields["token"]))
    except (UserError, KeyError, TypeError, ValueError, OSError):
        return None


def check_no_live_driver(storage: Storage) -> None:
    """A one-line error when another driver holds a live lease on the study."""
    holder = read_holder(storage)
    now = time.time()
    if holder is not None and holder.is_live(now, lease_seconds()):
        raise UserError(f"{storage.uri}: the study has a live driver: {holder.describe(now)}; one study has one "
                        f"driver: wait for it to end or stop it (a killed driver's lease expires "
                        f"{lease_seconds():g} s after its last renewal, ${LEASE_ENV[0]})", where=storage.uri)


#: seconds a release waits for a renewal in flight (a read and a write of the study's storage)
RENEWAL_WAIT_S = 10.0


class Lease:
    """This driver's lease on a study: :meth:`acquire` it, it renews itself on a daemon thread,
    :meth:`release` removes it. :meth:`lost` says when another driver's lease replaced it."""

    def __init__(self, storage: Storage) -> None:
        now = time.time()
        self.storage = storage
        self.holder = Holder(socket.gethostname(), os.getpid(), now, now, uuid.uuid4().hex)
        self.taken_by: Holder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> "Lease":
        """Write the lease unless another driver holds a live one (then a one-line error)."""
        check_no_live_driver(self.storage)
        self._write()
        if (read_holder(self.storage) or self.holder).token != self.holder.token:
            check_no_live_driver(self.storage)  # another driver wrote it in between
        self._thread = threading.Thread(target=self._renew, name="study-lease", daemon=True)
        self._thread.start()
        return self

    def _write(self) -> None:
        self.storage.write_json(LEASE_FILE, asdict(self.holder))

    def _renew(self) -> None:
        period = lease_seconds() / 3
        while not self._stop.wait(period):
            current = read_holder(self.storage)
            if current is not None and current.token != self.holder.token:
                self.taken_by = current
                return
            self.holder = Holder(**{**asdict(self.holder), "renewed": time.time()})
            try:
                self._write()
            except OSError:  # the store did not answer this time: the next renewal tries again
                continue

    def lost(self) -> str | None:
        """One line when another driver took the study over (this driver must stop), else None."""
        if self.taken_by is None:
            return None
        return f"{self.storage.uri}: another driver took the study over: {self.taken_by.describe(time.time())}"

    def release(self) -> None:
        """Stop renewing and remove the lease if it is still this driver's."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            # a renewal in flight would write the lease back after it is removed
            self._thread.join(RENEWAL_WAIT_S)
        current = read_holder(self.storage)
        if current is not None and current.token == self.holder.token:
            self.storage.delete(LEASE_FILE)

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
