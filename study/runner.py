"""A study: for each benchmark, artifacts -> Tune search -> final retrain -> results table."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pandas as pd
import ray
import ray.train
from ray import tune
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from indistill.config import RunConfig, config_to_dict
from indistill.io import atomic_write_bytes, stable_hash
from indistill.schema import ConfigError

from .resources import REPORT_POLL_ENV, TrialResources
from .results import build_table, summarize_trials, write_study_table
from .optuna_record import OPTUNA_FILE, RecordedOptunaSearch, optuna_storage
from .search_space import SearchSpace, apply_params, base_config, define_by_run, shortest_curriculum
from .storage import Storage
from .workers import EMBEDDING_EPOCH, NETWORKS_FILE, OBJECTIVE, final_seed, prepare_artifacts, read_placements, run_trial

STATE = "study.json"
QUIET = ray.train.LoggingConfig(log_level="WARNING")  # our own per-epoch lines are the progress output


def _fit(fn: Callable[[dict], None], config: dict, resources: TrialResources, name: str, storage_path: str,
         max_failures: int, **run_options) -> None:
    """One Ray Train run of ``fn`` on ``resources``, quiet, with the short report poll."""
    os.environ.setdefault(*REPORT_POLL_ENV)
    TorchTrainer(
        fn, train_loop_config=config, scaling_config=_scaling(resources),
        torch_config=TorchConfig(backend=resources.backend),
        run_config=ray.train.RunConfig(name=name, storage_path=storage_path, logging_config=QUIET,
                                       failure_config=ray.train.FailureConfig(max_failures=max_failures), **run_options),
    ).fit()


@dataclass(frozen=True)
class BenchmarkPlan:
    """One benchmark of a study: its search space and the config every stage starts from."""

    benchmark: str
    space: SearchSpace
    space_path: str
    base: RunConfig


@dataclass(frozen=True)
class StudyPlan:
    """Everything validated before Ray starts."""

    name: str
    storage: Storage  # the study directory
    benchmarks: tuple[BenchmarkPlan, ...]
    trial_resources: TrialResources
    artifact_workers: int = 1
    data_root: str | None = None
    resume: bool = False
    faults: dict = field(default_factory=dict)  # sampled criterion -> "nan" | "error": fault injection for tests


@dataclass(frozen=True)
class TrialSpec:
    """Constants a trial needs, passed through the object store."""

    plan: BenchmarkPlan
    storage: str
    ray_storage: str
    resources: TrialResources
    data_root: str | None
    faults: dict


def _ray_storage(storage: Storage) -> str:
    return storage.join("ray")


def _scaling(resources: TrialResources) -> ray.train.ScalingConfig:
    return ray.train.ScalingConfig(
        num_workers=resources.workers, use_gpu=resources.use_gpu, resources_per_worker=resources.per_worker()
    )


def tune_trial(params: dict, spec: TrialSpec) -> None:
    """The Tune function trainable: one Ray Train run of the student stage for ``params``."""
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    cfg = apply_params(spec.plan.base, params, spec.plan.space)
    config = {
        "cfg": config_to_dict(cfg), "storage": spec.storage, "trial_id": trial_id,
        "data_root": spec.data_root, "fail_with": spec.faults.get(cfg.prune.criterion),
        "started_at": time.time(),  # wall-clock start of the trial, for its Ray overhead
    }
    # named after the trial (no timestamp): a retried trial resumes its own checkpoints
    _fit(run_trial, config, spec.resources, f"{spec.plan.benchmark}-trial-{trial_id}", spec.ray_storage,
         max_failures=0, callbacks=[TuneReportCallback()], checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2))


def _train_run(fn: Callable[[dict], None], name: str, config: dict, plan: StudyPlan, workers: int) -> None:
    res = dataclasses.replace(plan.trial_resources, workers=workers,
                              gpus=(float(workers) if plan.trial_resources.use_gpu else 0.0),
                              cpus=plan.trial_resources.cpus / plan.trial_resources.workers * workers)
    _fit(fn, config, res, name, _ray_storage(plan.storage), max_failures=1)


def run_artifacts(plan: StudyPlan, bp: BenchmarkPlan, log: Callable[[str], None]) -> None:
    if plan.storage.exists(f"{bp.benchmark}/{NETWORKS_FILE}"):
        log(f"[study] {bp.benchmark}: artifacts already prepared")
        return
    log(f"[study] {bp.benchmark}: preparing artifacts (teacher, auxiliary and pruning, without and with the val "
        f"images) with {plan.artifact_workers} worker(s)")
    _train_run(prepare_artifacts, f"{bp.benchmark}-artifacts",
               {"cfg": config_to_dict(_final_config(bp.base)), "storage": plan.storage.uri, "data_root": plan.data_root},
               plan, plan.artifact_workers)


def _early_stopping(bp: BenchmarkPlan):
    """ASHA on embedding-phase epochs: no trial is judged inside its curriculum, and rungs compare
    trials after equal numbers of embedding epochs (``max_t``: the shortest curriculum's)."""
    budget = bp.space.budget
    if not budget.early_stopping:
        return tune.schedulers.FIFOScheduler()
    max_t = bp.base.student.epochs - shortest_curriculum(bp.space)
    return ASHAScheduler(time_attr=EMBEDDING_EPOCH, metric=OBJECTIVE, mode="max", max_t=max_t,
                         grace_period=min(budget.grace_period, max_t), reduction_factor=budget.reduction_factor)


def _optuna_db(plan: StudyPlan, bp: BenchmarkPlan) -> Path:
    """Where this benchmark's Optuna study is written: in the study directory, or a local mirror of it."""
    rel = f"{bp.benchmark}/search"
    if plan.storage.is_local:
        return plan.storage.local_path() / rel / OPTUNA_FILE
    mirror = Path.home() / ".cache" / "indistill" / "optuna" / stable_hash(plan.storage.uri) / bp.benchmark
    if plan.storage.exists(f"{rel}/{OPTUNA_FILE}") and not (mirror / OPTUNA_FILE).exists():
        atomic_write_bytes(mirror / OPTUNA_FILE, plan.storage.read_bytes(f"{rel}/{OPTUNA_FILE}"))
    return mirror / OPTUNA_FILE


def run_search(plan: StudyPlan, bp: BenchmarkPlan, log: Callable[[str], None], cluster: dict) -> tune.ResultGrid:
    budget = bp.space.budget
    optuna_db = _optuna_db(plan, bp)
    exp_name = f"{bp.benchmark}-search"
    exp_path = plan.storage.join("ray", exp_name)
    spec = TrialSpec(bp, plan.storage.uri, _ray_storage(plan.storage), plan.trial_resources, plan.data_root, plan.faults)
    # the trial function only launches a Ray Train run, whose workers hold the CPUs/GPUs; a
    # placement group may not be empty, so the driver reserves a sliver of memory instead
    trainable = tune.with_resources(tune.with_parameters(tune_trial, spec=spec), {"CPU": 0, "memory": 32 * 1024**2})
    if plan.resume and tune.Tuner.can_restore(exp_path):
        log(f"[study] {bp.benchmark}: resuming the search from {exp_path}")
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, resume_errored=False)
    else:
        concurrent = plan.trial_resources.max_concurrent(cluster)
        log(f"[study] {bp.benchmark}: searching {budget.trials} trials, {concurrent} at a time "
            f"({plan.trial_resources.per_worker()} per worker x {plan.trial_resources.workers})")
        import optuna

        searcher = RecordedOptunaSearch(space=define_by_run(bp.space), metric=OBJECTIVE, mode="max",
                                        sampler=optuna.samplers.TPESampler(seed=budget.seed),
                                        study_name=bp.benchmark, storage=optuna_storage(optuna_db),
                                        full_epochs=bp.base.student.epochs)
        scheduler = _early_stopping(bp)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                        num_samples=budget.trials, max_concurrent_trials=concurrent),
            run_config=tune.RunConfig(name=exp_name, storage_path=_ray_storage(plan.storage),
                                      failure_config=tune.FailureConfig(max_failures=budget.max_failures)),
        )
    grid = tuner.fit()
    if not plan.storage.is_local:
        plan.storage.upload(optuna_db.parent, f"{bp.benchmark}/search")
    return grid


