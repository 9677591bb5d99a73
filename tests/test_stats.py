"""Mean ± std over seeds and paired confidence intervals, against hand-computed values."""
import math

import pandas as pd
import pytest

from indistill.evaluation.stats import mean_std, paired_difference
from indistill.evaluation.table import aggregate, diff_label, to_markdown


def test_mean_std_is_the_sample_std() -> None:
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and std == pytest.approx(math.sqrt(5 / 3))  # sum of squares 5, n - 1 = 3
    assert math.isnan(mean_std([7.0])[1])


def test_paired_difference_t_interval() -> None:
    d = paired_difference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    # mean 2, sd 1, t(0.975, 2) = 4.302652729911275
    half = 4.302652729911275 / math.sqrt(3)
    assert (d.mean, d.low, d.high, d.n) == (2.0, pytest.approx(2 - half), pytest.approx(2 + half), 3)
    assert not d.excludes_zero and str(d) == "+2.00 [-0.48, +4.48]"
    shifted = paired_difference([10.0, 11.5, 12.0], [1.0, 2.0, 3.0])  # d = 9, 9.5, 9: excludes 0
    assert shifted.excludes_zero and str(shifted).endswith(" *")
    one = paired_difference([3.0], [1.0])
    assert one.mean == 2.0 and math.isnan(one.low) and not one.excludes_zero


def test_aggregate_pairs_by_seed() -> None:
    per_seed = pd.DataFrame([
        {"network": "teacher", "seed": 0, "params": 100, "cosine map": 90.0},
        {"network": "A", "seed": 0, "params": 10, "cosine map": 50.0},
        {"network": "A", "seed": 1, "params": 10, "cosine map": 52.0},
        {"network": "A", "seed": 2, "params": 10, "cosine map": 54.0},
        {"network": "B", "seed": 2, "params": 10, "cosine map": 55.0},  # seed order differs: pairing is by seed
        {"network": "B", "seed": 0, "params": 10, "cosine map": 53.0},
        {"network": "B", "seed": 1, "params": 10, "cosine map": 51.0},
    ])
    assert aggregate(per_seed, reference="A").loc["teacher", "diff mean"] == pytest.approx(90.0 - 50.0)
    table = aggregate(per_seed, reference="A", compare=["B"])  # the teacher is not a student: no difference
    assert pd.isna(table.loc["teacher", "diff mean"])
    assert table.index.tolist() == ["teacher", "A", "B"]
    assert table["n"].tolist() == [1, 3, 3]
    assert table.loc["A", "cosine map"] == 52.0 and table.loc["A", "cosine map std"] == pytest.approx(2.0)
    # B - A by seed: 3, -1, 1 -> mean 1, sd 2
    assert table.loc["B", "diff mean"] == pytest.approx(1.0)
    half = 4.302652729911275 * 2 / math.sqrt(3)
    assert table.loc["B", "diff low"] == pytest.approx(1 - half) and table.loc["B", "diff high"] == pytest.approx(1 + half)
    assert pd.isna(table.loc["A", diff_label("A")])
    md = to_markdown(table)
    assert "52.00 ± 2.00" in md and "| 90.00 " in md and "+1.00 [" in md
