"""The device Ray reserved, and a fractional GPU's memory cap: the Ray-free decisions on what Ray and torch
report, and the study worker's wiring with both patched (no GPU and no Ray instance needed)."""
from __future__ import annotations

import re
import types

import pytest
import torch

from indistill.common.errors import ConfigError
from indistill.engine.runtime import (
    CUDA_CONTEXT_BYTES,
    DeviceError,
    TorchCuda,
    cap_memory,
    memory_fraction,
    reserved_device,
)

CUDA_OK = TorchCuda("2.14.1+cu130", "13.0", True)
CUDA_BROKEN = TorchCuda("2.14.1+cu130", "13.0", False)  # a wheel built for a newer driver than the node's
CPU_BUILD = TorchCuda("2.14.1+cpu", None, False)
NODE = "node ip-10-0-1-7 (Ray node 3f2a)"
GIB = 1024**3
GPU_24GIB = 24 * GIB


@pytest.mark.parametrize(
    ("requested", "reserved", "cuda", "want"),
    [
        # a CPU-only trial on a GPU node (Ray 2.60 no longer hides the node's GPUs): the CPU, not cuda:0
        ("auto", "cpu", CUDA_OK, "cpu"),
        ("auto", "cpu", CPU_BUILD, "cpu"),
        # a reserved GPU: that one, by the index Ray assigned
        ("auto", "cuda:0", CUDA_OK, "cuda:0"),
        ("auto", "cuda:3", CUDA_OK, "cuda:3"),
        ("cuda", "cuda:1", CUDA_OK, "cuda:1"),
        # device: cpu wins over everything (tests on logical GPUs, which CUDA cannot use)
        ("cpu", "cuda:0", CUDA_BROKEN, "cpu"),
        ("cpu", "cuda:0", CUDA_OK, "cpu"),
        ("cpu", "cpu", CUDA_OK, "cpu"),
    ],
)
def test_the_worker_trains_on_the_device_ray_reserved(requested, reserved, cuda, want):
    assert reserved_device(requested, reserved, cuda, NODE) == want


@pytest.mark.parametrize("cuda", [CUDA_BROKEN, CPU_BUILD], ids=["cu130-on-an-older-driver", "cpu-build"])
def test_a_reserved_gpu_that_cuda_cannot_use_is_one_line_naming_node_torch_and_cuda(cuda):
    with pytest.raises(DeviceError) as info:
        reserved_device("auto", "cuda:0", cuda, NODE)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{NODE}: Ray reserved GPU cuda:0")
    assert f"torch {cuda.torch}" in message and "torch.cuda.is_available() is False" in message
    assert ("built for CUDA 13.0" if cuda.cuda else "a CPU-only build") in message
    assert "device: cpu" in message and "docs/devices.md" in message


def test_device_cuda_on_a_worker_without_a_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^device: 'cuda', but this worker on node ip-10-0-1-7 .* reserved no GPU"):
        reserved_device("cuda", "cpu", CUDA_OK, NODE)


def test_torch_cuda_report_is_what_torch_says(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert TorchCuda.report() == TorchCuda(torch.__version__, torch.version.cuda, False)


@pytest.mark.parametrize(
    ("gpus", "total", "want"),
    [
        (0.0, GPU_24GIB, None),  # no GPU: nothing to cap
        (1.0, GPU_24GIB, None),  # a whole GPU (or more) is the worker's own
        (2.0, GPU_24GIB, None),
        (0.25, GPU_24GIB, 0.25 - 0.5 / 24),  # four trials on one 24 GiB GPU: a quarter, less a 512 MiB context
        (0.5, GPU_24GIB, 0.5 - 0.5 / 24),
        (0.25, 80 * GIB, 0.25 - 0.5 / 80),
        (0.1, 2 * GIB, 0.05),  # the context estimate is more than the share: half the share
    ],
)
def test_a_fractional_gpu_is_capped_at_its_share_less_its_context(gpus, total, want):
    got = memory_fraction(gpus, total)
    assert got == (None if want is None else pytest.approx(want, rel=1e-12))


@pytest.mark.parametrize("share", [0.5, 0.25, 0.2, 0.125])
def test_the_trials_packed_on_one_gpu_fit_it_with_their_contexts(share):
    n = round(1 / share)
    fraction = memory_fraction(share, GPU_24GIB)
    assert 0 < fraction < share
    assert n * (fraction * GPU_24GIB + CUDA_CONTEXT_BYTES) <= GPU_24GIB * (1 + 1e-12)


def _fake_cuda(monkeypatch, total: int) -> list:
    calls: list = []
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(total_memory=total))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, device=None: calls.append((f, device)))
    return calls


