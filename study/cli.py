"""The ``indistill-study`` command: a Ray Tune + Optuna study of InDistill, its table, TensorBoard and export."""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from indistill.common.clihelp import COMMON_ENVIRONMENT, add_command, command_parser, environment_epilog, parse_command
from indistill.common.errors import add_debug_flag, debug_requested, run_command
from indistill.common.errors import ConfigError

from .plan import StudyPlan, check_before_ray, final_seeds, make_plan
from .lease import LEASE_ENV
from .resources import PLACEMENT_TIMEOUT_ENV, REPORT_POLL_ENV, STATE_SYNC_ENV
from .stopping import CONNECT_TIMEOUT_S
from .tensorboard_server import LOCALHOST

if TYPE_CHECKING:
    from .resources import Concurrency

PROG = "indistill-study"

DESCRIPTION = """\
indistill-study: a Ray Tune + Optuna study of InDistill. "run" prepares each benchmark's teacher and
auxiliary, searches the student's curriculum and pruning, retrains the best config and the baselines
with several seeds and writes the results table; the other commands read a study directory.
Start with: indistill-study run (the embedded digits study on a local Ray, CPU is fine)."""

#: the environment variables the study reads (and the libraries it drives), for the --help epilog
ENVIRONMENT: tuple[tuple[str, str], ...] = (
    ("RAY_ADDRESS", "the Ray cluster to join when --address is not given (else a local Ray)"),
    *COMMON_ENVIRONMENT,
    (REPORT_POLL_ENV[0], f"Ray Train's report poll in seconds; the study sets {REPORT_POLL_ENV[1]} unless it is set"),
    (PLACEMENT_TIMEOUT_ENV[0], f"read by Ray Train: seconds a run may wait for a node to host its workers; the study "
                               f"sets {PLACEMENT_TIMEOUT_ENV[1]} unless it is set, then fails the run in one line"),
    ("TUNE_GLOBAL_CHECKPOINT_S", "read by Ray Tune: seconds between snapshots of the search's state (--resume)"),
    ("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "read by Ray Tune; the study sets 1 unless it is set: Tune writes no "
                                           "TensorBoard files of its own (0 brings them back, under ray/)"),
    (STATE_SYNC_ENV[0], f"on s3:// --storage, seconds between uploads of that state (default {STATE_SYNC_ENV[1]})"),
    (LEASE_ENV[0], f"seconds a driver's lease on its study lasts without renewal (default {LEASE_ENV[1]}): "
                   "a second driver of a live study stops; a killed driver's lease expires after it"),
    ("AWS_ENDPOINT_URL", "read by pyarrow for s3:// --storage: the S3 endpoint (e.g. a MinIO server)"),
    ("AWS_ACCESS_KEY_ID", "read by pyarrow for s3:// --storage: credentials (else ~/.aws, or the instance's role)"),
    ("AWS_SECRET_ACCESS_KEY", "read by pyarrow for s3:// --storage: credentials, with AWS_ACCESS_KEY_ID"),
    ("AWS_DEFAULT_REGION", "read by pyarrow for s3:// --storage: the bucket's region"),
)
EPILOG = environment_epilog(ENVIRONMENT)