@dataclass(frozen=True)
class FinalSpec:
    """Constants of the final runs of one benchmark, passed through the object store."""

    benchmark: str
    config: dict
    ray_storage: str
    resources: TrialResources


def final_seeds(bp: BenchmarkPlan) -> list[int]:
    """The student seeds of the final runs: ``budget.final_seeds`` consecutive seeds from the config's."""
    return [bp.base.student_seed + i for i in range(bp.space.budget.final_seeds)]


def final_trial(params: dict, spec: FinalSpec) -> None:
    """The Tune function trainable of one final seed: one Ray Train run of ``final_seed``."""
    _fit(final_seed, {**spec.config, "seed": params["seed"]}, spec.resources,
         f"{spec.benchmark}-final-seed{params['seed']}", spec.ray_storage, max_failures=1)


def run_final(plan: StudyPlan, bp: BenchmarkPlan, best: RunConfig, log: Callable[[str], None], cluster: dict) -> None:
    """Every student row (baselines and the tuned InDistill) once per final seed, the seeds as
    concurrent Ray Train runs; finished seeds are not redone."""
    seeds = final_seeds(bp)
    todo = [s for s in seeds if not plan.storage.exists(f"{bp.benchmark}/final/seed-{s}.json")]
    if not todo:
        log(f"[study] {bp.benchmark}: final runs already done")
        return
    concurrent = min(len(todo), plan.trial_resources.max_concurrent(cluster))
    log(f"[study] {bp.benchmark}: final runs on the full train split, evaluated on test: seeds {todo}, "
        f"{concurrent} at a time (every student row per seed; teacher and auxiliary shared)")
    config = {"cfg": config_to_dict(_final_config(best)), "base": config_to_dict(_final_config(bp.base)),
              "storage": plan.storage.uri, "data_root": plan.data_root, "export_seed": seeds[0]}
    trainable = tune.with_resources(tune.with_parameters(
        final_trial, spec=FinalSpec(bp.benchmark, config, _ray_storage(plan.storage), plan.trial_resources)),
                                    {"CPU": 0, "memory": 32 * 1024**2})
    grid = tune.Tuner(
        trainable, param_space={"seed": tune.grid_search(todo)},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(name=f"{bp.benchmark}-final", storage_path=_ray_storage(plan.storage),
                                  failure_config=tune.FailureConfig(max_failures=1)),
    ).fit()
    for result in grid:
        if result.error is not None:
            log(f"[study] {bp.benchmark}: a final run failed: {str(result.error).strip().splitlines()[-1][:300]}")


