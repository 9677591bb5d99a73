"""Retrieval evaluation of a network's embedding (DESIGN.md section 4) on the training device."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .models.base import EMBEDDING, TapReader, unwrap
from .retrieval import evaluate_all
from .train.batches import DeviceSplit
from .train.runtime import fp32, frozen

METRICS = ("cosine", "euclidean")


def embed(model: nn.Module, split: DeviceSplit, *, batch_size: int = 1024) -> Tensor:
    """The embedding of every image in ``split``, float32 ``[N, D]`` on the split's device.

    Always computed in float32, whatever precision the network was trained in: retrieval ranks
    by small distance differences, which bf16 (8 bits of mantissa) would reorder.
    """
    net = unwrap(model)
    out = []
    with frozen(net), TapReader(net, (EMBEDDING,)) as reader, fp32():
        for x in split.eval_batches(batch_size):
            out.append(reader(x)[1][EMBEDDING].float().flatten(1))
    return torch.cat(out)


def evaluate_network(
    model: nn.Module,
    queries: DeviceSplit,
    database: DeviceSplit,
    *,
    ks: Sequence[int] = (10, 50, 100),
    batch_size: int = 1024,
) -> dict[str, dict[str, float]]:
    """``{metric: {key: value}}`` for cosine and euclidean retrieval of queries against database."""
    q = embed(model, queries, batch_size=batch_size)
    db = embed(model, database, batch_size=batch_size)
    return evaluate_all(q, queries.labels, db, database.labels, metrics=METRICS, ks=tuple(ks))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in unwrap(model).parameters())
