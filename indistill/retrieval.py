"""Retrieval evaluation: mAP / precision of queries ranked against a database (DESIGN.md section 4).

Keys per metric: ``map`` (11-point interpolated, recall levels decided in integers), ``ap_full``
(exact AP), ``p@K``, and ``map_legacy`` / ``p@K_legacy`` (the PKT / MKT / InDistill reference code's
protocol, quirk included). Ranking is by ascending distance, ties broken by database index.

Queries with no relevant item in the database (P = 0) count with AP = 0 in ``map``, ``ap_full`` and
``map_legacy`` (their precisions are 0 too), so every key is a mean over all queries. The reference code
fails on them; with a database drawn from the same classes they do not occur.

``evaluate`` / ``evaluate_all`` run in torch on the inputs' device, in query chunks; ``reference_evaluate``
is a plain float64 numpy version of the same keys, for tests and as a brute-force baseline.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

METRICS = ("cosine", "euclidean")
LEGACY_BATCH = 128  # query batch size of the reference code (its quirk depends on it)
# Recall levels exactly as the reference code builds them (0.30000000000000004 etc.).
LEGACY_LEVELS = np.arange(0, 1.01, 0.1)
# Bytes of [chunk, N] work buffers per database entry, a generous bound on the peak in _chunk_stats.
_BYTES_PER_ENTRY = 32
_CHUNK_BYTES = 256 * 2**20


def _keys(ks: Sequence[int]) -> list[str]:
    return ["map", "ap_full", *[f"p@{k}" for k in ks], "map_legacy", *[f"p@{k}_legacy" for k in ks]]


def _check_inputs(
    query: Tensor | np.ndarray,
    query_labels: Tensor | np.ndarray,
    database: Tensor | np.ndarray,
    database_labels: Tensor | np.ndarray,
    metrics: Iterable[str],
    ks: Sequence[int],
) -> None:
    for m in metrics:
        if m not in METRICS:
            raise ValueError(f"unknown retrieval metric {m!r}; choose from: {', '.join(METRICS)}")
    for k in ks:
        if int(k) != k or k < 1:
            raise ValueError(f"ks must be positive integers, got {list(ks)}")
    if query.ndim != 2 or database.ndim != 2 or query.shape[1] != database.shape[1]:
        raise ValueError(
            f"query and database must be [n, dim] with the same dim, got {tuple(query.shape)} "
            f"and {tuple(database.shape)}"
        )
    if query.shape[0] == 0 or database.shape[0] == 0:
        raise ValueError("query and database must not be empty")
    if tuple(query_labels.shape) != (query.shape[0],) or tuple(database_labels.shape) != (database.shape[0],):
        raise ValueError(
            f"labels must be 1-D with one entry per row: query {tuple(query.shape)} / labels "
            f"{tuple(query_labels.shape)}, database {tuple(database.shape)} / labels {tuple(database_labels.shape)}"
        )


def _default_chunk(n_db: int) -> int:
    return max(1, _CHUNK_BYTES // (_BYTES_PER_ENTRY * n_db))


def _suffix_max(x: Tensor) -> Tensor:
    """Running maximum from the right along dim 1."""
    return torch.cummax(x.flip(1), dim=1).values.flip(1)


def _chunk_stats(
    key: Tensor,
    q_labels: Tensor,
    db_labels: Tensor,
    batch_sizes: Tensor,
    ks: Sequence[int],
    levels: Tensor,
) -> dict[str, Tensor]:
    """Per-query float64 values of every key for one chunk; ``key`` [c, N] sorts like the distance.

    Only the ranking's relevant positions are kept after the sort: every key is a function of them
    (plus the first 128 ranks for the legacy curve), so no float work buffer [c, N] follows the sort.
    """
    c, n = key.shape
    device = key.device
    order = torch.sort(key, dim=1, stable=True).indices
    del key
    rel = torch.gather(db_labels[None, :] == q_labels[:, None], 1, order)
    del order
    rows, cols = rel.nonzero(as_tuple=True)  # row-major: each row's relevant ranks in increasing order
    p = torch.bincount(rows, minlength=c)
    has = p > 0
    pd = p.clamp_min(1).double()
    first = torch.cumsum(p, 0) - p  # offset of each row's first relevant entry in rows/cols
    hits_at = torch.arange(rows.numel(), device=device) - first[rows] + 1  # hits at that rank
    prec = hits_at.double() / (cols + 1).double()
    zero = torch.zeros(c, dtype=torch.float64, device=device)

    ap_full = zero.index_add(0, rows, prec) / pd

    # 11-point: the max precision over ranks with 10*hits >= j*P is attained at a relevant rank; one
    # with h hits counts for every level j <= (10*h) // P. Max per bucket, then suffix max over buckets.
    bucket = rows * 11 + torch.div(10 * hits_at, p[rows], rounding_mode="floor")
    maxima = torch.zeros(c * 11, dtype=torch.float64, device=device)
    maxima.scatter_reduce_(0, bucket, prec, reduce="amax", include_self=True)
    ap11 = _suffix_max(maxima.view(c, 11)).mean(1)

    out: dict[str, Tensor] = {"map": ap11, "ap_full": ap_full}
    hits_k: dict[int, Tensor] = {}
    for k in ks:
        kc = min(int(k), n)
        hits_k[k] = rel[:, :kc].sum(1)
        out[f"p@{k}"] = hits_k[k].double() / kc

    # Legacy curve: raw precision, except the first b - 1 ranks (b = the query's legacy batch size)
    # take the running max from the right over ranks [i, b).
    head_len = min(LEGACY_BATCH, n)
    col = torch.arange(head_len, device=device)
    head = rel[:, :head_len].cumsum(1).double() / (col + 1).double()
    b = batch_sizes.clamp(max=n)[:, None]
    smax = _suffix_max(torch.where(col < b, head, torch.full_like(head, -1.0)))
    quirked_head = torch.where(col < b, smax, head)

    def legacy_at(idx: Tensor, hits: Tensor) -> Tensor:
        raw = hits.double() / (idx + 1).double()
        in_head = quirked_head.gather(1, idx.clamp(max=head_len - 1))
        return torch.where(idx < head_len, in_head, raw)

    # The rank whose float64 recall hits/P is closest to each level (first on ties). |h/P - level| is
    # monotone on either side of the level, so the best hit count is next to floor(level*P);
    # rounding can shift that by one, hence four candidates. Counts below hits[0] never occur.
    hits0 = rel[:, :1].long()
    base = torch.floor(levels[None, :] * pd[:, None]).long()
    cand = base[:, :, None] + torch.arange(-1, 3, device=device)
    cand = torch.minimum(torch.maximum(cand, hits0[:, :, None]), p[:, None, None])
    err = (cand.double() / pd[:, None, None] - levels[None, :, None]).abs()
    best = cand.gather(2, err.argmin(dim=2, keepdim=True)).squeeze(2)  # [c, 11]
    # First rank with `best` hits: the best-th relevant rank, or rank 0 for best == 0.
    if cols.numel() == 0:
        cols = torch.zeros(1, dtype=torch.long, device=device)
    entry = (first[:, None] + best - 1).clamp(0, cols.numel() - 1)
    idx = torch.where(best > 0, cols[entry], torch.zeros_like(best))
    out["map_legacy"] = torch.where(has, legacy_at(idx, best).mean(1), zero)
    for k in ks:
        kc = min(int(k), n)
        idx_k = torch.full((c, 1), kc - 1, device=device)
        out[f"p@{k}_legacy"] = legacy_at(idx_k, hits_k[k][:, None]).squeeze(1)
    return out


@torch.no_grad()
def evaluate_all(
    query: Tensor,
    query_labels: Tensor,
    database: Tensor,
    database_labels: Tensor,
    metrics: Sequence[str] = METRICS,
    ks: Sequence[int] = (10, 50, 100),
    chunk_size: int | None = None,
) -> dict[str, dict[str, float]]:
    """``{metric: {key: value}}`` for each metric, in one pass over query chunks on the inputs' device."""
    metrics = tuple(metrics)
    ks = tuple(int(k) for k in ks)
    _check_inputs(query, query_labels, database, database_labels, metrics, ks)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    device = query.device
    q = query.detach().to(device, torch.float32)
    db = database.detach().to(device, torch.float32)
    nq, n = q.shape[0], db.shape[0]

    # Labels as compact int32 codes on the device, once for all metrics.
    labels = torch.cat([query_labels.detach().to(device).reshape(-1), database_labels.detach().to(device).reshape(-1)])
    labels = torch.unique(labels, return_inverse=True)[1].to(torch.int32)
    ql, dbl = labels[:nq], labels[nq:]

    # The legacy batch size of every query: 128, or what is left in the last batch.
    starts = torch.arange(nq, device=device) // LEGACY_BATCH * LEGACY_BATCH
    batch_sizes = torch.clamp(nq - starts, max=LEGACY_BATCH)
    levels = torch.from_numpy(LEGACY_LEVELS).to(device)

    if "cosine" in metrics:
        q_unit = F.normalize(q, dim=1)
        neg_db_unit_t = -F.normalize(db, dim=1).t()  # q_unit @ this = -cosine: ascending like the distance
    if "euclidean" in metrics:
        db_t = db.t()
        db_sq = db.pow(2).sum(1)

    def sort_key(metric: str, start: int, stop: int) -> Tensor:
        if metric == "cosine":
            return q_unit[start:stop] @ neg_db_unit_t
        # |x|^2 - 2 q.x is the squared distance minus the row constant |q|^2: the same order, without
        # the rounding of adding |q|^2 (so no clamp at 0 is needed either).
        return torch.addmm(db_sq[None, :], q[start:stop], db_t, alpha=-2.0)

    per_query: dict[str, dict[str, list[Tensor]]] = {m: {} for m in metrics}
    step = chunk_size or _default_chunk(n)
    # Full fp32 matmuls: TF32 (which training code may switch on) would blur the ranking.
    matmul_precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        for start in range(0, nq, step):
            stop = min(start + step, nq)
            for m in metrics:
                # The key is passed without a local name so _chunk_stats can free it after sorting.
                stats = _chunk_stats(sort_key(m, start, stop), ql[start:stop], dbl, batch_sizes[start:stop], ks, levels)
                for name, values in stats.items():
                    per_query[m].setdefault(name, []).append(values)
    finally:
        torch.set_float32_matmul_precision(matmul_precision)

    results: dict[str, dict[str, float]] = {}
    for m in metrics:
        means = {name: torch.cat(v).mean() for name, v in per_query[m].items()}
        results[m] = {name: min(max(float(means[name]), 0.0), 1.0) for name in _keys(ks)}
    return results


