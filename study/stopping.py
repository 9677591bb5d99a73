"""A study driver that stops when asked and never waits forever: the study runs on a thread while
the main thread answers SIGINT and SIGTERM within a second, and bounds how long Ray may take to
start or to answer at ``--address`` (this module imports no Ray)."""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from typing import Callable, TextIO, TypeVar

from indistill.common.errors import UserError, one_line

T = TypeVar("T")

#: seconds ``ray.init`` may take (to start a local Ray or to join ``--address``): --connect-timeout's default
CONNECT_TIMEOUT_S = 60.0
#: seconds a stopping driver gives ``ray.shutdown`` before it exits regardless
SHUTDOWN_GRACE_S = 5.0
#: set once the driver stops (a signal, a lost lease, no Ray in time): what the study's threads
#: see while Ray goes down (its nodes gone, their runs ended) is not a lost node or a failed benchmark
STOPPING = threading.Event()


def check_address(address: str | None, timeout: float = 5.0) -> None:
    """A one-line error when nothing accepts TCP connections at a ``host:port`` address (``auto``
    and no address are left to Ray)."""
    if not address or address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--address {address}: expected 'auto' or host:port (the Ray head's GCS port, e.g. 6379)",
                        where="--address")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or one_line(exc) or type(exc).__name__)
        raise UserError(f"--address {address}: no Ray cluster there ({why}); start one with `ray start --head` "
                        f"on that machine, or check the host and port", where="--address") from None


def supervise(work: Callable[[threading.Event], T], *, connect_timeout: float, address: str | None,
              on_stop: Callable[[], None], halt_when: Callable[[], str | None], prog: str) -> T:
    """Run ``work(connected)`` on a daemon thread and return its result (or raise its error).

    ``work`` sets ``connected`` once Ray is up. Until then at most ``connect_timeout`` seconds
    pass, else one line and exit 2; so too when ``halt_when`` returns a line (the lease was taken
    over). On SIGINT or SIGTERM: one line, ``on_stop`` (the lease), ``ray.shutdown`` for at most
    :data:`SHUTDOWN_GRACE_S`, and exit 128 + the signal's number, leaving the study as a killed
    driver would: resumable with ``--resume``."""
    err = os.fdopen(os.dup(2), "w", buffering=1)  # the console's stderr, wherever the study points fd 2
    connected, done = threading.Event(), threading.Event()
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = work(connected)
        except BaseException as exc:  # handed to the main thread
            box["error"] = exc
        finally:
            done.set()

    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: caught.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    t0 = time.monotonic()
    threading.Thread(target=target, name="study-driver", daemon=True).start()
    try:
        while not done.wait(0.2):
            if caught:
                name = signal.Signals(caught[0]).name
                _halt(err, on_stop, 128 + caught[0],
                      f"{prog}: stopped by {name} after {time.monotonic() - t0:.0f} s; the study is resumable: "
                      f"run the same command with --resume")
            if not connected.is_set() and time.monotonic() - t0 > connect_timeout:
                where = f"no Ray cluster answered at --address {address}" if address else "the local Ray did not start"
                _halt(err, on_stop, 2, f"{prog}: error: {where} within {connect_timeout:g} s (--connect-timeout)")
            reason = halt_when()
            if reason:
                _halt(err, on_stop, 2, f"{prog}: error: {reason}")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        err.close()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def _halt(err: TextIO, on_stop: Callable[[], None], code: int, line: str) -> None:
    """Print ``line``, release what the driver holds, stop Ray (bounded) and exit ``code`` now."""
    STOPPING.set()
    print(line, file=err, flush=True)
    try:
        on_stop()
    finally:
        ray = sys.modules.get("ray")
        if ray is not None:
            stopper = threading.Thread(target=ray.shutdown, daemon=True)
            stopper.start()
            stopper.join(SHUTDOWN_GRACE_S)
        sys.stdout.flush()
        os._exit(code)
