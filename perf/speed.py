"""Speed benchmark of the two hot paths: student distillation steps and retrieval evaluation.

    python -m perf.speed [distill|retrieval|all] [--quick] [--device auto|cpu|cuda]
                               [--batch-sizes 128,256,512,1024] [--compile] [--sizes 2000x20000,...]
                               [--repeats N] [--no-check] [--out FILE.json]

The parts: ``machine.py`` (what it ran on), ``reference.py`` (the reference-style pipelines: the
public scripts' DataLoader/PIL distillation loop and the paper's scikit-learn retrieval evaluation),
``distill.py`` (the project's student step and the sweep against the reference loop),
``retrieval.py`` (``indistill.evaluation.retrieval`` against the reference-style evaluation, per metric, at the
issue's size and the CIFAR-10 protocol size, plus the float64 agreement check) and ``report.py``.
The timed student step is the production one (``indistill.method.student_step``, built from the
CIFAR-10 config as ``student_stage`` builds it); that it computes what the reference-style forward
does is a test (``tests/test_speed_benchmark.py``), not part of a run. ``python -m perf.retrieval_profile``
splits retrieval's CPU time by stage. Measured figures: ``perf/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from indistill.engine.runtime import resolve_device

from .distill import DEFAULT_BATCH_SIZES, run_distill
from .machine import loadavg, machine_info
from .reference import REFERENCE_WORKERS
from .report import format_report, jsonable
from .retrieval import QUICK_SIZES, SIZES, run_retrieval


def _on_off_auto(value: str) -> bool | None:
    v = value.lower()
    if v not in ("auto", "on", "off"):
        raise argparse.ArgumentTypeError("expected auto, on or off")
    return None if v == "auto" else v == "on"


def _sizes(value: str) -> list[tuple[int, int]]:
    try:
        out = [tuple(int(x) for x in part.lower().split("x")) for part in value.split(",") if part.strip()]
    except ValueError:
        out = []
    if not out or any(len(s) != 2 or min(s) < 1 for s in out):
        raise argparse.ArgumentTypeError("expected QUERIESxDATABASE[,QUERIESxDATABASE...], e.g. 2000x20000")
    return out  # type: ignore[return-value]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m perf.speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", default="all", choices=("distill", "retrieval", "all"))
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, few steps, one run each (~1-2 min on 2 CPU cores)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: auto)")
    parser.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)),
                        help="distill: fast-path batch sizes to try; 128 is always included (default: %(default)s)")
    parser.add_argument("--images", type=int, default=None,
                        help="distill: synthetic training images (default 50000; quick 10000)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved runs per configuration (default 3; quick 1)")
    parser.add_argument("--steps", type=int, default=None,
                        help="distill: timed steps of a batch-128 run; other batches time as many images "
                             "(default 200; quick 30)")
    parser.add_argument("--num-workers", type=int, default=REFERENCE_WORKERS,
                        help="distill: reference DataLoader workers (default %(default)s); 0 workers is timed at "
                             "batch 128 too")
    parser.add_argument("--channels-last", type=_on_off_auto, default=None, metavar="auto|on|off",
                        help="distill: fast-path memory format (auto = on: faster on CPU and GPU)")
    parser.add_argument("--compile", action="store_true",
                        help="distill: torch.compile the student on the fast path (meant for CUDA)")
    parser.add_argument("--sizes", type=_sizes, default=None, metavar="QxN[,QxN...]",
                        help="retrieval: queries x database sizes (default "
                             f"{','.join(f'{q}x{n}' for q, n in SIZES)}; quick "
                             f"{','.join(f'{q}x{n}' for q, n in QUICK_SIZES)})")
    parser.add_argument("--no-check", action="store_true",
                        help="retrieval: skip the float64 agreement check (the slowest part of a run)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report as JSON here")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    info = machine_info(device)
    info["loadavg_start"] = loadavg()
    info["malloc_env"] = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    report: dict = {"command": " ".join(["python -m perf.speed", *argv]), "quick": args.quick, "machine": info}
    repeats = args.repeats or (1 if args.quick else 3)
    t_start = time.perf_counter()
    if args.what in ("distill", "all"):
        report["distill"] = run_distill(
            device,
            batch_sizes=[int(b) for b in args.batch_sizes.split(",") if b.strip()],
            images=args.images or (10_000 if args.quick else 50_000),
            ref_steps=args.steps or (30 if args.quick else 200),
            min_steps=10 if args.quick else 30,
            warmup=5 if args.quick else 15,
            repeats=repeats,
            num_workers=args.num_workers,
            channels_last=True if args.channels_last is None else args.channels_last,
            compile=args.compile,
        )
    if args.what in ("retrieval", "all"):
        sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
        report["retrieval"] = run_retrieval(device, sizes=sizes, repeats=repeats, check=not args.no_check)
    report["total_seconds"] = time.perf_counter() - t_start
    info["loadavg_end"] = loadavg()
    print()
    print(format_report(report))
    print(f"\ntotal benchmark time: {report['total_seconds']:.0f} s; load average at the end {info['loadavg_end']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(jsonable(report), indent=2) + "\n")
        print(f"wrote {args.out}")
    ok = "retrieval" not in report or report["retrieval"]["ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
