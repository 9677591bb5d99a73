"""Code that runs on Ray Train workers: artifacts, one search trial, the final retrain.

Each function is a ``train_loop_per_worker``: it receives a plain dict and runs the Ray-free
verbs of :mod:`indistill.engine.pipeline` (``prepare``, ``load_artifacts`` + ``train_student``,
``evaluate``; data-parallel when the run has several workers). What is Ray's stays here: the
device Ray reserved, the stage cache mirrored to the study storage, the report hook and the
trial's placement. Only rank 0 writes to the study storage.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import ray.train
import torch

from indistill.config.run import RunConfig, config_to_dict
from indistill.engine.configure import build_config
from indistill.common.errors import one_line
from indistill.evaluation.embedding import SELECTION_KEY, embed, metric_key
from indistill.engine.pipeline import Artifacts, evaluate, load_artifacts, make_context, prepare, table_row, train_student
from indistill.engine.plan import artifact_files, artifact_stages
from indistill.evaluation.retrieval import METRICS, pr_curve
from indistill.evaluation.size import student_size
from indistill.engine.loop import COUNTERS, FINAL, LAST
from indistill.engine.runtime import TorchCuda, cap_memory, is_distributed, rank, reserved_device, world_size
from indistill.engine.keys import PROTOCOLS
from indistill.engine.stages import Context, stage_dirname

from .names import ARTIFACT_PROGRESS, EMBEDDING_EPOCH, NETWORKS_FILE, OBJECTIVE, SEARCHED, TUNED, WIDTH
from .placement import nodes_of, placement_file, run_placement_file, write_placement
from .rows import final_rows, with_searched
from .runlog import RunLog, trial_log
from .search_space import with_width
from .storage import Storage
from .tblog import TensorBoardLogger, artifact_run, final_run, trial_run


def _quiet_ray_train() -> None:
    """Ray Train logs every report at INFO from the worker (a long line per epoch); our epoch lines suffice.

    Ray 2.60 names that logger after its file path, outside ``ray.train``, so ``LoggingConfig`` misses it.
    """
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:
        return
    if isinstance(getattr(context, "logger", None), logging.Logger):
        context.logger.setLevel(logging.WARNING)


def _ray_device(requested: str) -> str:
    """The device Ray reserved for this worker: ``cpu`` when it reserved no GPU, else its
    ``cuda:<i>``; ``cpu`` without asking Ray for ``device: cpu`` (a test on logical GPUs, or a CPU
    study on GPU nodes)."""
    if requested == "cpu":
        return "cpu"
    from ray.train.torch import get_device  # the device of the GPU ids Ray assigned (cpu: none)

    return str(get_device())


def _node() -> str:
    return f"node {socket.gethostname()} (Ray node {ray.get_runtime_context().get_node_id()})"


def _reserved_gpus() -> float:
    """How much GPU Ray reserved for this worker (0.25 for a quarter of one; 0 for none)."""
    return float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0))


STAGES_DIR = "artifacts/stages"


@contextlib.contextmanager
def stage_cache(storage: Storage, benchmark: str, fetch: Sequence[str] | None = None
                ) -> Iterator[tuple[Path, Callable[[Path], None] | None]]:
    """The benchmark's stage cache as a local directory, and how a written file reaches storage.

    Local (or NFS) storage: the study's own directory, written in place (atomically). Remote
    storage: a scratch directory holding ``fetch`` (paths relative to the cache, files or
    directories, those that exist; None: the whole cache), each file written under it uploaded as
    it is written (a finished stage and every epoch checkpoint), so a failure loses nothing finished.
    """
    rel = f"{benchmark}/{STAGES_DIR}"
    if storage.is_local:
        path = storage.local_path() / rel
        path.mkdir(parents=True, exist_ok=True)
        yield path, None
        return
    scratch = Path(tempfile.mkdtemp(prefix="indistill-stages-"))
    try:
        for item in ([""] if fetch is None else fetch):
            storage.fetch(f"{rel}/{item}".rstrip("/"), scratch / item)

        def persist(path: Path) -> None:
            if path.is_relative_to(scratch):  # a trial's own scratch student is not a cache entry
                storage.upload_file(path, f"{rel}/{path.relative_to(scratch).as_posix()}")

        yield scratch, persist
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_log(config: dict, rel: str) -> Callable[[str], None]:
    """The run's log: rank 0 writes ``<study>/<rel>`` (echoed with ``--verbose``), other ranks nothing."""
    return RunLog(Storage(config["storage"]), rel, echo=bool(config.get("verbose"))) if rank() == 0 else (lambda _m: None)


