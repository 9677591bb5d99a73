"""Feature and logit losses: hand-computed golden values and properties."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from indistill.method.losses import (
    LOGIT_LOSSES,
    LOSSES,
    cosine_kernel,
    get_loss,
    jeffreys,
    kd_loss,
    pkt_loss,
    row_normalise,
)
from indistill.common.registry import UnknownNameError

# Three samples, two dims: simple enough to write every similarity by hand.
TEACHER = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
STUDENT = [[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]
R = 1.0 / math.sqrt(2.0)


def _jeffreys_np(k_t: np.ndarray, k_s: np.ndarray, eps: float) -> float:
    p_t = k_t / k_t.sum(axis=1, keepdims=True)
    p_s = k_s / k_s.sum(axis=1, keepdims=True)
    return float(np.mean((p_t - p_s) * (np.log(p_t + eps) - np.log(p_s + eps))))


def test_pkt_golden_by_hand_without_eps():
    # Teacher cosines: t0.t1 = 0, t0.t2 = t1.t2 = 1/sqrt2; (s + 1) / 2 on each.
    kc_t = np.array([[1.0, 0.5, (1 + R) / 2], [0.5, 1.0, (1 + R) / 2], [(1 + R) / 2, (1 + R) / 2, 1.0]])
    # Teacher distances: |t0-t1| = sqrt2, |t0-t2| = |t1-t2| = 1; kernel 1 / (1 + d).
    kd_t = np.array([[1.0, 1 / (1 + math.sqrt(2)), 0.5], [1 / (1 + math.sqrt(2)), 1.0, 0.5], [0.5, 0.5, 1.0]])
    # Student cosines: s0.s1 = 1/sqrt2, s0.s2 = 0, s1.s2 = 2 / (sqrt2 * 2) = 1/sqrt2.
    kc_s = np.array([[1.0, (1 + R) / 2, 0.5], [(1 + R) / 2, 1.0, (1 + R) / 2], [0.5, (1 + R) / 2, 1.0]])
    # Student distances: |s0-s1| = 1, |s0-s2| = sqrt5, |s1-s2| = sqrt2.
    kd_s = np.array(
        [
            [1.0, 0.5, 1 / (1 + math.sqrt(5))],
            [0.5, 1.0, 1 / (1 + math.sqrt(2))],
            [1 / (1 + math.sqrt(5)), 1 / (1 + math.sqrt(2)), 1.0],
        ]
    )
    # Row normalisation, written out for the first teacher row as a spot check.
    row0 = kc_t[0] / (1.0 + 0.5 + (1 + R) / 2)
    np.testing.assert_allclose((kc_t / kc_t.sum(1, keepdims=True))[0], row0, rtol=0, atol=1e-15)
    expected = _jeffreys_np(kc_t, kc_s, 0.0) + _jeffreys_np(kd_t, kd_s, 0.0)

    got = pkt_loss(torch.tensor(TEACHER, dtype=torch.float64), torch.tensor(STUDENT, dtype=torch.float64), eps=0.0)
    assert got.dtype == torch.float64
    assert abs(got.item() - expected) < 1e-10
    assert expected > 0.01  # not a degenerate case


def test_pkt_golden_step_by_step_with_default_eps():
    eps = 1e-7
    t = np.array(TEACHER)
    s = np.array(STUDENT)

    def kernels(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xn = x / (np.sqrt((x**2).sum(1, keepdims=True)) + eps)  # eps added to the norm
        cos = (xn @ xn.T + 1.0) / 2.0
        d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # exact pairwise squared distances
        dist = 1.0 / (1.0 + np.sqrt(d2 + eps))  # eps inside the sqrt
        return cos, dist

    (ct, dt), (cs, ds) = kernels(t), kernels(s)
    expected = _jeffreys_np(ct, cs, eps) + _jeffreys_np(dt, ds, eps)
    got = pkt_loss(torch.tensor(t), torch.tensor(s))
    assert abs(got.item() - expected) < 1e-10


def test_pkt_zero_on_identical_features_and_nonnegative():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 8, generator=g)
    assert pkt_loss(x, x.clone()).item() == 0.0
    for _ in range(5):
        a, b = torch.randn(16, 8, generator=g), torch.randn(16, 5, generator=g) * 3
        assert pkt_loss(a, b).item() >= 0.0


def test_pkt_symmetric():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(10, 6, generator=g, dtype=torch.float64), torch.randn(10, 6, generator=g, dtype=torch.float64)
    assert abs(pkt_loss(a, b).item() - pkt_loss(b, a).item()) < 1e-12


def test_cosine_kernel_part_invariant_to_positive_per_sample_scaling():
    g = torch.Generator().manual_seed(2)
    t = torch.randn(12, 7, generator=g, dtype=torch.float64)
    s = torch.randn(12, 7, generator=g, dtype=torch.float64)
    scale = torch.rand(12, 1, generator=g, dtype=torch.float64) * 10 + 0.1

    def cos_part(a: torch.Tensor, b: torch.Tensor) -> float:
        return jeffreys(row_normalise(cosine_kernel(a, 0.0)), row_normalise(cosine_kernel(b, 0.0)), 1e-7).item()

    base = cos_part(t, s)
    assert abs(cos_part(t, s * scale) - base) < 1e-12
    assert abs(cos_part(t * scale, s) - base) < 1e-12
    # The full loss is not invariant: the distance kernel sees the scale.
    assert abs(pkt_loss(t, s * scale).item() - pkt_loss(t, s).item()) > 1e-4


def test_pkt_gradient_reaches_only_the_student():
    g = torch.Generator().manual_seed(3)
    t = torch.randn(8, 4, generator=g, requires_grad=True)
    s = torch.randn(8, 4, generator=g)
    s[1] = s[0]  # a zero distance: eps inside the sqrt keeps the gradient finite
    s.requires_grad_(True)
    pkt_loss(t, s).backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_pkt_casts_low_precision_up():
    g = torch.Generator().manual_seed(4)
    t, s = torch.randn(8, 4, generator=g).bfloat16(), torch.randn(8, 4, generator=g).bfloat16()
    got = pkt_loss(t, s)
    assert got.dtype == torch.float32
    ref = pkt_loss(t.double(), s.double())
    assert abs(got.item() - ref.item()) < 1e-5


def test_pkt_rejects_batch_mismatch():
    with pytest.raises(ValueError, match="batch"):
        pkt_loss(torch.randn(4, 3), torch.randn(5, 3))


def test_registry_pkt_flattens_feature_maps_of_different_widths():
    g = torch.Generator().manual_seed(5)
    t, s = torch.randn(6, 16, 3, 3, generator=g), torch.randn(6, 8, 3, 3, generator=g)
    assert torch.equal(get_loss("pkt")(t, s), pkt_loss(t.flatten(1), s.flatten(1)))


def test_mse_by_hand_and_shape_error():
    t = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    s = torch.ones(2, 2)
    # squared differences 0, 1, 4, 9 -> mean 3.5
    assert get_loss("mse")(t, s).item() == pytest.approx(3.5, abs=1e-12)
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(2, 3\)"):
        get_loss("mse")(t, torch.ones(2, 3))


def test_cosine_by_hand():
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    s = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    # cosines 1 and 1/sqrt2 -> loss 1 - (1 + 1/sqrt2) / 2
    assert get_loss("cosine")(t, s).item() == pytest.approx(1 - (1 + R) / 2, abs=1e-12)
    assert abs(get_loss("cosine")(t, t).item()) < 1e-12


def test_kd_by_hand():
    temperature = 4.0
    # Row 0: t / T = [0, ln 3] -> p_t = [1/4, 3/4]; s / T = [0, 0] -> p_s = [1/2, 1/2].
    # Row 1: identical logits -> KL 0.
    t = torch.tensor([[0.0, temperature * math.log(3.0)], [1.0, 2.0]], dtype=torch.float64)
    s = torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
    kl_row0 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    expected = (kl_row0 + 0.0) / 2 * temperature**2  # batchmean, times T^2
    assert kd_loss(t, s).item() == pytest.approx(expected, abs=1e-12)
    assert LOGIT_LOSSES.get("kd")(t, s).item() == pytest.approx(expected, abs=1e-12)
    # Another temperature: T = 1 on the same logits.
    p_t = torch.softmax(t, 1)
    p_s = torch.softmax(s, 1)
    by_hand = (p_t * (p_t.log() - p_s.log())).sum(1).mean().item()
    assert kd_loss(t, s, temperature=1.0).item() == pytest.approx(by_hand, abs=1e-12)


#: every registered loss, feature and logit, so a new entry is tested without listing it here
ALL_LOSSES = [(registry, name) for registry in (LOSSES, LOGIT_LOSSES) for name in registry.names()]


@pytest.mark.parametrize("registry, name", ALL_LOSSES, ids=[name for _, name in ALL_LOSSES])
def test_teacher_is_detached_in_every_loss(registry, name):
    g = torch.Generator().manual_seed(6)
    t = torch.randn(5, 4, generator=g, requires_grad=True)
    s = torch.randn(5, 4, generator=g, requires_grad=True)
    registry.get(name)(t, s).backward()
    assert t.grad is None
    assert s.grad is not None


@pytest.mark.parametrize("registry, name", ALL_LOSSES, ids=[name for _, name in ALL_LOSSES])
def test_every_loss_is_zero_on_identical_inputs_and_positive_otherwise(registry, name):
    g = torch.Generator().manual_seed(7)
    t = torch.randn(6, 5, generator=g, dtype=torch.float64)
    loss = registry.get(name)
    assert abs(loss(t, t.clone()).item()) < 1e-9
    assert loss(t, torch.randn(6, 5, generator=g, dtype=torch.float64)).item() > 1e-6


def test_registry_names_and_unknown_name():
    # feature losses (what a curriculum layer may use) and logit losses live apart
    assert set(LOSSES.names()) == {"mse", "pkt", "cosine"}
    assert set(LOGIT_LOSSES.names()) == {"kd"}
    with pytest.raises(UnknownNameError) as info:
        get_loss("l1")
    message = str(info.value)
    assert "l1" in message
    for name in LOSSES.names():
        assert name in message
    with pytest.raises(UnknownNameError, match="unknown loss 'kd'; choose from: mse, pkt, cosine"):
        get_loss("kd")
