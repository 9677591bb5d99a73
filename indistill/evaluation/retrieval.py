"""Retrieval evaluation: mAP / precision of queries ranked against a database (docs/method.md, "Retrieval metrics").

Keys per metric: ``map`` (11-point interpolated, recall levels decided in integers), ``ap_full``
(exact AP), ``p@K``, and ``map_legacy`` / ``p@K_legacy`` (the PKT / MKT / InDistill reference code's
protocol, quirk included). Ranking is by ascending float32 distance, ties broken by database index.

Queries with no relevant item in the database (P = 0) count with AP = 0 in ``map``, ``ap_full`` and
``map_legacy`` (their precisions are 0 too), so every key is a mean over all queries. The reference code
fails on them; with a database drawn from the same classes they do not occur.

``evaluate`` / ``evaluate_all`` run on the inputs' device, in query chunks: the distances are one
float32 matmul per chunk in torch; then only each ranking's relevant positions are kept, since every
key is a function of them. On CUDA (and any non-CPU device) the ranking is a stable ``torch.sort``
and the keys are torch ops on the device. On the CPU each row is ranked by an LSD radix sort of the
float32 keys' bits (two passes of numpy's 16-bit radix argsort, carrying only the relevance bits),
and the keys are computed in numpy, rows split over ``torch.get_num_threads()`` threads: a fraction
of the CPU time of a stable ``torch.sort`` with indices, which bounded the former version
(perf/RESULTS.md). Both paths give the same ranking, ties included, and the same keys. ``reference_evaluate`` is a plain float64 numpy version
of the same keys (one query at a time), for tests and as a brute-force baseline. ``pr_curve`` is the
averaged 11-point curve behind ``map`` (with TP/FP/TN/FN counts, for TensorBoard), from the same
ranking and the same interpolation as the device path.
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from indistill.common.precision import no_tf32

METRICS = ("cosine", "euclidean")
LEVELS = 11  # the recall levels j/10 of the 11-point interpolated precision (``map``)
LEVELS_PER_UNIT = LEVELS - 1
LEGACY_BATCH = 128  # query batch size of the reference code (its quirk depends on it)
# Recall levels exactly as the reference code builds them (0.30000000000000004 etc.).
LEGACY_LEVELS = np.arange(0, 1.01, 0.1)
# Bytes per [chunk, N] entry: a generous bound on the peak of the device path (sort values and indices,
# relevance, nonzero); the CPU path holds only the float32 keys per chunk plus per-thread row buffers.
_BYTES_PER_ENTRY = 32
_CHUNK_BYTES = 256 * 2**20
_ROWS_PER_BLOCK = 16  # CPU path: rows ranked before their keys are computed together (bounds the buffers)
# Whether CPU inputs take the numpy radix path (tests switch it off to run the torch path on the CPU).
_NUMPY_ON_CPU = True


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


def _chunk_step(chunk_size: int | None, n_db: int) -> int:
    """Queries per chunk: ``chunk_size``, or what fits the work-memory budget against ``n_db`` items."""
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return chunk_size or max(1, _CHUNK_BYTES // (_BYTES_PER_ENTRY * n_db))


# ----------------------------------------------------------------------------- CPU: numpy


def _radix_ranks(key: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Ranks (0-based, increasing) of the ``relevant`` entries when 1-D float32 ``key`` is sorted ascending,
    ties by position: what a stable sort would give, without sorting an index array or the floats.

    The key becomes an unsigned 32-bit integer that sorts like it (+0.0 and -0.0 equal; the caller
    makes every NaN the same positive NaN, which sorts last as in ``torch.sort``), split into two 16-bit
    digits. Two stable passes of numpy's radix argsort, low digit first (an LSD radix sort), carry only
    the high digit and the relevance bits. numpy releases the GIL in these calls.
    """
    lo, hi = (0, 1) if np.little_endian else (1, 0)
    u = np.add(key, np.float32(0.0)).view(np.int32)  # -0.0 + 0.0 = +0.0
    flip = u >> 31  # negative floats (sign bit set) flip every bit, the others only the sign bit
    flip |= np.int32(-(2**31))
    u ^= flip
    digits = u.view(np.uint16).reshape(-1, 2)
    order = np.argsort(digits[:, lo], kind="stable")
    high = digits[:, hi].take(order)
    rel = relevant.take(order)
    order = np.argsort(high, kind="stable")
    return np.flatnonzero(rel.take(order))


