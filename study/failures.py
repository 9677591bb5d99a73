"""Why a search trial's attempt failed, written where the driver reads it, and the two budgets.

A trial whose attempt fails writes ``<benchmark>/search/failures/<trial id>.json`` (its kind and
its one-line reason) before Tune sees the error, and says so in its log; an attempt that starts
removes it. The Optuna record takes the reason from it (``fail_kind``, ``fail_reason``), and a
retried attempt of a diverged trial stops at once: a divergence repeats from the same checkpoint,
so it is not retried, and ``budget.max_failures`` is spent by the other failures only (a lost
node, a crashed worker, an error in the code).
"""
from __future__ import annotations

from dataclasses import dataclass

from indistill.common.errors import error_reason
from indistill.engine.loop import DivergedError

from .runlog import RunLog, trial_log
from .storage import Storage

#: the kinds of failure, each a stable name in the record
NODE_LOST, NO_NODE, DIVERGED, ERROR = "node lost", "no node", "diverged", "error"
#: the reason given when an attempt left no record (its process died with its node)
NO_RECORD = "the trial's process ended without a reason (see its error.txt in the Tune trial directory)"


class NodeLostError(RuntimeError):
    """A node that held workers of a run died (its retries, if any, are spent)."""


class NoNodeError(RuntimeError):
    """No node of the cluster could host a run's workers within the placement timeout."""


def failure_file(benchmark: str, trial_id: str) -> str:
    return f"{benchmark}/search/failures/{trial_id}.json"


def failure_kind(exc: BaseException) -> str:
    """The kind of a failed attempt's error (Ray's wrappers of a worker's error included)."""
    workers = list(getattr(exc, "worker_failures", {}).values())
    for kind, types in ((NODE_LOST, NodeLostError), (NO_NODE, NoNodeError), (DIVERGED, DivergedError)):
        if isinstance(exc, types) or any(isinstance(e, types) for e in workers):
            return kind
    # a worker's error unpickled as Ray's wrapper only: named by its innermost line
    return DIVERGED if error_reason(exc).startswith(f"{DivergedError.__name__}:") else ERROR


def attempt_reason(exc: BaseException) -> str:
    """One line: the first failed worker's own error where Ray Train names it, else ``exc``'s
    (:func:`~indistill.common.errors.error_reason`)."""
    workers = getattr(exc, "worker_failures", None) or {}
    return error_reason(workers[min(workers)] if workers else exc)


@dataclass(frozen=True)
class Failures:
    """The failure records of one benchmark's search trials (picklable: Tune snapshots the
    searcher that holds it)."""

    storage: Storage
    benchmark: str

    def record(self, trial_id: str, exc: BaseException) -> dict:
        entry = {"kind": failure_kind(exc), "reason": attempt_reason(exc)}
        self.storage.write_json(failure_file(self.benchmark, trial_id), entry)
        self.log(trial_id, f"[trial] failed ({entry['kind']}): {entry['reason']}")
        return entry

    def read(self, trial_id: str) -> dict | None:
        rel = failure_file(self.benchmark, trial_id)
        return self.storage.read_json(rel) if self.storage.exists(rel) else None

    def clear(self, trial_id: str) -> None:
        self.storage.delete(failure_file(self.benchmark, trial_id))

    def start_attempt(self, trial_id: str) -> None:
        """Called as an attempt starts: a trial that diverged before raises its divergence again
        at once (not retried); otherwise the previous attempt's record is removed."""
        previous = self.read(trial_id)
        if previous is not None and previous["kind"] == DIVERGED:
            self.log(trial_id, f"[trial] not retried: it diverged ({previous['reason']})")
            raise DivergedError(previous["reason"].removeprefix(f"{DivergedError.__name__}: ")
                                + " (a divergence is not retried)")
        if previous is not None:
            self.log(trial_id, f"[trial] retried after it failed ({previous['kind']}): {previous['reason']}")
            self.clear(trial_id)

    def log(self, trial_id: str, line: str) -> None:
        """One line in the trial's log (a log opened now: on object storage it continues the
        latest upload, the workers' lines included)."""
        RunLog(self.storage, trial_log(self.benchmark, trial_id))(line)
