"""Student training methods by name: the loss of one batch given the frozen auxiliary's features."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch.nn.functional as F
from torch import Tensor

from indistill.config.run import StudentConfig
from indistill.method.losses import LOSSES
from indistill.models.base import EMBEDDING
from indistill.common.registry import Registry
from indistill.method.curriculum import Phase, curriculum_plan


@dataclass
class StudentBatch:
    """What a method sees for one batch."""

    epoch: int
    labels: Tensor
    logits: Tensor
    student: dict[str, Tensor]  # student features at the method's ``loss_taps(epoch)``
    source: dict[str, Tensor]  # auxiliary features there (pruned targets for indistill)


class Method:
    """A student method: which taps it reads in each epoch and the loss of a batch."""

    label: ClassVar[str]  # its row in results tables
    needs_source = True
    needs_pruning = False

    def __init__(self, cfg: StudentConfig, taps: tuple[str, ...], epochs: int) -> None:
        self.cfg = cfg
        self.taps = taps  # the student's intermediate taps, shallow -> deep
        self.epochs = epochs  # this method's student epochs (``StudentConfig.schedule``)

    def loss_taps(self, epoch: int) -> tuple[str, ...]:
        """The taps the loss of ``epoch`` reads, of the student and of the auxiliary alike: the step reads
        only these (and builds pruned targets for these only); :meth:`loss` must not read others."""
        return (EMBEDDING,)

    def phase(self, epoch: int) -> int:
        """Curriculum phase index reported to logs (-1 when the method has none)."""
        return -1

    def loss(self, b: StudentBatch) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def _with_ce(self, loss: Tensor, parts: dict[str, Tensor], b: StudentBatch) -> tuple[Tensor, dict[str, Tensor]]:
        if self.cfg.ce_weight > 0:
            ce = F.cross_entropy(b.logits.float(), b.labels)
            parts["loss/ce"] = ce.detach()
            loss = loss + self.cfg.ce_weight * ce
        return loss, parts


METHODS: Registry[Callable[..., Method]] = Registry("method")


@METHODS.register("ce")
class CrossEntropy(Method):
    """Student trained on labels only."""

    label = "student (ce)"
    needs_source = False

    def loss_taps(self, epoch: int) -> tuple[str, ...]:
        return ()

    def loss(self, b: StudentBatch) -> tuple[Tensor, dict[str, Tensor]]:
        ce = F.cross_entropy(b.logits.float(), b.labels)
        return ce, {"loss/ce": ce.detach()}


@METHODS.register("pkt")
class EmbeddingPKT(Method):
    """PKT on the embedding only (no curriculum)."""

    label = "student (pkt)"

    def loss(self, b: StudentBatch) -> tuple[Tensor, dict[str, Tensor]]:
        pkt = LOSSES.get("pkt")(b.source[EMBEDDING], b.student[EMBEDDING])
        return self._with_ce(pkt, {"loss/embedding": pkt.detach()}, b)


@METHODS.register("mkt")
class AllLayersPKT(Method):
    """PKT on every tap at once, intermediate weights ``w * gamma**epoch`` (no pruning)."""

    label = "student (mkt)"

    def loss_taps(self, epoch: int) -> tuple[str, ...]:
        return (*self.taps, EMBEDDING)

    def loss(self, b: StudentBatch) -> tuple[Tensor, dict[str, Tensor]]:
        pkt = LOSSES.get("pkt")
        weight = self.cfg.mkt.weight * self.cfg.mkt.gamma**b.epoch
        emb = pkt(b.source[EMBEDDING], b.student[EMBEDDING])
        parts = {"loss/embedding": emb.detach()}
        loss = emb
        for tap in self.taps:
            term = pkt(b.source[tap], b.student[tap])
            parts[f"loss/{tap}"] = term.detach()
            loss = loss + weight * term
        parts["mkt_weight"] = emb.new_full((), weight)  # new_tensor would sync the host with CUDA
        return self._with_ce(loss, parts, b)


@METHODS.register("indistill")
class InDistill(Method):
    """The curriculum over pruned auxiliary taps, then PKT on the embedding."""

    label = "student (indistill)"
    needs_pruning = True

    def __init__(self, cfg: StudentConfig, taps: tuple[str, ...], epochs: int) -> None:
        super().__init__(cfg, taps, epochs)
        self.plan: list[Phase] = curriculum_plan(cfg.curriculum, taps, epochs)

    def _phase(self, epoch: int) -> Phase:
        return self.plan[min(epoch, len(self.plan) - 1)]

    def phase(self, epoch: int) -> int:
        return self._phase(epoch).index

    def loss_taps(self, epoch: int) -> tuple[str, ...]:
        p = self._phase(epoch)
        return tuple(t.tap for t in p.terms) + ((EMBEDDING,) if p.embedding else ())

    def loss(self, b: StudentBatch) -> tuple[Tensor, dict[str, Tensor]]:
        p = self._phase(b.epoch)
        parts: dict[str, Tensor] = {}
        loss: Tensor | None = None
        for term in p.terms:
            value = LOSSES.get(term.loss)(b.source[term.tap], b.student[term.tap])
            parts[f"loss/{term.tap}"] = value.detach()
            loss = term.weight * value if loss is None else loss + term.weight * value
        if p.embedding:
            cur = self.cfg.curriculum
            value = LOSSES.get(cur.embedding_loss)(b.source[EMBEDDING], b.student[EMBEDDING])
            parts["loss/embedding"] = value.detach()
            loss = cur.embedding_weight * value if loss is None else loss + cur.embedding_weight * value
        assert loss is not None
        parts["phase"] = loss.new_full((), float(p.index)).detach()
        return self._with_ce(loss, parts, b)


def method_label(name: str) -> str:
    """The results-table row of student method ``name``."""
    return METHODS.get(name).label


def create_method(name: str, cfg: StudentConfig, taps: tuple[str, ...], epochs: int | None = None) -> Method:
    """Method ``name`` for a student with intermediate ``taps``, trained ``epochs`` epochs (default: its schedule's)."""
    return METHODS.get(name)(cfg, taps, cfg.schedule(name)[0] if epochs is None else epochs)