def build_parser() -> argparse.ArgumentParser:
    from indistill.data import BENCHMARKS

    from .search_space import packaged_spaces_text

    parser, sub = command_parser(PROG, DESCRIPTION, EPILOG)

    run = add_command(sub, "run", "run (or --resume) a study; with no options: the embedded digits study", epilog=EPILOG)
    run.add_argument("--benchmarks", default="digits", help=f"comma-separated benchmarks, or 'all' ({','.join(BENCHMARKS)})")
    run.add_argument("--search-space", type=Path, help="search-space YAML (default: <benchmark>.yaml of the packaged "
                     "search spaces, else their default.yaml; they are a checkout's search_spaces/, installed as the "
                     f"package study.search_spaces, here: {packaged_spaces_text()})")
    run.add_argument("--trials", type=int, help="how many trials Optuna proposes per benchmark "
                     "(default: the search space's budget.trials)")
    run.add_argument("--epochs", type=int, help="the student epochs of every trial and of every final student row; "
                     "their lr drops move with it, MKT keeps its recipe's length (default: the search space's "
                     "budget.epochs, else the benchmark config's student epochs)")
    run.add_argument("--final-seeds", type=int, help="student seeds of every row of the final table "
                     "(default: the search space's budget.final_seeds, 3)")
    run.add_argument("--storage", default="studies", help="where studies live: a path (NFS for multi-node) or s3://bucket/prefix")
    run.add_argument("--name", default="default", help="the study's name: its directory under --storage")
    run.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers (DDP) per trial")
    run.add_argument("--gpus-per-trial", type=float, help="GPUs per trial, fractional for one-worker trials (default: 0.25 "
                     "for one-worker trials and one per worker for DDP trials when the cluster has GPUs or its "
                     "autoscaler can start GPU nodes; else 0, but on a cluster joined with --address whose node types "
                     "are unknown an error asking for it)")
    run.add_argument("--max-concurrent-trials", type=int, metavar="N", help="how many trials (and final runs) of a "
                     "benchmark run at once (default: as many as fit the nodes the cluster has and those its "
                     "autoscaler can start, see docs/cluster.md)")
    run.add_argument("--cpus-per-trial", type=float, default=1.0, help="CPUs per trial")
    run.add_argument("--dist-backend", choices=("auto", "nccl", "gloo"), default="auto",
                     help="torch.distributed backend of the Ray Train runs; auto: nccl when trials use GPUs, else gloo")
    run.add_argument("--artifact-workers", type=int, default=1, help="Ray Train workers for the teacher/auxiliary/pruning run")
    run.add_argument("--address", help="Ray cluster to join, 'auto' or host:port (default: $RAY_ADDRESS, else a local Ray)")
    run.add_argument("--connect-timeout", type=_seconds, default=CONNECT_TIMEOUT_S, metavar="S",
                     help="seconds Ray may take to start, or to answer at --address, before the study stops with "
                     f"one line; nothing listening at --address fails at once (default: {CONNECT_TIMEOUT_S})")
    run.add_argument("--data-root", help="dataset root (default: the search space's fixed data.root, else $INDISTILL_DATA, else ~/.cache/indistill/data)")
    run.add_argument("--download", action="store_true", help="download cifar10/cifar100/fashionmnist with torchvision before starting")
    run.add_argument("--warm-start", action="append", metavar="SOURCE", help="a study whose search has finished (a "
                     "directory or s3:// URI; repeatable): for each benchmark, its best configs of the same benchmark (the search "
                     "space's budget.warm_start, default 3; a multi-objective source: its Pareto set) are the first "
                     "trials the search evaluates, counted in budget.trials; a config that does not fit the search "
                     "space is skipped with a notice (default: none, the sampler proposes every trial)")
    run.add_argument("--warm-start-benchmark", metavar="NAME", help="take the --warm-start configs from this "
                     "benchmark of the source (default: the benchmark itself)")
    run.add_argument("--resume", action="store_true", help="continue an interrupted study with the same --storage and --name")
    run.add_argument("--dry-run", action="store_true", help="check everything run checks before Ray starts (configs, "
                     "search spaces, data, storage, resources, the --resume state), print the resolved plan and exit: "
                     "Ray is not started and nothing is written to the study directory (--download still downloads)")
    run.add_argument("--verbose", action="store_true", help="also show Ray's and Tune's own console output and every "
                     "run's log lines (they are always in the study's log files); no live panel")

    table = add_command(sub, "table", "print a study's results table (all columns)")
    table.add_argument("study_dir", metavar="STUDY_DIR", help="the study directory (a path or s3:// URI)")
    export = add_command(sub, "export", "write the best configs, student checkpoints and tables")
    export.add_argument("study_dir", metavar="STUDY_DIR", help="the study directory (a path or s3:// URI)")
    export.add_argument("--out", type=Path, required=True, help="the directory to write them to (required)")
    report = add_command(sub, "report", "write the study's figures (PNG) and report.md under STUDY_DIR/report/")
    report.add_argument("study_dir", metavar="STUDY_DIR", help="the study directory (a path or s3:// URI)")
    report.add_argument("--compare", metavar="OTHER", help="another study directory (a path or s3:// URI): for each "
                        "benchmark both have, the curves of the best val mAP so far and of the expected best of n "
                        "trials of both studies side by side, such as a cold and a warm study (default: none)")
    tb = add_command(sub, "tensorboard", "print (or --start) the TensorBoard command for a study")
    tb.add_argument("study_dir", metavar="STUDY_DIR", help="the study directory (a path or s3:// URI)")
    tb.add_argument("--start", action="store_true", help="start TensorBoard (this environment's) instead of printing the command")
    tb.add_argument("--port", type=_port, default=6006, help="TCP port, 1-65535")
    tb.add_argument("--host", type=_host, default=LOCALHOST, help="address to bind; 0.0.0.0 serves every network interface")
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


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return seconds


