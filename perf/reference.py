"""Reference-style pipelines: what the public PKT / MKT / InDistill code does, written out here.

* **Distillation** (``time_reference``): a ``VisionDataset`` of uint8 HWC numpy images returning PIL
  images through ``RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize``; a
  ``DataLoader(shuffle=True, num_workers=2)`` (the value of the PyTorch CIFAR-10 tutorial that those
  scripts copy); ``.to(device)`` per step; fp32 NCHW; the networks return their intermediate
  features from an explicit forward; the pruned target as the config's ``prune.target`` defines it
  (``batch_stats``, the default: the kept filters of the tap's conv applied to the block's input,
  then a BN on the batch's statistics, ReLU and max-pool, as gsarridis/InDistill's ``get_features``
  with its pruned model in training mode); ``loss.item()`` every step. (That code also runs the
  auxiliary with gradients tracked and builds all three pruned blocks every step; this one builds
  the phase's block only, under ``no_grad``: it favours the reference.)
* **Retrieval** (``ReferenceDatabase``): the ``Database`` class of ``nn/retrieval_evaluation.py``
  (passalis/pkth; the same file is ``utils/retrieval_evaluation.py`` in gsarridis/InDistill),
  re-implemented step for step: a scikit-learn brute-force ``NearestNeighbors`` ranks the whole
  database for each batch of 128 queries, then, per batch, the binary relevance matrix, cumulative
  precision, the running maximum from the right over the batch's first ranks (its quirk: the loop
  runs over ``len(precision) - 1``, the number of *queries* in the batch), recall, the precision at
  the rank closest to each of 11 (and 21 fine) recall levels, and the mean curves. It runs on the
  float32 features the paper's code extracts. (The original no longer runs on current numpy:
  ``np.cast[np.int]``.)

The distillation functions take a ``perf.distill.DistillBench`` for the data, the weights and
the pruned channels, so both pipelines start from the same state.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import VisionDataset

from indistill.method.losses import LOSSES
from indistill.models.base import EMBEDDING

from .machine import sync, timing

if TYPE_CHECKING:
    from .distill import DistillBench, PhaseSpec

REFERENCE_BATCH = 128
REFERENCE_WORKERS = 2  # the PyTorch CIFAR-10 tutorial's value, copied by most reference scripts

# ----------------------------------------------------------------------------- distillation


class ReferenceCIFAR(VisionDataset):
    """``torchvision.datasets.CIFAR10`` in all that matters here: uint8 HWC numpy images, int targets,
    a PIL image per item through ``transform``."""

    def __init__(self, data: np.ndarray, targets: Sequence[int], transform: Callable | None = None) -> None:
        super().__init__(root="", transform=transform)
        self.data = data
        self.targets = list(targets)

    def __getitem__(self, index: int):
        img, target = self.data[index], self.targets[index]
        img = Image.fromarray(img)
        if self.transform is not None:
            img = self.transform(img)
        return img, target

    def __len__(self) -> int:
        return len(self.data)


def reference_transform(mean: Sequence[float], std: Sequence[float], augment: bool) -> transforms.Compose:
    ops = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
    return transforms.Compose([*ops, transforms.ToTensor(), transforms.Normalize(mean, std)])


def reference_dataset(bench: DistillBench, augment: bool = True) -> ReferenceCIFAR:
    spec = bench.spec
    transform = reference_transform(spec.mean, spec.std, augment)
    return ReferenceCIFAR(bench.data_hwc, bench.split.labels.tolist(), transform)


def reference_features(net: nn.Module, x: Tensor) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """The reference scripts' model code: a forward returning the logits, every stage output and every
    stage's input."""
    feats: dict[str, Tensor] = {}
    inputs: dict[str, Tensor] = {}
    h = x
    for i, block in enumerate(net.blocks):
        inputs[f"block{i}"] = h
        h = block(h)
        feats[f"block{i}"] = h
    emb = net.embed(net.pool(h))
    feats[EMBEDDING] = emb
    return net.head(emb), feats, inputs


PrunedLayer = tuple[Tensor, Tensor, Tensor, float]  # conv weight, conv bias, BN gamma of the kept filters; BN eps


def reference_pruned_layers(bench: DistillBench) -> dict[str, PrunedLayer]:
    """The reference's pruned model, built once: each tap's conv and BN restricted to the kept filters."""
    out = {}
    for i, block in enumerate(bench.auxiliary(False).blocks):
        keep = bench.pruned.indices[f"block{i}"]
        conv, bn = block[0], block[1]
        out[f"block{i}"] = (conv.weight[keep].clone(), conv.bias[keep].clone(), bn.weight[keep].clone(), bn.eps)
    return out


def reference_pruned_feature(layer: PrunedLayer, block_input: Tensor) -> Tensor:
    """``max_pool(relu(bn(conv(x))))`` of the pruned layer, its BN on the batch's statistics, beta = 0."""
    weight, bias, gamma, eps = layer
    z = F.batch_norm(F.conv2d(block_input, weight, bias), None, None, gamma, None, training=True, eps=eps)
    return F.max_pool2d(F.relu(z), 2)


