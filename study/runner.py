"""A study: for each benchmark, artifacts -> Tune search -> final retrain -> results table."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TextIO

import pandas as pd
import ray
import ray.train
from ray import tune
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from indistill.config import RunConfig, config_to_dict
from indistill.errors import error_reason
from indistill.pipeline import artifact_stages
from indistill.io import atomic_write_bytes, stable_hash
from indistill.schema import ConfigError, to_dict

from .progress import STUDY_LOG, BenchmarkStatus, Progress, TrialEvents, attach, format_duration
from .resources import REPORT_POLL_ENV, STATE_SYNC_ENV, Concurrency, TrialResources, concurrency, read_cluster_shape
from .results import build_table, summarize_trials, write_study_table
from .optuna_record import OPTUNA_FILE, RecordedOptunaSearch, optuna_storage
from .search_space import SearchSpace, apply_params, define_by_run, shortest_curriculum
from .storage import Storage
from .tblog import AUTO_LOGGERS_ENV, TrialNamer, tune_loggers, write_hparams_experiment
from .names import EMBEDDING_EPOCH, NETWORKS_FILE, OBJECTIVE
from .placement import read_placements
from .rows import with_searched
from .workers import final_seed, prepare_artifacts, run_trial  # the Ray Train runs' entry points

STATE = "study.json"
QUIET = ray.train.LoggingConfig(log_level="WARNING")  # our own per-epoch lines are the progress output


def sync_config() -> tune.SyncConfig:
    """Tune's upload period of the experiment state (checked before Ray starts)."""
    text = os.environ.get(STATE_SYNC_ENV[0], STATE_SYNC_ENV[1])
    try:
        period = float(text)
    except ValueError:
        raise ConfigError(f"${STATE_SYNC_ENV[0]}: expected seconds, got {text!r}") from None
    return tune.SyncConfig(sync_period=period)


def runtime_env(**extra) -> dict:
    """The study's Ray job environment: :data:`~study.resources.REPORT_POLL_ENV` in every Ray
    process of the study (the driver's value when set, else the study's), plus ``extra`` runtime_env
    fields. Set once, by :func:`init_ray`, not by each run."""
    name, default = REPORT_POLL_ENV
    return {"env_vars": {name: os.environ.get(name, default)}, **extra}


def init_ray(address: str | None = None, *, runtime_env_extra: dict | None = None, **kwargs) -> None:
    """``ray.init`` with the study's :func:`runtime_env` (``runtime_env_extra``: more of its fields),
    and the driver's own Tune setting :data:`~study.tblog.AUTO_LOGGERS_ENV` unless the user set it:
    the one place the study sets environment variables."""
    os.environ.setdefault(*AUTO_LOGGERS_ENV)
    ray.init(address=address, runtime_env=runtime_env(**(runtime_env_extra or {})), **kwargs)


def _fit(fn: Callable[[dict], None], config: dict, resources: TrialResources, name: str, storage_path: str,
         max_failures: int, **run_options) -> None:
    """One quiet Ray Train run of ``fn`` on ``resources``."""
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
    resume: bool = False
    verbose: bool = False  # Ray's and Tune's console output, and the runs' log lines, on the console too
    max_concurrent: int | None = None  # --max-concurrent-trials (None: what the cluster can hold)
    gpus_note: str = ""  # why the default --gpus-per-trial is what it is, when the GPUs up now do not say


@dataclass(frozen=True)
class TrialSpec:
    """Constants a trial needs, passed through the object store."""

    plan: BenchmarkPlan
    storage: str
    ray_storage: str
    resources: TrialResources
    verbose: bool = False


def _ray_storage(storage: Storage) -> str:
    return storage.join("ray")


def _scaling(resources: TrialResources) -> ray.train.ScalingConfig:
    return ray.train.ScalingConfig(
        num_workers=resources.workers, use_gpu=resources.use_gpu, resources_per_worker=resources.per_worker()
    )


def _trainable(fn: Callable[[dict, object], None], name: str, spec: object):
    """``fn`` as a Tune trainable registered under ``name``: Tune registers trainables by name
    cluster-wide, so the concurrent searches of several benchmarks need one name each. The trial
    function only launches a Ray Train run, whose workers hold the CPUs/GPUs; a placement group
    may not be empty, so the trial reserves a sliver of memory instead."""

    def trainable(params: dict, spec: object) -> None:
        fn(params, spec)

    trainable.__name__ = trainable.__qualname__ = name
    return tune.with_resources(tune.with_parameters(trainable, spec=spec), {"CPU": 0, "memory": 32 * 1024**2})