def _keys_np(
    cols: np.ndarray, p: np.ndarray, n: int, batch_sizes: np.ndarray, ks: Sequence[int]
) -> dict[str, np.ndarray]:
    """Per-query float64 values of every key for ``len(p)`` queries against ``n`` database items.

    ``cols``: the ranks of each query's ``p[i]`` relevant items, concatenated by query, increasing
    within a query. The numpy twin of ``_keys_torch`` (same operations, same float64 rounding).
    """
    m = len(p)
    total = int(p.sum())
    first = np.zeros(m, dtype=np.int64)  # offset of each query's first entry in cols
    np.cumsum(p[:-1], out=first[1:])
    row = np.repeat(np.arange(m), p)
    hits = np.arange(1, total + 1) - first[row]  # hits at each relevant rank
    prec = hits / (cols + 1.0)
    pd = np.maximum(p, 1).astype(np.float64)

    out: dict[str, np.ndarray] = {}
    # 11-point: the max precision over ranks with 10*hits >= j*P is attained at a relevant rank; one
    # with h hits counts for every level j <= (10*h) // P. Buckets are runs of cols (non-decreasing),
    # so a max per run, then the suffix max over a query's 11 buckets.
    bucket = row * LEVELS + (LEVELS_PER_UNIT * hits) // p[row]
    maxima = np.zeros(m * LEVELS)
    if total:
        starts = np.flatnonzero(np.concatenate(([True], bucket[1:] != bucket[:-1])))
        maxima[bucket[starts]] = np.maximum.reduceat(prec, starts)
    out["map"] = np.maximum.accumulate(maxima.reshape(m, LEVELS)[:, ::-1], axis=1)[:, ::-1].mean(1)
    out["ap_full"] = np.bincount(row, weights=prec, minlength=m) / pd
    hits_k: dict[int, np.ndarray] = {}
    for k in ks:
        kc = min(int(k), n)
        hits_k[k] = np.bincount(row[cols < kc], minlength=m)
        out[f"p@{k}"] = hits_k[k] / kc

    # Legacy curve: raw precision, except the first b - 1 ranks (b = the query's legacy batch size)
    # take the running max from the right over ranks [i, b).
    head_len = min(LEGACY_BATCH, n)
    in_head = cols < head_len
    head_rel = np.zeros((m, head_len), dtype=np.int64)
    head_rel[row[in_head], cols[in_head]] = 1
    head = np.cumsum(head_rel, axis=1) / np.arange(1, head_len + 1, dtype=np.float64)
    inside = np.arange(head_len)[None, :] < np.minimum(batch_sizes, n)[:, None]
    smax = np.maximum.accumulate(np.where(inside, head, -1.0)[:, ::-1], axis=1)[:, ::-1]
    quirked = np.where(inside, smax, head)

    def legacy_at(idx: np.ndarray, h: np.ndarray) -> np.ndarray:
        raw = h / (idx + 1.0)
        curve = np.take_along_axis(quirked, np.minimum(idx, head_len - 1), axis=1)
        return np.where(idx < head_len, curve, raw)

    # The rank whose float64 recall hits/P is closest to each level (first on ties); see _keys_torch.
    base = np.floor(LEGACY_LEVELS[None, :] * pd[:, None]).astype(np.int64)
    cand = base[:, :, None] + np.arange(-1, 3)
    cand = np.minimum(np.maximum(cand, head_rel[:, :1, None]), p[:, None, None])
    err = np.abs(cand / pd[:, None, None] - LEGACY_LEVELS[None, :, None])
    best = np.take_along_axis(cand, err.argmin(axis=2)[:, :, None], axis=2)[:, :, 0]  # [m, 11]
    if total:
        entry = np.clip(first[:, None] + best - 1, 0, total - 1)
        idx = np.where(best > 0, cols[entry], 0)
    else:
        idx = np.zeros_like(best)
    out["map_legacy"] = np.where(p > 0, legacy_at(idx, best).mean(1), 0.0)
    for k in ks:
        kc = min(int(k), n)
        out[f"p@{k}_legacy"] = legacy_at(np.full((m, 1), kc - 1), hits_k[k][:, None])[:, 0]
    return out