def _final_config(cfg: RunConfig) -> RunConfig:
    # evaluated on test once, after training: no per-epoch evaluation
    return dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, eval_every=0))


def check_new_or_resume(plan: StudyPlan) -> None:
    exists = plan.storage.exists(STATE)
    if exists and not plan.resume:
        raise ConfigError(f"--name: study {plan.storage.uri} already exists; add --resume to continue it or pick another --name")
    if plan.resume and not exists:
        raise ConfigError(f"--resume: no study at {plan.storage.uri} to resume")


def run_study(plan: StudyPlan, log: Callable[[str], None] = print) -> pd.DataFrame:
    """Run (or resume) every benchmark of the plan; returns the results table. Ray must be initialised."""
    t0 = time.perf_counter()
    state = plan.storage.read_json(STATE) if plan.storage.exists(STATE) else {
        "name": plan.name, "benchmarks": [b.benchmark for b in plan.benchmarks], "created": time.time(),
        "space_files": {b.benchmark: b.space_path for b in plan.benchmarks},
    }
    plan.storage.write_json(STATE, state)
    cluster = ray.cluster_resources()
    for bp in plan.benchmarks:
        plan.storage.write_text(f"{bp.benchmark}/base_config.yaml", _yaml(config_to_dict(bp.base)))
        phases = _PhaseTimer(plan.storage, f"{bp.benchmark}/phases.json")
        with phases("artifacts"):
            run_artifacts(plan, bp, log)
        if not plan.storage.exists(f"{bp.benchmark}/search/trials.json"):
            with phases("search"):
                grid = run_search(plan, bp, log, cluster)
            trials = summarize_trials(grid, bp)
            placements = read_placements(plan.storage, bp.benchmark)
            for trial in trials["trials"]:
                trial["placement"] = placements.get(trial["trial_id"], [])
            trials["max_concurrent"] = plan.trial_resources.max_concurrent(cluster)
            plan.storage.write_json(f"{bp.benchmark}/search/trials.json", trials)
        trials = plan.storage.read_json(f"{bp.benchmark}/search/trials.json")
        if trials["best"] is None:
            log(f"[study] {bp.benchmark}: no trial finished; skipping the final retrain")
            continue
        best_cfg = apply_params(bp.base, trials["best"]["params"], bp.space)
        plan.storage.write_text(f"{bp.benchmark}/search/best_config.yaml", _yaml(config_to_dict(best_cfg)))
        with phases("final"):
            run_final(plan, bp, best_cfg, log, cluster)
    table, per_seed = build_table(plan.storage, [b.benchmark for b in plan.benchmarks])
    write_study_table(plan.storage, table, per_seed)
    from .report import write_report

    write_report(plan.storage)
    log(f"[study] done in {time.perf_counter() - t0:.0f}s")
    return table


class _PhaseTimer:
    """Wall seconds per study phase, accumulated across resumes in a JSON file."""

    def __init__(self, storage: Storage, rel: str) -> None:
        self.storage, self.rel = storage, rel

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        times = self.storage.read_json(self.rel) if self.storage.exists(self.rel) else {}
        times[f"{phase}_s"] = times.get(f"{phase}_s", 0.0) + time.perf_counter() - t0
        self.storage.write_json(self.rel, times)


def _yaml(obj) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)
