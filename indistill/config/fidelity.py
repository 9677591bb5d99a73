"""What the reference code does, and the config key and value that reproduce it (one source of truth).

The reference is the public code of the InDistill paper (gsarridis/InDistill) and, for MKT and the
released auxiliary's schedule, of "Heterogeneous KD using information flow modeling" (passalis/pkth).
``indistill config`` annotates these keys with their entry; the fidelity table of docs/method.md is
:func:`fidelity_markdown` (a test keeps the two equal).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Behaviour:
    """One behaviour of the reference code: where it is, how the config reproduces it, the alternatives."""

    behaviour: str
    keys: tuple[str, ...]  # config paths that carry it ("" entries: not configurable, always on)
    reference: str  # the reproducing value(s)
    source: str  # where the reference code does it
    alternatives: str


FIDELITY: tuple[Behaviour, ...] = (
    Behaviour("a new Adam at the start of every student epoch", ("student.optim.reset",), "`epoch`",
              "InDistill `kd_from_aux_to_student.py` (`distill`), pkth `exp2_proposed.py`",
              "`never` (one Adam), `lr_change`, `phase` (at each curriculum phase change)"),
    Behaviour("CE training: a new Adam when the learning rate drops",
              ("teacher.optim.reset", "auxiliary.ce.optim.reset", "student.schedules.ce.optim.reset"), "`lr_change`",
              "InDistill `train_baselines.py` (`train_model`)", "`never`, `epoch`"),
    Behaviour("CE baselines (teacher, auxiliary, student): 50 epochs at 1e-3, 30 at 1e-4, batch 128",
              ("teacher.epochs", "teacher.optim.lr_schedule", "student.schedules.ce"),
              "`80`, `[[0, 1e-3], [50, 1e-4]]`", "InDistill `train_baselines.sh`", "any schedule"),
    Behaviour("T → A: PKT on the embedding from the CE auxiliary, 30 epochs at 1e-3 then 10 at 1e-4, a new Adam at the drop",
              ("auxiliary.pkt",), "`epochs: 40`, `[[0, 1e-3], [30, 1e-4]]`, `reset: lr_change`",
              "pkth `exp1_train_aux.py` (InDistill's `kd_from_teacher_to_aux.py` defaults to 50 at 1e-3)", "any schedule"),
    Behaviour("the teacher: pre-activation ResNet-18 whose shortcut adds `relu(bn1(x))`, no final BN",
              ("networks.teacher.arch",), "`preact_resnet18`", "InDistill `models/resnet.py`",
              "`resnet18` (torchvision's)"),
    Behaviour("released checkpoints load (`conv{i}`, `conv{i}_bn`, `fc1`, `fc2`; `conv1`, `bn1`, `layer*`, `linear`)",
              ("teacher.checkpoint", "auxiliary.checkpoint"), "a path to the `.pt` file",
              "InDistill `results/models/`", "`null`: train the stage"),
    Behaviour("pruning: L1 norm of each output filter, keep the student's width (50 %)", ("prune.criterion",), "`l1`",
              "InDistill `prune.py` (`ln_structured(n=1, dim=0)`)", "`l2`, `bn_scale`, `fpgm`, `taylor`, `activation`, `random`"),
    Behaviour("pruned targets: kept filters through a fresh BN on the batch's statistics (gamma kept, beta 0)",
              ("prune.target",), "`batch_stats`", "InDistill `utils/utils.py` (`prune_model_l1_structured`); the pruned net is never put in eval mode",
              "`running_stats` (the auxiliary's own tap restricted to the kept channels)"),
    Behaviour("student: 60 epochs at 1e-3 then 10 at 1e-4, batch 128", ("student.epochs", "student.optim.lr_schedule"),
              "`70`, `[[0, 1e-3], [60, 1e-4]]`", "InDistill `kd_from_aux_to_student.py` defaults", "any schedule"),
    Behaviour("distilled students see no labels", ("student.ce_weight",), "`0.0`",
              "InDistill `kd_from_aux_to_student.py`, pkth `exp2_proposed.py`", "`ce_weight > 0` adds cross-entropy"),
    Behaviour("curriculum: MSE on tap 0 for 3 epochs, tap 1 for 4, tap 2 for 5, then PKT on the embedding",
              ("student.curriculum",), "`epochs: [3, 4, 5]`, `losses: [mse, mse, mse]`, `overlap: false`, `embedding_loss: pkt`",
              "InDistill `kd_from_aux_to_student.py` (`a = 2`)", "what the study searches: epochs, `pkt`/`cosine` losses, weights, `overlap`"),
    Behaviour("MKT: PKT on every tap, intermediate weight 100 · 0.7^epoch, embedding weight 1", ("student.mkt",),
              "`weight: 100.0`, `gamma: 0.7`", "pkth `exp2_proposed.py`", "any weight and decay"),
    Behaviour("MKT: 50 epochs at a constant 1e-3, a new Adam every epoch, from scratch", ("student.schedules.mkt",),
              "`epochs: 50`, `[[0, 1e-3]]`, `reset: epoch`", "pkth `exp2_proposed.py`", "any schedule"),
    Behaviour("fp32 training", ("precision",), "`fp32`", "both (no autocast)", "`bf16` / `auto` (bf16 autocast on GPU: faster)"),
    Behaviour("random crop pads with black (0 before normalising), flip p = 0.5", ("",), "always",
              "`RandomCrop(32, padding=4)` in both loaders", "none"),
    Behaviour("retrieval embeddings in fp32", ("",), "always (also under bf16 training)", "both", "none"),
)


def _at(tree: Mapping[str, Any], path: str) -> Any:
    for part in path.split("."):
        if not isinstance(tree, Mapping) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


_MISSING = object()


def annotations(config: Mapping[str, Any] | None = None, reference: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Config path -> a short comment naming the reference behaviour it reproduces.

    Given a ``config`` and the ``reference`` recipe (both as plain dicts), only the keys whose value
    equals the reference's are annotated, so another benchmark's own choices are not called reference.
    """
    out: dict[str, str] = {}
    for b in FIDELITY:
        for key in b.keys:
            if not key:
                continue
            if config is not None and reference is not None and _at(config, key) != _at(reference, key):
                continue
            out[key] = f"reference: {b.behaviour} ({b.source.split(' (')[0]})"
    return out


def fidelity_markdown() -> str:
    """The fidelity table of docs/method.md."""
    lines = ["| behaviour of the reference code | config key | value that reproduces it | where in the reference | the project's alternatives |",
             "|---|---|---|---|---|"]
    for b in FIDELITY:
        keys = ", ".join(f"`{k}`" for k in b.keys if k) or "(not configurable)"
        lines.append(f"| {b.behaviour} | {keys} | {b.reference} | {b.source} | {b.alternatives} |")
    return "\n".join(lines)
