"""``indistill run``: every stage of one benchmark and seed, then the results table."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pandas as pd

from .config import RunConfig, save_config
from .data import load_benchmark
from .evaluate import count_parameters
from .table import ROW_LABELS, result_row, write_table
from .train.runtime import resolve_device
from .train.stages import (
    Context,
    auxiliary_key,
    auxiliary_stage,
    evaluate_stage,
    prune_stage,
    student_stage,
    teacher_key,
    teacher_stage,
)


def run_dir(out: Path, cfg: RunConfig) -> Path:
    return Path(out) / f"{cfg.benchmark}-seed{cfg.seed}"


def make_context(cfg: RunConfig, cache_root: Path, log: Callable[[str], None] = print, data_root: str | None = None) -> Context:
    """Load the benchmark and resolve the device for ``cfg``."""
    data = load_benchmark(cfg.benchmark, data_root or cfg.data.root, download=cfg.data.download, options=cfg.data.options)
    return Context(cfg, data, resolve_device(cfg.device), Path(cache_root), log)


def run_pipeline(cfg: RunConfig, out: Path, log: Callable[[str], None] = print) -> pd.DataFrame:
    """Train (or reuse) every stage, evaluate every network on test, write the table; returns it."""
    rdir = run_dir(out, cfg)
    rdir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, rdir / "config.yaml")
    t0 = time.perf_counter()
    ctx = make_context(cfg, rdir / "stages", log)
    log(f"[run] {cfg.benchmark} seed {cfg.seed} on {ctx.device}: train {len(ctx.data.train) + len(ctx.data.val)}, "
        f"test {len(ctx.data.test)} images; stages cached in {ctx.cache_root}")
    rows = []
    teacher = teacher_stage(ctx)
    rows.append(result_row("teacher", count_parameters(teacher),
                           evaluate_stage(ctx, teacher, ctx.stage_dir("teacher", teacher_key(cfg)))))
    needs_aux = any(m != "ce" for m in cfg.methods)
    auxiliary = pruned = None
    if needs_aux:
        auxiliary = auxiliary_stage(ctx, teacher)
        rows.append(result_row("auxiliary", count_parameters(auxiliary),
                               evaluate_stage(ctx, auxiliary, ctx.stage_dir("auxiliary", auxiliary_key(cfg)))))
    if "indistill" in cfg.methods:
        pruned = prune_stage(ctx, auxiliary)
    for method in cfg.methods:
        run = student_stage(ctx, method, auxiliary, pruned, protocol="test")
        rows.append(result_row(ROW_LABELS[method], count_parameters(run.model), evaluate_stage(ctx, run.model, run.work_dir)))
    table = pd.DataFrame(rows).set_index("network")
    write_table(table, rdir / "results", title=f"{cfg.benchmark}, seed {cfg.seed} (test split, values in %)")
    log(f"[run] done in {time.perf_counter() - t0:.1f}s; results in {rdir}")
    return table
