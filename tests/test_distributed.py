"""Data-parallel training on two gloo ranks (a real torch.distributed group of two processes): the
gradient reduction is exact, and every stage and every student method trains with the ranks'
weights identical."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

WORLD = 2


def _spawn(fn, tmp: Path, *args) -> list:
    """Run ``fn(tmp, *args)`` on ranks 0 and 1 of a gloo group; returns what each rank returned."""
    mp.start_processes(_rank_main, args=(fn, tmp, args), nprocs=WORLD, start_method="spawn", join=True)
    return [pickle.loads((tmp / f"rank{r}.pkl").read_bytes()) for r in range(WORLD)]


def _rank_main(rank: int, fn, tmp: Path, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp / 'rendezvous'}", rank=rank, world_size=WORLD)
    try:
        out = fn(tmp, *args)
    finally:
        dist.destroy_process_group()
    (tmp / f"rank{rank}.pkl").write_bytes(pickle.dumps(out))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))  # [2]: a head the loss never reads


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 4, generator=g), torch.randn(8, 3, generator=g)


def _averaged_gradients(_tmp: Path) -> dict:
    from indistill.engine.replicas import Replicas

    net = _net()
    if dist.get_rank() == 1:
        with torch.no_grad():  # rank 1 starts elsewhere: Replicas takes rank 0's weights
            for p in net.parameters():
                p.add_(1.0)
    replicas = Replicas(net)
    x, y = _batch()
    half = slice(0, 4) if dist.get_rank() == 0 else slice(4, 8)
    hidden = net[1](net[0](x[half]))  # a tap: the loss never reaches the head net[2]
    nn.functional.mse_loss(hidden, y[half]).backward()
    replicas.average_gradients()
    out = {"grads": [None if p.grad is None else p.grad.clone() for p in net.parameters()],
           "weights": [p.detach().clone() for p in net.parameters()]}
    # a parameter with a gradient on one rank only: the ranks ran different losses
    net.zero_grad(set_to_none=True)
    if dist.get_rank() == 0:
        net[2].weight.sum().backward()
    try:
        replicas.average_gradients()
        out["mismatch"] = None
    except RuntimeError as exc:
        out["mismatch"] = str(exc)
    return out


def test_replicas_average_exactly_the_gradients_the_loss_produced(tmp_path):
    ranks = _spawn(_averaged_gradients, tmp_path)
    net = _net()
    x, y = _batch()
    nn.functional.mse_loss(net[1](net[0](x)), y).backward()  # one process, the whole batch
    expected = [p.grad for p in net.parameters()]
    for r in ranks:
        for w, p in zip(r["weights"], net.parameters()):
            assert torch.equal(w, p.detach())  # rank 0's weights on both ranks
        for got, want in zip(r["grads"][:2], expected[:2]):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        assert r["grads"][2:] == [None, None]  # the unread head has no gradient, as in one process
        assert "has a gradient on 1 of 2 ranks" in r["mismatch"]


#: every stage as short as it gets on digits: teacher, auxiliary (CE then PKT), pruning, and each
#: method's student (InDistill: one epoch per curriculum layer, then the embedding phase)
TINY = {
    "device": "cpu", "threads": 1,
    "teacher": {"epochs": 1}, "auxiliary": {"ce": {"epochs": 1}, "pkt": {"epochs": 1}},
    "prune": {"criterion": "taylor", "target": "batch_stats"},
    "student": {"epochs": 4, "curriculum": {"epochs": [1, 1, 1]}, "ce_weight": 0.5,
                "schedules": {"ce": {"epochs": 1}, "mkt": {"epochs": 1}}},
}


def _train_everything(tmp: Path) -> dict:
    """Every artifact stage and every registered method's student on this rank (a shared cache)."""
    from indistill.engine.configure import build_config
    from indistill.engine.pipeline import make_context, prepare, train_student
    from indistill.method.methods import METHODS

    cfg = build_config({**TINY, "methods": list(METHODS.names())}, benchmark="digits")
    ctx = make_context(cfg, tmp / "stages", log=lambda _m: None)
    artifacts = prepare(ctx, "val")
    out = {stage: r.network.state_dict() for stage, r in artifacts.results.items() if r.network is not None}
    out["prune"] = artifacts.pruned.state_dict()
    for method in METHODS.names():
        run = train_student(ctx, method, artifacts, work_dir=tmp / f"student-{method}")
        out[method] = {"state": run.model.state_dict(), "history": run.history}
    return out


@pytest.mark.e2e
def test_two_ranks_train_every_stage_and_method_with_identical_weights(tmp_path):
    from indistill.engine.configure import build_config
    from indistill.models.zoo import create_network
    from indistill.method.methods import METHODS

    rank0, rank1 = _spawn(_train_everything, tmp_path)
    assert set(rank0) == {"teacher", "auxiliary", "prune", *METHODS.names()}
    assert rank0["prune"] == rank1["prune"]
    for name in ("teacher", "auxiliary", *METHODS.names()):
        state0 = rank0[name]["state"] if name in METHODS else rank0[name]
        state1 = rank1[name]["state"] if name in METHODS else rank1[name]
        for key, value in state0.items():
            assert torch.equal(value, state1[key]), f"{name}: {key} differs between the ranks"
    cfg = build_config(TINY, benchmark="digits")
    torch.manual_seed(cfg.student_seed + 2)  # the student stage's initial weights
    initial = create_network("digits", "student", num_classes=10, in_channels=1, image_size=32).state_dict()
    for method in METHODS.names():
        history = rank0[method]["history"]
        untimed = [[{k: v for k, v in h.items() if not k.endswith("_time_s")} for h in r[method]["history"]]
                   for r in (rank0, rank1)]
        assert untimed[0] == untimed[1]  # the losses are reduced over both ranks' samples
        assert all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
        # each rank saw its half of every epoch's samples; the reported count is both halves
        assert {h["samples"] for h in history} == {history[0]["samples"]} and history[0]["samples"] > 1000
        changed = [k for k, v in rank0[method]["state"].items() if v.is_floating_point() and not torch.equal(v, initial[k])]
        assert changed, f"{method}: no weight changed"
