"""A study's orchestration: for each benchmark, on its own driver thread, the artifacts, then the
Tune search, then the final runs, then the results table (the Ray plumbing: :mod:`study.ray_runs`)."""
from __future__ import annotations

import contextlib
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, TextIO

import pandas as pd
from ray import tune

from indistill.config.run import RunConfig, config_to_dict
from indistill.common.errors import error_reason
from indistill.common.io import atomic_write_bytes, stable_hash
from indistill.engine.plan import artifact_stages

from .names import NETWORKS_FILE, OBJECTIVE, PARETO_FILE, POINTS_FILE, SIZE_OBJECTIVES, SIZE_TEXT, TRIALS_FILE, WIDTH
from .failures import Failures
from .nodes import NodeWatcher
from .optuna_record import OPTUNA_FILE, RecordUpload, RecordedOptunaSearch, optuna_storage
from .placement import read_placements
from .plan import BenchmarkPlan, StudyPlan, final_config, final_seeds
from .provenance import study_sampler
from .progress import STUDY_LOG, BenchmarkStatus, Progress, TrialEvents, attach, format_duration
from .ray_runs import (
    FinalSpec,
    TrialSpec,
    as_trainable,
    final_trial,
    ray_storage,
    sync_config,
    train_run,
    tune_trial,
    tune_verbosity,
)
from .resources import Concurrency, TrialResources, concurrency, read_cluster_shape
from .results import build_table, summarize_trials, write_study_table
from .resume import STATE, write_study_state, yaml_text
from .rows import with_searched
from .params import apply_params, define_by_run
from .early_stopping import scheduler_for
from .outcome import pareto_front, spread
from .params import describe, flatten
from .search_space import sampled_widths, with_width
from .stopping import STOPPING
from .storage import Storage
from .tblog import TrialNamer, tune_loggers, write_hparams_experiment
from .warm_start import summary as warm_summary
from .workers import prepare_artifacts  # the artifact run's entry point


def run_artifacts(plan: StudyPlan, bp: BenchmarkPlan, progress: Progress) -> None:
    if plan.storage.exists(f"{bp.benchmark}/{NETWORKS_FILE}"):
        progress.phase(bp.benchmark, "artifacts", "already prepared")
        return
    cfg = with_searched(final_config(bp.base))
    search, final = artifact_stages(cfg, "val"), artifact_stages(cfg, "test")
    widths = sampled_widths(bp.space, bp.base)
    total = max(1, len(widths)) * (len(search) + len(final))
    each = f", for each of the {len(widths)} student widths the search can sample" if widths else ""
    progress.stages(bp.benchmark, 0, total)
    progress.phase(bp.benchmark, "artifacts", f"{total} stages: {', '.join(search)} without the val "
                   f"images, then {', '.join(final)} with them{each}; {plan.artifact_workers} worker(s); "
                   f"log: {bp.benchmark}/logs/artifacts.log")
    train_run(prepare_artifacts, f"{bp.benchmark}-artifacts",
               {"cfg": config_to_dict(cfg), "storage": plan.storage.uri, "verbose": plan.verbose, "widths": widths},
               plan, plan.artifact_workers)


def _optuna_db(plan: StudyPlan, bp: BenchmarkPlan) -> Path:
    """Where this benchmark's Optuna study is written: in the study directory, or a local mirror of it."""
    rel = f"{bp.benchmark}/search"
    if plan.storage.is_local:
        return plan.storage.local_path() / rel / OPTUNA_FILE
    mirror = Path.home() / ".cache" / "indistill" / "optuna" / stable_hash(plan.storage.uri) / bp.benchmark
    # the study directory's record is the one kept as trials are proposed and end: the mirror starts from it
    if plan.storage.exists(f"{rel}/{OPTUNA_FILE}"):
        atomic_write_bytes(mirror / OPTUNA_FILE, plan.storage.read_bytes(f"{rel}/{OPTUNA_FILE}"))
    else:
        (mirror / OPTUNA_FILE).unlink(missing_ok=True)
    return mirror / OPTUNA_FILE


