"""Check this project against the reference code's released CIFAR-10 networks.

Usage: ``.venv/bin/python scripts/check_released.py DIR`` where DIR holds the ``.pt`` files of
gsarridis/InDistill's ``results/models/`` (clone that repository; the teacher's file is large).

Prints, and exits 1 if any check fails:
- every released file loads into the network ``create_network`` builds for its role;
- the ``l1`` criterion on the released auxiliary keeps exactly the filters of the released
  pruned auxiliary;
- the released pruned auxiliary's BNs are fresh ones (gamma copied, beta 0, statistics never
  updated), which is what ``prune.target: batch_stats`` reproduces.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from indistill.models import load_checkpoint
from indistill.models.zoo import create_network
from indistill.method.pruning import select_channels

ROLES = {
    "teacher_baseline_cifar10.pt": "teacher",
    "auxiliary_baseline_cifar10.pt": "auxiliary",
    "auxiliary_cifar10.pt": "auxiliary",
    "student_baseline_cifar10.pt": "student",
    "student_cifar10_indistill_pkt_cls.pt": "student",
}


def _network(role: str):
    return create_network("cifar10", role, num_classes=10, in_channels=3, image_size=32)


def main(directory: str) -> int:
    root = Path(directory)
    ok = True
    for name, role in ROLES.items():
        path = root / name
        if not path.is_file():
            print(f"skip  {name}: not in {root}")
            continue
        load_checkpoint(_network(role), path)
        print(f"ok    {name} loads as the {role}")
    aux_path, pruned_path = root / "auxiliary_cifar10.pt", root / "pruned_auxiliary_cifar10.pt"
    if not (aux_path.is_file() and pruned_path.is_file()):
        print("skip  pruning checks: auxiliary_cifar10.pt and pruned_auxiliary_cifar10.pt are needed")
        return 0 if ok else 1
    aux = load_checkpoint(_network("auxiliary"), aux_path)
    student = _network("student")
    kept = select_channels(aux, {t.name: t.channels for t in student.intermediate_taps}, "l1")
    pruned = torch.load(pruned_path, map_location="cpu", weights_only=True)
    for i, (tap, idx) in enumerate(kept.items(), start=1):
        conv, bn = aux.blocks[i - 1][0].weight.detach(), aux.blocks[i - 1][1]
        same_filters = torch.equal(pruned[f"conv{i}.weight"], conv[idx])
        fresh_bn = (torch.equal(pruned[f"conv{i}_bn.weight"], bn.weight.detach()[idx])
                    and not pruned[f"conv{i}_bn.bias"].any() and not pruned[f"conv{i}_bn.running_mean"].any()
                    and int(pruned[f"conv{i}_bn.num_batches_tracked"]) == 0)
        ok &= same_filters and fresh_bn
        print(f"{'ok  ' if same_filters else 'FAIL'}  {tap}: l1 keeps the released pruned filters ({len(idx)} of {conv.shape[0]})")
        print(f"{'ok  ' if fresh_bn else 'FAIL'}  {tap}: released pruned BN is fresh (gamma copied, beta 0, no statistics)")
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__)
        raise SystemExit(2)
    raise SystemExit(main(sys.argv[1]))
