"""The student step (``student_stage``'s, and the one the speed benchmark times): golden loss values of every
registered method at every curriculum phase, on tiny hand-seeded networks and a hand-seeded batch (recorded from
``student_stage``'s step before it was factored out into ``indistill.method.student_step``)."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor

from indistill.config.run import RunConfig
from indistill.engine.configure import build_config
from indistill.models.base import EMBEDDING, TapNet, TapReader
from indistill.models.zoo import create_network
from indistill.method.pruning import TARGETS, PrunedTaps
from indistill.method.losses import LOSSES
from indistill.method.methods import METHODS, Method, StudentBatch, create_method
from indistill.method.student_step import StudentStep, student_step

from perf.gpu_check import hand_seeded

CPU = torch.device("cpu")
# Recorded on x86-64 with AVX-512, torch 2.14.1, where the step reproduces them bit for bit; other CPUs' kernels
# may round differently in the last bits, hence a relative tolerance (a changed loss moves them by far more).
GOLDEN_REL = 1e-5
BATCH = 6
EPOCHS = 5  # curriculum (1, 1, 1): epochs 0-2 one tap each, 3-4 the embedding phase
# Kept channels of the auxiliary (16/32/64) at the student's widths (8/16/32), chosen by hand.
KEPT = {"block0": [0, 2, 3, 5, 8, 11, 13, 15], "block1": list(range(1, 32, 2)), "block2": list(range(0, 64, 2))}
VARIANTS = {
    "paper": {"student": {"epochs": EPOCHS, "curriculum": {"epochs": [1, 1, 1]}}},
    "overlap+ce": {"student": {"epochs": EPOCHS, "ce_weight": 0.5, "curriculum": {
        "epochs": [1, 1, 1], "overlap": True, "losses": ["mse", "pkt", "cosine"], "weights": [1.0, 0.5, 2.0]}}},
}


def _cases() -> list[tuple[str, str, str]]:
    """(variant, method, prune target) for every registered method; every target for those that prune."""
    out = []
    for variant in VARIANTS:
        for method in METHODS:
            prunes = getattr(METHODS.get(method), "needs_pruning", False)
            out += [(variant, method, t) for t in (TARGETS if prunes else ["-"])]
    return out


def _config(variant: str, target: str) -> RunConfig:
    overrides = {"precision": "fp32", **VARIANTS[variant]}
    if target != "-":
        overrides["prune"] = {"target": target}
    return build_config(overrides, benchmark="cifar10")


def _network(cfg: RunConfig, role: str, seed: int) -> TapNet:
    net = create_network("cifar10", role, num_classes=10, in_channels=3, image_size=32).to(CPU)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return hand_seeded(net, seed)


def _batch(cfg: RunConfig) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(BATCH, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (BATCH,), generator=g)
    return (x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x), y


def _step_losses(cfg: RunConfig, method: str) -> dict[int, dict[str, float]]:
    """Loss and parts of the student step at every epoch, the hand-seeded student reloaded each time."""
    auxiliary = _network(cfg, "auxiliary", seed=1).eval()
    for p in auxiliary.parameters():
        p.requires_grad_(False)
    student = _network(cfg, "student", seed=2)
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    impl = create_method(method, cfg.student, tuple(t.name for t in student.intermediate_taps), EPOCHS)
    x, y = _batch(cfg)
    out: dict[int, dict[str, float]] = {}
    with student_step(student, impl, auxiliary, PrunedTaps(KEPT), cfg, CPU) as step:
        for epoch in range(EPOCHS):
            student.load_state_dict(initial)
            student.train()
            loss, parts = step(x, y, epoch)
            out[epoch] = {"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}}
    return out


@pytest.mark.parametrize(("variant", "method", "target"), _cases(), ids=lambda v: str(v))
def test_step_losses_match_the_golden_values(variant, method, target):
    key = f"{variant}/{method}/{target}"
    assert key in GOLDEN, f"no golden values for {key}: record them with the step as it was before a change"
    got = _step_losses(_config(variant, target), method)
    assert list(got) == list(GOLDEN[key])
    for epoch, want in GOLDEN[key].items():
        assert got[epoch] == pytest.approx(want, rel=GOLDEN_REL, abs=1e-12), f"epoch {epoch}"



def _auxiliary_and_step(cfg: RunConfig, method: str) -> tuple[TapNet, StudentStep]:
    auxiliary = _network(cfg, "auxiliary", seed=1).eval()
    student = _network(cfg, "student", seed=2)
    impl = create_method(method, cfg.student, tuple(t.name for t in student.intermediate_taps), EPOCHS)
    return auxiliary, student_step(student, impl, auxiliary, PrunedTaps(KEPT), cfg, CPU)


@pytest.mark.parametrize(("variant", "method", "target"), _cases(), ids=lambda v: str(v))
def test_reading_only_the_loss_taps_changes_no_bit(variant, method, target):
    # The auxiliary's forward stops after the taps of the epoch: its features there (pruned targets
    # included) are bit for bit those of a full forward reading every tap.
    cfg = _config(variant, target)
    auxiliary, step = _auxiliary_and_step(cfg, method)
    x, _ = _batch(cfg)
    names = [t.name for t in auxiliary.taps]
    with step, torch.no_grad(), TapReader(auxiliary, names, keep_inputs=True) as full:
        _, features = full(x)
        for epoch in range(EPOCHS):
            taps = step.method.loss_taps(epoch)
            got = step.source(x, taps)
            want = step.target(features, full.inputs, taps) if step.target is not None else features
            if not step.method.needs_source:
                assert got == {}
                continue
            assert set(got) == set(taps), epoch
            for tap in taps:
                assert torch.equal(got[tap], want[tap]), (epoch, tap)


# The auxiliary's modules that run in each epoch of the paper's curriculum (block l, block l + 1, embedding).
AUXILIARY_RUNS = {
    "running_stats": [["blocks.0"], ["blocks.0", "blocks.1"], ["blocks.0", "blocks.1", "blocks.2"]],
    "batch_stats": [[], ["blocks.0"], ["blocks.0", "blocks.1"]],  # block l's input feeds its pruned block
}
UP_TO_EMBEDDING = ["blocks.0", "blocks.1", "blocks.2", "pool", "embed"]


def _record_runs(net: TapNet, names: list[str]) -> tuple[list[str], list]:
    """A list to which each of the ``names`` modules appends its name when its forward starts. (Pre-hooks
    registered after the step's own: a module the step stops before does not count.)"""
    ran: list[str] = []
    handles = [m.register_forward_pre_hook(lambda *_a, n=n: ran.append(n))
               for n, m in net.named_modules() if n in names]
    return ran, handles


@pytest.mark.parametrize(("method", "target"), [c[1:] for c in _cases() if c[0] == "paper"], ids=lambda v: str(v))
def test_auxiliary_runs_only_as_far_as_the_epoch_needs(method, target):
    cfg = _config("paper", target)
    auxiliary, step = _auxiliary_and_step(cfg, method)
    ran, handles = _record_runs(auxiliary, [*UP_TO_EMBEDDING, "head"])
    if not step.method.needs_source:
        expected = [[]] * EPOCHS
    elif step.target is not None:
        expected = [*AUXILIARY_RUNS[target], UP_TO_EMBEDDING, UP_TO_EMBEDDING]
    else:
        expected = [UP_TO_EMBEDDING] * EPOCHS  # the head never runs
    x, y = _batch(cfg)
    with step:
        for epoch in range(EPOCHS):
            ran.clear()
            step(x, y, epoch)
            assert ran == expected[epoch], epoch
    for h in handles:
        h.remove()


# The taps each method's loss reads per epoch of the paper's 1/1/1 curriculum (both networks).
LOSS_TAPS = {
    "ce": [()] * EPOCHS,
    "pkt": [(EMBEDDING,)] * EPOCHS,
    "mkt": [("block0", "block1", "block2", EMBEDDING)] * EPOCHS,
    "indistill": [("block0",), ("block1",), ("block2",), (EMBEDDING,), (EMBEDDING,)],
}


def test_every_method_declares_the_taps_its_loss_reads():
    assert set(LOSS_TAPS) == set(METHODS), "declare the taps of a new method here"
    cfg = _config("paper", "-")
    for method, taps in LOSS_TAPS.items():
        impl = create_method(method, cfg.student, ("block0", "block1", "block2"), EPOCHS)
        assert [impl.loss_taps(e) for e in range(EPOCHS)] == taps, method


TAP = "block2"


class _OneLoss(Method):
    """A method whose loss is the registered feature loss ``name`` on the deepest block (the auxiliary's
    pruned to the student's width); it keeps the batch it saw."""

    label = "test"
    needs_pruning = True

    def __init__(self, cfg: RunConfig, name: str) -> None:
        super().__init__(cfg.student, ("block0", "block1", "block2"), 1)
        self.name = name
        self.seen: StudentBatch | None = None

    def loss(self, b: StudentBatch) -> tuple[Tensor, dict[str, Tensor]]:
        self.seen = b
        return LOSSES.get(self.name)(b.source[TAP], b.student[TAP]), {}

    def loss_taps(self, epoch: int) -> tuple[str, ...]:
        return (TAP,)


def _one_loss_step(name: str, precision: str) -> tuple[Tensor, StudentBatch]:
    """The step's loss of a seeded batch (32 images) with the loss ``name`` on :data:`TAP`, and what the loss saw."""
    cfg = _config("paper", "-")
    auxiliary = _network(cfg, "auxiliary", seed=1).eval()
    student = _network(cfg, "student", seed=2)
    method = _OneLoss(cfg, name)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(32, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (32,), generator=g)
    target = TARGETS.get("running_stats")(auxiliary, PrunedTaps(KEPT))
    with StudentStep(student, method, auxiliary, target, CPU, precision) as step:
        loss, _ = step(x, y, 0)
    return loss, method.seen


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("outer", [False, True], ids=["step-autocast", "and-outer-autocast"])
def test_the_losses_are_float32_under_the_steps_bf16_autocast(name, outer):
    # precision bf16 on CPU: the forwards run under bf16 autocast (as auto/bf16 do on CUDA); the loss must be the
    # float32 loss of the features they produced (PKT's x @ x.t() in bf16 was 0.5 % off), with or without an
    # autocast around the whole step
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=outer):
        loss, seen = _one_loss_step(name, "bf16")
    assert loss.dtype == torch.float32
    assert all(f.dtype == torch.float32 for f in (*seen.student.values(), *seen.source.values(), seen.logits))
    want = LOSSES.get(name)(seen.source[TAP].detach().clone(), seen.student[TAP].detach().clone())
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-6)
    _, fp32 = _one_loss_step(name, "fp32")
    # the networks did run in bf16: their features are not the float32 forward's
    assert not torch.allclose(seen.student[TAP], fp32.student[TAP], rtol=1e-4, atol=0)


