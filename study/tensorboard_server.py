"""Serving a study's TensorBoard: the command (this environment's TensorBoard), its URL, and a
check that its address can be bound, before it starts."""
from __future__ import annotations

import errno
import socket
import sys

from indistill.common.errors import UserError

#: where TensorBoard binds unless --host says otherwise
LOCALHOST = "127.0.0.1"

#: where the study's TensorBoard logs are, printed with the command
TENSORBOARD_LOGS = ("  HParams: one row per search trial, val_map first. Runs, under the study directory:\n"
                    "    <benchmark>/tensorboard/trials/trial-<k>-<id>  (a search trial; k: creation order)\n"
                    "    <benchmark>/tensorboard/artifacts/<stage>/<protocol>  (teacher, auxiliary)\n"
                    "    <benchmark>/tensorboard/final/<row>/seed-<s>  (the final runs)")


def tensorboard_command(study_dir: str, port: int, host: str = LOCALHOST) -> list[str]:
    """This environment's TensorBoard (its module, run by this interpreter, never one on PATH) on ``study_dir``."""
    return [sys.executable, "-m", "tensorboard.main", "--logdir", study_dir, "--host", host, "--port", str(port)]


def tensorboard_url(host: str, port: int) -> str:
    """Where a browser finds TensorBoard bound to ``host`` (this machine's name when it binds every interface)."""
    if host in ("0.0.0.0", "::"):
        host = socket.gethostname()
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def check_bindable(host: str, port: int) -> None:
    """A one-line error, before TensorBoard starts, when ``host:port`` cannot be bound: the port is in
    use (or privileged), or the host is not an address of this machine."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as TensorBoard's server does
            probe.bind((host, port))
    except OSError as exc:
        why = exc.strerror or str(exc)
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            raise UserError(f"--port: cannot listen on {host}:{port}: {why}; choose another --port") from None
        raise UserError(f"--host: cannot listen on {host}:{port}: {why}") from None