def _host(text: str) -> str:
    if not text or any(c.isspace() or c == "/" for c in text):
        raise argparse.ArgumentTypeError(f"expected an address or host name to bind, e.g. {LOCALHOST} or 0.0.0.0, got {text!r}")
    return text


def dry_run(args: argparse.Namespace, plan: StudyPlan) -> int:
    """``run --dry-run``, after every check ``run`` makes before Ray: print the plan it would follow
    (:func:`plan_lines`) and return 0, without starting Ray or writing to the study directory. On a
    local Ray the default --gpus-per-trial and the trials at once come from this machine (as Ray
    would see it); a cluster's nodes are only known once the study joins it."""
    from .resources import Concurrency, concurrency, this_machine_shape

    address = args.address or os.environ.get("RAY_ADDRESS")
    if address:
        at_once = None if plan.max_concurrent is None else Concurrency(plan.max_concurrent, "--max-concurrent-trials")
    else:
        shape = this_machine_shape()
        if args.gpus_per_trial is None:  # as cmd_run does once Ray runs
            plan = make_plan(args, shape)
        at_once = concurrency(plan.trial_resources, shape, plan.max_concurrent)
    gpus_later = bool(address) and args.gpus_per_trial is None
    print("\n".join(plan_lines(plan, at_once, address=address, gpus_later=gpus_later)), flush=True)
    return 0


def plan_lines(plan: StudyPlan, at_once: Concurrency | None, *, address: str | None = None,
               gpus_later: bool = False) -> list[str]:
    """The plan of a study as plain text lines (what ``run --dry-run`` prints and users paste into
    issues). ``at_once``: the :class:`~study.resources.Concurrency` of every benchmark's trials and
    final runs, None when it is decided on joining the cluster at ``address``; ``gpus_later``: so is
    the default --gpus-per-trial."""
    from indistill.data import BENCHMARKS

    from .resources import counted
    from .search_space import shortest_curriculum
    from .rows import final_rows
    from .warm_start import summary as warm_summary

    later = "decided when the study joins the cluster"
    res = plan.trial_resources
    gpus = f"GPUs {later} (no --gpus-per-trial)" if gpus_later else counted(res.gpus / res.workers, "GPU")
    backend = res.backend or ("auto: nccl if trials get GPUs, else gloo" if gpus_later else
                              f"{'nccl' if res.use_gpu else 'gloo'} (auto)")
    lines = [f"{PROG} run --dry-run: every check before Ray passed; Ray was not started, nothing was written",
             f"study          : {plan.name} ({'resumed: its state and inputs match' if plan.resume else 'new'})",
             f"storage        : {plan.storage.uri}",
             f"ray            : {f'the cluster at {address}' if address else 'a local Ray on this machine'}",
             f"benchmarks     : {', '.join(bp.benchmark for bp in plan.benchmarks)}"
             + (" (at once, sharing the cluster)" if len(plan.benchmarks) > 1 else "")]
    for bp in plan.benchmarks:
        budget, base = bp.space.budget, bp.base
        fixed = ", ".join(_leaves(bp.space.fixed))
        rows = final_rows(base, base)
        own = [f"{label} keeps its recipe's {base.student.schedule(method)[0]}" for label, _cfg, method in rows
               if base.student.schedule(method)[0] != base.student.epochs]
        if budget.early_stopping:
            max_t = base.student.epochs - shortest_curriculum(bp.space)
            stopping = (f"ASHA on embedding-phase epochs (grace period {min(budget.grace_period, max_t)}, "
                        f"reduction factor {budget.reduction_factor}, at most {max_t} epochs)")
        else:
            stopping = "off: every trial runs its whole budget"
        width = bp.space.student.width
        if budget.early_stopping and width is not None:
            stopping += "; one ASHA per student width"
        seeds = final_seeds(bp)
        lines += [f"{bp.benchmark}:",
                  f"  config       : {BENCHMARKS.check(bp.benchmark, 'benchmark').default_config.resolve()}"
                  + (f" with the search space's fixed {fixed}" if fixed else ""),
                  f"  search space : {Path(bp.space_path).expanduser().resolve()}",
                  f"  data root    : {base.data.root}",
                  f"  trials       : {budget.trials}" + (f", {at_once.text(budget.trials, 'trials')[0]} at a time"
                                                        if at_once else ""),
                  f"  epochs       : {base.student.epochs} student epochs per trial and per final row"
                  + (f" ({', '.join(own)})" if own else ""),
                  f"  early stop   : {stopping}",
                  *([f"  widths       : {_widths_text(bp)}"] if width is not None else []),
                  *([f"  objectives   : {_objectives_text(bp)}"] if bp.space.size_objective else []),
                  *([f"  warm start   : {warm_summary(bp.warm_start)}"] if bp.warm_start else []),
                  f"  final rows   : {', '.join(label for label, _cfg, _method in rows)}"
                  + (f", at each of up to {budget.frontier_points} widths of the Pareto front" if bp.space.size_objective
                     else ", at the best trial's width" if width is not None else ""),
                  f"  final seeds  : {seeds}" + (f", {at_once.text(len(seeds), 'seeds')[0]} at a time" if at_once else "")]
    lines += [f"resources      : per trial {counted(res.workers, 'worker')}, each {counted(res.cpus / res.workers, 'CPU')} "
              f"and {gpus}; backend {backend}",
              f"artifact run   : {counted(plan.artifact_workers, 'worker')} (teacher, auxiliary, pruning)",
              "concurrency    : " + (f"{at_once.count} trials (and final runs) of each benchmark at a time: {at_once.reason}"
                                      if at_once else f"{later} (its nodes and the node types its autoscaler may start)")]
    if plan.gpus_note:
        lines.append(f"note           : {plan.gpus_note}")
    return lines