@contextlib.contextmanager
def failure_logged(log: Callable[[str], None]) -> Iterator[None]:
    """A run that fails says why in its log too (Tune keeps the traceback)."""
    try:
        yield
    except Exception as exc:
        log(f"[run] failed: {type(exc).__name__}: {one_line(exc)}")
        raise


def _on_reserved_device(cfg: RunConfig, reserved: str, gpus: float, log: Callable[[str], None]) -> RunConfig:
    """``cfg`` on the device Ray reserved for this worker (``reserved``), checked against what torch
    can use (:func:`indistill.engine.runtime.reserved_device`), its CUDA memory capped to a
    fractional GPU's share (``gpus``)."""
    cfg = cfg.replace(device=reserved_device(cfg.device, reserved, TorchCuda.report(), _node()))
    fraction = cap_memory(torch.device(cfg.device), gpus)
    if fraction is not None:
        log(f"[run] CUDA memory capped at {fraction:.1%} of {cfg.device} (this worker reserved {gpus:g} of it)")
    return cfg


@dataclass(frozen=True)
class Session:
    """One run on a worker. The Ray side, set up first: the run's plain dict (``config``), the study
    storage, the run's log, its stage cache (``root``; ``persist`` mirrors what is written there to
    the storage), a scratch directory, and the device and GPU share Ray reserved. Then, once
    :meth:`ready`, its config on that device and, for a search trial, its report hooks, its
    student's directory and the checkpoint Ray restored: what the engine's verbs take."""

    config: dict
    storage: Storage
    log: Callable[[str], None]
    root: Path
    persist: Callable[[Path], None] | None
    scratch: Path
    reserved: str
    gpus: float
    cfg: RunConfig | None = None  # set by ready()
    hooks: tuple = ()
    work_dir: Path | None = None
    resume_from: Path | None = None

    def ready(self, **extra) -> "Session":
        """This session with its config built and checked on the reserved device (and ``extra``)."""
        cfg = _on_reserved_device(build_config(self.config["cfg"]), self.reserved, self.gpus, self.log)
        return dataclasses.replace(self, cfg=cfg, **extra)


@contextlib.contextmanager
def ray_side(config: dict, log_rel: str, fetch: Sequence[str] | None = None) -> Iterator[Session]:
    """One run's :class:`Session`, its Ray side only (``config``: the run's plain dict; ``log_rel``: its log file in
    the study; ``fetch``: the stage-cache paths it reads, None for all). A failure is logged; the
    scratch directory is removed at the end."""
    _quiet_ray_train()
    storage = Storage(config["storage"])
    log = _run_log(config, log_rel)
    scratch = Path(tempfile.mkdtemp(prefix="indistill-run-"))
    try:
        with failure_logged(log), stage_cache(storage, config["cfg"]["benchmark"], fetch=fetch) as (root, persist):
            yield Session(config, storage, log, root, persist, scratch, _ray_device(config["cfg"].get("device", "auto")),
                          _reserved_gpus())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def worker_session(config: dict, log_rel: str, fetch: Sequence[str] | None = None) -> Iterator[Session]:
    """One run's :class:`Session`: its :func:`ray_side`, then its config on the reserved device."""
    with ray_side(config, log_rel, fetch) as side:
        yield side.ready()


