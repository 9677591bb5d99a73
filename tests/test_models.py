"""Networks, their taps and the networks of every registered benchmark."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from indistill.config.run import ROLES
from indistill.data import BENCHMARKS, get_spec
from indistill.models import MODELS, TapNet, TapReader, create_model
from indistill.models.base import EMBEDDING
from indistill.models.zoo import create_network, network_entry
from indistill.method.pruning import PrunedTaps

# (C, H=W, classes) of each registered benchmark's stored images
SHAPES = {name: (spec.input_shape[0], spec.input_shape[1], spec.num_classes)
          for name, spec in ((name, get_spec(name)) for name in BENCHMARKS)}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run(model: TapNet, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    with torch.no_grad(), TapReader(model, [t.name for t in model.taps]) as reader:
        return reader(x)


@pytest.fixture(scope="module")
def built() -> dict[tuple[str, str], TapNet]:
    torch.manual_seed(0)
    nets = {}
    for bench, (c, s, n) in SHAPES.items():
        for role in ROLES:
            nets[bench, role] = create_network(bench, role, num_classes=n, in_channels=c, image_size=s).eval()
    return nets


@pytest.mark.parametrize("bench", list(SHAPES))
@pytest.mark.parametrize("role", ROLES)
def test_network_shapes_and_taps(built, bench: str, role: str) -> None:
    c, s, n = SHAPES[bench]
    net = built[bench, role]
    x = torch.randn(2, c, s, s)
    logits, feats = run(net, x)
    assert logits.shape == (2, n)
    assert list(feats) == [t.name for t in net.taps]
    names = [t.name for t in net.intermediate_taps]
    assert names == [f"block{i}" for i in range(len(names))] and net.taps[-1].name == EMBEDDING
    for spec in net.taps:
        assert feats[spec.name].shape[:2] == (2, spec.channels)
    assert feats[EMBEDDING].dim() == 2 and net.embedding_dim == net.embedding_tap.channels
    for spec in net.intermediate_taps:
        assert isinstance(net.get_submodule(spec.conv), nn.Conv2d)
        assert net.get_submodule(spec.conv).out_channels == spec.channels
        if spec.bn is not None:
            assert net.get_submodule(spec.bn).num_features == spec.channels
    # reading taps does not change the forward output
    with torch.no_grad():
        assert torch.equal(net(x), logits)


@pytest.mark.parametrize("bench", list(SHAPES))
def test_pruned_auxiliary_taps_match_student(built, bench: str) -> None:
    c, s, _ = SHAPES[bench]
    aux, student = built[bench, "auxiliary"], built[bench, "student"]
    assert len(aux.intermediate_taps) == len(student.intermediate_taps)
    x = torch.randn(2, c, s, s)
    _, fa = run(aux, x)
    _, fs = run(student, x)
    g = torch.Generator().manual_seed(1)
    indices = {}
    for ta, ts in zip(aux.intermediate_taps, student.intermediate_taps):
        assert ta.name == ts.name and ts.channels <= ta.channels
        indices[ta.name] = torch.randperm(ta.channels, generator=g)[: ts.channels].sort().values
    pruned = PrunedTaps(indices).apply(fa)
    for ts in student.intermediate_taps:
        assert pruned[ts.name].shape == fs[ts.name].shape
    assert pruned[EMBEDDING] is fa[EMBEDDING]


@pytest.mark.parametrize("arch", MODELS.names())
@pytest.mark.parametrize("in_channels", [1, 3])
def test_every_registered_arch(arch: str, in_channels: int) -> None:
    kwargs = {"image_size": 32} if arch == "cnn" else {}
    if arch == "resnet18":
        kwargs["stem"] = "small"
    net = create_model(arch, num_classes=7, in_channels=in_channels, **kwargs).eval()
    assert isinstance(net, TapNet)
    x = torch.randn(2, in_channels, 32, 32)
    logits, feats = run(net, x)
    assert logits.shape == (2, 7)
    for spec in net.taps:
        assert feats[spec.name].shape[:2] == (2, spec.channels)
    with torch.no_grad():
        assert torch.equal(net(x), logits)


def test_reference_cifar10_parameter_counts(built) -> None:
    def conv(c_in: int, c_out: int) -> int:  # 3x3 weights + bias, then BN gamma + beta
        return c_in * c_out * 9 + c_out + 2 * c_out

    def fc(n_in: int, n_out: int) -> int:
        return n_in * n_out + n_out

    # auxiliary: 32 -> conv 30 -> pool 15 -> 13 -> 6 -> 4 -> 2, so 64 * 2 * 2 = 256 flattened
    aux = conv(3, 16) + conv(16, 32) + conv(32, 64) + fc(64 * 2 * 2, 128) + fc(128, 10)
    student = conv(3, 8) + conv(8, 16) + conv(16, 32) + fc(32 * 2 * 2, 64) + fc(64, 10)
    assert (aux, student) == (57994, 15050)
    assert n_params(built["cifar10", "auxiliary"]) == aux
    assert n_params(built["cifar10", "student"]) == student
    # the reference's pre-activation ResNet-18 (10 classes): stem conv + BN(64), 8 blocks, linear
    def bn(c: int) -> int:
        return 2 * c

    def block(c_in: int, c_out: int) -> int:
        shortcut = c_in * c_out if c_in != c_out else 0  # 1x1 projection, no bias, no BN
        return bn(c_in) + c_in * c_out * 9 + bn(c_out) + c_out * c_out * 9 + shortcut

    teacher = 3 * 64 * 9 + bn(64) + fc(512, 10)
    for c_in, c_out in ((64, 64), (64, 128), (128, 256), (256, 512)):
        teacher += block(c_in, c_out) + block(c_out, c_out)
    assert teacher == 11_171_274
    assert n_params(built["cifar10", "teacher"]) == teacher


def test_cnn_tap_modules_and_flat_size() -> None:
    net = create_model("cnn", num_classes=10, in_channels=3, image_size=32)
    assert net.tap("block0").module == "blocks.0"
    assert (net.tap("block2").conv, net.tap("block2").bn) == ("blocks.2.0", "blocks.2.1")
    assert net.embed[1].in_features == 256
    student = create_model("cnn", num_classes=10, in_channels=3, image_size=32, widths=[8, 16, 32], embedding_dim=64)
    assert student.embed[1].in_features == 128
    pooled = create_model("cnn", num_classes=10, in_channels=3, image_size=128, widths=[4, 8], padding=1, global_pool=True)
    assert pooled.embed[1].in_features == 8
    with pytest.raises(ValueError, match="too small"):
        create_model("cnn", num_classes=10, in_channels=3, image_size=8, widths=[4, 4, 4])


def test_resnet_taps() -> None:
    net = create_model("resnet18", num_classes=5, in_channels=3, stem="imagenet")
    assert [t.module for t in net.intermediate_taps] == ["layer1", "layer2", "layer3", "layer4"]
    assert net.tap("block3").conv == "layer4.1.conv2" and net.tap("block3").bn == "layer4.1.bn2"
    pre = create_model("preact_resnet18", num_classes=5, in_channels=1)
    assert all(t.bn is None for t in pre.intermediate_taps)
    with pytest.raises(ValueError, match="stem"):
        create_model("resnet18", num_classes=5, in_channels=3, stem="tiny")


def test_pretrained_offline_error_is_clear(monkeypatch) -> None:
    import torchvision

    def offline(*_a, **_k):
        raise OSError("no network")

    monkeypatch.setattr(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", offline)
    with pytest.raises(RuntimeError, match="network access"):
        create_model("resnet18", num_classes=5, in_channels=3, pretrained=True)


def test_create_errors_and_overrides() -> None:
    with pytest.raises(KeyError, match="cnn"):
        create_model("vgg", num_classes=10, in_channels=3)
    with pytest.raises(TypeError, match="widths"):
        create_model("cnn", num_classes=10, in_channels=3, image_size=32, width=[1])
    with pytest.raises(KeyError, match="cifar10"):
        create_network("mnist", "student", num_classes=10, in_channels=1, image_size=32)
    net = create_network("cifar10", "student", num_classes=10, in_channels=3, image_size=32,
                         overrides={"widths": [4, 8, 16]})
    assert [t.channels for t in net.intermediate_taps] == [4, 8, 16] and net.embedding_dim == 64
    # another arch drops the zoo entry's cnn options
    assert network_entry("cifar10", "auxiliary", {"arch": "preact_resnet18"}) == {"arch": "preact_resnet18"}
    # the benchmark's own entry is never mutated by overrides
    network_entry("cifar10", "student", {"widths": [1, 1, 1]})["embedding_dim"] = 3
    network_entry("cifar10", "student")["widths"].append(1)  # a deep copy: nested lists too
    assert get_spec("cifar10").networks["student"] == {"arch": "cnn", "widths": [8, 16, 32], "embedding_dim": 64}
    assert network_entry("cifar10", "student")["widths"] == [8, 16, 32]


def _ran(net: TapNet) -> tuple[list[str], list]:
    """Names of ``net``'s top-level modules and its blocks, appended to a list each time one runs."""
    ran: list[str] = []
    handles = [m.register_forward_hook(lambda *_a, n=name: ran.append(n))
               for name, m in net.named_modules() if name.count(".") <= 1 and name not in ("", "blocks")]
    return ran, handles


