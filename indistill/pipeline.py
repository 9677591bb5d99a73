"""The stage graph (teacher -> auxiliary -> prune -> students -> evaluate) and ``indistill run``.

:data:`STAGE_GRAPH` is the one description of the artifact stages, used by ``indistill run`` and
by the study (its artifact run builds them, its trials and final runs load them).
"""
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
from .models.base import TapNet
from .models.checkpoint import load_checkpoint
from .models.zoo import create_network
from .pruning import PrunedTaps
from .schema import ConfigError
from .table import aggregate, integer_counts, result_row, write_table
from .train.runtime import resolve_device
from .train.keys import Protocol, stage_dirname
from .train.methods import method_label
from .train.stages import (
    STAGE_FILES,
    Context,
    StageResult,
    auxiliary_stage,
    evaluate_stage,
    load_stage,
    prune_stage,
    student_stage,
    teacher_stage,
)

def _network(results: dict[str, StageResult], stage: str) -> TapNet | None:
    return results[stage].network if stage in results else None


#: the artifact stages in order, each built from the results of the stages before it; students
#: read ``auxiliary`` and ``prune`` (InDistill), then every network is evaluated
STAGE_GRAPH: dict[str, Callable[[Context, dict[str, StageResult], Protocol], StageResult]] = {
    "teacher": lambda ctx, _done, protocol: teacher_stage(ctx, protocol),
    # a given auxiliary checkpoint needs no teacher (then none was built under ``val``)
    "auxiliary": lambda ctx, done, protocol: auxiliary_stage(ctx, _network(done, "teacher"), protocol),
    "prune": lambda ctx, done, protocol: prune_stage(ctx, done["auxiliary"].network, protocol=protocol),
}


#: the artifact stages whose networks are results-table rows (named after their stage)
NETWORK_ROWS: tuple[str, ...] = ("teacher", "auxiliary")


def run_dir(out: Path, cfg: RunConfig) -> Path:
    return Path(out) / f"{cfg.benchmark}-seed{cfg.seed}"


def make_context(cfg: RunConfig, cache_root: Path, log: Callable[[str], None] = print) -> Context:
    """Load the benchmark (from ``cfg.data.root``: see :func:`indistill.configure.with_data_root`),
    resolve the device and set torch's CPU threads for ``cfg``."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)  # no GPU for 'cuda' fails before the data is read
    data = load_benchmark(cfg.benchmark, cfg.data.root, download=cfg.data.download, options=cfg.data.options)
    return Context(cfg, data, device, Path(cache_root), log)


def roles_needed(cfg: RunConfig) -> list[str]:
    """The networks a run builds: the teacher (a table row), the auxiliary unless only CE students, the student."""
    return ["teacher", *(["auxiliary"] if any(m != "ce" for m in cfg.methods) else []), "student"]


def artifact_stages(cfg: RunConfig, protocol: Protocol) -> tuple[str, ...]:
    """The artifact stages ``cfg.methods`` need under ``protocol``, in :data:`STAGE_GRAPH` order.

    Under ``test`` the teacher is always built (a table row); under ``val`` (a search) only to
    train the auxiliary. The auxiliary is needed unless every method is CE; pruning by InDistill.
    """
    needs_aux = any(m != "ce" for m in cfg.methods)
    wanted = {"auxiliary"} if needs_aux else set()
    if "indistill" in cfg.methods:
        wanted.add("prune")
    if protocol == "test" or (needs_aux and not cfg.auxiliary.checkpoint):
        wanted.add("teacher")
    return tuple(s for s in STAGE_GRAPH if s in wanted)


def artifact_files(cfg: RunConfig, protocol: Protocol) -> list[str]:
    """What a student run reads from the stage cache (paths relative to it): the auxiliary's final
    weights (unless given as a checkpoint) and, for InDistill, the kept channel indices."""
    stages = [s for s in artifact_stages(cfg, protocol) if s != "teacher"]
    if cfg.auxiliary.checkpoint and "auxiliary" in stages:
        stages.remove("auxiliary")
    return [f"{stage_dirname(s, cfg, protocol)}/{STAGE_FILES[s]}" for s in stages]


def build_artifacts(ctx: Context, protocol: Protocol, *, rows: bool = False,
                    done: Callable[[str], None] = lambda _stage: None) -> tuple[dict[str, StageResult], list[dict]]:
    """Build (or reuse) every artifact stage the config needs under ``protocol``, in graph order;
    ``rows``: evaluate the teacher and the auxiliary on test too (their table rows). ``done`` is
    called after each stage. Returns the stage results and the rows."""
    results: dict[str, StageResult] = {}
    table_rows: list[dict] = []
    cfg = ctx.cfg
    for stage in artifact_stages(cfg, protocol):
        result = results[stage] = STAGE_GRAPH[stage](ctx, results, protocol)
        if rows and stage in NETWORK_ROWS:
            directory = result.directory or ctx.stage_path(stage, protocol)
            table_rows.append({"seed": cfg.seed, **result_row(stage, count_parameters(result.network),
                                                               evaluate_stage(ctx, result.network, directory))})
        done(stage)
    return results, table_rows


def student_inputs(ctx: Context, protocol: Protocol, *, pruning: bool = True) -> tuple[TapNet | None, PrunedTaps | None]:
    """What a student run reads: the finished auxiliary (loaded, never trained, no data on the
    device) and, with ``pruning`` and InDistill, the kept indices (read, else selected from that
    auxiliary when this config's criterion has none cached: no training either)."""
    cfg = ctx.cfg
    if not any(m != "ce" for m in cfg.methods):
        return None, None
    auxiliary = load_stage(ctx, "auxiliary", protocol).network
    if not pruning or "indistill" not in cfg.methods:
        return auxiliary, None
    return auxiliary, prune_stage(ctx, auxiliary, protocol=protocol).pruned


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
    artifacts, rows = build_artifacts(ctx, "test", rows=True)
    auxiliary = artifacts["auxiliary"].network if "auxiliary" in artifacts else None
    pruned = artifacts["prune"].pruned if "prune" in artifacts else None
    for seed in seeds:
        ctx.cfg = cfg.with_student_seed(seed)
        for method in cfg.methods:
            run = student_stage(ctx, method, auxiliary, pruned, protocol="test")
            rows.append({"seed": seed, **result_row(method_label(method), count_parameters(run.model),
                                                    evaluate_stage(ctx, run.model, run.work_dir))})
    ctx.cfg = cfg
    per_seed = pd.DataFrame(rows)
    # the config is written with the results it produced, so a failed run leaves both as they were
    save_config(cfg, rdir / "config.yaml")
    atomic_write_text(rdir / "results_per_seed.csv", integer_counts(per_seed).to_csv(index=False))
    reference = method_label("indistill") if "indistill" in cfg.methods else None
    table = aggregate(per_seed, reference, compare=[method_label(m) for m in cfg.methods])  # students only
    write_table(table, rdir / "results", title=f"{cfg.benchmark}, teacher/auxiliary seed {cfg.seed}, "
                f"student seeds {', '.join(map(str, seeds))} (test split, values in %, mean ± std over seeds)")
    log(f"[run] done in {time.perf_counter() - t0:.1f}s; results in {rdir}")
    return table
