"""The ``indistill`` command: run the InDistill pipeline on one benchmark, or show a default config."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from indistill.common.clihelp import COMMON_ENVIRONMENT, add_command, command_parser, environment_epilog, parse_command
from indistill.config.run import METHOD_NAMES, dump_config
from indistill.engine.configure import load_config, with_data_root
from indistill.common.errors import add_debug_flag, debug_requested, run_command

PROG = "indistill"


def _methods(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METHOD_NAMES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown method {bad[0] if bad else text!r}; choose from: {', '.join(METHOD_NAMES)}")
    return names


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected distinct seeds >= 0, got {text!r}")
    return seeds


DESCRIPTION = """\
indistill: run the InDistill pipeline on one benchmark (teacher, auxiliary, pruning, students,
retrieval mAP), or print a benchmark's default config."""

EPILOG = environment_epilog(COMMON_ENVIRONMENT)


def build_parser() -> argparse.ArgumentParser:
    from indistill.data import BENCHMARKS

    parser, sub = command_parser(PROG, DESCRIPTION, EPILOG)

    run = add_command(sub, "run", "teacher -> auxiliary -> prune -> students, then the results table", epilog=EPILOG)
    run.add_argument("--benchmark", help=f"one of {', '.join(BENCHMARKS)} "
                     "(default: the --config's benchmark, else digits)")
    run.add_argument("--config", type=Path, help="YAML merged over the benchmark's default config, e.g. an exported "
                     "best config (default: none, the benchmark's default config)")
    run.add_argument("--out", type=Path, default=Path("runs"), help="output directory; a run writes <out>/<benchmark>-seed<N>/")
    run.add_argument("--seed", type=int, help="random seed of the teacher and auxiliary, and of the students unless "
                     "--seeds is given (default: the config's seed, 0)")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], help="training device; auto: cuda when available "
                     "(default: the config's device, auto)")
    run.add_argument("--data-root", help="where datasets live (default: the config's data.root, else $INDISTILL_DATA, else ~/.cache/indistill/data)")
    run.add_argument("--download", action="store_true", help="download the dataset when torchvision can (cifar10, cifar100, fashionmnist)")
    run.add_argument("--methods", type=_methods, help=f"comma-separated student methods out of {','.join(METHOD_NAMES)} "
                     "(default: the config's methods, all four)")
    run.add_argument("--seeds", type=_seeds, help="comma-separated student seeds, e.g. 0,1,2: every student method is trained "
                     "once per seed (teacher and auxiliary once), the table shows mean ± std and paired 95%% CIs "
                     "against InDistill (default: one seed, the config's)")

    show = add_command(sub, "config", "print a benchmark's complete default config as YAML, reference behaviours commented")
    show.add_argument("--benchmark", default="digits", help="the benchmark whose default config is printed")
    show.add_argument("--config", type=Path, help="a YAML merged over the default before printing (default: none)")
    for sub_parser in (run, show):
        add_debug_flag(sub_parser, sub=True)
    return parser


def overrides_from_args(args: argparse.Namespace) -> dict:
    out: dict = {}
    if getattr(args, "seed", None) is not None:
        out["seed"] = args.seed
    if getattr(args, "device", None):
        out["device"] = args.device
    if getattr(args, "methods", None):
        out["methods"] = args.methods
    data = {}
    if getattr(args, "data_root", None):
        data["root"] = args.data_root
    if getattr(args, "download", False):
        data["download"] = True
    if data:
        out["data"] = data
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_command(build_parser(), argv)
    if args is None:
        return 0
    try:
        return run_command(PROG, lambda: _command(args), debug=debug_requested(args))
    except KeyboardInterrupt:
        print("indistill: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def _command(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, benchmark=args.benchmark, overrides=overrides_from_args(args))
    if args.command == "config":
        from indistill.config.run import REFERENCE_BENCHMARK, config_to_dict
        from indistill.engine.configure import build_config
        from indistill.config.fidelity import annotations

        reference = config_to_dict(build_config(benchmark=REFERENCE_BENCHMARK))
        sys.stdout.write(dump_config(cfg, notes=annotations(config_to_dict(cfg), reference)))
        return 0
    from indistill.engine.pipeline import run_pipeline

    table = run_pipeline(with_data_root(cfg), args.out, seeds=args.seeds)
    print()
    from indistill.evaluation.table import to_markdown

    print(to_markdown(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