def test_partial_read_stops_after_the_taps_it_asks_for() -> None:
    torch.manual_seed(0)
    net = create_network("cifar10", "auxiliary", num_classes=10, in_channels=3, image_size=32).eval()
    x = torch.randn(4, 3, 32, 32)
    names = [t.name for t in net.taps]
    ran, handles = _ran(net)
    with torch.no_grad(), TapReader(net, names, keep_inputs=True) as reader:
        _, full = reader(x)
        full_inputs = dict(reader.inputs)
        assert ran[-2:] == ["embed", "head"]
        ran.clear()
        feats, inputs = reader.read(x, ["block1"])
        assert ran == ["blocks.0", "blocks.1"] and list(feats) == ["block1"] and inputs == {}
        assert torch.equal(feats["block1"], full["block1"])
        ran.clear()
        feats, inputs = reader.read(x, ["block0"], inputs=["block2"])  # block2 itself does not run
        assert ran == ["blocks.0", "blocks.1"] and list(feats) == ["block0"] and list(inputs) == ["block2"]
        assert torch.equal(inputs["block2"], full_inputs["block2"])
        ran.clear()
        assert reader.read(x) == ({}, {}) and ran == []  # nothing asked: nothing runs
        feats, _ = reader.read(x, [EMBEDDING])
        assert "head" not in ran and torch.equal(feats[EMBEDDING], full[EMBEDDING])
        logits, again = reader(x)  # a full call after partial ones reads everything again
        assert list(again) == names and logits.shape == (4, 10)
    for h in handles:
        h.remove()


def test_partial_read_refuses_what_it_cannot_do() -> None:
    net = create_network("cifar10", "student", num_classes=10, in_channels=3, image_size=32).eval()
    x = torch.randn(2, 3, 32, 32)
    with TapReader(net, ["block0"]) as reader:
        with pytest.raises(ValueError, match="not read by this reader"):
            reader.read(x, ["block1"])
        with pytest.raises(ValueError, match="keep_inputs"):
            reader.read(x, inputs=["block0"])
    with TapReader(torch.compile(net), ["block0"]) as reader:
        with pytest.raises(TypeError, match="plain network"):
            reader.read(x, ["block0"])
