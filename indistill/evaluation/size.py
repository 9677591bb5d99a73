"""The size of a network: its parameters and its multiply-accumulates per image; the student's of a config."""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from indistill.config.run import RunConfig
from indistill.data import get_spec
from indistill.evaluation.embedding import count_parameters, frozen
from indistill.models.base import unwrap
from indistill.models.zoo import create_network


def count_macs(network: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one ``[C, H, W]`` image's forward pass in eval mode.

    Counted by ``torch.utils.flop_counter.FlopCounterMode`` and halved (it counts a multiply-accumulate
    as two FLOPs): the convolutions and the matrix products (linear layers, attention). Not counted:
    bias additions, batch norm, activations, pooling, residual additions, anything else elementwise.
    Runs on the CPU under ``torch.no_grad``; the network keeps its mode and device (one held
    elsewhere is counted on a CPU copy).
    """
    net = unwrap(network)
    tensors = [*net.parameters(), *net.buffers()]
    if any(t.device.type != "cpu" for t in tensors):
        net = copy.deepcopy(net).to("cpu")
    dtype = next((p.dtype for p in net.parameters() if p.is_floating_point()), torch.float32)
    x = torch.zeros(1, *input_shape, dtype=dtype)
    counter = FlopCounterMode(display=False)
    with frozen(net), counter:
        net(x)
    return int(counter.get_total_flops()) // 2


def student_size(cfg: RunConfig) -> tuple[int, int]:
    """(parameters, multiply-accumulates per image) of ``cfg``'s student, built as the pipeline builds it
    (the benchmark's spec for ``data.options``, ``networks.student`` over the benchmark's entry); no
    data is read."""
    spec = get_spec(cfg.benchmark, cfg.data.options)
    c, h, _ = spec.input_shape
    net = create_network(cfg.benchmark, "student", num_classes=spec.num_classes, in_channels=c, image_size=h,
                         overrides=cfg.networks.student)
    return count_parameters(net), count_macs(net, spec.input_shape)
