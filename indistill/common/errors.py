"""The one user-facing error type: what the user typed or pointed at is wrong.

Every CLI runs its command through :func:`run_command`, which catches :class:`UserError` (and an
``OSError`` about a named file) once and prints ``PROG: error: <one line>`` with exit code 2; a
traceback is printed only with ``--debug`` or ``INDISTILL_DEBUG=1``. Subclasses say which kind of
input it was (config, dataset, checkpoint); messages name the file or field and what is allowed.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import traceback
from typing import Callable

#: set to anything but "" or "0" to get tracebacks instead of one-line errors (as ``--debug`` does)
DEBUG_ENV = "INDISTILL_DEBUG"


class UserError(ValueError):
    """Bad user input; ``str(exc)`` is one line naming the file or field.

    ``where`` is the file or field the error concerns: given explicitly, else the message's
    leading ``<where>: `` part (messages are written as ``<file or field>: <problem>``).
    """

    def __init__(self, message: object = "", *, where: str | None = None) -> None:
        super().__init__(message)
        self._where = where

    @property
    def where(self) -> str | None:
        if getattr(self, "_where", None):
            return self._where
        head, sep, _ = str(self).partition(": ")
        return head if sep else None

    def __str__(self) -> str:
        return " ".join(str(self.args[0]).split()) if self.args else ""

    def prefixed(self, prefix: str) -> "UserError":
        """The same error (same class) with ``prefix: `` in front of its message."""
        try:
            new = type(self)(f"{prefix}: {self}")
        except TypeError:  # a subclass with another constructor
            new = UserError(f"{prefix}: {self}")
        new._where = self.where  # still the field (or file) the error is about, not the prefix
        return new


class ConfigError(UserError):
    """A user-facing configuration error: one line naming the field and what is allowed."""


class CheckpointError(UserError):
    """A checkpoint file cannot be read or does not fit the network it is loaded into."""


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


#: a frame line of a Python traceback, as it appears inside a wrapped error's message
_FRAME = re.compile(r'^\s*File "[^"]*", line \d+')


def error_reason(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` of the error that started it all, at most ``limit``
    characters: for an error whose message carries a traceback (Ray's wrappers of a worker's error),
    the innermost traceback's exception line (its type without the module path); else ``exc``'s own
    type and first line (the type alone for an empty message)."""
    lines = [line.rstrip() for line in str(exc).splitlines()]
    frames = [i for i, line in enumerate(lines) if _FRAME.match(line)]
    if frames:
        for line in lines[frames[-1] + 1:]:
            if line and not line[0].isspace():  # past the frame's source line and its carets
                kind, sep, message = line.partition(": ")
                kind = kind.rsplit(".", 1)[-1]
                return (f"{kind}: {message}" if sep else kind)[:limit]
    first = next((line.strip() for line in lines if line.strip()), "")
    name = type(exc).__name__
    return (f"{name}: {first}" if first else name)[:limit]


def describe_os_error(exc: OSError) -> str:
    """``<file>: <what the system said>``, one line (e.g. ``out: Not a directory``)."""
    what = exc.strerror or one_line(exc) or type(exc).__name__
    return one_line(f"{exc.filename}: {what}" if exc.filename is not None else what)


def add_debug_flag(parser: argparse.ArgumentParser, *, sub: bool = False) -> None:
    """``--debug`` on ``parser`` (``sub``: a subcommand's parser, which must not reset the main one's)."""
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS if sub else False,
                        help=f"print a traceback with an error (also: {DEBUG_ENV}=1)")


def debug_requested(args: argparse.Namespace | None = None) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_command(prog: str, command: Callable[[], int], *, debug: bool = False) -> int:
    """Run a CLI command; bad input becomes ``PROG: error: <one line>`` on stderr and exit code 2.

    Caught: :class:`UserError` and an ``OSError`` naming a file (a path the user gave that cannot
    be read or written). Anything else is a bug and keeps its traceback. With ``debug`` the
    traceback is printed before the error line.
    """
    try:
        return command()
    except (UserError, OSError) as exc:
        if not isinstance(exc, UserError) and exc.filename is None:
            raise
        if debug:
            traceback.print_exc()
        message = str(exc) if isinstance(exc, UserError) else describe_os_error(exc)
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2
