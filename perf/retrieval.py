"""Retrieval benchmark: ``indistill.evaluation.retrieval`` against the paper's protocol on float32 embeddings.

For each size (queries x database x 64-d, 10 classes) and each metric separately, the timed pair is

* **reference-style**: ``reference_retrieval`` (``reference.py``): the paper's ``Database(...)
  .evaluate(batch_size=128)``, a scikit-learn brute-force ranking of the whole database per batch of
  128 queries and its precision / recall / AP computation, on float32 numpy inputs (what that code
  receives from its feature extraction);
* **this project**: ``indistill.evaluation.retrieval.evaluate`` (every key: ``map``, ``ap_full``, ``p@k`` and
  the legacy ones) on the device's float32 tensors.

The two alternate ``repeats`` times per metric (so background load hits both alike); the report gives
min and median seconds and the ratio of the medians. Correctness is checked outside the timing:
every output key must agree with ``indistill.evaluation.retrieval.reference_evaluate`` (float64 numpy, one
query at a time) to 1e-6, and the reference-style ``map`` / ``raw_precision`` are compared with our
``map_legacy`` / ``p@k_legacy`` (for information: scikit-learn breaks distance ties in its own order).
"""
from __future__ import annotations

import statistics
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from indistill.evaluation.retrieval import METRICS, evaluate, evaluate_all, reference_evaluate

from .machine import sync, timed
from .reference import reference_retrieval

SIZES = ((2_000, 20_000), (10_000, 50_000))  # the measurement and the CIFAR-10 protocol
QUICK_SIZES = ((500, 5_000),)
KS = (10, 50, 100)
TOLERANCE = 1e-6
TARGET_RATIO = 2.5
NUM_CLASSES = 10
_SLACK_DIMS = 8