def evaluate(
    query: Tensor,
    query_labels: Tensor,
    database: Tensor,
    database_labels: Tensor,
    metric: str = "cosine",
    ks: Sequence[int] = (10, 50, 100),
    chunk_size: int | None = None,
) -> dict[str, float]:
    """``{key: value}`` of one metric (``cosine`` or ``euclidean``); see the module docstring."""
    return evaluate_all(query, query_labels, database, database_labels, (metric,), ks, chunk_size)[metric]


def reference_evaluate(
    query: Tensor | np.ndarray,
    query_labels: Tensor | np.ndarray,
    database: Tensor | np.ndarray,
    database_labels: Tensor | np.ndarray,
    metric: str = "cosine",
    ks: Sequence[int] = (10, 50, 100),
) -> dict[str, float]:
    """Straightforward float64 numpy version of ``evaluate`` (per-query loop), for tests and benchmarks."""

    def as_np(x: Tensor | np.ndarray) -> np.ndarray:
        return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)

    ks = tuple(int(k) for k in ks)
    _check_inputs(query, query_labels, database, database_labels, (metric,), ks)
    q, db = as_np(query).astype(np.float64), as_np(database).astype(np.float64)
    ql, dbl = as_np(query_labels), as_np(database_labels)
    nq, n = q.shape[0], db.shape[0]
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        db = db / np.maximum(np.linalg.norm(db, axis=1, keepdims=True), 1e-12)
    ranks = np.arange(1, n + 1)
    sums = dict.fromkeys(_keys(ks), 0.0)

    for start in range(0, nq, LEGACY_BATCH):
        batch = range(start, min(start + LEGACY_BATCH, nq))
        b = len(batch)
        prec = np.zeros((b, n))
        recall = np.zeros((b, n))
        positives = np.zeros(b, dtype=np.int64)
        for row, i in enumerate(batch):
            if metric == "cosine":
                dist = 1.0 - db @ q[i]
            else:
                dist = np.sqrt(((db - q[i]) ** 2).sum(axis=1))
            order = np.argsort(dist, kind="stable")
            rel = dbl[order] == ql[i]
            hits = np.cumsum(rel)
            P = int(hits[-1])
            positives[row] = P
            prec[row] = hits / ranks
            recall[row] = hits / max(P, 1)
            if P > 0:
                sums["ap_full"] += prec[row][rel].mean()
                sums["map"] += np.mean([prec[row][10 * hits >= j * P].max() for j in range(11)])
            for k in ks:
                kc = min(k, n)
                sums[f"p@{k}"] += hits[kc - 1] / kc

        # The reference code's quirk: running max from the right over the first b - 1 ranks only.
        for col in range(min(b, n) - 2, -1, -1):
            prec[:, col] = np.maximum(prec[:, col], prec[:, col + 1])
        for row in range(b):
            if positives[row] > 0:
                sums["map_legacy"] += np.mean(
                    [prec[row, np.argmin(np.abs(recall[row] - level))] for level in LEGACY_LEVELS]
                )
            for k in ks:
                sums[f"p@{k}_legacy"] += prec[row, min(k, n) - 1]

    return {name: min(max(float(total / nq), 0.0), 1.0) for name, total in sums.items()}
