"""A network's size: multiply-accumulates counted against hand counts, and the student's size of every benchmark."""
import dataclasses

import pytest
import torch
from torch import nn

from indistill.data import BENCHMARKS
from indistill.engine.configure import build_config
from indistill.evaluation.embedding import count_parameters
from indistill.evaluation.size import count_macs, student_size
from indistill.models.zoo import create_network


def tiny() -> nn.Module:
    """conv 3->4 k3 (8x8 -> 6x6, no padding), BN, ReLU, flatten, linear 144->5."""
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def test_macs_of_a_conv_and_a_linear_are_the_hand_count():
    assert count_macs(tiny(), (3, 8, 8)) == 4 * 3 * 9 * 6 * 6 + 144 * 5


def test_batch_norm_activations_and_pooling_are_not_counted():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 5))
    padded = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(1),
                           nn.AdaptiveAvgPool2d(6), nn.Flatten(), nn.Linear(144, 5), nn.ReLU())
    assert count_macs(padded, (3, 8, 8)) == count_macs(plain, (3, 8, 8))


def test_the_network_keeps_its_mode_and_its_running_statistics():
    net = tiny().train()
    before = net[1].running_mean.clone()
    count_macs(net, (3, 8, 8))
    assert net.training and all(m.training for m in net.modules())
    assert net[1].num_batches_tracked.item() == 0 and torch.equal(net[1].running_mean, before)
    net.eval()
    count_macs(net, (3, 8, 8))
    assert not net.training


def test_one_image_whatever_the_batch_norm_mode_and_grad_mode():
    net = tiny()
    with torch.enable_grad():
        assert count_macs(net, (3, 8, 8)) == count_macs(net.eval(), (3, 8, 8))


def digits_student() -> nn.Module:
    return create_network("digits", "student", num_classes=10, in_channels=1, image_size=32)


def test_the_digits_student_is_its_layers_hand_count():
    # cnn widths [8, 16, 32], no padding, 32px: conv 3x3 then pool 2 per stage
    # 32 -conv-> 30 -pool-> 15 -conv-> 13 -pool-> 6 -conv-> 4 -pool-> 2; flatten 32*2*2 -> fc 64 -> head 10
    expected = 8 * 1 * 9 * 30 * 30 + 16 * 8 * 9 * 13 * 13 + 32 * 16 * 9 * 4 * 4 + 128 * 64 + 64 * 10
    assert count_macs(digits_student(), (1, 32, 32)) == expected
    cfg = build_config(benchmark="digits")
    assert student_size(cfg) == (count_parameters(digits_student()), expected)


def test_student_size_follows_the_configs_student_overrides():
    cfg = build_config({"networks": {"student": {"widths": [4, 8, 16], "embedding_dim": 32}}}, benchmark="digits")
    net = create_network("digits", "student", num_classes=10, in_channels=1, image_size=32,
                         overrides={"widths": [4, 8, 16], "embedding_dim": 32})
    assert student_size(cfg) == (count_parameters(net), count_macs(net, (1, 32, 32)))
    assert student_size(cfg)[0] < student_size(build_config(benchmark="digits"))[0]


def conv_macs(widths: list[int]) -> int:
    """The conv part of a digits cnn's MACs: the whole count minus its two linear layers."""
    net = create_network("digits", "student", num_classes=10, in_channels=1, image_size=32,
                         overrides={"widths": widths, "embedding_dim": 64})
    linear = sum(m.in_features * m.out_features for m in net.modules() if isinstance(m, nn.Linear))
    return count_macs(net, (1, 32, 32)) - linear


def test_doubling_the_widths_roughly_quadruples_the_conv_macs():
    small, large = conv_macs([8, 16, 32]), conv_macs([16, 32, 64])
    # every conv but the first (one input channel) has both its ins and its outs doubled
    assert 3.0 < large / small <= 4.0


@pytest.mark.parametrize("benchmark", BENCHMARKS.names())
def test_every_benchmarks_student_has_a_positive_size_without_its_data(benchmark, monkeypatch, tmp_path):
    monkeypatch.setenv("INDISTILL_DATA", str(tmp_path / "nowhere"))
    cfg = build_config(benchmark=benchmark)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, root=str(tmp_path / "nowhere")))
    params, macs = student_size(cfg)
    assert isinstance(params, int) and isinstance(macs, int)
    assert params > 0 and macs > 0
