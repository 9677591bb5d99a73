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
