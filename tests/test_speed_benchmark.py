"""Smoke test of the speed benchmark (benchmarks/speed.py) in tiny form on the CPU; no timing thresholds."""
from __future__ import annotations

import json
import math

import pytest
import torch

from benchmarks import speed

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def bench() -> speed.DistillBench:
    return speed.DistillBench.create(CPU, images=256)


def _positive_finite(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


def test_phases_are_the_block1_mse_and_embedding_pkt_phases(bench):
    assert [(p.tap, p.loss) for p in bench.phases] == [("block1", "mse"), ("embedding", "pkt")]
    method = bench.method()
    assert [method.phase(p.epoch) for p in bench.phases] == [1, 3]


def test_both_paths_compute_the_same_loss(bench):
    eq = speed.check_equivalence(bench, batch_size=32)
    assert eq["ok"]
    assert len(eq["checks"]) == 4  # two phases x two memory formats
    for check in eq["checks"]:
        assert check["abs_diff"] <= 1e-5, check
        assert math.isfinite(check["reference_loss"]) and check["reference_loss"] > 0
    assert eq["input_max_abs_diff"] < 1e-5


@pytest.mark.parametrize("channels_last", [True, False])
def test_fast_path_reports_images_per_second(bench, channels_last):
    for phase in bench.phases:
        r = speed.time_fast(bench, phase, batch_size=32, steps=3, warmup=1, channels_last=channels_last)
        assert _positive_finite(r["images_per_s"])
        assert r["images"] == 96
        assert math.isfinite(r["mean_loss"])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_reference_path_reports_images_per_second(bench, num_workers):
    phase = bench.phases[0] if num_workers else bench.phases[1]
    r = speed.time_reference(bench, phase, batch_size=32, steps=3, warmup=1, num_workers=num_workers)
    assert _positive_finite(r["images_per_s"])
    assert r["images"] == 96
    assert math.isfinite(r["mean_loss"])


def test_synthetic_embeddings_are_exact_in_float32():
    q, ql, db, dbl = speed.synthetic_embeddings(50, 300)
    for x in (q, db):
        assert x.shape[1] == 64 and x.dtype == torch.float32
        assert torch.equal(x, x.round())
        sq = x.double().pow(2).sum(1)
        assert set(sq.tolist()) <= {256.0, 1024.0, 4096.0}
    assert ql.max() < 10 and dbl.max() < 10


def test_retrieval_fast_and_reference_agree_on_every_key():
    r = speed.run_retrieval(CPU, n_query=150, n_database=900, log=lambda _: None)
    assert r["ok"]
    assert r["max_abs_diff"] <= 1e-6
    assert set(r["values"]) == {"cosine", "euclidean"}
    assert {"map", "ap_full", "p@10", "map_legacy", "p@100_legacy"} <= set(r["values"]["cosine"])
    assert _positive_finite(r["fast_seconds"]) and _positive_finite(r["ratio"])


def test_cli_writes_a_report(tmp_path, capsys):
    out = tmp_path / "speed.json"
    rc = speed.main(["all", "--quick", "--device", "cpu", "--images", "512", "--steps", "2",
                     "--batch-sizes", "128", "--out", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["machine"]["torch"] == torch.__version__
    assert report["machine"]["torch_threads"] >= 1
    d = report["distill"]
    assert d["equivalence"]["ok"]
    for phase in d["phases"].values():
        assert {r["label"] for r in phase["rows"]} >= {"fast", "reference", "fast (NCHW)", "reference (workers=0)"}
        for row in phase["rows"]:
            assert _positive_finite(row["images_per_s"])
        assert _positive_finite(phase["ratio_at_128"])
    assert report["retrieval"]["ok"]
    assert "fast/reference" in capsys.readouterr().out