def tune_trial(params: dict, spec: TrialSpec) -> None:
    """The Tune function trainable: one Ray Train run of the student stage for ``params``."""
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    cfg = apply_params(spec.plan.base, params, spec.plan.space)
    config = {
        "cfg": config_to_dict(cfg), "storage": spec.storage, "trial_id": trial_id, "trial_name": ctx.get_trial_name(),
        "verbose": spec.verbose,
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


def run_artifacts(plan: StudyPlan, bp: BenchmarkPlan, progress: Progress) -> None:
    if plan.storage.exists(f"{bp.benchmark}/{NETWORKS_FILE}"):
        progress.phase(bp.benchmark, "artifacts", "already prepared")
        return
    cfg = with_searched(_final_config(bp.base))
    search, final = artifact_stages(cfg, "val"), artifact_stages(cfg, "test")
    progress.stages(bp.benchmark, 0, len(search) + len(final))
    progress.phase(bp.benchmark, "artifacts", f"{len(search) + len(final)} stages: {', '.join(search)} without the val "
                   f"images, then {', '.join(final)} with them; {plan.artifact_workers} worker(s); "
                   f"log: {bp.benchmark}/logs/artifacts.log")
    _train_run(prepare_artifacts, f"{bp.benchmark}-artifacts",
               {"cfg": config_to_dict(cfg), "storage": plan.storage.uri, "verbose": plan.verbose},
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


def run_search(plan: StudyPlan, bp: BenchmarkPlan, progress: Progress, at_once: Concurrency) -> tune.ResultGrid:
    budget = bp.space.budget
    optuna_db = _optuna_db(plan, bp)
    exp_name = f"{bp.benchmark}-search"
    exp_path = plan.storage.join("ray", exp_name)
    spec = TrialSpec(bp, plan.storage.uri, _ray_storage(plan.storage), plan.trial_resources, plan.verbose)
    trainable = _trainable(tune_trial, f"{bp.benchmark}_trial", spec)
    loggers = tune_loggers()  # Tune's JSON and CSV loggers, not its TensorBoard one (also when resuming)
    if plan.resume and tune.Tuner.can_restore(exp_path):
        progress.phase(bp.benchmark, "search", f"resuming the search from {exp_path}")
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, resume_errored=False)
    else:
        concurrent, at_a_time = at_once.text(budget.trials, "trials")
        progress.phase(bp.benchmark, "search", f"{budget.trials} trials ({_resources_text(plan.trial_resources)}), "
                       f"{at_a_time}; logs: {bp.benchmark}/logs/trials/")
        import optuna

        searcher = RecordedOptunaSearch(space=define_by_run(bp.space), metric=OBJECTIVE, mode="max",
                                        sampler=optuna.samplers.TPESampler(seed=budget.seed),
                                        study_name=bp.benchmark, storage=optuna_storage(optuna_db),
                                        full_epochs=bp.base.student.epochs)
        scheduler = _early_stopping(bp)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                        num_samples=budget.trials, max_concurrent_trials=concurrent,
                                        trial_name_creator=TrialNamer(budget.trials)),  # trial-<k>-<id>
            run_config=tune.RunConfig(name=exp_name, storage_path=_ray_storage(plan.storage), sync_config=sync_config(),
                                      failure_config=tune.FailureConfig(max_failures=budget.max_failures),
                                      verbose=_tune_verbosity(plan), callbacks=[*loggers, TrialEvents(bp.benchmark)]),
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