GOLDEN: dict[str, dict[int, dict[str, float]]] = {
    "paper/ce/-": {
        0: {"loss": 2.6055383682250977, "loss/ce": 2.6055383682250977},
        1: {"loss": 2.6055383682250977, "loss/ce": 2.6055383682250977},
        2: {"loss": 2.6055383682250977, "loss/ce": 2.6055383682250977},
        3: {"loss": 2.6055383682250977, "loss/ce": 2.6055383682250977},
        4: {"loss": 2.6055383682250977, "loss/ce": 2.6055383682250977},
    },
    "paper/pkt/-": {
        0: {"loss": 0.003100160276517272, "loss/embedding": 0.003100160276517272},
        1: {"loss": 0.003100160276517272, "loss/embedding": 0.003100160276517272},
        2: {"loss": 0.003100160276517272, "loss/embedding": 0.003100160276517272},
        3: {"loss": 0.003100160276517272, "loss/embedding": 0.003100160276517272},
        4: {"loss": 0.003100160276517272, "loss/embedding": 0.003100160276517272},
    },
    "paper/mkt/-": {
        0: {"loss": 1.0431301593780518, "loss/embedding": 0.003100160276517272, "loss/block0": 0.0040467269718647,
            "loss/block1": 0.0033357003703713417, "loss/block2": 0.0030178725719451904, "mkt_weight": 100.0},
        1: {"loss": 0.7311211228370667, "loss/embedding": 0.003100160276517272, "loss/block0": 0.0040467269718647,
            "loss/block1": 0.0033357003703713417, "loss/block2": 0.0030178725719451904, "mkt_weight": 70.0},
        2: {"loss": 0.5127148628234863, "loss/embedding": 0.003100160276517272, "loss/block0": 0.0040467269718647,
            "loss/block1": 0.0033357003703713417, "loss/block2": 0.0030178725719451904, "mkt_weight": 49.0},
        3: {"loss": 0.35983043909072876, "loss/embedding": 0.003100160276517272, "loss/block0": 0.0040467269718647,
            "loss/block1": 0.0033357003703713417, "loss/block2": 0.0030178725719451904, "mkt_weight":
            34.29999923706055},
        4: {"loss": 0.25281137228012085, "loss/embedding": 0.003100160276517272, "loss/block0": 0.0040467269718647,
            "loss/block1": 0.0033357003703713417, "loss/block2": 0.0030178725719451904, "mkt_weight":
            24.010000228881836},
    },
    "paper/indistill/running_stats": {
        0: {"loss": 0.2449769228696823, "loss/block0": 0.2449769228696823, "phase": 0.0},
        1: {"loss": 0.37224212288856506, "loss/block1": 0.37224212288856506, "phase": 1.0},
        2: {"loss": 0.2386324405670166, "loss/block2": 0.2386324405670166, "phase": 2.0},
        3: {"loss": 0.003100160276517272, "loss/embedding": 0.003100160276517272, "phase": 3.0},
        4: {"loss": 0.003100160276517272, "loss/embedding": 0.003100160276517272, "phase": 3.0},
    },
    "paper/indistill/batch_stats": {
        0: {"loss": 0.14836682379245758, "loss/block0": 0.14836682379245758, "phase": 0.0},
        1: {"loss": 0.2883901298046112, "loss/block1": 0.2883901298046112, "phase": 1.0},
        2: {"loss": 0.16853351891040802, "loss/block2": 0.16853351891040802, "phase": 2.0},
        3: {"loss": 0.003100160276517272, "loss/embedding": 0.003100160276517272, "phase": 3.0},
        4: {"loss": 0.003100160276517272, "loss/embedding": 0.003100160276517272, "phase": 3.0},
    },
    "overlap+ce/ce/-": {
        0: {"loss": 2.6055383682250977, "loss/ce": 2.6055383682250977},
        1: {"loss": 2.6055383682250977, "loss/ce": 2.6055383682250977},
        2: {"loss": 2.6055383682250977, "loss/ce": 2.6055383682250977},
        3: {"loss": 2.6055383682250977, "loss/ce": 2.6055383682250977},
        4: {"loss": 2.6055383682250977, "loss/ce": 2.6055383682250977},
    },
    "overlap+ce/pkt/-": {
        0: {"loss": 1.3058693408966064, "loss/embedding": 0.003100160276517272, "loss/ce": 2.6055383682250977},
        1: {"loss": 1.3058693408966064, "loss/embedding": 0.003100160276517272, "loss/ce": 2.6055383682250977},
        2: {"loss": 1.3058693408966064, "loss/embedding": 0.003100160276517272, "loss/ce": 2.6055383682250977},
        3: {"loss": 1.3058693408966064, "loss/embedding": 0.003100160276517272, "loss/ce": 2.6055383682250977},
        4: {"loss": 1.3058693408966064, "loss/embedding": 0.003100160276517272, "loss/ce": 2.6055383682250977},
    },
    "overlap+ce/mkt/-": {
        0: {"loss": 2.3458993434906006, "loss/embedding": 0.003100160276517272, "loss/block0": 0.0040467269718647,
            "loss/block1": 0.0033357003703713417, "loss/block2": 0.0030178725719451904, "mkt_weight": 100.0,
            "loss/ce": 2.6055383682250977},
        1: {"loss": 2.0338902473449707, "loss/embedding": 0.003100160276517272, "loss/block0": 0.0040467269718647,
            "loss/block1": 0.0033357003703713417, "loss/block2": 0.0030178725719451904, "mkt_weight": 70.0, "loss/ce":
            2.6055383682250977},
        2: {"loss": 1.8154840469360352, "loss/embedding": 0.003100160276517272, "loss/block0": 0.0040467269718647,
            "loss/block1": 0.0033357003703713417, "loss/block2": 0.0030178725719451904, "mkt_weight": 49.0, "loss/ce":
            2.6055383682250977},
        3: {"loss": 1.6625995635986328, "loss/embedding": 0.003100160276517272, "loss/block0": 0.0040467269718647,
            "loss/block1": 0.0033357003703713417, "loss/block2": 0.0030178725719451904, "mkt_weight":
            34.29999923706055, "loss/ce": 2.6055383682250977},
        4: {"loss": 1.5555806159973145, "loss/embedding": 0.003100160276517272, "loss/block0": 0.0040467269718647,
            "loss/block1": 0.0033357003703713417, "loss/block2": 0.0030178725719451904, "mkt_weight":
            24.010000228881836, "loss/ce": 2.6055383682250977},
    },
    "overlap+ce/indistill/running_stats": {
        0: {"loss": 1.5477460622787476, "loss/block0": 0.2449769228696823, "phase": 0.0, "loss/ce":
            2.6055383682250977},
        1: {"loss": 1.5524132251739502, "loss/block0": 0.2449769228696823, "loss/block1": 0.009334114380180836,
            "phase": 1.0, "loss/ce": 2.6055383682250977},
        2: {"loss": 2.7374587059020996, "loss/block0": 0.2449769228696823, "loss/block1": 0.009334114380180836,
            "loss/block2": 0.5925227403640747, "phase": 2.0, "loss/ce": 2.6055383682250977},
        3: {"loss": 2.7405588626861572, "loss/block0": 0.2449769228696823, "loss/block1": 0.009334114380180836,
            "loss/block2": 0.5925227403640747, "loss/embedding": 0.003100160276517272, "phase": 3.0, "loss/ce":
            2.6055383682250977},
        4: {"loss": 2.7405588626861572, "loss/block0": 0.2449769228696823, "loss/block1": 0.009334114380180836,
            "loss/block2": 0.5925227403640747, "loss/embedding": 0.003100160276517272, "phase": 3.0, "loss/ce":
            2.6055383682250977},
    },
    "overlap+ce/indistill/batch_stats": {
        0: {"loss": 1.4511359930038452, "loss/block0": 0.14836682379245758, "phase": 0.0, "loss/ce":
            2.6055383682250977},
        1: {"loss": 1.4515626430511475, "loss/block0": 0.14836682379245758, "loss/block1": 0.0008532533538527787,
            "phase": 1.0, "loss/ce": 2.6055383682250977},
        2: {"loss": 2.6226398944854736, "loss/block0": 0.14836682379245758, "loss/block1": 0.0008532533538527787,
            "loss/block2": 0.5855386257171631, "phase": 2.0, "loss/ce": 2.6055383682250977},
        3: {"loss": 2.6257400512695312, "loss/block0": 0.14836682379245758, "loss/block1": 0.0008532533538527787,
            "loss/block2": 0.5855386257171631, "loss/embedding": 0.003100160276517272, "phase": 3.0, "loss/ce":
            2.6055383682250977},
        4: {"loss": 2.6257400512695312, "loss/block0": 0.14836682379245758, "loss/block1": 0.0008532533538527787,
            "loss/block2": 0.5855386257171631, "loss/embedding": 0.003100160276517272, "phase": 3.0, "loss/ce":
            2.6055383682250977},
    },
}
