"""Ray overhead per trial of a finished study: each trial's wall time against its in-loop time.

    python -m perf.ray_overhead [STUDY_DIR] [--json FILE]

Run a study first (``bash scripts/study.sh`` writes ``studies/default``). Every trial's last report
carries (``timing`` in ``<benchmark>/search/trials.json``):

* ``wall_s``: wall-clock seconds from the start of the trial's Tune function to its last report:
  Train controller and worker-group start, loading the data and the frozen artifacts, pruning,
  the epochs, per-epoch checkpoints and reports;
* ``loop_s``: what a straightforward, Ray-free loop spends on the same work: the sum of the
  epochs' training and evaluation times measured inside the loop.

Overhead = wall - loop, in seconds and as a fraction of wall. Its parts: ``startup_s`` (trial
start to the first epoch), of which ``ray_startup_s`` is Ray's (Tune function to the Train worker
entering the trial function: Train controller and worker group) and the rest ours (data, frozen
artifacts, pruning, model set-up); and ``report_s`` (TensorBoard, checkpoint copy and
``ray.train.report`` per epoch, before the last). What follows the last report (Tune
stopping the trial, Ray Train shutting its workers down, the next trial starting) is not in a
trial's wall time; the search phase's figure covers it: the slot-seconds the search had
(``search_s`` x concurrent trials) against the loop seconds of all its trials. Failed trials that
never reported have no timing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Sequence

import pandas as pd
import torch

from study.names import TRIALS_FILE
from study.storage import Storage

from .machine import machine_info


def trial_overheads(trials: list[dict]) -> pd.DataFrame:
    """One row per timed trial: epochs, wall_s, loop_s, overhead_s, overhead_frac."""
    rows = []
    for t in trials:
        timing = t.get("timing")
        if not timing or timing.get("loop_s") is None:
            continue
        wall, loop = float(timing["wall_s"]), float(timing["loop_s"])
        rows.append({"trial": t["trial_id"], "epochs": timing.get("epochs"), "wall_s": wall, "loop_s": loop,
                     "overhead_s": wall - loop, "overhead_frac": (wall - loop) / wall,
                     "startup_s": timing.get("startup_s"), "ray_startup_s": timing.get("ray_startup_s"),
                     "report_s": timing.get("report_s")})
    return pd.DataFrame(rows, columns=["trial", "epochs", "wall_s", "loop_s", "overhead_s", "overhead_frac",
                                       "startup_s", "ray_startup_s", "report_s"])


def _median(values: pd.Series) -> float | None:
    values = values.dropna()
    return float(statistics.median(values)) if len(values) else None


def summarize(frame: pd.DataFrame) -> dict[str, float]:
    """Medians over trials, and the overhead share of all timed trial time."""
    if frame.empty:
        return {"trials": 0}
    return {
        "trials": len(frame),
        "median_wall_s": statistics.median(frame["wall_s"]),
        "median_loop_s": statistics.median(frame["loop_s"]),
        "median_overhead_s": statistics.median(frame["overhead_s"]),
        "median_overhead_frac": statistics.median(frame["overhead_frac"]),
        "median_startup_s": _median(frame["startup_s"]),
        "median_ray_startup_s": _median(frame["ray_startup_s"]),
        "median_report_s_per_epoch": _median(frame["report_s"] / (frame["epochs"] - 1).clip(lower=1)),
        "total_overhead_frac": float(frame["overhead_s"].sum() / frame["wall_s"].sum()),
    }


def search_efficiency(trials: list[dict], search_s: float, concurrent: int) -> dict[str, float]:
    """Loop seconds of every trial against the slot-seconds of the search phase."""
    loop = sum(float(t["timing"]["loop_s"]) for t in trials if t.get("timing"))
    slots = search_s * concurrent
    return {"search_s": search_s, "concurrent": concurrent, "loop_s": loop, "overhead_frac": 1 - loop / slots}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.ray_overhead", description=__doc__.split("\n")[0])
    parser.add_argument("study_dir", nargs="?", default="studies/default")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    storage = Storage.create(args.study_dir)
    if not storage.exists("study.json"):
        print(f"{args.study_dir}: not a study directory (run `bash scripts/study.sh` first)", file=sys.stderr)
        return 2
    state = storage.read_json("study.json")
    report: dict = {}
    for bench in state["benchmarks"]:
        if not storage.exists(f"{bench}/{TRIALS_FILE}"):
            print(f"{bench}: the search has not finished")
            continue
        record = storage.read_json(f"{bench}/{TRIALS_FILE}")
        frame = trial_overheads(record["trials"])
        phases = storage.read_json(f"{bench}/phases.json") if storage.exists(f"{bench}/phases.json") else {}
        summary = summarize(frame)
        search = None
        if "search_s" in phases and record.get("max_concurrent"):
            search = search_efficiency(record["trials"], phases["search_s"], record["max_concurrent"])
        report[bench] = {"summary": summary, "phases": phases, "search": search, "trials": frame.to_dict("records")}
        print(f"== {bench}: per-trial Ray overhead ({summary['trials']} trials ran to the end)")
        if not frame.empty:
            print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
            print(f"median: wall {summary['median_wall_s']:.1f} s, loop {summary['median_loop_s']:.1f} s, "
                  f"overhead {summary['median_overhead_s']:.1f} s = {100 * summary['median_overhead_frac']:.0f}% of the trial; "
                  f"all timed trials: {100 * summary['total_overhead_frac']:.0f}%")
            if summary["median_startup_s"] is not None:
                ray_part = summary["median_ray_startup_s"]
                print(f"parts: start-up {summary['median_startup_s']:.1f} s (median; Ray's part "
                      f"{'?' if ray_part is None else f'{ray_part:.1f} s'}), "
                      f"reporting {summary['median_report_s_per_epoch']:.2f} s per epoch (median)")
        if phases:
            # phases.json: "<phase>_s" totals plus their "intervals"
            print("phases (wall s): " + ", ".join(f"{k[:-2]} {v:.0f}" for k, v in phases.items() if k.endswith("_s")))
        if search:
            print(f"search phase: {search['search_s']:.0f} s x {search['concurrent']} slots, {search['loop_s']:.0f} s in trial loops: "
                  f"{100 * search['overhead_frac']:.0f}% of the slot time is overhead (start, stop, idle slots)")
    if args.json:
        # what produced the figures: the study's recorded versions and commit, this machine
        measured = {"command": " ".join(["python -m perf.ray_overhead", *(argv if argv is not None else sys.argv[1:])]),
                    "provenance": state.get("provenance"), "machine": machine_info(torch.device("cpu"))}
        with open(args.json, "w") as f:
            json.dump({"measured": measured, "benchmarks": report}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