def run_final(plan: StudyPlan, bp: BenchmarkPlan, best: RunConfig, progress: Progress, at_once: Concurrency) -> None:
    """Every student row (baselines and the tuned InDistill) once per final seed, the seeds as
    concurrent Ray Train runs; finished seeds are not redone."""
    seeds = final_seeds(bp)
    todo = [s for s in seeds if not plan.storage.exists(f"{bp.benchmark}/final/seed-{s}.json")]
    progress.status[bp.benchmark].seeds_done = len(seeds) - len(todo)
    if not todo:
        progress.phase(bp.benchmark, "final", "already done")
        return
    concurrent, at_a_time = at_once.text(len(todo), "seeds")
    progress.status[bp.benchmark].concurrent = concurrent
    progress.phase(bp.benchmark, "final", f"every student row on the full train split, evaluated on test (teacher and "
                   f"auxiliary shared): seeds {todo}, {at_a_time}; logs: {bp.benchmark}/logs/final/")
    config = {"cfg": config_to_dict(_final_config(best)), "base": config_to_dict(_final_config(bp.base)),
              "storage": plan.storage.uri, "export_seed": seeds[0], "verbose": plan.verbose}
    trainable = _trainable(final_trial, f"{bp.benchmark}_final",
                           FinalSpec(bp.benchmark, config, _ray_storage(plan.storage), plan.trial_resources))
    tune.Tuner(
        trainable, param_space={"seed": tune.grid_search(todo)},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(name=f"{bp.benchmark}-final", storage_path=_ray_storage(plan.storage),
                                  sync_config=sync_config(), failure_config=tune.FailureConfig(max_failures=1),
                                  verbose=_tune_verbosity(plan), callbacks=[*tune_loggers(), TrialEvents(bp.benchmark)]),
    ).fit()  # a failed seed run is reported by TrialEvents as it fails


def _tune_verbosity(plan: StudyPlan) -> int:
    """Tune's console output: none (our progress display instead) unless --verbose (its status tables)."""
    return 1 if plan.verbose else 0


def _resources_text(res: TrialResources) -> str:
    per = ", ".join(f"{v:g} {k}" for k, v in res.per_worker().items())
    return f"{per} per worker" + (f" x {res.workers} workers" if res.workers > 1 else "")


def _final_config(cfg: RunConfig) -> RunConfig:
    # evaluated on test once, after training: no per-epoch evaluation
    return dataclasses.replace(cfg, student=dataclasses.replace(cfg.student, eval_every=0))


#: base-config fields that say where or how fast a study runs: they may change on --resume
RESUMABLE_FIELDS = ("data.root", "data.download", "threads", "device")


def study_inputs(bp: BenchmarkPlan) -> dict[str, dict]:
    """The inputs that define a benchmark's study: its resolved base config and search space."""
    from indistill.train.keys import without

    return {"base config": without(config_to_dict(bp.base), RESUMABLE_FIELDS), "search space": to_dict(bp.space)}


def input_hashes(bp: BenchmarkPlan) -> dict[str, str]:
    return {name: stable_hash(tree) for name, tree in study_inputs(bp).items()}


def check_new_or_resume(plan: StudyPlan) -> None:
    """A new study must not exist; a resumed one must, with the same benchmarks and inputs."""
    exists = plan.storage.exists(STATE)
    if exists and not plan.resume:
        raise ConfigError(f"--name: study {plan.storage.uri} already exists; add --resume to continue it or pick another --name")
    if plan.resume and not exists:
        raise ConfigError(f"--resume: no study at {plan.storage.uri} to resume")
    if plan.resume:
        check_same_inputs(plan, plan.storage.check_study())


def check_same_inputs(plan: StudyPlan, state: dict) -> None:
    """Refuse to resume with other benchmarks, base configs or search spaces than the study's,
    naming the first difference."""
    new_study = "start a new study with another --name to use them (or resume with the study's own inputs)"
    names = [b.benchmark for b in plan.benchmarks]
    if names != state["benchmarks"]:
        raise ConfigError(f"--resume: study {plan.name} has benchmarks {','.join(state['benchmarks'])}, not "
                          f"{','.join(names)}; {new_study}")
    recorded = state.get("inputs", {})
    for bp in plan.benchmarks:
        for name, digest in input_hashes(bp).items():
            if bp.benchmark in recorded and recorded[bp.benchmark].get(name) != digest:
                where = _first_difference(plan.storage, bp, name)
                raise ConfigError(f"--resume: {bp.benchmark}'s {name} differs from the one study {plan.name} was "
                                  f"started with{where}; {new_study}")


