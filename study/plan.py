"""A study's plan: every benchmark's search space and base config, the trials' resources and the
storage, built from what the user typed and checked before Ray starts (this module imports no Ray)."""
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass

from indistill.config.run import RunConfig
from indistill.common.errors import ConfigError

from .resources import TrialResources
from .storage import STUDY_STATE as STATE
from .search_space import SearchSpace
from .storage import Storage
from .warm_start import WarmStart, for_resume, resolve as resolve_warm_start


@dataclass(frozen=True)
class BenchmarkPlan:
    """One benchmark of a study: its search space and the config every stage starts from."""

    benchmark: str
    space: SearchSpace
    space_path: str
    base: RunConfig
    warm_start: WarmStart | None = None  # --warm-start: the configs the search evaluates first


@dataclass(frozen=True)
class StudyPlan:
    """Everything validated before Ray starts."""

    name: str
    storage: Storage  # the study directory
    benchmarks: tuple[BenchmarkPlan, ...]
    trial_resources: TrialResources
    artifact_workers: int = 1
    resume: bool = False
    verbose: bool = False  # Ray's and Tune's console output, and the runs' log lines, on the console too
    max_concurrent: int | None = None  # --max-concurrent-trials (None: what the cluster can hold)
    gpus_note: str = ""  # why the default --gpus-per-trial is what it is, when the GPUs up now do not say


def final_seeds(bp: BenchmarkPlan) -> list[int]:
    """The student seeds of the final runs: ``budget.final_seeds`` consecutive seeds from the config's."""
    return [bp.base.student_seed + i for i in range(bp.space.budget.final_seeds)]


def final_config(cfg: RunConfig) -> RunConfig:
    """``cfg`` as the final runs train it: evaluated on test once, after training (no per-epoch evaluation)."""
    return dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, eval_every=0))


def _benchmarks(text: str) -> list[str]:
    from indistill.data import BENCHMARKS

    names = BENCHMARKS.names() if text == "all" else [b.strip() for b in text.split(",") if b.strip()]

    for name in names:
        if name not in BENCHMARKS:
            raise ConfigError(f"--benchmarks: unknown benchmark {name!r}; choose from: {', '.join(BENCHMARKS.names())}, all")
    if not names:
        raise ConfigError("--benchmarks: give at least one benchmark")
    return names


#: the run flags that override a search space's budget, by the budget field each sets
BUDGET_FLAGS = {"trials": "--trials", "epochs": "--epochs", "final_seeds": "--final-seeds"}


def make_plan(args: argparse.Namespace, cluster=None, *, remote: bool = False):
    """Validate everything the user typed and build the StudyPlan (no Ray needed). ``cluster``: the
    :class:`~study.resources.ClusterShape` (or resource totals) the default --gpus-per-trial comes
    from (None: before Ray, 0); ``remote``: a cluster joined with --address/$RAY_ADDRESS."""
    from collections.abc import Mapping

    from indistill.engine.configure import with_data_root

    from .resources import ClusterShape, gpus_per_trial
    from .search_space import base_config, default_space_path, load_space

    if isinstance(cluster, Mapping):
        cluster = ClusterShape(up=(cluster,))
    gpus, gpus_note = (args.gpus_per_trial or 0.0, "") if cluster is None else \
        gpus_per_trial(args.gpus_per_trial, cluster, args.workers_per_trial, remote=remote)
    if args.max_concurrent_trials is not None and args.max_concurrent_trials < 1:
        raise ConfigError(f"--max-concurrent-trials: must be >= 1, got {args.max_concurrent_trials}")
    try:
        resources = TrialResources(workers=args.workers_per_trial, gpus=gpus, cpus=args.cpus_per_trial,
                                   backend=None if args.dist_backend == "auto" else args.dist_backend)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    plans = []
    for bench in _benchmarks(args.benchmarks):
        path = args.search_space or default_space_path(bench)
        space = load_space(path, bench)
        given = {field: getattr(args, field) for field in BUDGET_FLAGS if getattr(args, field) is not None}
        if given:
            for field, value in given.items():
                if value < 1:
                    raise ConfigError(f"{BUDGET_FLAGS[field]}: must be >= 1, got {value}")
            space = dataclasses.replace(space, budget=dataclasses.replace(space.budget, **given))
            from .search_space import validate_space

            try:
                validate_space(space, bench)
            except ConfigError as exc:
                raise ConfigError(f"{path} with {'/'.join(BUDGET_FLAGS.values())}: {exc}") from None
        extra = {"data": {"download": True}} if args.download else {}
        # the CPU threads a worker runs with (Ray sets OMP_NUM_THREADS so): recorded for exact reproduction
        extra["threads"] = max(1, int(resources.cpus / resources.workers))
        # the data root, resolved here once: every worker on every node reads the driver's choice
        base = with_data_root(base_config(space, bench, extra), args.data_root)
        plans.append(BenchmarkPlan(bench, space, str(path), base))
    if args.artifact_workers < 1:
        raise ConfigError("--artifact-workers: must be >= 1")
    if not args.name or args.name in (".", "..") or "/" in args.name or "\\" in args.name:
        raise ConfigError(f"--name: {args.name!r} is not a study name (one directory name under --storage)")
    storage = Storage.create(args.storage).sub(args.name)
    plans = [dataclasses.replace(bp, warm_start=_warm_start(args, storage, bp)) for bp in plans]
    return StudyPlan(args.name, storage, tuple(plans), resources, args.artifact_workers, args.resume, verbose=args.verbose,
                     max_concurrent=args.max_concurrent_trials, gpus_note=gpus_note)


def _warm_start(args: argparse.Namespace, storage: Storage, bp: BenchmarkPlan) -> WarmStart | None:
    """``--warm-start``'s configs for ``bp`` (:func:`study.warm_start.resolve`); a resumed study's are
    the ones it was started with (:func:`study.warm_start.for_resume`)."""
    sources, from_benchmark = args.warm_start or [], args.warm_start_benchmark
    if from_benchmark and not sources:
        raise ConfigError("--warm-start-benchmark: needs --warm-start SOURCE (the study to take the configs from)")
    if args.resume and storage.exists(STATE):
        return for_resume(storage, bp.benchmark, sources, from_benchmark)
    return resolve_warm_start(sources, bp.benchmark, from_benchmark, bp.space, bp.base) if sources else None


def _check_data(plan) -> None:
    """Fail fast (before Ray) when a dataset is missing or unreadable, or a network option or a
    given checkpoint does not fit; downloads happen here with --download."""
    from indistill.data import load_benchmark
    from indistill.engine.pipeline import check_inputs

    for bp in plan.benchmarks:
        data = load_benchmark(bp.benchmark, bp.base.data.root, download=bp.base.data.download,
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
    directory (a directory, new or resumable with a valid state, no other live driver), GPUs, data,
    networks, checkpoints."""
    from .lease import check_no_live_driver, lease_seconds
    from .resources import state_sync_period
    from .resume import check_new_or_resume

    state_sync_period()  # a malformed $INDISTILL_STATE_SYNC_S
    lease_seconds()  # a malformed $INDISTILL_LEASE_S
    plan.storage.check_writable("--storage")
    check_no_live_driver(plan.storage)  # one driver per study: another one drives it now
    check_new_or_resume(plan)  # a resumed study: its state, benchmarks and inputs
    _check_gpus(args, plan)
    _check_data(plan)

