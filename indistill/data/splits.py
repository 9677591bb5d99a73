"""Deterministic, label-stratified carving of a split (train -> train + val, or a test hold-out)."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from indistill.data.base import VAL_SEED, Split


def _per_class_counts(counts: np.ndarray, fraction: float) -> np.ndarray:
    """How many items of each class to carve: ``round(N * fraction)`` in total, shared out
    in proportion to the class sizes (largest remainder; ties go to the lower class index)."""
    exact = counts * fraction
    take = np.floor(exact).astype(np.int64)
    missing = int(round(float(counts.sum()) * fraction)) - int(take.sum())
    if missing > 0:
        # stable sort on the negated remainders: largest first, lower class first on ties
        order = np.argsort(-(exact - take), kind="stable")
        take[order[:missing]] += 1
    return np.minimum(take, counts)


def stratified_indices(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split ``range(len(labels))`` into (kept, carved) index tensors, stratified by label.

    Both are sorted, so the kept items stay in their original order. Deterministic in ``seed``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    y = labels.cpu().numpy()
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    take = _per_class_counts(counts, fraction)
    rng = np.random.default_rng(seed)
    carved = []
    for c in range(len(classes)):
        members = np.flatnonzero(inverse == c)
        carved.append(rng.permutation(members)[: take[c]])
    carved_idx = np.sort(np.concatenate(carved)) if carved else np.empty(0, dtype=np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[carved_idx] = False
    kept_idx = np.flatnonzero(mask)
    return torch.from_numpy(kept_idx.astype(np.int64)), torch.from_numpy(carved_idx.astype(np.int64))


def carve_val(split: Split, fraction: float, seed: int = VAL_SEED) -> tuple[Split, Split]:
    """Carve a stratified ``fraction`` of ``split`` out as val; returns ``(train, val)``."""
    kept, carved = stratified_indices(split.labels, fraction, seed)
    return split.subset(kept.to(split.labels.device)), split.subset(carved.to(split.labels.device))