def _first_difference(storage: Storage, bp: BenchmarkPlan, name: str) -> str:
    rel = f"{bp.benchmark}/{INPUT_FILES[name]}"
    if not storage.exists(rel):
        return ""
    import yaml

    try:
        old = yaml.safe_load(storage.read_text(rel))
    except yaml.YAMLError:
        return ""
    if name == "base config" and isinstance(old, dict):
        from indistill.train.keys import without

        old = without(old, RESUMABLE_FIELDS)
    path, was, now = _diff(old, study_inputs(bp)[name])
    return f" ({path}: {was!r} then, {now!r} now)" if path else ""


def _diff(a, b, prefix: str = "") -> tuple[str, object, object]:
    """The first dotted path where plain trees ``a`` and ``b`` differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = _diff(a.get(key), b.get(key), f"{prefix}{key}.")
            if found[0]:
                return found
        return "", None, None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = _diff(x, y, f"{prefix}{i}.")
            if found[0]:
                return found
        return "", None, None
    return (prefix.rstrip("."), a, b) if a != b else ("", None, None)


#: where each input of a benchmark is kept in the study directory (resolved, as YAML)
INPUT_FILES = {"base config": "base_config.yaml", "search space": "search_space.yaml"}


def write_study_state(plan: StudyPlan) -> None:
    """A new study's ``study.json`` (its benchmarks and the hashes of their inputs) and each
    benchmark's complete resolved inputs, for the user and for naming a change on --resume."""
    for bp in plan.benchmarks:
        plan.storage.write_text(f"{bp.benchmark}/{INPUT_FILES['base config']}", _yaml(config_to_dict(bp.base)))
        plan.storage.write_text(f"{bp.benchmark}/{INPUT_FILES['search space']}", _yaml(to_dict(bp.space)))
    plan.storage.write_json(STATE, {
        "name": plan.name, "benchmarks": [b.benchmark for b in plan.benchmarks], "created": time.time(),
        "space_files": {b.benchmark: b.space_path for b in plan.benchmarks},
        "inputs": {b.benchmark: input_hashes(b) for b in plan.benchmarks},
    })


def new_progress(plan: StudyPlan, out: TextIO | None, *, live: bool = False,
                 at_once: Concurrency | None = None) -> Progress:
    """The study's display: a status per benchmark of the plan (``out`` None: the log file only;
    ``at_once``: how many trials run at once, else one)."""
    statuses = [BenchmarkStatus(bp.benchmark, trials=bp.space.budget.trials, seeds=bp.space.budget.final_seeds,
                                concurrent=at_once.count if at_once else 1,
                                full_epochs=bp.base.student.epochs) for bp in plan.benchmarks]
    return Progress(plan.storage, statuses, out, live=live)


def run_study(plan: StudyPlan, out: TextIO | None = sys.stdout, *, live: bool = False) -> pd.DataFrame:
    """Run (or resume) every benchmark of the plan at once, each in its own driver thread (its
    artifacts, then its search, then its final runs, sharing the cluster with the others); returns
    the results table. Progress goes to ``out`` (a live panel with ``live``; None: only the study's
    log file). Ray must be initialised, by :func:`init_ray` (its report poll and Tune setting). A
    benchmark that fails does not stop the others: the table holds what finished, then
    :class:`StudyFailed` (carrying that table) is raised."""
    t0 = time.perf_counter()
    # what the cluster has and can start: how many trials at once, and why (a trial that fits no
    # node of it is a one-line error, before anything is written)
    shape = read_cluster_shape()
    at_once = concurrency(plan.trial_resources, shape, plan.max_concurrent)
    if not plan.storage.exists(STATE):
        write_study_state(plan)
    # the HParams dashboard's columns (every benchmark's hyperparameters, val_map first), before any trial
    write_hparams_experiment(plan.storage, plan.benchmarks, [(OBJECTIVE, "val mAP (cosine, 11-point) of the trial's last epoch")])
    errors: list[tuple[str, BaseException]] = []
    progress = new_progress(plan, out, live=live, at_once=at_once)
    names = ", ".join(b.benchmark for b in plan.benchmarks)
    attach(progress)
    try:
        with progress:
            now = shape.now()
            progress(f"[study] {plan.name}: {names} at once on {now.get('CPU', 0):g} CPUs, {now.get('GPU', 0):g} GPUs up now; "
                     f"study directory {plan.storage.uri} (runs' logs: <benchmark>/logs/, this log: {STUDY_LOG})")
            if plan.gpus_note:
                progress(f"[study] {plan.gpus_note}")
            with ThreadPoolExecutor(max_workers=len(plan.benchmarks), thread_name_prefix="benchmark") as pool:
                futures = {pool.submit(run_benchmark, plan, bp, progress, at_once): bp for bp in plan.benchmarks}
                for future in as_completed(futures):
                    bench = futures[future].benchmark
                    exc = future.exception()
                    if exc is None:
                        progress.phase(bench, "done")
                        continue
                    progress.phase(bench, "failed", failure_reason(exc))
                    errors.append((bench, exc))
            table, per_seed = build_table(plan.storage, [b.benchmark for b in plan.benchmarks])
            write_study_table(plan.storage, table, per_seed)
            from .report import write_report

            write_report(plan.storage)
            progress(f"[study] done in {format_duration(time.perf_counter() - t0)}")
    finally:
        attach(None)
    if errors:
        raise StudyFailed(plan.name, table, errors)
    return table


