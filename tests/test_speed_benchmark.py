"""The speed benchmark (perf/) in tiny form on the CPU: the timed student step is the one
``student_stage`` trains with and computes what the reference-style forward does, the reference-style
retrieval pipeline, and smoke runs of every part. No timing thresholds."""
from __future__ import annotations

import dataclasses
import inspect
import json
import math

import numpy as np
import pytest
import torch

from perf import speed
from perf.distill import DistillBench, time_fast
from perf.reference import reference_dataset, reference_loss, reference_retrieval, time_reference
from perf.retrieval import run_size, synthetic_embeddings
from indistill.config.run import PruneConfig
from indistill.engine.configure import build_config
from indistill.data import BenchmarkData, Split
from indistill.method.pruning import TARGETS
from indistill.evaluation.retrieval import evaluate
from indistill.engine import stages
from indistill.method.student_step import StudentStep

CPU = torch.device("cpu")
EQUIVALENCE_TOL = 1e-5


@pytest.fixture(scope="module")
def bench() -> DistillBench:
    return DistillBench.create(CPU, images=256)


def _positive_finite(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_phases_are_the_block1_mse_and_embedding_pkt_phases(bench):
    assert [(p.tap, p.loss) for p in bench.phases] == [("block1", "mse"), ("embedding", "pkt")]
    method = bench.method()
    assert [method.phase(p.epoch) for p in bench.phases] == [1, 3]


def _stage_losses(cfg, bench: DistillBench, channels_last: bool, tmp_path, monkeypatch) -> tuple[StudentStep, list[float]]:
    """The step ``indistill.engine.stages.student_stage`` trains with and its loss in each benchmark phase:
    a stand-in ``Loop`` receives the step and evaluates it with the benchmark's student weights loaded."""
    tiny = Split(bench.split.images[:16], bench.split.labels[:16])
    data = BenchmarkData(bench.spec, train=bench.split, val=tiny, test=tiny)
    ctx = stages.Context(cfg.replace(channels_last=channels_last), data, CPU, tmp_path / "cache", log=lambda _: None)
    real_loop = stages.Loop
    out: dict = {}

    class CapturingLoop:
        def __init__(self, *args, **kwargs) -> None:
            bound = inspect.signature(real_loop).bind(*args, **kwargs).arguments
            self.model, self.step = bound["model"], bound["step"]

        def run(self) -> list:
            self.model.load_state_dict(bench.student_init)
            x, y = next(bench.device_split(channels_last).batches(32, seed=0, epoch=0, shuffle=False))
            out["step"] = self.step
            out["losses"] = [float(self.step(x, y, p.epoch)[0].detach()) for p in bench.phases]
            return []

    monkeypatch.setattr(stages, "Loop", CapturingLoop)
    stages.student_stage(ctx, "indistill", bench.auxiliary(channels_last), bench.pruned, protocol="test",
                         work_dir=tmp_path / f"student-{channels_last}")
    return out["step"], out["losses"]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_student_stage_trains_with_the_timed_step(bench, channels_last, tmp_path, monkeypatch):
    # The benchmark builds the step as student_stage does, from the CIFAR-10 config a user runs:
    # the same class, the same prune target and the same losses, bit for bit, on the same batch and weights.
    cfg = build_config(benchmark="cifar10")
    assert bench.prune_target == cfg.prune.target
    production, losses = _stage_losses(cfg, bench, channels_last, tmp_path, monkeypatch)
    assert isinstance(production, StudentStep)
    x, y = next(bench.device_split(channels_last).batches(32, seed=0, epoch=0, shuffle=False))
    with bench.step(bench.new_student(channels_last), channels_last, precision=cfg.precision) as step:
        assert type(step.target) is type(production.target) is TARGETS.get(cfg.prune.target)
        assert [float(step(x, y, p.epoch)[0].detach()) for p in bench.phases] == losses


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_timed_step_is_the_reference_forward(bench, target, channels_last):
    # The same un-augmented batch and weights, fp32: the timed step and the reference-style pipeline
    # (PIL transforms, explicit forward, its own pruned target) compute the same loss in both phases.
    bench = dataclasses.replace(bench, cfg=bench.cfg.replace(prune=PruneConfig(target=target)))
    batch = 32
    dataset = reference_dataset(bench, augment=False)
    x_ref = torch.stack([dataset[i][0] for i in range(batch)])
    x, y = next(bench.device_split(channels_last).batches(batch, seed=0, epoch=0, shuffle=False))
    assert float((x_ref - x).abs().max()) < 1e-5  # torchvision ToTensor + Normalize vs DeviceSplit
    with bench.step(bench.new_student(channels_last), channels_last, precision="fp32") as step, torch.no_grad():
        for phase in bench.phases:
            fast = float(step(x, y, phase.epoch)[0])
            ref = float(reference_loss(bench, bench.new_student(False), phase, x_ref))
            assert math.isfinite(ref) and ref > 0
            assert abs(fast - ref) <= EQUIVALENCE_TOL, phase.name


def test_reference_forward_follows_the_prune_target(bench):
    # The MSE phase's loss depends on the target (so the equivalence above tells them apart); PKT's does not.
    x = torch.stack([reference_dataset(bench, augment=False)[i][0] for i in range(32)])
    losses = {t: [float(reference_loss(dataclasses.replace(bench, cfg=bench.cfg.replace(prune=PruneConfig(target=t))),
                                       bench.new_student(False), p, x).detach()) for p in bench.phases]
              for t in TARGETS}
    mse, pkt = zip(*losses.values())
    assert min(abs(a - b) for a in mse for b in mse if a is not b) > 1e-3
    assert len(set(pkt)) == 1


def test_fast_path_reports_images_per_second(bench):
    for phase in bench.phases:
        r = time_fast(bench, phase, batch_size=32, steps=3, warmup=1, channels_last=True)
        assert _positive_finite(r["images_per_s"])
        assert r["images"] == 96
        assert math.isfinite(r["mean_loss"])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_reference_path_reports_images_per_second(bench, num_workers):
    phase = bench.phases[0] if num_workers else bench.phases[1]
    r = time_reference(bench, phase, batch_size=32, steps=3, warmup=1, num_workers=num_workers)
    assert _positive_finite(r["images_per_s"])
    assert r["images"] == 96
    assert math.isfinite(r["mean_loss"])


# ----------------------------------------------------------------------------- retrieval


def test_synthetic_embeddings_are_exact_in_float32():
    q, ql, db, dbl = synthetic_embeddings(50, 3000)
    for x in (q, db):
        assert x.shape[1] == 64 and x.dtype == torch.float32
        assert torch.equal(x, x.round())
        sq = x.double().pow(2).sum(1)
        assert set(sq.tolist()) <= {256.0, 1024.0, 4096.0}
    assert ql.max() < 10 and dbl.max() < 10


def _separated_circle_data(nq: int, n: int, classes: int = 4, seed: int = 0):
    """2-d unit vectors: database angles on a grid in [0, 1.2], queries in [1.5, 1.6]. Every ranking is by
    angle difference (>= 0.3, so cosine and distance gaps exceed 3e-4): no ties and no near-ties, so any
    correct implementation ranks exactly alike, in float32 or float64."""
    rng = np.random.default_rng(seed)
    db_angle = rng.permutation(np.linspace(0.0, 1.2, n))
    q_angle = rng.uniform(1.5, 1.6, nq)

    def unit(a):
        return np.stack([np.cos(a), np.sin(a)], 1).astype(np.float32)

    return unit(q_angle), rng.integers(0, classes, nq), unit(db_angle), rng.integers(0, classes, n)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_reference_style_pipeline_computes_the_legacy_keys(metric):
    # 300 queries: batches of 128, 128 and 44, so the quirk runs over 127 and 43 ranks.
    q, ql, db, dbl = _separated_circle_data(300, 1000)
    ref = reference_retrieval(q, ql, db, dbl, metric)
    ours = evaluate(torch.from_numpy(q), torch.from_numpy(ql), torch.from_numpy(db), torch.from_numpy(dbl),
                    metric, ks=(1, 10, 128, 500))
    assert ref["map"] == pytest.approx(ours["map_legacy"], abs=1e-12)
    for k in (1, 10, 128, 500):
        assert ref["raw_precision"][k - 1] == pytest.approx(ours[f"p@{k}_legacy"], abs=1e-12), k
    assert ref["precision"].shape == (21,) and 0 < ref["map"] < 1


def test_run_size_checks_every_key_against_float64():
    r = run_size(CPU, 150, 900, repeats=1, log=lambda _: None)
    assert r["ok"] and r["max_abs_diff"] <= 1e-6
    assert set(r["metrics"]) == {"cosine", "euclidean"}
    for m in r["metrics"].values():
        assert {"map", "ap_full", "p@10", "map_legacy", "p@100_legacy"} <= set(m["values"])
        assert _positive_finite(m["ratio"]) and _positive_finite(m["seconds"]["median"])
        assert m["reference_style_max_abs_diff"] < 0.05  # scikit-learn orders ties its own way
    assert _positive_finite(r["both_metrics_seconds"])


def test_cli_writes_a_report(tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert speed.main(["retrieval", "--quick", "--device", "cpu", "--sizes", "100x600,50x300", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["machine"]["torch"] == torch.__version__
    assert [(s["n_query"], s["n_database"]) for s in report["retrieval"]["sizes"]] == [(100, 600), (50, 300)]
    assert report["retrieval"]["ok"]
    text = capsys.readouterr().out
    assert "cosine" in text and "euclidean" in text and "device: cpu" in text

    out = tmp_path / "distill.json"
    rc = speed.main(["distill", "--quick", "--device", "cpu", "--images", "512", "--steps", "2",
                     "--batch-sizes", "128", "--out", str(out)])
    assert rc == 0
    d = json.loads(out.read_text())["distill"]
    for phase in d["phases"].values():
        assert {r["label"] for r in phase["rows"]} >= {"fast", "reference", "fast (NCHW)", "reference (workers=0)"}
        for row in phase["rows"]:
            assert _positive_finite(row["images_per_s"])
        assert _positive_finite(phase["ratio_at_128"])
    assert "fast/reference" in capsys.readouterr().out


def test_retrieval_profile_reports_every_stage():
    from perf.retrieval_profile import profile

    previous = torch.get_num_threads()
    try:
        r = profile(n_query=20, n_database=500, repeats=1)
    finally:
        torch.set_num_threads(previous)
    assert len(r["stages"]) == 8 and len(r["alternatives"]) == 3
    assert all(v >= 0 and math.isfinite(v) for v in [*r["stages"].values(), *r["alternatives"].values()])
    assert r["evaluate"] > 0