def objective_metrics(space) -> list[str]:
    """The metrics the search optimises, as trials report them: val mAP (maximised), then the size
    objective's (minimised) in a two-objective space. Optuna's TPESampler samples both kinds: with
    two objectives it is MOTPE, which, unlike NSGA-II, needs no population of trials per generation
    and so fits a budget of tens of trials."""
    return [OBJECTIVE, *(SIZE_OBJECTIVES[o] for o in space.objectives[1:])]


@dataclass(frozen=True)
class FinalPoint:
    """One size of the final table: the tuned config of a search trial and the base config (the
    baselines') at the same width (None: the study's one student)."""

    width: float | None
    tuned: RunConfig
    base: RunConfig
    trial_id: str

    @property
    def tag(self) -> str:
        return "best" if self.width is None else f"width-{self.width:g}"


def run_search(plan: StudyPlan, bp: BenchmarkPlan, progress: Progress, at_once: Concurrency) -> tune.ResultGrid:
    budget = bp.space.budget
    optuna_db = _optuna_db(plan, bp)
    exp_name = f"{bp.benchmark}-search"
    exp_path = plan.storage.join("ray", exp_name)
    spec = TrialSpec(bp, plan.storage.uri, ray_storage(plan.storage), plan.trial_resources, plan.verbose)
    trainable = as_trainable(tune_trial, f"{bp.benchmark}_trial", spec)
    loggers = tune_loggers()  # Tune's JSON and CSV loggers, not its TensorBoard one (also when resuming)
    if plan.resume and tune.Tuner.can_restore(exp_path):
        progress.phase(bp.benchmark, "search", f"resuming the search from {exp_path}")
        tuner = tune.Tuner.restore(exp_path, trainable=trainable, resume_unfinished=True, resume_errored=False)
    else:
        concurrent, at_a_time = at_once.text(budget.trials, "trials")
        progress.phase(bp.benchmark, "search", f"{budget.trials} trials ({_resources_text(plan.trial_resources)}), "
                       f"{at_a_time}; logs: {bp.benchmark}/logs/trials/")
        if bp.warm_start:
            progress(f"[{bp.benchmark}] search: warm start: {warm_summary(bp.warm_start)}")
        metrics = objective_metrics(bp.space)
        searcher = RecordedOptunaSearch(space=define_by_run(bp.space), metric=metrics if len(metrics) > 1 else OBJECTIVE,
                                        mode=["max", *["min"] * (len(metrics) - 1)] if len(metrics) > 1 else "max",
                                        sampler=study_sampler(bp.space),
                                        study_name=bp.benchmark, storage=optuna_storage(optuna_db),
                                        full_epochs=bp.base.student.epochs,
                                        warm_start=bp.warm_start.points if bp.warm_start else (),
                                        persist=None if plan.storage.is_local else
                                        RecordUpload(plan.storage, str(optuna_db), f"{bp.benchmark}/search/{OPTUNA_FILE}"),
                                        failures=Failures(plan.storage, bp.benchmark))
        scheduler = scheduler_for(bp)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                        num_samples=budget.trials, max_concurrent_trials=concurrent,
                                        trial_name_creator=TrialNamer(budget.trials)),  # trial-<k>-<id>
            run_config=tune.RunConfig(name=exp_name, storage_path=ray_storage(plan.storage), sync_config=sync_config(),
                                      failure_config=tune.FailureConfig(max_failures=budget.max_failures),
                                      verbose=tune_verbosity(plan), callbacks=[*loggers, TrialEvents(bp.benchmark)]),
        )
    grid = tuner.fit()
    if not plan.storage.is_local:
        plan.storage.upload(optuna_db.parent, f"{bp.benchmark}/search")
    return grid