def synthetic_embeddings(
    n_query: int, n_database: int, dim: int = 64, classes: int = NUM_CLASSES, seed: int = 0, separation: float = 0.6
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Class-clustered Gaussian embeddings on an integer grid, every row's norm a power of two.

    ``dim - 8`` coordinates are ``separation * centre[label] + N(0, 1)``, scaled to 0.85 of a random
    squared norm of 256, 1024 or 4096 and truncated towards zero; the last 8 absorb the rest so that
    the squared norm is exactly that (greedy sums of squares, random signs). Then every distance either
    implementation computes is exact (integers below 2**24, or such integers over a power of two) in
    float32 and in float64, so the float32 ranking and the float64 reference agree, ties included (both
    break them by database index), and the 1e-6 check tests the evaluation, not the luck of near-ties.
    ``separation`` 0.6 gives an mAP of about 0.5 (cosine) and 0.3 (euclidean).
    """
    if dim <= _SLACK_DIMS:
        raise ValueError(f"dim must exceed {_SLACK_DIMS}")
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim - _SLACK_DIMS))

    def draw(n: int) -> tuple[Tensor, Tensor]:
        labels = rng.integers(0, classes, n)
        target = (2 ** rng.integers(4, 7, n)).astype(np.int64) ** 2
        x = centres[labels] * separation + rng.normal(size=(n, dim - _SLACK_DIMS))
        x *= np.sqrt(0.85 * target / np.maximum((x**2).sum(1), 1e-12))[:, None]
        v = np.trunc(x)  # |v| <= |x| coordinate-wise, so the squared norm stays below the target
        rest = target - (v**2).sum(1).astype(np.int64)
        slack = np.zeros((n, _SLACK_DIMS))
        for j in range(_SLACK_DIMS):  # greedy squares: any rest <= 4096 needs at most 7
            a = np.floor(np.sqrt(rest)).astype(np.int64)
            a -= a * a > rest
            a += (a + 1) ** 2 <= rest
            slack[:, j] = a
            rest = rest - a * a
        if (rest != 0).any():
            raise AssertionError("greedy sum of squares did not close")
        slack *= rng.choice([-1.0, 1.0], size=slack.shape)
        out = np.concatenate([v, slack], axis=1)
        return torch.from_numpy(out.astype(np.float32)), torch.from_numpy(labels)

    q, ql = draw(n_query)
    db, dbl = draw(n_database)
    return q, ql, db, dbl


def _summary(seconds: list[float]) -> dict:
    return {"median": statistics.median(seconds), "min": min(seconds), "runs": seconds}


def _legacy_from_reference(ref: dict, ks: Sequence[int], n: int) -> dict[str, float]:
    out = {"map_legacy": float(ref["map"])}
    for k in ks:
        out[f"p@{k}_legacy"] = float(ref["raw_precision"][min(k, n) - 1])
    return out


def run_size(
    device: torch.device,
    n_query: int,
    n_database: int,
    *,
    dim: int = 64,
    ks: Sequence[int] = KS,
    repeats: int = 3,
    check: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """One size: per metric, the reference-style pipeline and ``evaluate`` alternately, ``repeats`` times each;
    then ``evaluate_all`` (both metrics in one pass) once and, if ``check``, the float64 agreement."""
    q, ql, db, dbl = synthetic_embeddings(n_query, n_database, dim)
    qn, qln, dbn, dbln = (t.numpy() for t in (q, ql, db, dbl))
    qd, qld, dbd, dbld = (t.to(device) for t in (q, ql, db, dbl))
    sync(device)
    w = min(n_database, 2048)
    evaluate_all(qd[:64], qld[:64], dbd[:w], dbld[:w], METRICS, ks)  # warm-up (thread pools, kernels)
    reference_retrieval(qn[:8], qln[:8], dbn[:w], dbln[:w], "cosine")
    size = f"{n_query} x {n_database} x {dim}"
    metrics: dict[str, dict] = {}
    for m in METRICS:
        ref_s: list[float] = []
        ours_s: list[float] = []
        for rep in range(repeats):
            s, ref_out = timed(lambda: reference_retrieval(qn, qln, dbn, dbln, m), torch.device("cpu"))
            ref_s.append(s)
            s, ours = timed(lambda: evaluate(qd, qld, dbd, dbld, m, ks), device)
            ours_s.append(s)
            log(f"[retrieval] {size} {m:<9} rep {rep + 1}/{repeats}: reference-style {ref_s[-1]:7.2f} s, "
                f"evaluate {ours_s[-1]:6.2f} s")
        legacy_ref = _legacy_from_reference(ref_out, ks, n_database)
        metrics[m] = {
            "reference_seconds": _summary(ref_s),
            "seconds": _summary(ours_s),
            "ratio": statistics.median(ref_s) / statistics.median(ours_s),
            "ratio_min": min(ref_s) / min(ours_s),
            "values": ours,
            "reference_style_values": legacy_ref,
            "reference_style_max_abs_diff": max(abs(ours[k] - v) for k, v in legacy_ref.items()),
        }
    both_s, both = timed(lambda: evaluate_all(qd, qld, dbd, dbld, METRICS, ks), device)
    log(f"[retrieval] {size} evaluate_all, both metrics in one pass: {both_s:.2f} s")
    out = {
        "n_query": n_query,
        "n_database": n_database,
        "dim": dim,
        "classes": NUM_CLASSES,
        "ks": list(ks),
        "repeats": repeats,
        "metrics": metrics,
        "both_metrics_seconds": both_s,
        "target_ratio": TARGET_RATIO,
        "tolerance": TOLERANCE,
    }
    if check:
        worst = 0.0
        for m in METRICS:
            s, ref = timed(lambda: reference_evaluate(q, ql, db, dbl, m, ks), torch.device("cpu"))
            diff = {k: abs(both[m][k] - ref[k]) for k in ref}
            if set(ref) != set(both[m]) or set(ref) != set(metrics[m]["values"]):
                diff["missing keys"] = float("inf")
            diff_single = max(abs(metrics[m]["values"][k] - ref[k]) for k in ref)
            metrics[m]["float64_max_abs_diff"] = max(max(diff.values()), diff_single)
            metrics[m]["float64_seconds"] = s
            worst = max(worst, metrics[m]["float64_max_abs_diff"])
            log(f"[retrieval] {size} {m:<9} float64 reference ({s:.1f} s): max |diff| over all keys "
                f"{metrics[m]['float64_max_abs_diff']:.1e}")
        out["max_abs_diff"] = worst
        out["ok"] = bool(worst <= TOLERANCE)
    return out


def run_retrieval(
    device: torch.device,
    *,
    sizes: Sequence[tuple[int, int]] = SIZES,
    dim: int = 64,
    ks: Sequence[int] = KS,
    repeats: int = 3,
    check: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Every size in ``sizes``; ``ok`` when every checked size agrees with the float64 reference."""
    results = [run_size(device, nq, n, dim=dim, ks=ks, repeats=repeats, check=check, log=log) for nq, n in sizes]
    return {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "sizes": results,
        "ok": all(r.get("ok", True) for r in results),
        "target_met": all(m["ratio"] >= TARGET_RATIO for r in results for m in r["metrics"].values()),
    }
