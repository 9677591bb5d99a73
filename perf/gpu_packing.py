"""Part 3 of the GPU check (``perf.gpu_check``): four 0.25-GPU trials packed on one GPU at once.

A tiny digits study on a local Ray (``study.cli.main``, as a user runs it), then its records:

* where each trial ran: ``<study>/digits/search/placement/<trial id>.json`` (``study.workers``
  writes one per trial, every rank's device);
* when: each trial's last result in Tune's ``result.json`` (``<study>/ray/digits-search/*/``). Its
  ``timestamp`` (whole seconds, when Tune took the result) is the trial's end, and ``trial_wall_s -
  ray_startup_s`` before it the Ray Train worker entered the trial's function: the worker, holding
  its GPU share, was alive in between. The trials' common stretch must be longer than
  :data:`MIN_OVERLAP_S`, the timestamps' resolution with room for Tune's delay in taking a result,
  so that trials that only touch (one after another) do not count as "at once".

The verdict (:func:`packing_verdict`) is a function of those records only, tested on hand-made ones.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Callable, Iterable, Mapping

import yaml

from study.outcome import COMPLETED  # Ray-free

BENCHMARK = "digits"
STUDY_NAME = "gpu-check"
TRIALS = 4
GPUS_PER_TRIAL = 0.25
#: student epochs per trial: one curriculum epoch, then seven in the embedding phase, so that each
#: trial's worker lives some seconds beyond its start-up (the trials' common stretch is what counts)
TRIAL_EPOCHS = 8
#: seconds by which the trials' estimated intervals must overlap: Tune's whole-second timestamps
#: shift each interval by up to 1 s, plus half a second for Tune's delay in taking a result
MIN_OVERLAP_S = 1.5
#: the search space: four trials of TRIAL_EPOCHS student epochs, each run to its end (no ASHA),
#: InDistill's rows only, one final seed, a one-epoch teacher and auxiliary
SEARCH_SPACE = {
    "benchmark": BENCHMARK,
    "budget": {"trials": TRIALS, "epochs": TRIAL_EPOCHS, "seed": 0, "max_failures": 0, "early_stopping": False,
               "final_seeds": 1},
    "curriculum": {
        "epochs": [{"low": 1, "high": 1}, {"low": 0, "high": 0}, {"low": 0, "high": 0}],
        "losses": ["mse", "pkt"],
        "weights": {"mse": {"low": 0.5, "high": 2.0}},
        "overlap": [False],
    },
    "criteria": ["l1"],
    "fixed": {
        "methods": ["indistill"],
        "teacher": {"epochs": 1},
        "auxiliary": {"ce": {"epochs": 1}, "pkt": {"epochs": 1}},
        "student": {"curriculum": {"epochs": [1, 0, 0]}},
    },
}

Log = Callable[[str], None]
Interval = tuple[float, float]


def cpus_per_trial(usable: int) -> float:
    """CPUs per trial so that :data:`TRIALS` trials fit ``usable`` CPUs (fractions below 4 CPUs)."""
    return float(usable // TRIALS) if usable >= TRIALS else usable / TRIALS


def ray_cpus() -> int:
    """The CPUs a local Ray counts on this machine (the study's own reading of it)."""
    from study.resources import this_machine_shape

    return max(1, int(this_machine_shape().now()["CPU"]))


def study_argv(space: Path, storage: Path, cpus: float) -> list[str]:
    """``study.cli.main``'s arguments: the tiny study, :data:`GPUS_PER_TRIAL` per trial, on a new local
    Ray (``--address local``: on a node of a running Ray cluster, or with $RAY_ADDRESS set, too)."""
    return ["run", "--benchmarks", BENCHMARK, "--search-space", str(space), "--gpus-per-trial", str(GPUS_PER_TRIAL),
            "--cpus-per-trial", f"{cpus:g}", "--storage", str(storage), "--name", STUDY_NAME, "--address", "local"]


def worker_interval(rows: list[dict]) -> Interval | None:
    """(start, end) in epoch seconds of a trial's Ray Train worker, from its Tune results (see the module's
    docstring); None when no result carries the timing."""
    timed = [r for r in rows if {"timestamp", "trial_wall_s", "ray_startup_s"} <= set(r)]
    if not timed:
        return None
    last = timed[-1]
    end = float(last["timestamp"])
    return end - float(last["trial_wall_s"]) + float(last["ray_startup_s"]), end


def most_at_once(intervals: Iterable[Interval], min_overlap_s: float = MIN_OVERLAP_S) -> int:
    """The largest number of intervals with a common stretch longer than ``min_overlap_s`` seconds.

    k intervals share such a stretch exactly when, each shortened by ``min_overlap_s / 2`` at both
    ends, they share more than a point: a sweep over the shortened ones, ends before starts at equal
    times (intervals that only touch ran one after the other).
    """
    half = min_overlap_s / 2
    events = []
    for start, end in intervals:
        if end - start >= min_overlap_s:
            events += [(start + half, 1), (end - half, -1)]
    best = now = 0
    for _, step in sorted(events):  # (t, -1) sorts before (t, +1)
        now += step
        best = max(best, now)
    return best


def packing_verdict(intervals: Mapping[str, Interval], placements: Mapping[str, list[dict]],
                    statuses: Mapping[str, str], trials: int = TRIALS, device: str = "cuda",
                    min_overlap_s: float = MIN_OVERLAP_S) -> dict:
    """Whether ``trials`` trials ran at once, each completed and each rank on ``device`` (``cuda`` or
    ``cuda:<i>``) of one node, from the trials' worker intervals, placement records and statuses (by
    trial id)."""
    ids = sorted(set(statuses) | set(placements) | set(intervals))
    devices = sorted({r.get("device", "?") for ranks in placements.values() for r in ranks})
    wrong = sorted(t for t in ids if not placements.get(t)
                   or any(not str(r.get("device", "")).startswith(device) for r in placements[t]))
    unfinished = sorted(t for t in ids if statuses.get(t) != COMPLETED)
    untimed = sorted(t for t in ids if t not in intervals)
    nodes = sorted({str(r.get("node_id")) for ranks in placements.values() for r in ranks})
    at_once = most_at_once(intervals.values(), min_overlap_s)
    reasons = []
    if len(ids) != trials:
        reasons.append(f"{len(ids)} trials, not {trials}")
    if wrong:
        reasons.append(f"not every rank on {device}: {', '.join(wrong)}")
    if len(nodes) > 1:
        reasons.append(f"on {len(nodes)} nodes, not one")
    if unfinished:
        listed = ", ".join(f"{t} ({statuses.get(t, 'no status')})" for t in unfinished)
        reasons.append(f"not completed: {listed}")
    if untimed:
        reasons.append(f"no timing in Tune's results: {', '.join(untimed)}")
    if at_once < trials:
        reasons.append(f"at most {at_once} at once (overlapping by more than {min_overlap_s:g} s)")
    return {
        "trials": trials,
        "trial_ids": ids,
        "devices": devices,
        "nodes": nodes,
        "most_at_once": at_once,
        "min_overlap_s": min_overlap_s,
        "intervals": {t: list(intervals[t]) for t in ids if t in intervals},
        "placements": {t: placements.get(t, []) for t in ids},
        "statuses": {t: statuses.get(t) for t in ids},
        "reason": "; ".join(reasons),
        "ok": not reasons,
    }


def read_records(study_dir: Path) -> tuple[dict[str, Interval], dict[str, list[dict]], dict[str, str]]:
    """The study's trial intervals (Tune's results), placements and statuses (``search/trials.json``)."""
    placement_dir = study_dir / BENCHMARK / "search" / "placement"
    placements = {p.stem: json.loads(p.read_text())["ranks"] for p in sorted(placement_dir.glob("*.json"))}
    intervals = {}
    for result in sorted((study_dir / "ray" / f"{BENCHMARK}-search").glob("*/result.json")):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        interval = worker_interval(rows)
        if rows and interval is not None:
            intervals[str(rows[-1]["trial_id"])] = interval
    record = study_dir / BENCHMARK / "search" / "trials.json"
    statuses = {t["trial_id"]: t["status"] for t in json.loads(record.read_text())["trials"]} if record.exists() else {}
    return intervals, placements, statuses


def check_packing(work_dir: Path, log: Log = print) -> dict:
    """Runs the tiny study under ``work_dir`` and judges its records; the study's exit status must be 0
    too. Its console output is captured: the end of it goes into the record when the study fails."""
    from study.cli import main as study_main  # Ray, only here

    space = work_dir / "gpu-check-space.yaml"
    space.write_text(yaml.safe_dump(SEARCH_SPACE))
    storage = work_dir / "studies"
    cpus = cpus_per_trial(ray_cpus())
    argv = study_argv(space, storage, cpus)
    log(f"[gpu_check] packing: a {TRIALS}-trial digits study, {GPUS_PER_TRIAL} GPU and {cpus:g} CPUs per trial ...")
    console = io.StringIO()
    with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
        status = study_main(argv)
    out = packing_verdict(*read_records(storage / STUDY_NAME))
    out.update(argv=argv, study_exit_status=status, cpus_per_trial=cpus, gpus_per_trial=GPUS_PER_TRIAL,
               search_space=SEARCH_SPACE)
    if status != 0:
        out["ok"] = False
        out["reason"] = "; ".join(filter(None, [f"the study exited {status}", out["reason"]]))
        out["console_tail"] = console.getvalue()[-4000:]
    return out