def _score_rows_np(
    key: np.ndarray,
    q_codes: np.ndarray,
    db_codes: np.ndarray,
    class_sizes: np.ndarray,
    batch_sizes: np.ndarray,
    ks: Sequence[int],
    out: dict[str, np.ndarray],
    rows: range,
) -> None:
    """Every key of the queries ``rows`` of a chunk (``key`` [c, N], float32), into ``out[name][rows]``."""
    n = key.shape[1]
    for lo in range(rows.start, rows.stop, _ROWS_PER_BLOCK):
        hi = min(lo + _ROWS_PER_BLOCK, rows.stop)
        p = class_sizes[q_codes[lo:hi]]
        cols = np.concatenate([_radix_ranks(key[i], db_codes == q_codes[i]) for i in range(lo, hi)])
        for name, values in _keys_np(cols, p, n, batch_sizes[lo:hi], ks).items():
            out[name][lo:hi] = values


# ----------------------------------------------------------------------------- other devices: torch


def _suffix_max(x: Tensor) -> Tensor:
    """Running maximum from the right along dim 1."""
    return torch.cummax(x.flip(1), dim=1).values.flip(1)


def _ranked_relevance(key: Tensor, q_labels: Tensor, db_labels: Tensor) -> Tensor:
    """[c, N] bool: whether the database item at each rank shares the query's label, the ranking
    being the stable ascending sort of ``key`` [c, N] (ties by database index)."""
    order = torch.sort(key, dim=1, stable=True).indices
    return torch.gather(db_labels[None, :] == q_labels[:, None], 1, order)


@dataclass(frozen=True)
class _RelevantRanks:
    """The relevant ranks of a chunk of rankings, which every key is a function of."""

    rows: Tensor  # the query of each relevant entry (row-major: each query's ranks in increasing order)
    cols: Tensor  # its rank, 0-based
    p: Tensor  # [c] the number of relevant items of each query
    first: Tensor  # [c] the offset of each query's first entry in rows/cols
    hits: Tensor  # the hits up to and including each entry's rank

    @classmethod
    def of(cls, rel: Tensor) -> "_RelevantRanks":
        rows, cols = rel.nonzero(as_tuple=True)
        p = torch.bincount(rows, minlength=rel.shape[0])
        first = torch.cumsum(p, 0) - p
        return cls(rows, cols, p, first, torch.arange(rows.numel(), device=rel.device) - first[rows] + 1)

    def precision(self) -> Tensor:
        """float64 precision at each relevant rank."""
        return self.hits.double() / (self.cols + 1).double()

    def interpolated_precision(self, prec: Tensor) -> Tensor:
        """[c, 11] float64: each query's interpolated precision at recall levels j/10 (``map`` is its
        mean). The max precision over ranks with 10*hits >= j*P is attained at a relevant rank; one
        with h hits counts for every level j <= (10*h) // P: a max per bucket, then the suffix max
        over the buckets. A query with P = 0 keeps 0 at every level."""
        c = self.p.shape[0]
        bucket = self.rows * LEVELS + torch.div(LEVELS_PER_UNIT * self.hits, self.p[self.rows], rounding_mode="floor")
        maxima = torch.zeros(c * LEVELS, dtype=torch.float64, device=self.p.device)
        maxima.scatter_reduce_(0, bucket, prec, reduce="amax", include_self=True)
        return _suffix_max(maxima.view(c, LEVELS))


