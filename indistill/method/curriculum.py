"""InDistill's curriculum: which loss is active on which tap in which epoch."""
from __future__ import annotations

from dataclasses import dataclass

from indistill.config.run import CurriculumConfig


@dataclass(frozen=True)
class Term:
    """One active distillation term: ``weight * loss(aux_pruned[tap], student[tap])``."""

    tap: str
    loss: str
    weight: float


@dataclass(frozen=True)
class Phase:
    """The terms of one epoch. ``index`` is the curriculum layer, or ``len(taps)`` in the embedding phase."""

    index: int
    terms: tuple[Term, ...]
    embedding: bool


def curriculum_plan(cfg: CurriculumConfig, taps: tuple[str, ...], epochs: int) -> list[Phase]:
    """The phase of every epoch: tap l for ``cfg.epochs[l]`` epochs, shallow to deep, then the embedding.

    Without ``overlap`` exactly one intermediate term is active per curriculum epoch (the paper's
    recipe) and none afterwards; with ``overlap`` earlier taps stay active with their weights,
    through the embedding phase too.
    """
    if len(taps) != len(cfg.epochs):
        raise ValueError(f"curriculum has {len(cfg.epochs)} layers but the student has {len(taps)} taps")
    terms = [Term(t, loss, w) for t, loss, w in zip(taps, cfg.losses, cfg.weights)]
    plan: list[Phase] = []
    for layer, length in enumerate(cfg.epochs):
        active = tuple(terms[: layer + 1]) if cfg.overlap else (terms[layer],)
        plan.extend(Phase(layer, active, False) for _ in range(length))
    tail = tuple(terms) if cfg.overlap else ()
    while len(plan) < epochs:
        plan.append(Phase(len(taps), tail, True))
    return plan[:epochs]
