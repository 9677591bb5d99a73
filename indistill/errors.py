"""The one user-facing error type: what the user typed or pointed at is wrong.

Every CLI catches :class:`UserError` once and prints ``PROG: error: <one line>`` with exit code 2.
Subclasses say which kind of input it was (config, dataset, checkpoint); messages name the file
or field and what is allowed.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad user input; ``str(exc)`` is one line naming the file or field."""

    def __str__(self) -> str:
        return " ".join(str(self.args[0]).split()) if self.args else ""


class CheckpointError(UserError):
    """A checkpoint file cannot be read or does not fit the network it is loaded into."""
