"""The three verbs every run is made of: :func:`prepare` the artifact stages of a protocol (the
plan: :mod:`indistill.engine.plan`), :func:`train_student` (one method, one seed), :func:`evaluate` a
finished network; and ``indistill run``. The study's artifact run, its trials and its final runs
call the same verbs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import pandas as pd
import torch

from indistill.config.run import RunConfig, save_config
from indistill.data import load_benchmark
from indistill.common.errors import CheckpointError, one_line
from indistill.evaluation.embedding import count_parameters
from indistill.common.io import atomic_write_text, check_output_dir
from indistill.models.base import TapNet
from indistill.models.checkpoint import load_checkpoint
from indistill.models.zoo import create_network
from indistill.method.pruning import PrunedTaps
from indistill.common.errors import ConfigError
from indistill.evaluation.table import aggregate, integer_counts, result_row, write_table
from indistill.engine.keys import Protocol
from indistill.engine.loop import EpochHook
from indistill.method.methods import METHODS, method_label
from indistill.engine.plan import artifact_stages, roles_needed
from indistill.engine.runtime import resolve_device
from indistill.engine.stages import (
    ARTIFACT_STAGES,
    Context,
    StageResult,
    StudentRun,
    evaluate_stage,
    student_stage,
)


def run_dir(out: Path, cfg: RunConfig) -> Path:
    return Path(out) / f"{cfg.benchmark}-seed{cfg.seed}"


def make_context(cfg: RunConfig, cache_root: Path, log: Callable[[str], None] = print,
                 persist: Callable[[Path], None] | None = None) -> Context:
    """Load the benchmark (from ``cfg.data.root``: see :func:`indistill.engine.configure.with_data_root`),
    resolve the device and set torch's CPU threads for ``cfg``; ``persist``: see :class:`Context`."""
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)  # no GPU for 'cuda' fails before the data is read
    data = load_benchmark(cfg.benchmark, cfg.data.root, download=cfg.data.download, options=cfg.data.options)
    return Context(cfg, data, device, Path(cache_root), log, persist)


@dataclass(frozen=True)
class Artifacts:
    """The finished artifact stages of one config under one protocol, by name, and (``rows``) the
    table rows of those that are rows, evaluated on test."""

    protocol: Protocol
    results: Mapping[str, StageResult]
    rows: tuple[dict, ...] = field(default=())

    @property
    def auxiliary(self) -> TapNet | None:
        return self.results["auxiliary"].network if "auxiliary" in self.results else None

    @property
    def pruned(self) -> PrunedTaps | None:
        return self.results["prune"].pruned if "prune" in self.results else None


def prepare(ctx: Context, protocol: Protocol, *, rows: bool = False,
            done: Callable[[str], None] = lambda _stage: None) -> Artifacts:
    """Build (or reuse) every artifact stage the config needs under ``protocol``, in order; ``rows``:
    evaluate those that are table rows (teacher, auxiliary) on test too. ``done`` is called after each stage."""
    results: dict[str, StageResult] = {}
    table_rows: list[dict] = []
    for name in artifact_stages(ctx.cfg, protocol):
        stage = ARTIFACT_STAGES[name]
        result = results[name] = stage.build(ctx, results, protocol)
        if rows and stage.row:
            directory = result.directory or ctx.stage_path(name, protocol)
            table_rows.append({"seed": ctx.cfg.seed, **table_row(name, result.network, evaluate(ctx, result.network, directory))})
        done(name)
    return Artifacts(protocol, results, tuple(table_rows))


def load_artifacts(ctx: Context, protocol: Protocol, method: str) -> Artifacts:
    """What a ``method`` student reads, from finished stages (no training, no data on the device for
    the networks): the auxiliary, and the kept channels when the method prunes (selected from that
    auxiliary when this config's criterion has none cached)."""
    impl = METHODS.get(method)
    wanted = [*(["auxiliary"] if impl.needs_source else []), *(["prune"] if impl.needs_pruning else [])]
    results: dict[str, StageResult] = {}
    for name in wanted:
        results[name] = ARTIFACT_STAGES[name].load(ctx, results, protocol)
    return Artifacts(protocol, results)


def train_student(ctx: Context, method: str, artifacts: Artifacts, *, hooks: Sequence[EpochHook] = (),
                  work_dir: Path | None = None, resume_from: Path | None = None) -> StudentRun:
    """Train (or reuse) ``method``'s student for ``ctx.cfg`` (its ``student_seed``) on ``artifacts``'
    protocol's training split."""
    return student_stage(ctx, method, artifacts.auxiliary, artifacts.pruned, protocol=artifacts.protocol,
                         hooks=list(hooks), work_dir=work_dir, resume_from=resume_from)


def evaluate(ctx: Context, network: torch.nn.Module, directory: Path, protocol: Protocol = "test") -> dict[str, dict[str, float]]:
    """``network``'s retrieval results under ``protocol`` (``{metric: {key: value}}``), cached in ``directory``."""
    return evaluate_stage(ctx, network, directory, protocol)


def table_row(label: str, network: torch.nn.Module, results: dict[str, dict[str, float]]) -> dict:
    """A results-table row: ``label``, the network's parameter count and its retrieval results in percent."""
    return result_row(label, count_parameters(network), results)


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
    artifacts = prepare(ctx, "test", rows=True)
    rows = list(artifacts.rows)
    for seed in seeds:
        seeded = ctx.with_config(cfg.with_student_seed(seed))
        for method in cfg.methods:
            run = train_student(seeded, method, artifacts)
            rows.append({"seed": seed, **table_row(method_label(method), run.model, evaluate(seeded, run.model, run.work_dir))})
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
