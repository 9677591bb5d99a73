"""fp32 means fp32: the losses ignore an enclosing autocast, and the fp32 contexts switch TF32 off for
matmuls and cuDNN convolutions inside and restore the previous settings after (checked through the flags
torch reports: no GPU needed)."""
from __future__ import annotations

import pytest
import torch

from indistill.evaluation.embedding import embed
from indistill.method.losses import LOGIT_LOSSES, LOSSES
from indistill.models.zoo import create_network
from indistill.common.precision import full_fp32, no_tf32
from indistill.common.precision import autocast, stage_precision

CPU = torch.device("cpu")
ALL_LOSSES = [("feature", n) for n in LOSSES] + [("logit", n) for n in LOGIT_LOSSES]
PER_OPERATOR = hasattr(torch._C, "_get_fp32_precision_getter")  # torch >= 2.9


def _loss(kind: str, name: str):
    return (LOSSES if kind == "feature" else LOGIT_LOSSES).get(name)


def _loss_and_grad(kind: str, name: str, autocast_on: bool) -> tuple[float, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    teacher = torch.randn(128, 64, generator=g)
    student = torch.randn(128, 64, generator=g).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_on):
        loss = _loss(kind, name)(teacher, student)
    loss.backward()
    return float(loss.detach()), student.grad


@pytest.mark.parametrize(("kind", "name"), ALL_LOSSES, ids=lambda v: str(v))
def test_every_loss_is_its_float32_value_under_bf16_autocast(kind, name):
    # before: PKT's kernels ran their matmuls in bf16 under autocast (loss 0.5 % and gradient 2 % off here)
    loss, grad = _loss_and_grad(kind, name, autocast_on=True)
    want_loss, want_grad = _loss_and_grad(kind, name, autocast_on=False)
    assert loss == pytest.approx(want_loss, rel=1e-6)
    assert float((grad - want_grad).norm() / want_grad.norm()) < 1e-6


def _flags() -> dict[str, object]:
    """TF32 as both of torch's APIs report it (the per-operator flags where this torch has them)."""
    out: dict[str, object] = {
        "matmul_precision": torch.get_float32_matmul_precision(),
        "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
    }
    if PER_OPERATOR:
        out["cuda.matmul"] = torch.backends.cuda.matmul.fp32_precision
        out["cudnn.conv"] = torch.backends.cudnn.conv.fp32_precision
    return out


def _assert_tf32_off(flags: dict[str, object]) -> None:
    assert flags["matmul_precision"] == "highest"
    assert flags["cuda.matmul.allow_tf32"] is False
    assert flags["cudnn.allow_tf32"] is False
    if PER_OPERATOR:
        assert flags["cuda.matmul"] != "tf32" and flags["cudnn.conv"] != "tf32"


@pytest.fixture
def tf32_on():
    """TF32 on for matmuls and cuDNN (as training code may leave it), torch's own settings back after."""
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    before = _flags()
    assert before["cuda.matmul.allow_tf32"] is True and before["cudnn.allow_tf32"] is True
    yield before
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.cudnn.allow_tf32 = saved[1]


@pytest.mark.parametrize("context", [no_tf32, full_fp32, lambda: autocast(CPU, "fp32"), lambda: stage_precision("fp32")],
                         ids=["no_tf32", "full_fp32", "autocast-fp32", "stage_precision-fp32"])
def test_the_fp32_contexts_turn_tf32_off_inside_and_restore_it_after(tf32_on, context):
    with context():
        _assert_tf32_off(_flags())
    assert _flags() == tf32_on


def test_the_defaults_come_back_as_they_were():
    # torch's defaults: TF32 off for matmuls, on for cuDNN (the convolutions "fp32" runs must not use)
    before = _flags()
    with no_tf32():
        _assert_tf32_off(_flags())
    assert _flags() == before


