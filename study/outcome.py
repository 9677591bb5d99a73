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


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether (val mAP, size) ``a`` is at least as good as ``b`` in both (higher mAP, smaller size)
    and better in one: Optuna's rule for a study maximising the first value and minimising the second."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def pareto_front(trials: Iterable[dict], value_key: str, size_key: str) -> list[dict]:
    """The completed trials no other completed trial dominates (equal points all stay), sorted by
    size: a two-objective search's result, as Optuna's ``best_trials`` holds it (early-stopped
    trials are PRUNED there and have no values)."""
    done = [t for t in trials if t["status"] == COMPLETED and scored(t.get(value_key)) and scored(t.get(size_key))]
    points = [(float(t[value_key]), float(t[size_key])) for t in done]
    front = [t for t, p in zip(done, points) if not any(dominates(q, p) for q in points)]
    return sorted(front, key=lambda t: (t[size_key], -t[value_key]))


def spread(front: list[dict], k: int) -> list[dict]:
    """At most ``k`` points of a front sorted by size, evenly spaced along it (its smallest and its
    largest first of all)."""
    if len(front) <= k:
        return list(front)
    if k == 1:
        return [max(front, key=lambda t: t.get("val_map", 0.0))]
    picks = sorted({round(i * (len(front) - 1) / (k - 1)) for i in range(k)})
    return [front[i] for i in picks]