def reference_loss(bench: DistillBench, student: nn.Module, phase: PhaseSpec, x: Tensor,
                   pruned: dict[str, PrunedLayer] | None = None) -> Tensor:
    """The phase's loss written out: auxiliary features under no_grad, then the pruned target of
    ``bench.prune_target`` (``running_stats``: the auxiliary's channels sliced by index)."""
    with torch.no_grad():
        _, t, t_inputs = reference_features(bench.auxiliary(False), x)
        target = t[phase.tap]
        if phase.tap != EMBEDDING:
            if bench.prune_target == "batch_stats":
                target = reference_pruned_feature((pruned or reference_pruned_layers(bench))[phase.tap], t_inputs[phase.tap])
            elif bench.prune_target == "running_stats":
                target = target[:, bench.pruned.indices[phase.tap]]
            else:
                raise ValueError(f"no reference-style form of prune target {bench.prune_target!r}")
    _, s, _ = reference_features(student, x)
    return LOSSES.get(phase.loss)(target, s[phase.tap])


def time_reference(
    bench: DistillBench,
    phase: PhaseSpec,
    batch_size: int,
    steps: int,
    warmup: int,
    num_workers: int = REFERENCE_WORKERS,
) -> dict:
    """images/s of the reference-style loop; warm-up steps come from the same loader iterator."""
    device = bench.device
    student = bench.new_student(False)
    optimizer = torch.optim.Adam(student.parameters(), lr=bench.cfg.student.optim.lr_at(0))
    pruned = reference_pruned_layers(bench)
    loader = DataLoader(reference_dataset(bench), batch_size=batch_size, shuffle=True, num_workers=num_workers)

    def batches() -> Iterator:
        while True:  # a new epoch re-iterates the loader (restarting its workers), as the scripts do
            yield from loader

    it = batches()
    running_loss = 0.0
    images = 0
    t0 = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
            images = 0
        x, y = next(it)
        x, y = x.to(device), y.to(device)
        loss = reference_loss(bench, student, phase, x, pruned)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        images += x.shape[0]
    sync(device)
    seconds = time.perf_counter() - t0
    it.close()  # shuts the workers down now rather than at garbage collection
    return timing(images, steps, seconds, running_loss / (warmup + steps))


# ----------------------------------------------------------------------------- retrieval

RECALL_LEVELS = np.arange(0, 1.01, 0.1)
FINE_RECALL_LEVELS = np.arange(0, 1.01, 0.05)


class ReferenceDatabase:
    """The reference code's ``Database``: brute-force scikit-learn ranking, metrics per batch of queries."""

    def __init__(self, vectors: np.ndarray, labels: np.ndarray, metric: str = "cosine") -> None:
        from sklearn.neighbors import NearestNeighbors

        self.size = vectors.shape[0]
        self.index = NearestNeighbors(n_neighbors=self.size, algorithm="brute", metric=metric).fit(vectors)
        self.labels = np.asarray(labels).astype(np.int64)
        counts = np.bincount(self.labels)
        present = np.nonzero(counts)[0]
        self.class_size = dict(zip(present, counts[present]))

    def relevance(self, queries: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """One row per query: 1 where the item at that rank has the query's label (integer array)."""
        _, ranking = self.index.kneighbors(queries)
        rel = np.zeros_like(ranking)
        for row, label in enumerate(labels):
            rel[row] = self.labels[ranking[row]] == label
        return rel

    def batch_metrics(self, rel: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """(mAP, mean precision curve, mean precision at the fine recall levels) of one batch."""
        precision = np.cumsum(rel, axis=1) / np.arange(1, self.size + 1)
        # The quirk: the running maximum from the right covers only the first len(batch) - 1 ranks.
        for col in reversed(range(len(precision) - 1)):
            precision[:, col] = np.maximum(precision[:, col], precision[:, col + 1])
        positives = np.array([self.class_size[label] for label in labels], dtype=np.float64)[:, None]
        recall = np.cumsum(rel, axis=1) / positives
        rows = np.arange(len(labels))

        def at_levels(levels: np.ndarray) -> np.ndarray:
            out = np.zeros((len(labels), len(levels)))
            for j, level in enumerate(levels):
                out[:, j] = precision[rows, np.argmin(np.abs(recall - level), axis=1)]
            return out

        ap = at_levels(RECALL_LEVELS).mean(axis=1)
        return float(ap.mean()), precision.mean(axis=0), at_levels(FINE_RECALL_LEVELS).mean(axis=0)

    def evaluate(self, queries: np.ndarray, labels: np.ndarray, batch_size: int = REFERENCE_BATCH) -> dict:
        """``map`` (the legacy 11-point mAP), ``raw_precision`` (mean curve over all ranks: ``p@k`` is
        entry k - 1) and ``precision`` at the fine recall levels, averaged over batches by size."""
        total_map = 0.0
        curve = np.zeros(self.size)
        fine = np.zeros(len(FINE_RECALL_LEVELS))
        for start in range(0, len(labels), batch_size):
            q, lab = queries[start : start + batch_size], labels[start : start + batch_size]
            m, c, f = self.batch_metrics(self.relevance(q, lab), lab)
            total_map += m * len(lab)
            curve += c * len(lab)
            fine += f * len(lab)
        n = float(len(labels))
        return {"map": total_map / n, "raw_precision": curve / n, "precision": fine / n,
                "recall_levels": FINE_RECALL_LEVELS}


def reference_retrieval(
    query: np.ndarray, query_labels: np.ndarray, database: np.ndarray, database_labels: np.ndarray, metric: str
) -> dict:
    """What the reference code runs per metric:
    ``Database(database, labels, metric).evaluate(queries, labels, batch_size=128)``."""
    return ReferenceDatabase(database, database_labels, metric).evaluate(query, query_labels, REFERENCE_BATCH)