def _keys_torch(
    key: Tensor, q_labels: Tensor, db_labels: Tensor, batch_sizes: Tensor, ks: Sequence[int], levels: Tensor
) -> dict[str, Tensor]:
    """Per-query float64 values of every key for one chunk on the device; ``key`` [c, N] sorts like the distance.

    Only the ranking's relevant positions are kept after the sort: every key is a function of them
    (plus the first 128 ranks for the legacy curve), so no float work buffer [c, N] follows the sort.
    """
    c, n = key.shape
    device = key.device
    rel = _ranked_relevance(key, q_labels, db_labels)
    del key
    ranks = _RelevantRanks.of(rel)
    rows, cols, p, first = ranks.rows, ranks.cols, ranks.p, ranks.first
    has = p > 0
    pd = p.clamp_min(1).double()
    prec = ranks.precision()
    zero = torch.zeros(c, dtype=torch.float64, device=device)

    ap_full = zero.index_add(0, rows, prec) / pd
    out: dict[str, Tensor] = {"map": ranks.interpolated_precision(prec).mean(1), "ap_full": ap_full}
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
        curve = quirked_head.gather(1, idx.clamp(max=head_len - 1))
        return torch.where(idx < head_len, curve, raw)

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


# ----------------------------------------------------------------------------- entry points


def _sort_keys(q: Tensor, db: Tensor, metrics: Sequence[str]) -> Callable[[str, int, int], Tensor]:
    """``sort_key(metric, start, stop)``: [stop - start, N] float32 keys that sort like the distance
    of queries ``q[start:stop]`` to every database item (the per-metric parts computed once)."""
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

    return sort_key


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
    step = _chunk_step(chunk_size, database.shape[0])
    device = query.device
    q = query.detach().to(device, torch.float32)
    db = database.detach().to(device, torch.float32)
    nq = q.shape[0]

    # Labels as compact int32 codes on the device, once for all metrics.
    labels = torch.cat([query_labels.detach().to(device).reshape(-1), database_labels.detach().to(device).reshape(-1)])
    labels = torch.unique(labels, return_inverse=True)[1].to(torch.int32)
    ql, dbl = labels[:nq], labels[nq:]

    # The legacy batch size of every query: 128, or what is left in the last batch.
    starts = torch.arange(nq, device=device) // LEGACY_BATCH * LEGACY_BATCH
    batch_sizes = torch.clamp(nq - starts, max=LEGACY_BATCH)

    sort_key = _sort_keys(q, db, metrics)
    on_cpu = device.type == "cpu" and _NUMPY_ON_CPU
    with no_tf32():  # TF32 (which training code may switch on) would blur the ranking
        if on_cpu:
            values = _evaluate_cpu(sort_key, ql.numpy(), dbl.numpy(), batch_sizes.numpy(), q, db, metrics, ks, step)
        else:
            values = _evaluate_torch(sort_key, ql, dbl, batch_sizes, metrics, ks, step)
    return {m: {name: min(max(values[m][name], 0.0), 1.0) for name in _keys(ks)} for m in metrics}


