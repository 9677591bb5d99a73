"""``indistill-study``: a Ray Tune + Optuna study of InDistill, its table, TensorBoard and export."""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from indistill.errors import add_debug_flag, debug_requested, run_command
from indistill.schema import ConfigError

PROG = "indistill-study"


def build_parser() -> argparse.ArgumentParser:
    from indistill.data import BENCHMARKS

    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    add_debug_flag(parser)
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="run (or --resume) a study; with no arguments: the embedded digits study")
    run.add_argument("--benchmarks", default="digits", help=f"comma-separated, or 'all' ({','.join(BENCHMARKS)}); default: digits")
    run.add_argument("--search-space", type=Path, help="search-space YAML (default: search_spaces/<benchmark>.yaml, else default.yaml)")
    run.add_argument("--trials", type=int, help="override the search space's number of trials")
    run.add_argument("--epochs", type=int, help="override budget.epochs: the student epochs of every trial and of every "
                     "final student row (their lr drops move with it; MKT keeps its recipe's length)")
    run.add_argument("--final-seeds", type=int, help="student seeds of every row of the final table (default: budget.final_seeds, 3)")
    run.add_argument("--storage", default="studies", help="where studies live: a path (NFS for multi-node) or s3://bucket/prefix")
    run.add_argument("--name", default="default", help="the study's name (its directory under --storage)")
    run.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers (DDP) per trial")
    run.add_argument("--gpus-per-trial", type=float, help="GPUs per trial (fractional for one-worker trials; default 0.25 on GPU clusters, else 0)")
    run.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial (default 1)")
    run.add_argument("--dist-backend", choices=("auto", "nccl", "gloo"), default="auto",
                     help="torch.distributed backend of the Ray Train runs (auto: nccl when trials use GPUs, else gloo)")
    run.add_argument("--artifact-workers", type=int, default=1, help="Ray Train workers for the teacher/auxiliary/baselines run")
    run.add_argument("--address", help="Ray cluster to join ('auto' or host:port; default: $RAY_ADDRESS, else a local Ray)")
    run.add_argument("--data-root", help="dataset root (default: $INDISTILL_DATA or ~/.cache/indistill/data)")
    run.add_argument("--download", action="store_true", help="download cifar10/cifar100/fashionmnist with torchvision before starting")
    run.add_argument("--resume", action="store_true", help="continue an interrupted study with the same --storage and --name")

    table = sub.add_parser("table", help="print a study's results table")
    table.add_argument("study_dir")
    export = sub.add_parser("export", help="write the best configs, student checkpoints and tables")
    export.add_argument("study_dir")
    export.add_argument("--out", type=Path, required=True)
    report = sub.add_parser("report", help="write the study's figures (PNG) and report.md under STUDY_DIR/report/")
    report.add_argument("study_dir")
    tb = sub.add_parser("tensorboard", help="print (or --start) the tensorboard command for a study")
    tb.add_argument("study_dir")
    tb.add_argument("--start", action="store_true", help="start tensorboard instead of printing the command")
    tb.add_argument("--port", type=_port, default=6006, help="TCP port, 1-65535 (default 6006)")
    for sub_parser in sub.choices.values():
        add_debug_flag(sub_parser, sub=True)
    return parser


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number (1-65535), got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (1-65535)")
    return port


def _benchmarks(text: str) -> list[str]:
    from indistill.data import BENCHMARKS

    names = BENCHMARKS.names() if text == "all" else [b.strip() for b in text.split(",") if b.strip()]
    for name in names:
        if name not in BENCHMARKS:
            raise ConfigError(f"--benchmarks: unknown benchmark {name!r}; choose from: {', '.join(BENCHMARKS.names())}, all")
    if not names:
        raise ConfigError("--benchmarks: give at least one benchmark")
    return names


def make_plan(args: argparse.Namespace, cluster: dict | None = None):
    """Validate everything the user typed and build the StudyPlan (no Ray needed)."""
    from .resources import TrialResources, default_gpus_per_trial
    from .runner import BenchmarkPlan, StudyPlan
    from .search_space import base_config, default_space_path, load_space
    from .storage import Storage

    gpus = args.gpus_per_trial
    if gpus is None:
        gpus = default_gpus_per_trial(cluster or {}, args.workers_per_trial)
    try:
        resources = TrialResources(workers=args.workers_per_trial, gpus=gpus, cpus=args.cpus_per_trial,
                                   backend=None if args.dist_backend == "auto" else args.dist_backend)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    plans = []
    for bench in _benchmarks(args.benchmarks):
        path = args.search_space or default_space_path(bench)
        space = load_space(path, bench)
        if args.trials is not None or args.epochs is not None or args.final_seeds is not None:
            import dataclasses

            budget = space.budget
            if args.trials is not None:
                if args.trials < 1:
                    raise ConfigError(f"--trials: must be >= 1, got {args.trials}")
                budget = dataclasses.replace(budget, trials=args.trials)
            if args.epochs is not None:
                if args.epochs < 1:
                    raise ConfigError(f"--epochs: must be >= 1, got {args.epochs}")
                budget = dataclasses.replace(budget, epochs=args.epochs)
            if args.final_seeds is not None:
                if args.final_seeds < 1:
                    raise ConfigError(f"--final-seeds: must be >= 1, got {args.final_seeds}")
                budget = dataclasses.replace(budget, final_seeds=args.final_seeds)
            space = dataclasses.replace(space, budget=budget)
            from .search_space import validate_space

            try:
                validate_space(space, bench)
            except ConfigError as exc:
                raise ConfigError(f"{path} with --trials/--epochs/--final-seeds: {exc}") from None
        extra = {"data": {"download": True}} if args.download else {}
        # the CPU threads a worker runs with (Ray sets OMP_NUM_THREADS so): recorded for exact reproduction
        extra["threads"] = max(1, int(resources.cpus / resources.workers))
        plans.append(BenchmarkPlan(bench, space, str(path), base_config(space, bench, extra)))
    if args.artifact_workers < 1:
        raise ConfigError("--artifact-workers: must be >= 1")
    if not args.name or args.name in (".", "..") or "/" in args.name or "\\" in args.name:
        raise ConfigError(f"--name: {args.name!r} is not a study name (one directory name under --storage)")
    storage = Storage.create(args.storage).sub(args.name)
    return StudyPlan(args.name, storage, tuple(plans), resources, args.artifact_workers, args.data_root, args.resume)