def _widths_text(bp) -> str:
    """The student widths a frontier space samples, and the kept channels the artifact run computes for them."""
    from .search_space import sampled_widths

    width, widths = bp.space.student.width, sampled_widths(bp.space, bp.base)
    drawn = (", ".join(f"{w:g}" for w in width) if isinstance(width, tuple)
             else f"{width.low:g} to {width.high:g} (uniform; {len(widths)} distinct students)")
    return f"{drawn} x the student's channels; the kept channels of each computed once, by the artifact run"


def _objectives_text(bp) -> str:
    from .names import SIZE_TEXT

    size = bp.space.size_objective
    return f"maximise val mAP, minimise the student's {SIZE_TEXT[size]} (a Pareto front; Optuna's TPESampler, MOTPE)"


def _leaves(tree: object, prefix: str = "") -> list[str]:
    """The dotted keys of a nested mapping's leaves (``data.root``)."""
    if not isinstance(tree, dict) or not tree:
        return [prefix.rstrip(".")] if prefix else []
    return [leaf for key, value in tree.items() for leaf in _leaves(value, f"{prefix}{key}.")]


def cmd_run(args: argparse.Namespace) -> int:
    plan = make_plan(args)
    check_before_ray(args, plan)
    from .warm_start import notices

    for bp in plan.benchmarks:
        for line in notices(bp.benchmark, bp.warm_start) if bp.warm_start else ():
            print(f"{PROG}: notice: {line}", file=sys.stderr)
    if args.dry_run:
        return dry_run(args, plan)
    from .console import upload_driver_log
    from .lease import Lease
    from .stopping import check_address, supervise

    address = args.address or os.environ.get("RAY_ADDRESS")
    check_address(address)  # nobody listening there: one line in seconds, before Ray starts
    with Lease(plan.storage) as lease:  # one driver per study: a second one stops here
        def on_stop() -> None:  # a driver stopped by a signal leaves its log where the study is
            try:
                upload_driver_log()
            finally:
                lease.release()

        table, failed, logs, plan = supervise(lambda connected: _drive(args, plan, address, connected),
                                              connect_timeout=args.connect_timeout, address=address,
                                              on_stop=on_stop, halt_when=lease.lost, prog=PROG)
    _print_summary(plan.storage.uri, table)
    if logs:
        print(f"Ray's own logs  : {logs}")
    if failed is not None:
        if debug_requested(args):
            import traceback

            traceback.print_exception(failed.__cause__, file=sys.stderr)
        print(f"{PROG}: failed: {failed}", file=sys.stderr)
        return 1
    return 0