def prepare_artifacts(config: dict) -> None:
    """The artifact stages twice (:func:`indistill.engine.pipeline.prepare`): without the val
    images (what the search's trials read) and on the full train split (what the final runs read,
    teacher and auxiliary evaluated on test). A retried run continues from the last finished
    stage and epoch."""
    widths = config.get("widths") or [None]  # a frontier study: the kept channels of every width it can sample
    config = {**config, "cfg": config_to_dict(with_searched(build_config(config["cfg"])))}
    with worker_session(config, f"{config['cfg']['benchmark']}/logs/artifacts.log") as s:
        done = _ArtifactProgress(s.storage, s.cfg, len(widths))
        _record_placement(s.storage, run_placement_file(s.cfg.benchmark, "artifacts"), s.cfg.device)
        ctx = make_context(s.cfg, s.root, log=s.log, persist=s.persist)
        built = [prepare(ctx if w is None else ctx.with_config(with_width(s.cfg, w)), protocol,
                         rows=protocol == "test" and i == 0, done=lambda stage, p=protocol: done(stage, p))
                 for i, w in enumerate(widths) for protocol in PROTOCOLS]
        for artifacts in built:
            _log_artifacts(s.storage, s.cfg.benchmark, artifacts)
        if rank() == 0:
            rows = [row for artifacts in built for row in artifacts.rows]
            s.storage.write_json(f"{s.cfg.benchmark}/{NETWORKS_FILE}", {"rows": rows})


class _ArtifactProgress:
    """Counts the artifact stages done, for the driver's progress display (rank 0 writes it) and Ray."""

    def __init__(self, storage: Storage, cfg: RunConfig, widths: int = 1) -> None:
        self.storage, self.benchmark = storage, cfg.benchmark
        self.total = widths * sum(len(artifact_stages(cfg, protocol)) for protocol in PROTOCOLS)
        self.finished = 0

    def __call__(self, stage: str, protocol: str) -> None:
        self.finished += 1
        if rank() == 0:  # what the driver's progress display polls
            self.storage.write_json(f"{self.benchmark}/{ARTIFACT_PROGRESS}", {
                "done": self.finished, "total": self.total, "stage": f"{stage}, {protocol} protocol"})
        ray.train.report({"stage": self.finished, "stages": self.total, "epoch": self.finished})


def _log_artifacts(storage: Storage, benchmark: str, artifacts: Artifacts) -> None:
    """The training curves of the artifact stages just built (rank 0): every loop's per-epoch
    history (the auxiliary's cross-entropy start and its PKT phase apart), one TensorBoard run each
    (:func:`study.tblog.artifact_run`). A run already in the storage is left as it is: a retried
    artifact run reloads finished stages, and their curves are not written twice."""
    if rank() != 0:
        return
    for result in artifacts.results.values():
        for curve, history in result.curves.items():
            rel = artifact_run(benchmark, curve, artifacts.protocol)
            if not history or storage.exists(rel):
                continue
            tb = TensorBoardLogger(storage, rel)
            try:
                tb.log_history(history)
            finally:
                tb.close()


def _report_metrics(epoch: int, metrics: dict[str, float], curriculum_epochs: int = 0) -> dict[str, float]:
    out = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    out["epoch"] = epoch + 1  # epochs completed
    # ASHA's time attribute: epochs completed in the embedding phase, so trials are compared at equal
    # progress after their curricula (val mAP before the embedding phase is low by construction)
    out[EMBEDDING_EPOCH] = max(0, epoch + 1 - curriculum_epochs)
    if SELECTION_KEY in metrics:
        out[OBJECTIVE] = metrics[SELECTION_KEY]
    return out


TIMING_KEYS = ("loop_time_s", "report_time_s", "trial_wall_s", "startup_s", "ray_startup_s")