def test_a_failure_inside_still_restores(tf32_on):
    with pytest.raises(KeyError):
        with no_tf32():
            raise KeyError("inside")
    assert _flags() == tf32_on


@pytest.mark.skipif(not PER_OPERATOR, reason="this torch has no per-operator fp32_precision flags")
def test_per_operator_flags_set_through_the_new_api_come_back_exactly():
    conv, matmul = torch.backends.cudnn.conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision
    try:
        torch.backends.cudnn.conv.fp32_precision = "ieee"  # conv and rnn now differ: the legacy getter refuses
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        with no_tf32():
            _assert_tf32_off(_flags())
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    finally:
        torch.backends.cudnn.conv.fp32_precision = conv
        torch.backends.cuda.matmul.fp32_precision = matmul


@pytest.mark.parametrize(("precision", "off"), [("fp32", True), ("auto", False), ("bf16", False)])
def test_a_stage_turns_tf32_off_only_for_fp32(tf32_on, precision, off):
    with stage_precision(precision):
        if off:
            _assert_tf32_off(_flags())
        else:
            assert _flags() == tf32_on
    assert _flags() == tf32_on


class _Split:
    """Six seeded CIFAR-sized images, in batches."""

    labels = torch.zeros(6, dtype=torch.long)

    def eval_batches(self, batch_size: int):
        yield from torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0)).split(batch_size)


def test_the_retrieval_embeddings_run_with_tf32_off(tf32_on):
    net = create_network("cifar10", "student", num_classes=10, in_channels=3, image_size=32)
    seen: list[tuple[dict, bool]] = []
    net.register_forward_pre_hook(lambda *_: seen.append((_flags(), torch.is_autocast_enabled("cpu"))))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = embed(net, _Split(), batch_size=4)
    assert out.dtype == torch.float32 and out.shape[0] == 6
    assert len(seen) == 2
    for flags, autocast_on in seen:
        _assert_tf32_off(flags)
        assert not autocast_on
    assert _flags() == tf32_on


@pytest.mark.parametrize(("precision", "off"), [("fp32", True), ("auto", False)])
def test_the_student_step_holds_tf32_off_for_its_loop_in_fp32(tf32_on, precision, off):
    # `with step: loop.run()` in student_stage: the backward passes and evaluations run inside it too
    from indistill.engine.configure import build_config
    from indistill.method.methods import create_method
    from indistill.method.student_step import student_step

    cfg = build_config({"precision": precision}, benchmark="cifar10")
    net = create_network("cifar10", "student", num_classes=10, in_channels=3, image_size=32)
    step = student_step(net, create_method("ce", cfg.student, ("block0", "block1", "block2"), 1), None, None, cfg, CPU)
    with step:
        if off:
            _assert_tf32_off(_flags())
        else:
            assert _flags() == tf32_on
    assert _flags() == tf32_on


def test_the_teacher_and_auxiliary_loops_run_with_tf32_off_in_fp32(tf32_on, tmp_path, monkeypatch):
    """Every loop of the artifact stages (teacher; auxiliary CE, then PKT) runs, backward passes
    included, inside ``stage_precision`` when the config says fp32."""
    from indistill.engine.configure import build_config
    from indistill.engine.pipeline import make_context
    from indistill.engine import stages
    from indistill.engine.loop import Loop

    seen: list[tuple[str, dict]] = []
    monkeypatch.setattr(Loop, "run", lambda self: seen.append((self.name, _flags())) or [])
    cfg = build_config({"device": "cpu", "precision": "fp32"}, benchmark="digits")
    ctx = make_context(cfg, tmp_path, log=lambda _m: None)
    teacher = stages.teacher_stage(ctx, "val").network
    stages.auxiliary_stage(ctx, teacher, "val")
    assert [name for name, _ in seen] == ["teacher", "auxiliary/ce", "auxiliary/pkt"]
    for _name, flags in seen:
        _assert_tf32_off(flags)
    assert _flags() == tf32_on
