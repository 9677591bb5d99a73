"""Seeds and uncertainty: mean ± std over seeds, and paired confidence intervals of differences."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` paired by seed: mean and a two-sided t confidence interval over the n pairs."""

    mean: float
    low: float
    high: float
    n: int
    level: float = 0.95

    @property
    def excludes_zero(self) -> bool:
        return self.n > 1 and (self.low > 0 or self.high < 0)

    def __str__(self) -> str:
        if self.n < 2:
            return f"{self.mean:+.2f}"
        mark = " *" if self.excludes_zero else ""
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]{mark}"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN for one value)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else math.nan


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> PairedDifference:
    """Mean of ``a[i] - b[i]`` with its ``level`` t-interval (``n - 1`` degrees of freedom)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 1 or d.size == 0:
        raise ValueError("paired_difference needs two equally long, non-empty sequences")
    n, mean = int(d.size), float(d.mean())
    if n < 2:
        return PairedDifference(mean, math.nan, math.nan, n, level)
    from scipy import stats  # here: ~0.5 s to import, and every Ray worker imports this module

    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
    return PairedDifference(mean, mean - half, mean + half, n, level)


def expected_max(values: Sequence[float], n: int) -> float:
    """The expected best of ``n`` trials drawn with replacement from ``values`` (a search's completed
    trials): Dodge et al. 2019, "Show Your Work", with the empirical CDF of the N values,
    ``E[max_n] = sum_i v_(i) * ((i/N)^n - ((i-1)/N)^n)`` over the sorted ``v_(1) <= ... <= v_(N)``.
    It is the mean for ``n = 1``, rises with ``n`` and tends to the maximum."""
    if n < 1:
        raise ValueError(f"expected_max needs n >= 1, got {n}")
    v = np.sort(np.asarray(values, dtype=np.float64))
    if v.ndim != 1 or v.size == 0:
        raise ValueError("expected_max needs a non-empty sequence of values")
    cdf = np.arange(v.size + 1, dtype=np.float64) / v.size  # 0, 1/N, ..., 1
    weights = np.diff(cdf ** n)  # P(max of n draws is v_(i)) under the empirical CDF
    return float(np.dot(weights, v))