class EpochReporter:
    """Reports every epoch to Ray Train (metrics + the epoch checkpoint) and TensorBoard."""

    def __init__(self, tb: TensorBoardLogger | None, started_at: float | None = None, entered_at: float | None = None,
                 curriculum_epochs: int = 0, constants: dict[str, float] | None = None) -> None:
        self.tb = tb
        self.constants = dict(constants or {})  # reported with every epoch (a frontier trial's student size)
        self.curriculum_epochs = curriculum_epochs  # the trial's curriculum length (embedding phase after it)
        # wall-clock start of the trial (time.time() in its Tune function); compared with this worker's
        # clock, so on a multi-node cluster the start-up figures assume NTP-synchronised nodes
        self.started_at = started_at
        self.entered_at = entered_at  # when the Ray Train worker entered the trial's function
        self.reported = 0
        self.loop_time_s = 0.0  # training + evaluation time in this attempt
        self.report_time_s = 0.0  # TensorBoard, checkpoint copy and ray.train.report, up to the previous epoch
        self.startup_s: float | None = None  # trial start to the first epoch's start

    def _timing(self) -> dict[str, float]:
        """The Ray overhead so far: the trial's wall time against the time spent in its loop, and its parts."""
        out = {"loop_time_s": self.loop_time_s, "report_time_s": self.report_time_s}
        if self.started_at is not None:
            out["trial_wall_s"] = time.time() - self.started_at
        if self.startup_s is not None:
            out["startup_s"] = self.startup_s
        if self.started_at is not None and self.entered_at is not None:
            out["ray_startup_s"] = self.entered_at - self.started_at  # the Ray part of startup_s
        return out

    def __call__(self, epoch: int, metrics: dict[str, float], checkpoint: Path | None) -> None:
        t0 = time.perf_counter()
        epoch_s = metrics.get("epoch_time_s", 0.0) + metrics.get("eval_time_s", 0.0)
        if self.startup_s is None and self.started_at is not None:
            self.startup_s = time.time() - self.started_at - epoch_s
        self.loop_time_s += epoch_s
        out = {**_report_metrics(epoch, metrics, self.curriculum_epochs), **self.constants, **self._timing()}
        if self.tb is not None:
            self.tb.log(epoch + 1, {k: v for k, v in out.items() if k not in (*COUNTERS, EMBEDDING_EPOCH, *TIMING_KEYS)})
        if checkpoint is not None:
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copy2(checkpoint, Path(tmp) / LAST)
                ray.train.report(out, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=f"epoch-{epoch + 1:04d}")
        else:
            ray.train.report(out)
        self.reported += 1
        self.report_time_s += time.perf_counter() - t0

    def end(self, history: list[dict[str, float]]) -> None:
        """A run restored from its last epoch's checkpoint trains nothing: report its final epoch again,
        so Tune's last result is the finished trial's (a driver killed between the trial's end and
        Tune's next state snapshot re-runs it this way)."""
        if self.reported == 0 and history:
            ray.train.report({**_report_metrics(len(history) - 1, history[-1], self.curriculum_epochs), **self.constants,
                              **self._timing()})


def _record_placement(storage: Storage, rel: str, device: str) -> None:
    """Where the run's workers run (node, host, device), one entry per rank, written by rank 0 to ``rel``."""
    me = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(), "device": device}
    ranks = [me]
    if is_distributed():
        ranks = [None] * world_size()
        torch.distributed.all_gather_object(ranks, me)
    if rank() == 0:  # a retried run on other nodes keeps the nodes it ran on before (what a lost node took)
        write_placement(storage, rel, ranks, earlier=nodes_of(storage, rel))


def _restored_checkpoint(scratch: Path) -> Path | None:
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None
    local = ckpt.to_directory(str(scratch / "restored"))
    return Path(local) / LAST


def run_trial(config: dict) -> None:
    """One search trial: the searched student on train minus val, val mAP reported every epoch."""
    with trial_session(config) as s:
        ctx = make_context(s.cfg, s.root, log=s.log, persist=s.persist)
        train_student(ctx, SEARCHED, load_artifacts(ctx, "val", SEARCHED), hooks=s.hooks, work_dir=s.work_dir,
                      resume_from=s.resume_from)


@contextlib.contextmanager
def trial_session(config: dict) -> Iterator[Session]:
    """A search trial's :class:`Session`. The Ray side first: the artifact files of the ``val``
    protocol fetched (``config["fetch"]``), the trial's placement recorded, its TensorBoard run
    opened with its HParams row (``config["hparams"]``), the hook that reports each epoch to Tune;
    then its config on the reserved device."""
    entered_at = time.time()
    bench, trial_id = config["cfg"]["benchmark"], config["trial_id"]
    with ray_side(config, trial_log(bench, trial_id), fetch=config["fetch"]) as side:
        _record_placement(side.storage, placement_file(bench, trial_id), side.reserved)
        tb = None
        if rank() == 0:  # the trial's run and its HParams row, before it trains
            name = config.get("trial_name") or trial_id
            tb = TensorBoardLogger(side.storage, trial_run(bench, name))
            tb.hparams(config["hparams"], group=f"{bench}/{name}", start_time=config.get("started_at"))
        try:
            reporter = EpochReporter(tb, config.get("started_at"), entered_at, config["curriculum_epochs"],
                                     constants=config.get("size"))
            yield side.ready(hooks=(reporter,), work_dir=side.scratch / "student",
                             resume_from=_restored_checkpoint(side.scratch))
        finally:
            if tb is not None:
                tb.close()