def test_cap_memory_sets_the_fraction_on_the_device(monkeypatch):
    calls = _fake_cuda(monkeypatch, GPU_24GIB)
    device = torch.device("cuda", 1)
    assert cap_memory(device, 0.25) == pytest.approx(0.25 - 0.5 / 24)
    assert calls == [(pytest.approx(0.25 - 0.5 / 24), device)]
    assert cap_memory(device, 1.0) is None and cap_memory(torch.device("cpu"), 0.25) is None
    assert len(calls) == 1


# ----------------------------------------------------------------------------- the study worker


@pytest.fixture
def ray_reports(monkeypatch):
    """Patches what Ray reports to a worker: the device of its GPU ids, its node and its assigned resources."""
    import ray
    import ray.train.torch

    reported = {"device": torch.device("cpu"), "resources": {"CPU": 1.0}}
    context = types.SimpleNamespace(get_node_id=lambda: "3f2a",
                                    get_assigned_resources=lambda: dict(reported["resources"]))
    monkeypatch.setattr(ray.train.torch, "get_device", lambda: reported["device"])
    monkeypatch.setattr(ray, "get_runtime_context", lambda: context)
    monkeypatch.setattr("socket.gethostname", lambda: "ip-10-0-1-7")
    return reported


def _cfg(device: str = "auto"):
    from indistill.engine.configure import build_config

    return build_config({"device": device}, benchmark="digits")


def _device_name(cfg) -> str:
    """The device a study worker trains on: what Ray reserved, checked against torch."""
    from study import workers

    return reserved_device(cfg.device, workers._ray_device(cfg.device), TorchCuda.report(), workers._node())


def test_a_cpu_trial_on_a_gpu_node_trains_on_the_cpu(ray_reports, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the node's GPUs are visible
    assert _device_name(_cfg()) == "cpu"


def test_a_trial_trains_on_the_gpu_ray_assigned(ray_reports, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    ray_reports["device"] = torch.device("cuda", 2)
    assert _device_name(_cfg()) == "cuda:2"


def test_a_reserved_gpu_torch_cannot_use_fails_the_trial(ray_reports, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ray_reports["device"] = torch.device("cuda", 0)
    with pytest.raises(DeviceError, match=r"^node ip-10-0-1-7 \(Ray node 3f2a\): Ray reserved GPU cuda:0 .* "
                                          rf"torch {re.escape(torch.__version__)} .*is_available\(\) is False"):
        _device_name(_cfg())
    assert _device_name(_cfg("cpu")) == "cpu"  # a test on logical GPUs


@pytest.mark.parametrize(("resources", "device", "want"), [
    ({"CPU": 1.0, "GPU": 0.25}, "cuda:0", [0.25 - 0.5 / 24]),
    ({"CPU": 1.0, "GPU": 1.0}, "cuda:0", []),
    ({"CPU": 1.0}, "cpu", []),
    ({"CPU": 1.0, "GPU": 0.25}, "cpu", []),  # device: cpu on a logical GPU
])
def test_the_worker_caps_its_memory_where_it_picks_its_device(ray_reports, monkeypatch, tmp_path, resources, device, want):
    from study import workers

    calls = _fake_cuda(monkeypatch, GPU_24GIB)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    ray_reports["device"], ray_reports["resources"] = torch.device(device), resources
    lines: list[str] = []
    cfg = _cfg("cpu" if device == "cpu" else "auto")
    cfg = workers._on_reserved_device(cfg, workers._ray_device(cfg.device), workers._reserved_gpus(), lines.append)
    assert cfg.device == device
    assert [f for f, _ in calls] == [pytest.approx(f) for f in want]
    assert all(d == torch.device(device) for _, d in calls)
    assert len([line for line in lines if "CUDA memory capped" in line]) == len(want)
