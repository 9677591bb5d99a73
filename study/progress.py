"""The study's own progress display: one line (or live panel row) per benchmark.

On a terminal a live panel shows, per benchmark, its phase, stage k of K of the artifact run,
trials done/running/stopped/failed of N, the best val mAP so far and its trial, and an ETA. When
stdout is not a terminal (CI logs, ``tee``) every event is one plain line, without ANSI escapes.
Every event line also goes to the study's log file (``logs/study.log``).

Events arrive from the benchmarks' driver threads (their messages), from Tune callbacks
(:class:`TrialEvents`, trials of the search and final runs) and from the artifact runs' progress
files, which a ticker thread polls (a Ray Train run reports to its controller, not to the driver).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, TextIO

from ray import tune

from indistill.common.errors import error_reason

from .names import ARTIFACT_PROGRESS, OBJECTIVE
from .outcome import FAILED, STATUSES, STOPPED, best_key, scored, trial_status
from .runlog import RunLog
from .storage import Storage

STUDY_LOG = "logs/study.log"


def format_duration(seconds: float | None) -> str:
    """``1h02m``, ``3m05s``, ``42s``; ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class BestTrial(NamedTuple):
    """The best finished trial so far: its :func:`study.outcome.best_key` (epochs, val mAP) and id."""

    key: tuple[int, float]
    trial_id: str

    @property
    def val_map(self) -> float:
        return self.key[1]


@dataclass
class BenchmarkStatus:
    """What the display knows about one benchmark."""

    name: str
    trials: int  # the search's budget
    seeds: int  # final seeds
    concurrent: int = 1  # trials at once
    full_epochs: int = 0  # a trial that ran fewer was stopped early
    phase: str = "waiting"
    phase_started: float = field(default_factory=time.time)
    stages_done: int = 0
    stages_total: int = 0
    stage_name: str = ""
    running: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))  # finished trials by status
    durations: list[float] = field(default_factory=list)  # wall seconds of finished trials / seeds
    started: dict[str, float] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)  # trial id -> its name (its TensorBoard run)
    best: BestTrial | None = None  # the best finished trial
    seeds_done: int = 0

    def finished_trials(self) -> int:
        return sum(self.counts.values())

    def eta(self, now: float) -> float | None:
        """Seconds left in the current phase (artifacts: per stage; search and final: per trial)."""
        elapsed = now - self.phase_started
        if self.phase == "artifacts" and self.stages_done and self.stages_total:
            return elapsed / self.stages_done * (self.stages_total - self.stages_done)
        if self.phase in ("search", "final") and self.durations:
            left = (self.trials - self.finished_trials()) if self.phase == "search" else self.seeds - self.seeds_done
            mean = sum(self.durations) / len(self.durations)
            return mean * left / max(1, self.concurrent)
        return None

    def trial_label(self, trial_id: str) -> str:
        return self.names.get(trial_id) or f"trial {trial_id}"

    def line(self, now: float) -> str:
        """The benchmark's one-line status."""
        parts = [f"{self.name:<12}", f"{self.phase:<9}"]
        if self.phase == "artifacts" and self.stages_total:
            parts.append(f"stage {self.stages_done}/{self.stages_total}" + (f" ({self.stage_name})" if self.stage_name else ""))
        if self.phase in ("search", "final", "done"):
            parts.append(f"trials {self.finished_trials()}/{self.trials} done, {len(self.running) if self.phase == 'search' else 0} "
                         f"running, {self.counts[STOPPED]} stopped, {self.counts[FAILED]} failed")
        if self.best is not None:
            parts.append(f"best val mAP {100 * self.best.val_map:.2f} ({self.trial_label(self.best.trial_id)})")
        if self.phase == "final":
            parts.append(f"seeds {self.seeds_done}/{self.seeds}")
        if self.phase in ("artifacts", "search", "final"):
            parts.append(f"ETA {format_duration(self.eta(now))}")
        return "  ".join(parts)