def run_final(plan: StudyPlan, bp: BenchmarkPlan, points: list[FinalPoint], progress: Progress, at_once: Concurrency) -> None:
    """Every student row (baselines and the tuned InDistill) at every point's width once per final
    seed, the seeds as concurrent Ray Train runs; finished seeds are not redone."""
    seeds = final_seeds(bp)
    todo = [s for s in seeds if not plan.storage.exists(f"{bp.benchmark}/final/seed-{s}.json")]
    progress.status[bp.benchmark].seeds_done = len(seeds) - len(todo)
    if not todo:
        progress.phase(bp.benchmark, "final", "already done")
        return
    concurrent, at_a_time = at_once.text(len(todo), "seeds")
    progress.status[bp.benchmark].concurrent = concurrent
    widths = f" at {len(points)} widths ({', '.join(f'{p.width:g}' for p in points)})" if points[0].width is not None else ""
    progress.phase(bp.benchmark, "final", f"every student row{widths} on the full train split, evaluated on test (teacher and "
                   f"auxiliary shared): seeds {todo}, {at_a_time}; logs: {bp.benchmark}/logs/final/")
    config = {"points": [{"width": p.width, "tag": p.tag, "cfg": config_to_dict(final_config(p.tuned)),
                          "base": config_to_dict(final_config(p.base))} for p in points],
              "cfg": config_to_dict(final_config(points[0].base)),  # the run's session: its benchmark, device, data
              "storage": plan.storage.uri, "export_seed": seeds[0], "verbose": plan.verbose}
    trainable = as_trainable(final_trial, f"{bp.benchmark}_final",
                           FinalSpec(bp.benchmark, config, ray_storage(plan.storage), plan.trial_resources))
    tune.Tuner(
        trainable, param_space={"seed": tune.grid_search(todo)},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(name=f"{bp.benchmark}-final", storage_path=ray_storage(plan.storage),
                                  sync_config=sync_config(), failure_config=tune.FailureConfig(max_failures=1),
                                  verbose=tune_verbosity(plan), callbacks=[*tune_loggers(), TrialEvents(bp.benchmark)]),
    ).fit()  # a failed seed run is reported by TrialEvents as it fails


def _resources_text(res: TrialResources) -> str:
    per = ", ".join(f"{v:g} {k}" for k, v in res.per_worker().items())
    return f"{per} per worker" + (f" x {res.workers} workers" if res.workers > 1 else "")


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
    sizes = [o for o in SIZE_OBJECTIVES if any(bp.space.size_objective == o for bp in plan.benchmarks)]
    write_hparams_experiment(plan.storage, plan.benchmarks, [(OBJECTIVE, "val mAP (cosine, 11-point) of the trial's last epoch"),
                                                             *((SIZE_OBJECTIVES[o], f"the student's {SIZE_TEXT[o]}") for o in sizes)])
    errors: list[tuple[str, BaseException]] = []
    progress = new_progress(plan, out, live=live, at_once=at_once)
    names = ", ".join(b.benchmark for b in plan.benchmarks)
    attach(progress)
    watcher = NodeWatcher(plan, progress)  # one line per lost node, naming the runs it took
    watcher.start()
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
                    if STOPPING.is_set():  # ended by the driver's stop, which said so
                        continue
                    progress.phase(bench, "failed", failure_reason(exc))
                    errors.append((bench, exc))
            table, per_seed = build_table(plan.storage, [b.benchmark for b in plan.benchmarks])
            write_study_table(plan.storage, table, per_seed)
            from .report import write_report

            write_report(plan.storage)
            progress(f"[study] done in {format_duration(time.perf_counter() - t0)}")
    finally:
        watcher.stop()
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
    if not plan.storage.exists(f"{bp.benchmark}/{TRIALS_FILE}"):
        with phases("search"):
            grid = run_search(plan, bp, progress, at_once)
        trials = summarize_trials(grid, bp)
        placements = read_placements(plan.storage, bp.benchmark)
        for trial in trials["trials"]:
            trial["placement"] = placements.get(trial["trial_id"], [])
        trials["max_concurrent"] = at_once.count
        plan.storage.write_json(f"{bp.benchmark}/{TRIALS_FILE}", trials)
    trials = plan.storage.read_json(f"{bp.benchmark}/{TRIALS_FILE}")
    progress.searched(bp.benchmark, trials)
    if trials["best"] is None:
        reasons = [t["reason"] for t in trials["trials"] if t["reason"]]
        first = f" (the first: {reasons[0]})" if reasons else ""
        raise BenchmarkFailed(f"none of its {len(trials['trials'])} search trials finished{first}; no final runs; "
                              f"logs: {bp.benchmark}/logs/trials/")
    best_cfg = apply_params(bp.base, trials["best"]["params"], bp.space)
    plan.storage.write_text(f"{bp.benchmark}/search/best_config.yaml", yaml_text(config_to_dict(best_cfg)))
    points = final_points(plan, bp, trials, progress)
    with phases("final"):
        run_final(plan, bp, points, progress, at_once)


