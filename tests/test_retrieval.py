"""Retrieval evaluation: hand-built cases, the legacy quirk, agreement with the float64 reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from indistill.evaluation.retrieval import LEGACY_LEVELS, evaluate, evaluate_all, pr_curve, reference_evaluate

METRICS = ("cosine", "euclidean")


def _check_all(got: dict[str, float], expected: dict[str, float], tol: float = 1e-12) -> None:
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=tol), key


def _line_case(rel_pattern: list[int], n_queries: int = 1) -> tuple[torch.Tensor, ...]:
    """Query at x = -1 (label 1), database item i at x = i + 1: both metrics rank by index
    (euclidean by increasing distance, cosine because every cosine is -1: all tied, stable order)."""
    n = len(rel_pattern)
    query = torch.full((n_queries, 1), -1.0)
    query_labels = torch.ones(n_queries, dtype=torch.long)
    database = torch.arange(1, n + 1, dtype=torch.float32)[:, None]
    database_labels = torch.tensor(rel_pattern, dtype=torch.long)
    return query, query_labels, database, database_labels


def test_hand_built_six_items():
    # Ranking (both metrics) = database order; relevant at ranks 1, 3, 6, so P = 3.
    # precision at ranks 1..6: 1, 1/2, 2/3, 2/4, 2/5, 3/6
    # ap_full = (1 + 2/3 + 3/6) / 3 = 13/18
    # 11-point: hits=1 satisfies 10*1 >= 3j for j <= 3, hits=2 for j <= 6, hits=3 for all j.
    #   j=0..3: max over all ranks = 1; j=4..6: max over ranks 3..6 = 2/3; j=7..10: rank 6 = 1/2
    #   map = (4*1 + 3*(2/3) + 4*(1/2)) / 11 = 8/11
    # p@1 = 1, p@2 = 1/2, p@4 = 2/4, p@10 -> capped at 6 = 3/6
    # legacy: one query, so b = 1 and the curve stays raw. recall per rank: 1/3 1/3 2/3 2/3 2/3 1.
    #   levels 0, .1, .2, .3, .4 -> rank 1 (precision 1)
    #   level .5: |1/3 - .5| = 0.16666666666666669 > |2/3 - .5| = 0.16666666666666663 -> rank 3 (2/3)
    #   levels .6, .7, .8 -> rank 3 (2/3); levels .9, 1 -> rank 6 (1/2)
    #   map_legacy = (5*1 + 4*(2/3) + 2*(1/2)) / 11 = 26/33; p@K_legacy = raw precision = p@K
    assert abs(1 / 3 - LEGACY_LEVELS[5]) > abs(2 / 3 - LEGACY_LEVELS[5])  # the float64 fact used above
    expected = {
        "map": 8 / 11,
        "ap_full": 13 / 18,
        "p@1": 1.0,
        "p@2": 0.5,
        "p@4": 0.5,
        "p@10": 0.5,
        "map_legacy": 26 / 33,
        "p@1_legacy": 1.0,
        "p@2_legacy": 0.5,
        "p@4_legacy": 0.5,
        "p@10_legacy": 0.5,
    }
    data = _line_case([1, 0, 1, 0, 0, 1])
    for metric in METRICS:
        _check_all(evaluate(*data, metric=metric, ks=(1, 2, 4, 10)), expected)
        _check_all(reference_evaluate(*data, metric=metric, ks=(1, 2, 4, 10)), expected)


def test_legacy_quirk_beyond_batch_and_last_smaller_batch():
    # 200 database items: ranks 1..100 irrelevant, ranks 101..200 relevant (P = 100).
    # 130 identical queries: queries 0..127 form a batch of b = 128, queries 128..129 one of b = 2.
    # raw precision at 0-based index i >= 100: (i - 99) / (i + 1), increasing up to 100/200 = 1/2.
    # legacy levels: level j/10 is matched exactly by recall 10j/100, i.e. index 99 + 10j (j >= 1);
    #   level 0 by recall 0 at index 0.
    # b = 128: indices < 127 take max(raw[i..127]) = raw[127] = 28/128 (for i <= 127); later indices raw.
    #   AP = (3 * 28/128 + sum_{j=3..10} j / (10 + j)) / 11   (j = 0, 1, 2 land at indices 0, 109, 119)
    # b = 2: only index 0 takes max(raw[0], raw[1]) = 0; AP = (0 + sum_{j=1..10} j / (10 + j)) / 11
    # Without the quirk (full running max) every level would read 1/2.
    tail = sum(j / (10 + j) for j in range(3, 11))
    ap_128 = (3 * 28 / 128 + tail) / 11
    ap_2 = (sum(j / (10 + j) for j in range(1, 11))) / 11
    # 11-point: every level's max is at the last rank (1/2); ap_full = mean_k k / (100 + k).
    # p@1 = 0, p@128 = 28/128, p@150 = 50/150 (index 149 has 50 hits).
    # p@1_legacy: b = 128 reads max(raw[0..127]) = 28/128, b = 2 reads max(raw[0], raw[1]) = 0.
    # p@128_legacy: index 127 = b - 1 keeps raw 28/128; p@150_legacy: raw 50/150.
    expected = {
        "map": 0.5,
        "ap_full": sum(k / (100 + k) for k in range(1, 101)) / 100,
        "p@1": 0.0,
        "p@128": 28 / 128,
        "p@150": 50 / 150,
        "map_legacy": (128 * ap_128 + 2 * ap_2) / 130,
        "p@1_legacy": (128 * 28 / 128 + 2 * 0.0) / 130,
        "p@128_legacy": 28 / 128,
        "p@150_legacy": 50 / 150,
    }
    data = _line_case([0] * 100 + [1] * 100, n_queries=130)
    for metric in METRICS:
        _check_all(evaluate(*data, metric=metric, ks=(1, 128, 150)), expected)
        _check_all(evaluate(*data, metric=metric, ks=(1, 128, 150), chunk_size=50), expected)
        _check_all(reference_evaluate(*data, metric=metric, ks=(1, 128, 150)), expected)


def test_queries_without_relevant_items_count_as_zero():
    # Query 0 (label 1) finds its only relevant item first: AP 1. Query 1 (label 7) has P = 0: AP 0.
    query = torch.tensor([[-1.0], [-1.0]])
    query_labels = torch.tensor([1, 7])
    database = torch.tensor([[1.0], [2.0], [3.0]])
    database_labels = torch.tensor([1, 0, 0])
    expected = {
        "map": 0.5,
        "ap_full": 0.5,
        "p@1": 0.5,
        "p@3": (1 / 3 + 0) / 2,
        "map_legacy": 0.5,
        # b = 2 quirk: index 0 takes max(raw[0], raw[1]); query 0: max(1, 1/2) = 1, query 1: 0.
        "p@1_legacy": 0.5,
        "p@3_legacy": (1 / 3 + 0) / 2,
    }
    for metric in METRICS:
        _check_all(evaluate(query, query_labels, database, database_labels, metric, ks=(1, 3)), expected)
        _check_all(reference_evaluate(query, query_labels, database, database_labels, metric, ks=(1, 3)), expected)


def _dyadic_data(nq: int, n: int, dim: int = 16, classes: int = 10, seed: int = 0):
    """Unit vectors with entries +-1/4 (class sign pattern, each sign flipped with p = 0.3).

    Norms, dot products and squared distances are exact in float32 and float64, so both
    implementations see the same values and the same (many) ties, broken by index.
    """
    rng = np.random.default_rng(seed)
    prototypes = rng.choice([-1.0, 1.0], size=(classes, dim))

    def draw(count: int):
        labels = rng.integers(0, classes, count)
        flips = np.where(rng.random((count, dim)) < 0.3, -1.0, 1.0)
        return torch.tensor(prototypes[labels] * flips / 4, dtype=torch.float32), torch.tensor(labels)

    q, ql = draw(nq)
    db, dbl = draw(n)
    return q, ql, db, dbl


def _integer_data(nq: int, n: int, dim: int = 16, classes: int = 10, seed: int = 1):
    """Integer coordinates: euclidean distances (and |x|^2 - 2 q.x) are exact, ties identical."""
    rng = np.random.default_rng(seed)
    centers = rng.integers(-6, 7, size=(classes, dim))

    def draw(count: int):
        labels = rng.integers(0, classes, count)
        x = centers[labels] + rng.integers(-4, 5, size=(count, dim))
        return torch.tensor(x, dtype=torch.float32), torch.tensor(labels)

    q, ql = draw(nq)
    db, dbl = draw(n)
    return q, ql, db, dbl


@pytest.mark.parametrize(
    "data, metric",
    [
        (_dyadic_data(300, 1000), "cosine"),
        (_dyadic_data(300, 1000), "euclidean"),
        (_integer_data(300, 1000), "euclidean"),
    ],
    ids=["dyadic-cosine", "dyadic-euclidean", "integer-euclidean"],
)
def test_agrees_with_reference(data, metric):
    got = evaluate(*data, metric=metric)
    ref = reference_evaluate(*data, metric=metric)
    assert set(got) == set(ref)
    for key in ref:
        assert abs(got[key] - ref[key]) < 1e-6, key
    assert 0.2 < got["map"] < 0.95  # a non-trivial ranking


def test_agrees_with_reference_on_continuous_data():
    # Well-separated random points: far fewer database items than the float32 resolution of the
    # distances can confuse, so the ranking is unambiguous.
    g = torch.Generator().manual_seed(0)
    classes = torch.randint(0, 5, (40,), generator=g), torch.randint(0, 5, (60,), generator=g)
    centers = torch.randn(5, 8, generator=g) * 2
    q = centers[classes[0]] + torch.randn(40, 8, generator=g)
    db = centers[classes[1]] + torch.randn(60, 8, generator=g)
    for metric in METRICS:
        got = evaluate(q, classes[0], db, classes[1], metric, ks=(5, 20))
        ref = reference_evaluate(q, classes[0], db, classes[1], metric, ks=(5, 20))
        for key in ref:
            assert abs(got[key] - ref[key]) < 1e-6, (metric, key)


@pytest.mark.parametrize("nq, n", [(1, 1), (5, 2), (129, 40), (260, 130), (3, 300)])
def test_edge_sizes_agree_with_reference(nq, n):
    data = _dyadic_data(nq, n, classes=4, seed=nq + n)
    for metric in METRICS:
        got = evaluate(*data, metric=metric, ks=(1, 10, 500))
        ref = reference_evaluate(*data, metric=metric, ks=(1, 10, 500))
        for key in ref:
            assert abs(got[key] - ref[key]) < 1e-9, (metric, key)


def test_chunk_size_invariance_and_evaluate_all():
    data = _dyadic_data(300, 1000, seed=3)
    both = evaluate_all(*data, metrics=METRICS)
    small = evaluate_all(*data, metrics=METRICS, chunk_size=7)
    for metric in METRICS:
        single = evaluate(*data, metric=metric)
        for key in single:
            assert abs(small[metric][key] - both[metric][key]) < 1e-12
            assert abs(single[key] - both[metric][key]) < 1e-12


def test_values_are_python_floats_in_unit_interval():
    g = torch.Generator().manual_seed(5)
    q, db = torch.randn(50, 8, generator=g), torch.randn(200, 8, generator=g)
    ql, dbl = torch.randint(0, 3, (50,), generator=g), torch.randint(0, 3, (200,), generator=g)
    results = evaluate_all(q, ql, db, dbl)
    assert set(results) == set(METRICS)
    for values in results.values():
        assert list(values) == [
            "map", "ap_full", "p@10", "p@50", "p@100", "map_legacy", "p@10_legacy", "p@50_legacy", "p@100_legacy",
        ]
        for value in values.values():
            assert type(value) is float and 0.0 <= value <= 1.0


def test_perfect_embedding_scores_one():
    # Each class is one tight cluster far from the others: every ranking puts the class first.
    centers = torch.eye(4) * 10
    db_labels = torch.arange(4).repeat_interleave(25)
    q_labels = torch.arange(4).repeat(10)
    g = torch.Generator().manual_seed(6)
    db = centers[db_labels] + 0.01 * torch.randn(100, 4, generator=g)
    q = centers[q_labels] + 0.01 * torch.randn(40, 4, generator=g)
    for metric in METRICS:
        res = evaluate(q, q_labels, db, db_labels, metric, ks=(10, 25))
        for key in ("map", "ap_full", "p@10", "p@25", "map_legacy", "p@10_legacy", "p@25_legacy"):
            assert res[key] == 1.0, (metric, key)


def test_bad_inputs():
    q, db = torch.randn(3, 4), torch.randn(5, 4)
    ql, dbl = torch.zeros(3, dtype=torch.long), torch.zeros(5, dtype=torch.long)
    with pytest.raises(ValueError, match="cosine"):
        evaluate(q, ql, db, dbl, metric="manhattan")
    with pytest.raises(ValueError):
        evaluate(q, ql, torch.randn(5, 3), dbl)
    with pytest.raises(ValueError):
        evaluate(q, ql, db, dbl[:4])
    with pytest.raises(ValueError):
        evaluate(q, ql, db, dbl, ks=(0,))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_and_reference():
    data = _dyadic_data(300, 1000, seed=7)
    cuda_data = [t.cuda() for t in data]
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")  # as training code may leave it; evaluation must not care
    try:
        on_gpu = evaluate_all(*cuda_data, metrics=METRICS)
        small_chunks = evaluate_all(*cuda_data, metrics=METRICS, chunk_size=7)
    finally:
        torch.set_float32_matmul_precision(previous)
    for metric in METRICS:
        on_cpu = evaluate(*data, metric=metric)
        ref = reference_evaluate(*data, metric=metric)
        for key in ref:
            assert abs(on_gpu[metric][key] - on_cpu[key]) < 1e-9, (metric, key)
            assert abs(small_chunks[metric][key] - on_cpu[key]) < 1e-9, (metric, key)
            assert abs(on_gpu[metric][key] - ref[key]) < 1e-6, (metric, key)


# ----------------------------------------------------------------------------- the CPU radix path


@pytest.fixture
def torch_path(monkeypatch):
    """Rank with torch.sort and compute the keys in torch on the CPU too (the path of other devices)."""
    import indistill.evaluation.retrieval as retrieval

    monkeypatch.setattr(retrieval, "_NUMPY_ON_CPU", False)


@pytest.mark.parametrize("nq, n", [(1, 1), (5, 2), (129, 40), (260, 130), (300, 1000)])
def test_torch_path_agrees_with_the_cpu_path(nq, n, request):
    data = _dyadic_data(nq, n, classes=4, seed=nq + n)
    ks = (1, 10, 500)
    numpy_path = evaluate_all(*data, ks=ks, chunk_size=97)
    request.getfixturevalue("torch_path")
    torch_path = evaluate_all(*data, ks=ks, chunk_size=97)
    for metric in METRICS:
        for key, value in numpy_path[metric].items():
            assert abs(value - torch_path[metric][key]) < 1e-12, (metric, key)


def test_thread_count_does_not_change_results():
    data = _integer_data(257, 700, seed=4)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = evaluate_all(*data)
        torch.set_num_threads(3)
        three = evaluate_all(*data, chunk_size=100)
    finally:
        torch.set_num_threads(previous)
    for metric in METRICS:
        for key, value in one[metric].items():
            assert abs(value - three[metric][key]) < 1e-12, (metric, key)


def test_radix_ranks_is_a_stable_sort_of_the_floats():
    # Ties, +-0.0 (equal), +-inf, subnormals and NaN (one canonical NaN, as evaluate_all makes them):
    # the ranks of the marked entries must be where a stable sort of the floats puts them.
    from indistill.evaluation.retrieval import _radix_ranks

    rng = np.random.default_rng(0)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 3.4e38, -3.4e38], dtype=np.float32)
    for trial in range(20):
        n = int(rng.integers(1, 3000))
        pool = np.concatenate([special, rng.standard_normal(50).astype(np.float32), np.float32([1.5, -2.25])])
        scale = np.float32(10.0 ** rng.integers(-30, 30))
        key = rng.choice(pool, n) if trial % 2 else rng.standard_normal(n).astype(np.float32) * scale
        relevant = rng.random(n) < 0.3
        expected = np.flatnonzero(relevant[np.argsort(key, kind="stable")])
        assert np.array_equal(_radix_ranks(key.astype(np.float32), relevant), expected), trial


def test_nan_embeddings_rank_last_by_index(request):
    # A NaN database row has NaN distances to every query: it ranks after every number, NaN rows among
    # themselves by index (as numpy's and torch's sorts order NaN). A NaN query ties everything.
    q, ql, db, dbl = _integer_data(40, 120, classes=3, seed=5)
    db[[3, 50, 51]] = float("nan")
    q[7] = float("nan")
    for metric in METRICS:
        ref = reference_evaluate(q, ql, db, dbl, metric, ks=(10, 119, 120))
        got = evaluate(q, ql, db, dbl, metric, ks=(10, 119, 120))
        for key in ref:
            assert abs(got[key] - ref[key]) < 1e-12, (metric, key)
    request.getfixturevalue("torch_path")
    for metric in METRICS:
        ref = reference_evaluate(q, ql, db, dbl, metric, ks=(10, 119, 120))
        got = evaluate(q, ql, db, dbl, metric, ks=(10, 119, 120))
        for key in ref:
            assert abs(got[key] - ref[key]) < 1e-12, (metric, key)


def test_many_classes_and_arbitrary_label_values():
    # 60 classes with labels far from 0..C-1 (some absent from the database), a database smaller than
    # the legacy batch, ks beyond it.
    q, ql, db, dbl = _dyadic_data(150, 90, classes=60, seed=9)
    ql, dbl = ql * 1000 - 7, dbl * 1000 - 7
    for metric in METRICS:
        got = evaluate(q, ql, db, dbl, metric, ks=(1, 5, 200))
        ref = reference_evaluate(q, ql, db, dbl, metric, ks=(1, 5, 200))
        for key in ref:
            assert abs(got[key] - ref[key]) < 1e-12, (metric, key)


# ----------------------------------------------------------------------------- the PR curve behind map


def _two_query_case():
    """One-dimensional items, euclidean ranking, worked by hand in the test below."""
    database = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    db_labels = torch.tensor([0, 1, 0, 1])
    queries = torch.tensor([[0.0], [2.4]])
    q_labels = torch.tensor([0, 1])
    return queries, q_labels, database, db_labels


def test_pr_curve_by_hand():
    curve = pr_curve(*_two_query_case(), metric="euclidean")
    # query 0 (label 0 at 0.0): ranking 1.0 (rel), 2.0, 3.0 (rel), 4.0; precisions 1, 1/2, 2/3, 1/2; P = 2.
    #   levels 0..5 are reached from rank 1 (max precision 1), levels 6..10 from rank 3 (max 2/3).
    # query 1 (label 1 at 2.4): ranking 2.0 (rel), 3.0, 1.0, 4.0 (rel); precisions 1, 1/2, 1/3, 1/2.
    #   levels 0..5 from rank 1 (1), levels 6..10 only at rank 4 (1/2).
    expected = [1.0] * 6 + [(2 / 3 + 1 / 2) / 2] * 5
    assert curve.precision.tolist() == pytest.approx(expected, abs=1e-12)
    assert curve.recall.tolist() == pytest.approx([j / 10 for j in range(11)])
    # counts summed over both queries at each one's first rank reaching the level:
    # levels 0..5: rank 1 for both -> TP 1+1, FP 0, FN 1+1, TN 2+2
    # levels 6..10: rank 3 (TP 2, FP 1, FN 0, TN 1) and rank 4 (TP 2, FP 2, FN 0, TN 0)
    assert curve.tp.tolist() == [2] * 6 + [4] * 5
    assert curve.fp.tolist() == [0] * 6 + [3] * 5
    assert curve.fn.tolist() == [2] * 6 + [0] * 5
    assert curve.tn.tolist() == [4] * 6 + [1] * 5
    # its mean is the map metric: (6 + 5 * 7/12) / 11
    assert float(curve.precision.mean()) == pytest.approx(107 / 132)
    assert evaluate(*_two_query_case(), metric="euclidean")["map"] == pytest.approx(107 / 132)


@pytest.mark.parametrize("chunk_size", [None, 1])  # both queries in one chunk; one each (a chunk with no relevant item)
def test_a_query_without_relevant_items_counts_as_zero_as_in_map(chunk_size):
    queries, q_labels, database, db_labels = _two_query_case()
    q_labels = torch.tensor([0, 7])  # label 7 is not in the database
    curve = pr_curve(queries, q_labels, database, db_labels, metric="euclidean", chunk_size=chunk_size)
    assert curve.precision.tolist() == pytest.approx([0.5] * 6 + [1 / 3] * 5)
    assert curve.tp.tolist() == [1] * 6 + [2] * 5 and curve.fp.tolist() == [1] * 6 + [2] * 5
    assert float(curve.precision.mean()) == pytest.approx(evaluate(queries, q_labels, database, db_labels, metric="euclidean")["map"])


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_pr_curve_mean_is_the_map_metric(metric):
    g = torch.Generator().manual_seed(0)
    database, queries = torch.randn(300, 8, generator=g), torch.randn(70, 8, generator=g)
    db_labels, q_labels = torch.randint(0, 5, (300,), generator=g), torch.randint(0, 5, (70,), generator=g)
    whole = pr_curve(queries, q_labels, database, db_labels, metric=metric)
    chunked = pr_curve(queries, q_labels, database, db_labels, metric=metric, chunk_size=1)  # one query a chunk
    assert float(whole.precision.mean()) == pytest.approx(evaluate(queries, q_labels, database, db_labels, metric=metric)["map"], abs=1e-9)
    for a, b in zip((whole.precision, whole.tp, whole.fp, whole.tn, whole.fn), (chunked.precision, chunked.tp, chunked.fp, chunked.tn, chunked.fn)):
        assert torch.allclose(a, b)
    assert torch.all(whole.precision[:-1] >= whole.precision[1:])  # interpolated: never rises with recall
    assert torch.all(whole.tp + whole.fn == whole.tp[0] + whole.fn[0])  # the positives, at every level
    assert torch.all(whole.tp + whole.fp + whole.tn + whole.fn == 70 * 300)


@pytest.mark.parametrize("entry", [evaluate, pr_curve])
def test_a_chunk_size_below_one_is_refused(entry):
    with pytest.raises(ValueError, match="chunk_size must be >= 1, got 0"):
        entry(*_two_query_case(), metric="euclidean", chunk_size=0)