class BenchmarkFailed(RuntimeError):
    """A benchmark's phase ended without its result; the message says why."""


def failure_reason(exc: BaseException) -> str:
    """One line: a :class:`BenchmarkFailed`'s message, else the error's own type and first line."""
    return str(exc) if isinstance(exc, BenchmarkFailed) else error_reason(exc)


class StudyFailed(RuntimeError):
    """Benchmarks of a study failed: ``table`` holds what finished, ``failures`` each failed
    benchmark's error (the first is also the ``__cause__``)."""

    def __init__(self, name: str, table: pd.DataFrame, failures: list[tuple[str, BaseException]]) -> None:
        reasons = "; ".join(f"{bench}: {failure_reason(exc)}" for bench, exc in failures)
        super().__init__(f"study {name}: {len(failures)} benchmark(s) failed: {reasons}")
        self.table = table
        self.failures = failures
        self.__cause__ = failures[0][1]


def run_benchmark(plan: StudyPlan, bp: BenchmarkPlan, progress: Progress, at_once: Concurrency) -> None:
    """One benchmark's phases in order: artifacts, search, final runs (each skipped when done)."""
    phases = _PhaseTimer(plan.storage, f"{bp.benchmark}/phases.json")
    with phases("artifacts"):
        run_artifacts(plan, bp, progress)
    if not plan.storage.exists(f"{bp.benchmark}/search/trials.json"):
        with phases("search"):
            grid = run_search(plan, bp, progress, at_once)
        trials = summarize_trials(grid, bp)
        placements = read_placements(plan.storage, bp.benchmark)
        for trial in trials["trials"]:
            trial["placement"] = placements.get(trial["trial_id"], [])
        trials["max_concurrent"] = at_once.count
        plan.storage.write_json(f"{bp.benchmark}/search/trials.json", trials)
    trials = plan.storage.read_json(f"{bp.benchmark}/search/trials.json")
    progress.searched(bp.benchmark, trials)
    if trials["best"] is None:
        reasons = [t["reason"] for t in trials["trials"] if t["reason"]]
        first = f" (the first: {reasons[0]})" if reasons else ""
        raise BenchmarkFailed(f"none of its {len(trials['trials'])} search trials finished{first}; no final runs; "
                              f"logs: {bp.benchmark}/logs/trials/")
    best_cfg = apply_params(bp.base, trials["best"]["params"], bp.space)
    plan.storage.write_text(f"{bp.benchmark}/search/best_config.yaml", _yaml(config_to_dict(best_cfg)))
    with phases("final"):
        run_final(plan, bp, best_cfg, progress, at_once)


class _PhaseTimer:
    """Each phase's wall-clock intervals (epoch seconds, one per attempt, so overlap between
    benchmarks is visible) and total seconds, accumulated across resumes in a JSON file."""

    def __init__(self, storage: Storage, rel: str) -> None:
        self.storage, self.rel = storage, rel

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.time()
        yield
        end = time.time()
        times = self.storage.read_json(self.rel) if self.storage.exists(self.rel) else {}
        times[f"{phase}_s"] = times.get(f"{phase}_s", 0.0) + end - start
        times.setdefault("intervals", {}).setdefault(phase, []).append({"start": start, "end": end})
        self.storage.write_json(self.rel, times)


def _yaml(obj) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)
