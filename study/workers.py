"""Code that runs on Ray Train workers: artifacts, one search trial, the final retrain.

Each function is a ``train_loop_per_worker``: it receives a plain dict, trains with the
Ray-free ``indistill`` stages (DDP when the run has several workers) and reports through
``ray.train.report``. Only rank 0 writes to the study storage.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Iterator

import ray.train
import torch

from indistill.config import RunConfig, build_config
from indistill.data import load_benchmark
from indistill.evaluate import count_parameters, embed
from indistill.pipeline import make_context
from indistill.table import ROW_LABELS, result_row
from indistill.train.loop import LAST
from indistill.train.runtime import is_distributed, rank, world_size
from indistill.train.stages import (
    Context,
    auxiliary_key,
    auxiliary_stage,
    evaluate_stage,
    prune_stage,
    student_stage,
    teacher_key,
    teacher_stage,
)

from .storage import Storage
from .tblog import TensorBoardLogger

OBJECTIVE = "val_map"
BASELINES = ("ce", "pkt", "mkt", "indistill")


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


def _device_name(cfg: RunConfig) -> str:
    return "cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu"


@contextlib.contextmanager
def artifacts_root(storage: Storage, benchmark: str, *, writable: bool) -> Iterator[Path]:
    """The benchmark's stage cache as a local directory (a scratch mirror for remote storage)."""
    rel = f"{benchmark}/artifacts/stages"
    if storage.is_local:
        path = storage.local_path() / rel
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    scratch = Path(tempfile.mkdtemp(prefix="indistill-artifacts-"))
    try:
        if storage.exists(rel):
            storage.download(rel, scratch)
        yield scratch
        if writable and rank() == 0:
            storage.upload(scratch, rel)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _context(cfg: RunConfig, root: Path, data_root: str | None) -> Context:
    cfg = cfg.replace(device=_device_name(cfg))
    return make_context(cfg, root, log=print if rank() == 0 else (lambda _m: None), data_root=data_root)


def prepare_artifacts(config: dict) -> None:
    """Teacher, auxiliary and every baseline student (paper defaults) with their test results."""
    _quiet_ray_train()
    cfg = build_config(config["cfg"])
    storage = Storage(config["storage"])
    with artifacts_root(storage, cfg.benchmark, writable=True) as root:
        ctx = _context(cfg, root, config.get("data_root"))
        teacher = teacher_stage(ctx)
        rows = [result_row("teacher", count_parameters(teacher), evaluate_stage(ctx, teacher, ctx.stage_dir("teacher", teacher_key(cfg))))]
        ray.train.report({"stage": 1, "epoch": 1})
        aux = auxiliary_stage(ctx, teacher)
        rows.append(result_row("auxiliary", count_parameters(aux), evaluate_stage(ctx, aux, ctx.stage_dir("auxiliary", auxiliary_key(cfg)))))
        ray.train.report({"stage": 2, "epoch": 2})
        pruned = prune_stage(ctx, aux)
        for i, method in enumerate(BASELINES):
            run = student_stage(ctx, method, aux, pruned, protocol="test")
            label = "InDistill (paper defaults)" if method == "indistill" else ROW_LABELS[method]
            rows.append(result_row(label, count_parameters(run.model), evaluate_stage(ctx, run.model, run.work_dir)))
            ray.train.report({"stage": 3 + i, "epoch": 3 + i})
    if rank() == 0:
        storage.write_json(f"{cfg.benchmark}/artifacts/baselines.json", {"rows": rows})


def _frozen_networks(ctx: Context):
    """Teacher and auxiliary from the artifacts; a trial never trains them."""
    for stage, key in (("teacher", teacher_key(ctx.cfg)), ("auxiliary", auxiliary_key(ctx.cfg))):
        if not (ctx.stage_dir(stage, key) / "final.pt").exists():
            raise FileNotFoundError(f"artifact {stage}-{key} is missing: prepare the artifacts first")
    teacher = teacher_stage(ctx)
    return teacher, auxiliary_stage(ctx, teacher)


def _report_metrics(epoch: int, metrics: dict[str, float]) -> dict[str, float]:
    out = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    out["epoch"] = epoch + 1  # ASHA's time attribute: epochs completed
    if "val/cosine/map" in metrics:
        out[OBJECTIVE] = metrics["val/cosine/map"]
    return out


TIMING_KEYS = ("loop_time_s", "report_time_s", "trial_wall_s", "startup_s", "ray_startup_s")


class EpochReporter:
    """Reports every epoch to Ray Train (metrics + the epoch checkpoint) and TensorBoard."""

    def __init__(self, tb: TensorBoardLogger | None, started_at: float | None = None, entered_at: float | None = None) -> None:
        self.tb = tb
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
        out = {**_report_metrics(epoch, metrics), **self._timing()}
        if self.tb is not None:
            self.tb.log(epoch + 1, {k: v for k, v in out.items() if k not in ("epoch", "samples", *TIMING_KEYS)})
        if checkpoint is not None:
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copy2(checkpoint, Path(tmp) / LAST)
                ray.train.report(out, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=f"epoch-{epoch + 1:04d}")
        else:
            ray.train.report(out)
        self.reported += 1
        self.report_time_s += time.perf_counter() - t0

    def finish(self, history: list[dict[str, float]]) -> None:
        """A run restored from its last epoch's checkpoint trains nothing: report its final epoch again,
        so Tune's last result is the finished trial's (a driver killed between the trial's end and
        Tune's next state snapshot re-runs it this way)."""
        if self.reported == 0 and history:
            ray.train.report({**_report_metrics(len(history) - 1, history[-1]), **self._timing()})