def final_points(plan: StudyPlan, bp: BenchmarkPlan, trials: dict, progress: Progress) -> list[FinalPoint]:
    """The tuned configs the final runs retrain, each with the baselines at its width: the best
    trial's; in a two-objective search the Pareto front's (written to ``search/pareto.csv``, with
    a config per point in ``search/points/``), at most ``budget.frontier_points`` spread over it."""
    size = bp.space.size_objective
    if size is None:  # the best trial (at its width when the space searches widths)
        point = point_of(bp, trials["best"])
        if point.width is not None:
            plan.storage.write_json(f"{bp.benchmark}/{POINTS_FILE}",
                                    {"points": [{WIDTH: point.width, "trial_id": point.trial_id, "tag": point.tag}]})
        return [point]
    front = pareto_front(trials["trials"], OBJECTIVE, SIZE_OBJECTIVES[size])
    if not front:
        raise BenchmarkFailed(f"no search trial completed its budget, so there is no Pareto front; "
                              f"logs: {bp.benchmark}/logs/trials/")
    write_pareto(plan.storage, bp, front)
    chosen = spread(front, bp.space.budget.frontier_points)
    sizes = ", ".join(f"width {t.get(WIDTH):g}: {t[SIZE_OBJECTIVES[size]]:,} {size}, val mAP {100 * t[OBJECTIVE]:.2f}"
                      for t in front)
    progress(f"[{bp.benchmark}] search: Pareto front of {len(front)} trial(s) ({sizes}); "
             f"the final runs retrain {len(chosen)}; {bp.benchmark}/{PARETO_FILE}")
    points = [point_of(bp, t) for t in chosen]
    for point in points:
        plan.storage.write_text(f"{bp.benchmark}/search/points/{point.tag}.yaml", yaml_text(config_to_dict(point.tuned)))
    plan.storage.write_json(f"{bp.benchmark}/{POINTS_FILE}",
                            {"points": [{WIDTH: p.width, "trial_id": p.trial_id, "tag": p.tag} for p in points]})
    return points


def write_pareto(storage, bp: BenchmarkPlan, front: list[dict]) -> None:
    """``<benchmark>/search/pareto.csv``: one row per Pareto trial, smallest first: its id, width,
    parameters, MACs, val mAP and searched values (by the sampler's names)."""
    rows = [{"trial_id": t["trial_id"], WIDTH: t.get(WIDTH), "params": t.get(SIZE_OBJECTIVES["params"]),
             "macs": t.get(SIZE_OBJECTIVES["macs"]), OBJECTIVE: t[OBJECTIVE], "config": describe(t["params"]),
             **flatten(t["params"])} for t in front]
    storage.write_text(f"{bp.benchmark}/{PARETO_FILE}", pd.DataFrame(rows).to_csv(index=False))


def point_of(bp: BenchmarkPlan, trial: dict) -> FinalPoint:
    """A final point from a trial of the search: its tuned config and the base config at its width."""
    tuned = apply_params(bp.base, trial["params"], bp.space)
    width = trial.get(WIDTH)
    return FinalPoint(width, tuned, bp.base if width is None else with_width(bp.base, width), trial["trial_id"])


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