def _drive(args: argparse.Namespace, plan: StudyPlan, address: str | None, connected) -> tuple:
    """Ray up (``connected`` set once it is), the study, Ray down: (table, StudyFailed or None,
    Ray's logs directory, the plan as run)."""
    import ray

    from .console import driver_log
    from .ray_runs import init_ray
    from .runner import StudyFailed, run_study

    # Ray's console output (workers' and actors' lines, raylet warnings) only with --verbose: the
    # study's own progress display and its log files say what happens
    with contextlib.nullcontext(sys.stdout) if args.verbose else driver_log(plan.storage) as console:
        init_ray(address, log_to_driver=args.verbose, configure_logging=True, logging_level="WARNING")
        connected.set()
        try:
            if args.gpus_per_trial is None:  # from the GPUs up now or those the autoscaler can start
                from .resources import read_cluster_shape

                plan = make_plan(args, read_cluster_shape(), remote=bool(address))
            failed = None
            try:
                table = run_study(plan, console, live=console.isatty() and not args.verbose)
            except StudyFailed as exc:  # the table holds what finished; the failure is the last line
                table, failed = exc.table, exc
            logs = _ray_logs_dir()
        finally:
            ray.shutdown()
    return table, failed, logs, plan


def _ray_logs_dir() -> str | None:
    """Where Ray keeps this session's own logs on this machine (workers', actors', raylet's)."""
    try:
        import ray

        return ray._private.worker._global_node.get_logs_dir_path()  # no public API names it
    except Exception:
        return None


def _print_summary(study: str, table) -> None:
    """The table's key columns (fits 100 columns), then where everything is."""
    from .results import summary

    print()
    print("\n".join(summary(table)))
    print()
    print(f"study directory : {study}")
    print(f"results table   : {study}/results.md (all columns; also .csv, .tex, results_per_seed.csv)")
    print(f"report          : {study}/report/report.md (figures: indistill-study report {study})")
    print(f"optuna record   : optuna-dashboard sqlite:///{study}/<benchmark>/search/optuna.db")
    print(f"tensorboard     : indistill-study tensorboard {study} --start")
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
    from indistill.common.io import check_output_dir

    from .export import export_study

    storage = open_study(args.study_dir)
    check_output_dir(args.out, "--out")
    for path in export_study(storage, args.out):
        print(path)
    return 0


def cmd_tensorboard(args: argparse.Namespace) -> int:
    storage = open_study(args.study_dir)
    from .tensorboard_server import TENSORBOARD_LOGS, check_bindable, tensorboard_command, tensorboard_url

    cmd = tensorboard_command(storage.uri, args.port, args.host)
    if not args.start:
        print(shlex.join(cmd))
        print(TENSORBOARD_LOGS)
        return 0
    check_bindable(args.host, args.port)
    print(f"TensorBoard of {storage.uri} at {tensorboard_url(args.host, args.port)} (Ctrl-C stops it)")
    print(TENSORBOARD_LOGS, flush=True)
    os.execv(sys.executable, cmd)  # TensorBoard takes this process's place: Ctrl-C and signals reach it directly


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    storage = open_study(args.study_dir)
    other = open_study(args.compare) if args.compare else None
    for rel in write_report(storage, other):
        print(storage.join(rel))
    return 0


COMMANDS = {"run": cmd_run, "table": cmd_table, "export": cmd_export, "report": cmd_report, "tensorboard": cmd_tensorboard}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_command(build_parser(), argv)
    if args is None:
        return 0
    # one line and exit 2 for bad input (config, search space, dataset, checkpoint, study directory)
    return run_command(PROG, lambda: COMMANDS[args.command](args), debug=debug_requested(args))


if __name__ == "__main__":
    raise SystemExit(main())