def _evaluate_cpu(sort_key, q_codes, db_codes, batch_sizes, q, db, metrics, ks, step) -> dict[str, dict[str, float]]:
    nq = len(q_codes)
    class_sizes = np.bincount(db_codes, minlength=int(max(q_codes.max(), db_codes.max())) + 1)
    # Finite inputs of moderate size give finite keys, so no chunk needs its NaNs made uniform.
    qn, dbn = q.numpy(), db.numpy()
    finite = bool(np.isfinite(qn).all() and np.isfinite(dbn).all() and np.abs(dbn).max() < 1e18)
    threads = max(1, torch.get_num_threads())
    out = {m: {name: np.empty(nq) for name in _keys(ks)} for m in metrics}
    with ThreadPoolExecutor(threads) if threads > 1 else contextlib.nullcontext() as pool:
        for start in range(0, nq, step):
            stop = min(start + step, nq)
            c = stop - start
            for m in metrics:
                key = sort_key(m, start, stop)
                if not finite:
                    key = torch.where(torch.isnan(key), torch.full_like(key, float("nan")), key)
                args = (key.contiguous().numpy(), q_codes[start:stop], db_codes, class_sizes,
                        batch_sizes[start:stop], ks, {name: v[start:stop] for name, v in out[m].items()})
                if pool is None or c < 2:
                    _score_rows_np(*args, range(c))
                else:
                    part = -(-c // threads)
                    jobs = [pool.submit(_score_rows_np, *args, range(s, min(s + part, c))) for s in range(0, c, part)]
                    for job in jobs:
                        job.result()
                del key, args
    return {m: {name: float(v.mean()) for name, v in out[m].items()} for m in metrics}


def _evaluate_torch(sort_key, ql, dbl, batch_sizes, metrics, ks, step) -> dict[str, dict[str, float]]:
    nq = ql.shape[0]
    levels = torch.from_numpy(LEGACY_LEVELS).to(ql.device)
    per_query: dict[str, dict[str, list[Tensor]]] = {m: {} for m in metrics}
    for start in range(0, nq, step):
        stop = min(start + step, nq)
        for m in metrics:
            # The key is passed without a local name so _keys_torch can free it once it is ranked.
            stats = _keys_torch(sort_key(m, start, stop), ql[start:stop], dbl, batch_sizes[start:stop], ks, levels)
            for name, values in stats.items():
                per_query[m].setdefault(name, []).append(values)
    return {m: {name: float(torch.cat(v).mean()) for name, v in per_query[m].items()} for m in metrics}


@dataclass(frozen=True)
class PRCurve:
    """The 11-point interpolated precision-recall curve of a retrieval, averaged over the queries.

    ``precision[j]``: the mean over queries of the interpolated precision at recall level j/10 (the
    highest precision at any rank whose recall is at least j/10; in integers, 10·hits >= j·positives),
    so ``precision.mean()`` is the ``map`` key; ``recall[j]`` = j/10. ``tp`` ... ``fn``: counts
    summed over the queries, each query cut at the first rank whose recall reaches the level (rank 1
    for level 0; a query with no relevant item: rank 1). float64, on the CPU.
    """

    precision: Tensor
    recall: Tensor
    tp: Tensor
    fp: Tensor
    tn: Tensor
    fn: Tensor


@torch.no_grad()
def pr_curve(
    query: Tensor,
    query_labels: Tensor,
    database: Tensor,
    database_labels: Tensor,
    metric: str = "cosine",
    chunk_size: int | None = None,
) -> PRCurve:
    """:class:`PRCurve` of ``query`` ranked against ``database`` by ``metric``, ranked as
    :func:`evaluate` ranks, in query chunks on the inputs' device."""
    _check_inputs(query, query_labels, database, database_labels, (metric,), ())
    device = query.device
    q = query.detach().to(device, torch.float32)
    db = database.detach().to(device, torch.float32)
    ql, dbl = query_labels.detach().to(device).reshape(-1), database_labels.detach().to(device).reshape(-1)
    nq, n = q.shape[0], db.shape[0]
    sort_key = _sort_keys(q, db, (metric,))
    levels = torch.arange(LEVELS, device=device)
    precision = torch.zeros(LEVELS, dtype=torch.float64, device=device)
    counts = torch.zeros(4, LEVELS, dtype=torch.float64, device=device)  # tp, fp, tn, fn
    step = _chunk_step(chunk_size, n)
    with no_tf32():  # TF32 (which training code may switch on) would blur the ranking
        for start in range(0, nq, step):
            stop = min(start + step, nq)
            c = stop - start
            rel = _ranked_relevance(sort_key(metric, start, stop), ql[start:stop], dbl)
            first_rel = rel[:, 0].double()  # hits at rank 1
            r = _RelevantRanks.of(rel)
            del rel
            precision += r.interpolated_precision(r.precision()).sum(0)
            # the first rank reaching level j > 0 holds the ceil(j*P/10)-th relevant item; level 0 (and
            # every level of a query with P = 0): rank 1
            need = torch.div(levels[None, :] * r.p[:, None] + LEVELS_PER_UNIT - 1, LEVELS_PER_UNIT, rounding_mode="floor")
            found = need > 0
            at = (r.first[:, None] + need - 1).clamp(0, max(r.rows.numel() - 1, 0))
            ones = torch.ones_like(need)
            rank = torch.where(found, r.cols[at] + 1 if r.rows.numel() else ones, ones).double()
            tp = torch.where(found, need.double(), first_rel[:, None].expand(c, LEVELS))
            pd = r.p[:, None].double()
            counts += torch.stack([tp, rank - tp, n - rank - (pd - tp), pd - tp]).sum(1)
    tp, fp, tn, fn = counts.cpu()
    return PRCurve(precision=(precision / nq).cpu(), recall=levels.double().cpu() / LEVELS_PER_UNIT, tp=tp, fp=fp, tn=tn, fn=fn)


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
