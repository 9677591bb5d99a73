"""``indistill run``: every stage of one benchmark and seed, then the results table."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch

from .config import RunConfig, save_config
from .data import load_benchmark
from .errors import CheckpointError, one_line
from .evaluate import count_parameters
from .io import atomic_write_text, check_output_dir
from .models.checkpoint import load_checkpoint
from .models.zoo import create_network
from .schema import ConfigError
from .table import ROW_LABELS, aggregate, integer_counts, result_row, write_table
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
    """Load the benchmark, resolve the device and set torch's CPU threads for ``cfg``."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)  # no GPU for 'cuda' fails before the data is read
    data = load_benchmark(cfg.benchmark, data_root or cfg.data.root, download=cfg.data.download, options=cfg.data.options)
    return Context(cfg, data, device, Path(cache_root), log)


def roles_needed(cfg: RunConfig) -> list[str]:
    """The networks a run builds: the teacher (a table row), the auxiliary unless only CE students, the student."""
    return ["teacher", *(["auxiliary"] if any(m != "ce" for m in cfg.methods) else []), "student"]


def check_inputs(cfg: RunConfig, data) -> None:
    """Build every network the run needs (on the CPU) and load the checkpoints the config gives.

    A network option its architecture rejects is a ConfigError naming ``networks.<role>``; a
    checkpoint that is not one, is truncated or does not fit is a one-line CheckpointError naming
    the file. Called before anything is written.
    """
    c, h, _ = data.input_shape
    for role in roles_needed(cfg):
        try:
            net = create_network(cfg.benchmark, role, num_classes=data.num_classes, in_channels=c, image_size=h,
                                 overrides=getattr(cfg.networks, role))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"networks.{role}: {one_line(exc)}") from None
        given = getattr(cfg, role).checkpoint if role in ("teacher", "auxiliary") else None
        if given:
            try:
                load_checkpoint(net, given)
            except CheckpointError as exc:
                raise exc.prefixed(f"{role}.checkpoint") from None


def run_pipeline(cfg: RunConfig, out: Path, log: Callable[[str], None] = print,
                 seeds: Sequence[int] | None = None) -> pd.DataFrame:
    """Train (or reuse) every stage, evaluate every network on test, write the tables; returns the
    aggregated one. Teacher and auxiliary are trained once (``cfg.seed``); every student method
    once per student seed in ``seeds`` (default: the config's), as in the KD literature."""
    seeds = list(seeds) if seeds else [cfg.student_seed]
    rdir = run_dir(out, cfg)
    t0 = time.perf_counter()
    # every input is checked and loaded before anything is written: the output directory, the
    # device, the data, the networks and the given checkpoints
    check_output_dir(rdir, "--out")
    ctx = make_context(cfg, rdir / "stages", log)
    check_inputs(cfg, ctx.data)
    log(f"[run] {cfg.benchmark} seed {cfg.seed} on {ctx.device}: train {len(ctx.data.train) + len(ctx.data.val)}, "
        f"test {len(ctx.data.test)} images; student seeds {seeds}; stages cached in {ctx.cache_root}")
    rows = []
    teacher = teacher_stage(ctx)
    rows.append({"seed": cfg.seed, **result_row("teacher", count_parameters(teacher),
                 evaluate_stage(ctx, teacher, ctx.stage_dir("teacher", teacher_key(cfg))))})
    needs_aux = any(m != "ce" for m in cfg.methods)
    auxiliary = pruned = None
    if needs_aux:
        auxiliary = auxiliary_stage(ctx, teacher)
        rows.append({"seed": cfg.seed, **result_row("auxiliary", count_parameters(auxiliary),
                     evaluate_stage(ctx, auxiliary, ctx.stage_dir("auxiliary", auxiliary_key(cfg))))})
    if "indistill" in cfg.methods:
        pruned = prune_stage(ctx, auxiliary)
    for seed in seeds:
        ctx.cfg = cfg.with_student_seed(seed)
        for method in cfg.methods:
            run = student_stage(ctx, method, auxiliary, pruned, protocol="test")
            rows.append({"seed": seed, **result_row(ROW_LABELS[method], count_parameters(run.model),
                                                    evaluate_stage(ctx, run.model, run.work_dir))})
    ctx.cfg = cfg
    per_seed = pd.DataFrame(rows)
    # the config is written with the results it produced, so a failed run leaves both as they were
    save_config(cfg, rdir / "config.yaml")
    atomic_write_text(rdir / "results_per_seed.csv", integer_counts(per_seed).to_csv(index=False))
    reference = ROW_LABELS["indistill"] if "indistill" in cfg.methods else None
    table = aggregate(per_seed, reference, compare=ROW_LABELS.values())  # students only
    write_table(table, rdir / "results", title=f"{cfg.benchmark}, teacher/auxiliary seed {cfg.seed}, "
                f"student seeds {', '.join(map(str, seeds))} (test split, values in %, mean ± std over seeds)")
    log(f"[run] done in {time.perf_counter() - t0:.1f}s; results in {rdir}")
    return table
