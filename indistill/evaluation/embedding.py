"""Retrieval evaluation of a network's embedding (docs/method.md, "Retrieval metrics") on the training device.

Below the training code: it reads a network and a split, and imports nothing from ``indistill.train``.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Protocol, Sequence

import torch
from torch import Tensor, nn

from indistill.models.base import EMBEDDING, TapReader, unwrap
from indistill.common.precision import full_fp32
from indistill.evaluation.retrieval import METRICS, evaluate_all

#: the retrieval figures a training run records at each evaluation (its history and TensorBoard)
CURVE_KEYS = ("map", "map_legacy")


def metric_key(protocol: str, metric: str, key: str = "map") -> str:
    """The name of one retrieval figure in a run's history and TensorBoard: ``<protocol>/<metric>/<key>``."""
    return f"{protocol}/{metric}/{key}"


#: what a search selects by: cosine mAP on the val split
SELECTION_KEY = metric_key("val", "cosine", "map")


class EvalSplit(Protocol):
    """A split on the device that yields normalised image batches in order (``train.batches.DeviceSplit``)."""

    labels: Tensor

    def eval_batches(self, batch_size: int) -> Iterator[Tensor]: ...


@contextlib.contextmanager
def fp32() -> Iterator[None]:
    """Float32 throughout inside: any enclosing autocast (CUDA and CPU) off, and TF32 off for matmuls and
    cuDNN convolutions (:func:`indistill.common.precision.full_fp32`); the previous settings after."""
    with full_fp32():
        yield


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and no autograd for a network that is only read."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def embed(model: nn.Module, split: EvalSplit, *, batch_size: int = 1024) -> Tensor:
    """The embedding of every image in ``split``, float32 ``[N, D]`` on the split's device.

    Always computed in float32, whatever precision the network was trained in: retrieval ranks
    by small distance differences, which bf16 (8 bits of mantissa) or TF32 convolutions (10 bits)
    would reorder.
    """
    net = unwrap(model)
    out = []
    with frozen(net), TapReader(net, (EMBEDDING,)) as reader, fp32():
        for x in split.eval_batches(batch_size):
            out.append(reader(x)[1][EMBEDDING].float().flatten(1))
    return torch.cat(out)


def evaluate_network(
    model: nn.Module,
    queries: EvalSplit,
    database: EvalSplit,
    *,
    ks: Sequence[int] = (10, 50, 100),
    batch_size: int = 1024,
) -> dict[str, dict[str, float]]:
    """``{metric: {key: value}}`` for cosine and euclidean retrieval of queries against database."""
    q = embed(model, queries, batch_size=batch_size)
    db = embed(model, database, batch_size=batch_size)
    return evaluate_all(q, queries.labels, db, database.labels, metrics=METRICS, ks=tuple(ks))


def curve_metrics(protocol: str, results: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{metric_key: value}`` of the :data:`CURVE_KEYS` of :func:`evaluate_network`'s ``results``."""
    return {metric_key(protocol, m, k): v for m, vals in results.items() for k, v in vals.items() if k in CURVE_KEYS}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in unwrap(model).parameters())