class Progress:
    """Thread-safe progress of a study: plain event lines, or a live panel on a terminal (``out``
    None: the study's log file only)."""

    def __init__(self, storage: Storage, statuses: list[BenchmarkStatus], out: TextIO | None, *, live: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        self.storage, self.out, self.clock = storage, out, clock
        self.status = {s.name: s for s in statuses}
        self.live = live and out is not None
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._panel = None
        self._log = RunLog(storage, STUDY_LOG, stamp=False)  # continued by a resumed study

    # ------------------------------------------------------------------ events
    def __call__(self, message: str) -> None:
        """One event line (``[benchmark] ...`` or ``[study] ...``)."""
        with self._lock:
            if self._panel is not None:
                self._panel.console.print(message, highlight=False, markup=False)
                self._panel.update(self._render())
            elif self.out is not None:
                print(message, file=self.out, flush=True)
            try:
                self._log(message)
            except OSError:
                pass  # the display must never stop the study

    def phase(self, bench: str, phase: str, message: str | None = None) -> None:
        with self._lock:
            st = self.status[bench]
            if phase != st.phase:  # the ETA of a phase comes from its own runs
                st.durations.clear()
            st.phase, st.phase_started = phase, self.clock()
            if message:
                self(f"[{bench}] {phase}: {message}")

    def stages(self, bench: str, done: int, total: int, name: str = "") -> None:
        with self._lock:
            st = self.status[bench]
            if (done, total) == (st.stages_done, st.stages_total):
                return
            st.stages_done, st.stages_total, st.stage_name = done, total, name
            if done:
                self(f"[{bench}] artifacts: stage {done}/{total} done ({name}); ETA {format_duration(st.eta(self.clock()))}")

    def trial_started(self, bench: str, trial_id: str, name: str | None = None) -> None:
        """A trial (re)started; ``name``: what the study calls it (``trial-<k>-<id>``, as its TensorBoard run)."""
        with self._lock:
            st = self.status[bench]
            st.started.setdefault(trial_id, self.clock())
            if name:
                st.names[trial_id] = name
            if st.phase == "search":
                st.running.add(trial_id)

    def trial_finished(self, bench: str, trial_id: str, last: dict | None, error: str | None = None) -> None:
        with self._lock:
            st = self.status[bench]
            st.running.discard(trial_id)
            now = self.clock()
            if trial_id in st.started:
                st.durations.append(now - st.started.pop(trial_id))
            if st.phase == "final":
                st.seeds_done += error is None
                what = "failed: " + error if error else "done"
                self(f"[{bench}] final: seed run {st.seeds_done}/{st.seeds} {what}; ETA {format_duration(st.eta(now))}")
                return
            epochs = int((last or {}).get("epoch", 0))
            status = trial_status(error is not None, epochs, st.full_epochs)
            st.counts[status] += 1
            outcome = {FAILED: f"failed ({error})", STOPPED: f"stopped early after epoch {epochs}"}.get(status, status)
            value = (last or {}).get(OBJECTIVE)
            key = best_key(status, epochs, value)
            if key is not None and (st.best is None or key > st.best.key):
                st.best = BestTrial(key, trial_id)  # as search/trials.json picks it
            shown = f", val mAP {100 * value:.2f}" if scored(value) else ""  # a failed trial's last one too
            best = f"; best {100 * st.best.val_map:.2f} ({st.trial_label(st.best.trial_id)})" if st.best else ""
            self(f"[{bench}] search: {st.trial_label(trial_id)} {outcome}{shown}{best}; {st.finished_trials()}/{st.trials} "
                 f"done, {len(st.running)} running; ETA {format_duration(st.eta(now))}")

    def searched(self, bench: str, trials: dict) -> None:
        """The finished search's record (``search/trials.json``): its counts and best trial."""
        with self._lock:
            st = self.status[bench]
            st.counts = {s: trials.get("counts", {}).get(s, 0) for s in STATUSES}
            st.running.clear()
            best = trials.get("best")
            if best:  # chosen by the record's rule already
                st.best = BestTrial((int(best.get("epochs", 0)), float(best[OBJECTIVE])), best["trial_id"])

    # ------------------------------------------------------------------ display
    def _render(self):
        from rich.table import Table

        table = Table.grid(padding=(0, 1))
        now = self.clock()
        for st in self.status.values():
            table.add_row(st.line(now))
        return table

    def poll_artifacts(self) -> None:
        """Read the artifact runs' progress files of the benchmarks in their artifacts phase."""
        for bench, st in list(self.status.items()):
            rel = f"{bench}/{ARTIFACT_PROGRESS}"
            if st.phase != "artifacts":
                continue
            try:
                state = self.storage.read_json(rel)
            except Exception:  # not written yet, mid-write or unreachable: next tick
                continue
            self.stages(bench, int(state.get("done", 0)), int(state.get("total", 0)), str(state.get("stage", "")))

    def _tick(self, every: float) -> None:
        while not self._stop.wait(every):
            self.poll_artifacts()
            if self._panel is not None:
                with self._lock:
                    self._panel.update(self._render())

    def __enter__(self) -> "Progress":
        if self.live:
            from rich.console import Console
            from rich.live import Live

            # rich's Live would route everything printed meanwhile (Tune, Ray) onto the terminal
            self._panel = Live(self._render(), console=Console(file=self.out), refresh_per_second=2, transient=False,
                               redirect_stdout=False, redirect_stderr=False)
            self._panel.__enter__()
        self._ticker = threading.Thread(target=self._tick, args=(1.0 if self.live else 2.0,), daemon=True, name="progress")
        self._ticker.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5)
        self.poll_artifacts()
        if self._panel is not None:
            self._panel.update(self._render())
            self._panel.__exit__(*exc)
            self._panel = None


_ACTIVE: Progress | None = None  # the display of this driver process


def attach(progress: Progress | None) -> None:
    """Make ``progress`` the display the Tune callbacks of this process report to (None: none)."""
    global _ACTIVE
    _ACTIVE = progress


class TrialEvents(tune.Callback):
    """Forwards a Tune experiment's trial events to this process's :class:`Progress` (if any).

    Holds only the benchmark's name, so it pickles with the experiment and finds the display
    again after ``--resume``."""

    def __init__(self, benchmark: str) -> None:
        self.benchmark = benchmark

    def _progress(self) -> Progress | None:
        return _ACTIVE if _ACTIVE is not None and self.benchmark in _ACTIVE.status else None

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if (p := self._progress()) is not None:
            name = str(getattr(trial, "custom_trial_name", None) or "")
            p.trial_started(self.benchmark, trial.trial_id, name if name.startswith("trial-") else None)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if (p := self._progress()) is not None:
            p.trial_finished(self.benchmark, trial.trial_id, trial.last_result)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        if (p := self._progress()) is not None:
            p.trial_finished(self.benchmark, trial.trial_id, trial.last_result, error=_short_error(trial))


def _short_error(trial) -> str:
    """A failed trial's reason (:func:`~indistill.common.errors.error_reason`), shortened (Tune keeps the whole
    error in its error.txt)."""
    try:
        error = trial.get_pickled_error()
    except Exception:  # an error that no longer unpickles
        error = None
    return error_reason(error, 120) if error is not None else "error (see the trial's error.txt)"