def _check_data(plan) -> None:
    """Fail fast (before Ray) when a dataset is missing or unreadable, or a network option or a
    given checkpoint does not fit; downloads happen here with --download."""
    from indistill.data import load_benchmark
    from indistill.pipeline import check_inputs

    for bp in plan.benchmarks:
        data = load_benchmark(bp.benchmark, plan.data_root or bp.base.data.root, download=bp.base.data.download,
                              options=bp.base.data.options)
        check_inputs(bp.base, data)


def _check_gpus(args: argparse.Namespace, plan) -> None:
    """GPUs asked for on a local Ray (no --address): this machine must have them."""
    if not plan.trial_resources.use_gpu or args.address or os.environ.get("RAY_ADDRESS"):
        return  # a cluster's GPUs are known once Ray runs (its autoscaler may add them)
    import math

    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    need = math.ceil(plan.trial_resources.gpus)
    if have < need:
        found = f"only {have}" if have else "no CUDA GPU"
        raise ConfigError(f"--gpus-per-trial: {plan.trial_resources.gpus:g} GPU(s) per trial on a local Ray, but this "
                          f"machine has {found}; use --gpus-per-trial 0, or --address of a cluster with GPUs")


def check_before_ray(args: argparse.Namespace, plan) -> None:
    """Everything a study needs that can be checked without Ray, writing nothing: the study
    directory (a directory, new or resumable with a valid state), GPUs, data, networks, checkpoints."""
    from .runner import check_new_or_resume

    plan.storage.check_writable("--storage")
    check_new_or_resume(plan)
    if plan.resume:
        plan.storage.check_study()
    _check_gpus(args, plan)
    _check_data(plan)


def cmd_run(args: argparse.Namespace) -> int:
    plan = make_plan(args)
    check_before_ray(args, plan)
    import ray

    from .runner import run_study

    address = args.address or os.environ.get("RAY_ADDRESS")
    # the dashboard serves the State API that Ray Train uses to release the placement groups of stopped trials
    ray.init(address=address, log_to_driver=True,
             configure_logging=True, logging_level="WARNING")
    try:
        cluster = ray.cluster_resources()
        if args.gpus_per_trial is None and cluster.get("GPU", 0) >= 1:
            plan = make_plan(args, cluster)
        table = run_study(plan)
    finally:
        ray.shutdown()
    _print_summary(plan.storage.uri, table)
    return 0


def _print_summary(study: str, table) -> None:
    from .results import markdown

    print()
    print(markdown(table) if len(table) else "(no rows yet)")
    print()
    print(f"study directory : {study}")
    print(f"results table   : {study}/results.md (and .csv, .tex, results_per_seed.csv)")
    print(f"report          : {study}/report/report.md (figures: indistill-study report {study})")
    print(f"optuna record   : optuna-dashboard sqlite:///{study}/<benchmark>/search/optuna.db")
    print(f"tensorboard     : indistill-study tensorboard {study}")
    print(f"export configs  : indistill-study export {study} --out best/")


def open_study(study_dir: str):
    """The Storage of an existing study directory with a valid ``study.json``, else a one-line error."""
    from .storage import Storage

    storage = Storage.create(study_dir)
    storage.check_study()
    return storage


def cmd_table(args: argparse.Namespace) -> int:
    storage = open_study(args.study_dir)
    if not storage.exists("results.md"):
        raise ConfigError(f"{args.study_dir}: no results table yet (no benchmark of the study has finished)")
    print(storage.read_text("results.md"))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from indistill.io import check_output_dir

    from .export import export_study

    storage = open_study(args.study_dir)
    check_output_dir(args.out, "--out")
    for path in export_study(storage, args.out):
        print(path)
    return 0


def tensorboard_command(study_dir: str, port: int) -> list[str]:
    return [shutil.which("tensorboard") or "tensorboard", "--logdir", study_dir, "--port", str(port), "--bind_all"]


def cmd_tensorboard(args: argparse.Namespace) -> int:
    storage = open_study(args.study_dir)
    cmd = tensorboard_command(storage.uri, args.port)
    print(" ".join(cmd))
    print("  per-trial curves: <benchmark>/tensorboard/trials/<trial>; Tune's scalars and HParams: ray/<benchmark>-search/")
    if args.start:
        return subprocess.call(cmd)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    storage = open_study(args.study_dir)
    for rel in write_report(storage):
        print(storage.join(rel))
    return 0


COMMANDS = {"run": cmd_run, "table": cmd_table, "export": cmd_export, "report": cmd_report, "tensorboard": cmd_tensorboard}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        argv = ["run"]  # the embedded default: a digits study on a local Ray
    args = parser.parse_args(argv)
    if args.command is None:  # only options such as --debug: the embedded default
        args = parser.parse_args([*argv, "run"])
    # one line and exit 2 for bad input (config, search space, dataset, checkpoint, study directory)
    return run_command(PROG, lambda: COMMANDS[args.command](args), debug=debug_requested(args))


if __name__ == "__main__":
    raise SystemExit(main())
