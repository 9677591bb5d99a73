"""How a search trial ended, and which trial is the best: one rule for the search record
(``search/trials.json``), the Optuna study and the console."""
from __future__ import annotations

import math
import numbers
from typing import Iterable

COMPLETED, STOPPED, FAILED = "completed", "stopped early", "failed"
#: every status, in the order the record and the table count them
STATUSES = (COMPLETED, STOPPED, FAILED)


def trial_status(failed: bool, epochs: int, full_epochs: int) -> str:
    """``failed``: the trial raised; completed: it ran its whole budget of ``full_epochs`` student
    epochs; else ASHA stopped it early."""
    if failed:
        return FAILED
    return COMPLETED if epochs >= full_epochs else STOPPED


def scored(value: object) -> bool:
    """Whether a reported val mAP is a number and not NaN (a trial without one is never the best, and
    is FAIL in the Optuna record even when it raised no error)."""
    return isinstance(value, numbers.Real) and not math.isnan(value)


def best_key(status: str, epochs: int, value: object) -> tuple[int, float] | None:
    """What the best trial maximises: the most epochs, then the highest last val mAP (a trial that
    ran longer is not beaten by one ASHA stopped early). None for a failed trial or one whose value
    is missing or NaN: it is never the best."""
    if status == FAILED or not scored(value):
        return None
    return int(epochs), float(value)


def count(statuses: Iterable[str]) -> dict[str, int]:
    """``{status: how many}`` for every status (zeros included)."""
    statuses = list(statuses)
    return {s: statuses.count(s) for s in STATUSES}
