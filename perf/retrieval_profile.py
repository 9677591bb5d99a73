"""Where ``indistill.evaluation.retrieval``'s CPU time goes, per stage, and what the alternatives to its ranking cost.

    python -m perf.retrieval_profile [--queries 500] [--database 20000] [--repeats 3]

One thread (``torch.set_num_threads(1)``), thread CPU time (so other load on the machine inflates the
figures less than wall time would), in nanoseconds per (query, database item) entry, cosine keys of
the synthetic embeddings of ``perf.retrieval``. The stages are those of ``evaluate``'s CPU path
(``_radix_ranks`` and ``_keys_np``), run one row at a time as it does; the alternatives rank the same
rows with ties by index.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from indistill.evaluation.retrieval import LEGACY_BATCH, _keys_np, evaluate

from .machine import loadavg
from .retrieval import synthetic_embeddings


def _cpu_ns(fn: Callable[[], object], entries: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return best / entries * 1e9


def profile(n_query: int = 500, n_database: int = 20_000, repeats: int = 3) -> dict[str, float]:
    torch.set_num_threads(1)
    q, ql, db, dbl = synthetic_embeddings(n_query, n_database)
    qu, neg_db_t = F.normalize(q, dim=1), -F.normalize(db, dim=1).t()
    key = (qu @ neg_db_t).numpy()
    qc, dc = ql.numpy().astype(np.int32), dbl.numpy().astype(np.int32)
    entries = n_query * n_database
    lo, hi = (0, 1) if np.little_endian else (1, 0)
    rows = range(n_query)

    # The stages, one row at a time, each fed the previous stage's output.
    u = [np.add(key[i], np.float32(0.0)).view(np.int32) for i in rows]
    digits = [x.view(np.uint16).reshape(-1, 2) for x in u]
    rel = [dc == qc[i] for i in rows]
    order1 = [np.argsort(d[:, lo], kind="stable") for d in digits]
    high = [digits[i][:, hi].take(order1[i]) for i in rows]
    rel1 = [rel[i].take(order1[i]) for i in rows]
    order2 = [np.argsort(h, kind="stable") for h in high]
    ranked = [rel1[i].take(order2[i]) for i in rows]
    cols = [np.flatnonzero(r) for r in ranked]
    p = np.bincount(dc, minlength=int(qc.max()) + 1)[qc]
    batch = np.minimum(n_query - np.arange(n_query) // LEGACY_BATCH * LEGACY_BATCH, LEGACY_BATCH)

    def transform() -> None:
        for i in rows:
            v = np.add(key[i], np.float32(0.0)).view(np.int32)
            flip = v >> 31
            flip |= np.int32(-(2**31))
            v ^= flip

    def keys_in_blocks() -> None:
        for s in range(0, n_query, 16):
            _keys_np(np.concatenate(cols[s : s + 16]), p[s : s + 16], n_database, batch[s : s + 16], (10, 50, 100))

    def composite_int64_sort() -> None:  # (ordered key bits << 32 | index), numpy's sort
        idx = np.arange(n_database, dtype=np.int64)
        for i in rows:
            v = np.add(key[i], np.float32(0.0)).view(np.int32)
            v = v ^ ((v >> 31) & np.int32(0x7FFFFFFF))  # signed order-preserving int32
            s = np.sort((v.astype(np.int64) << 32) | idx)
            np.flatnonzero(dc[s & 0xFFFFFFFF] == qc[i])

    kt = torch.from_numpy(key)
    stages = {
        "distances: float32 matmul (torch, 1 thread)": _cpu_ns(lambda: qu @ neg_db_t, entries, repeats),
        "order-preserving uint32 of the float keys": _cpu_ns(transform, entries, repeats),
        "relevance bits (labels ==)": _cpu_ns(lambda: [dc == qc[i] for i in rows], entries, repeats),
        "radix argsort, low 16 bits": _cpu_ns(lambda: [np.argsort(d[:, lo], kind="stable") for d in digits],
                                              entries, repeats),
        "gather high digits + relevance": _cpu_ns(
            lambda: [(digits[i][:, hi].take(order1[i]), rel[i].take(order1[i])) for i in rows], entries, repeats),
        "radix argsort, high 16 bits": _cpu_ns(lambda: [np.argsort(h, kind="stable") for h in high], entries, repeats),
        "gather relevance + ranks of the relevant": _cpu_ns(
            lambda: [np.flatnonzero(rel1[i].take(order2[i])) for i in rows], entries, repeats),
        "every key from the ranks (_keys_np)": _cpu_ns(keys_in_blocks, entries, repeats),
    }
    alternatives = {
        "torch.sort(stable) values + indices, then gather labels (the former path)": _cpu_ns(
            lambda: torch.gather(dbl[None, :] == ql[:, None], 1, torch.sort(kt, dim=1, stable=True).indices),
            entries, repeats),
        "numpy sort of (key bits << 32 | index) int64, then labels": _cpu_ns(composite_int64_sort, entries, repeats),
        "numpy sort of the float32 keys alone (no ties by index: not usable)": _cpu_ns(
            lambda: np.sort(key, axis=1), entries, repeats),
    }
    whole = _cpu_ns(lambda: evaluate(q, ql, db, dbl, "cosine"), entries, repeats)
    return {"n_query": n_query, "n_database": n_database, "stages": stages, "alternatives": alternatives,
            "evaluate": whole}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.retrieval_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--database", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    print(f"load average at start {loadavg()}")
    r = profile(args.queries, args.database, args.repeats)
    print(f"{r['n_query']} queries x {r['n_database']} database, cosine; CPU ns per entry, one thread (min of "
          f"{args.repeats})")
    total = sum(r["stages"].values())
    for name, ns in r["stages"].items():
        print(f"  {name:<58}{ns:7.2f}  {ns / total:5.1%}")
    print(f"  {'total (each stage over all rows: out of cache)':<58}{total:7.2f}")
    print(f"  {'evaluate(), cosine, itself (row by row, in cache)':<58}{r['evaluate']:7.2f}")
    print("ranking alternatives (ranking only, ties by index):")
    for name, ns in r["alternatives"].items():
        print(f"  {name:<75}{ns:7.2f}")
    print(f"load average at the end {loadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