def _record_placement(storage: Storage, benchmark: str, trial_id: str, device: str) -> None:
    """Where the trial's workers ran (node, host, device), one entry per rank, written by rank 0."""
    me = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(), "device": device}
    ranks = [me]
    if is_distributed():
        ranks = [None] * world_size()
        torch.distributed.all_gather_object(ranks, me)
    if rank() == 0:
        storage.write_json(f"{benchmark}/search/placement/{trial_id}.json", {"ranks": ranks})


def read_placements(storage: Storage, benchmark: str) -> dict[str, list[dict]]:
    """Trial id -> where its ranks ran (as ``_record_placement`` wrote it)."""
    rel = f"{benchmark}/search/placement"
    return {name[: -len(".json")]: storage.read_json(f"{rel}/{name}")["ranks"]
            for name in storage.listdir(rel) if name.endswith(".json")}


def _restored_checkpoint(scratch: Path) -> Path | None:
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None
    local = ckpt.to_directory(str(scratch / "restored"))
    return Path(local) / LAST


def run_trial(config: dict) -> None:
    """One search trial: the student stage on train minus val, val mAP reported every epoch."""
    entered_at = time.time()
    _quiet_ray_train()
    cfg = build_config(config["cfg"])
    storage = Storage(config["storage"])
    scratch = Path(tempfile.mkdtemp(prefix="indistill-trial-"))
    tb = TensorBoardLogger(storage, f"{cfg.benchmark}/tensorboard/trials/{config['trial_id']}") if rank() == 0 else None
    try:
        if config.get("fail_with"):  # fault injection for tests: "nan" or "error"
            cfg = _inject_fault(cfg, config["fail_with"])
        with artifacts_root(storage, cfg.benchmark, writable=False) as root:
            ctx = _context(cfg, root, config.get("data_root"))
            _record_placement(storage, cfg.benchmark, config["trial_id"], str(ctx.device))
            _, aux = _frozen_networks(ctx)
            pruned = prune_stage(ctx, aux)
            reporter = EpochReporter(tb, config.get("started_at"), entered_at)
            run = student_stage(ctx, "indistill", aux, pruned, protocol="val", hooks=[reporter],
                                work_dir=scratch / "student", resume_from=_restored_checkpoint(scratch))
            reporter.finish(run.history)
    finally:
        if tb is not None:
            tb.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _inject_fault(cfg: RunConfig, kind: str) -> RunConfig:
    if kind == "nan":
        import dataclasses

        cur = dataclasses.replace(cfg.student.curriculum, weights=tuple(float("nan") for _ in cfg.student.curriculum.weights))
        return cfg.replace(student=dataclasses.replace(cfg.student, curriculum=cur))
    raise RuntimeError(f"injected failure ({kind})")


def final_retrain(config: dict) -> None:
    """The best config retrained on the full train split, evaluated on test; checkpoint and PR curves saved."""
    _quiet_ray_train()
    cfg = build_config(config["cfg"])
    storage = Storage(config["storage"])
    rel = f"{cfg.benchmark}/final"
    scratch = Path(tempfile.mkdtemp(prefix="indistill-final-"))
    tb = TensorBoardLogger(storage, f"{cfg.benchmark}/tensorboard/final") if rank() == 0 else None
    try:
        with artifacts_root(storage, cfg.benchmark, writable=False) as root:
            ctx = _context(cfg, root, config.get("data_root"))
            _, aux = _frozen_networks(ctx)
            pruned = prune_stage(ctx, aux)
            run = student_stage(ctx, "indistill", aux, pruned, protocol="test", hooks=[EpochReporter(tb)],
                                work_dir=scratch / "student", resume_from=_restored_checkpoint(scratch))
            results = evaluate_stage(ctx, run.model, run.work_dir)
            if rank() == 0:
                _pr_curves(tb, ctx, run.model)
                row = result_row("InDistill (tuned)", count_parameters(run.model), results)
                shutil.copy2(run.work_dir / "final.pt", scratch / "student.pt")
                storage.upload(scratch / "student", f"{rel}/run")
                storage.write_json(f"{rel}/result.json", {"row": row, "results": results})
    finally:
        if tb is not None:
            tb.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _pr_curves(tb: TensorBoardLogger | None, ctx: Context, model) -> None:
    """Precision-recall curves of the final student: cosine similarity of test queries vs train items."""
    if tb is None:
        return
    queries, database = ctx.eval_splits("test")
    q = torch.nn.functional.normalize(embed(model, queries), dim=1)[:200]
    db = torch.nn.functional.normalize(embed(model, database), dim=1)
    scores = (q @ db.T).flatten().cpu()
    labels = (queries.labels[:200, None] == database.labels[None, :]).flatten().cpu()
    tb.pr_curve("final/pr_cosine", labels, (scores + 1) / 2)