def final_seed(config: dict) -> None:
    """Every student row of the table for one student seed, on the full train split, evaluated on
    test, at every point of ``config["points"]`` (one for a single-size study; one per chosen
    Pareto point of a frontier study): the baselines (the point's ``base``: paper defaults at its
    width, the study's budget) and the tuned InDistill (its ``cfg``). Teacher, auxiliary and pruning
    come from the artifacts, shared by all seeds."""
    seed = int(config["seed"])
    points = [(p["width"], p["tag"], build_config(p["base"]).with_student_seed(seed),
               build_config(p["cfg"]).with_student_seed(seed)) for p in config["points"]]
    plan = [(width, tag, label, cfg, method) for width, tag, base, tuned in points
            for label, cfg, method in final_rows(base, tuned)]
    # what the rows read: the auxiliary, the kept indices of every config and each row's own
    # student directory (a retried run resumes its epochs)
    fetch = sorted({*(f for _w, _t, base, tuned in points for f in (*artifact_files(base, "test"), *artifact_files(tuned, "test"))),
                    *(stage_dirname("student", cfg, "test", method) for *_head, cfg, method in plan)})
    rows = []
    with worker_session(config, f"{config['cfg']['benchmark']}/logs/final/seed-{seed}.log", fetch=fetch) as s:
        bench = s.cfg.benchmark
        _record_placement(s.storage, run_placement_file(bench, f"final-seed-{seed}"), s.cfg.device)
        ctx = make_context(s.cfg, s.root, log=s.log, persist=s.persist)
        for width, tag, label, cfg, method in plan:
            row_ctx = ctx.with_config(cfg.replace(device=ctx.cfg.device))
            slug = _slug(label) if width is None else f"{_slug(label)}-{tag}"
            tb = TensorBoardLogger(s.storage, final_run(bench, slug, seed)) if rank() == 0 else None
            try:
                run = train_student(row_ctx, method, load_artifacts(row_ctx, "test", method), hooks=[_TensorBoardHook(tb)])
                results = evaluate(row_ctx, run.model, run.work_dir)
                if tb is not None:
                    tb.log(len(run.history), {metric_key("test", m): v["map"] for m, v in results.items()})
                    if label == TUNED:
                        _pr_curves(tb, row_ctx, run.model)
            finally:
                if tb is not None:
                    tb.close()
            row = {"seed": seed, **table_row(label, run.model, results)}
            if width is not None:
                row = {**row, WIDTH: width, "macs": student_size(cfg)[1]}
            rows.append(row)
            ray.train.report({"row": len(rows), "epoch": len(rows)})
            if label == TUNED and rank() == 0 and seed == config.get("export_seed"):
                where = f"{bench}/final/run/{FINAL}" if width is None else f"{bench}/final/run/{tag}/{FINAL}"
                s.storage.upload_file(run.checkpoint, where)
        if rank() == 0:
            s.storage.write_json(f"{bench}/final/seed-{seed}.json", {"rows": rows})


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-").replace("--", "-")


class _TensorBoardHook:
    """An epoch hook that logs a final run's curves (losses, phase, lr)."""

    def __init__(self, tb: TensorBoardLogger | None) -> None:
        self.tb = tb

    def __call__(self, epoch: int, metrics: dict[str, float], checkpoint: Path | None) -> None:
        if self.tb is not None:
            self.tb.log(epoch + 1, {k: v for k, v in metrics.items() if k not in COUNTERS})


def _pr_curves(tb: TensorBoardLogger | None, ctx: Context, model) -> None:
    """The precision-recall curves behind the tuned student's test ``map`` (``final/pr_cosine``,
    ``final/pr_euclidean``): every test query ranked against the full train split, its 11-point
    interpolated precision averaged over the queries (:func:`indistill.evaluation.retrieval.pr_curve`)."""
    if tb is None:
        return
    queries, database = ctx.eval_splits("test")
    size = ctx.cfg.eval.batch_size  # as evaluate_stage embeds them
    q, db = embed(model, queries, batch_size=size), embed(model, database, batch_size=size)
    for metric in METRICS:
        tb.pr_curve(f"final/pr_{metric}", pr_curve(q, queries.labels, db, database.labels, metric))
