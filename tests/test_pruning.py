"""Pruning criteria, channel selection and the pruned-tap definition."""
from __future__ import annotations

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

from indistill.data.base import Split
from indistill.models import TapReader, create_model
from indistill.models.base import EMBEDDING, TapNet
from indistill.method.pruning import CRITERIA, PrunedTaps, channel_scores, select_channels, structurally_pruned_block, top_k

#: every registered criterion, and those that score channels from the train split
ALL = CRITERIA.names()
DATA_CRITERIA = [name for name in ALL if CRITERIA.get(name).needs_data]
WIDTHS = {"block0": 8, "block1": 16, "block2": 32}


def normalize(u8: torch.Tensor) -> torch.Tensor:
    return u8.float() / 127.5 - 1.0


def make_split(n: int = 48, seed: int = 0, channels: int = 3) -> Split:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, 32, 32), generator=g, dtype=torch.uint8)
    return Split(images, torch.arange(n, dtype=torch.int64) % 10)


def auxiliary(seed: int = 0) -> TapNet:
    torch.manual_seed(seed)
    net = create_model("cnn", num_classes=10, in_channels=3, image_size=32, widths=[16, 32, 64], embedding_dim=128)
    for m in net.modules():  # non-trivial BN affine and running statistics
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_()
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return net


def tiny_tap_net(weight: torch.Tensor, gamma: torch.Tensor | None = None) -> TapNet:
    """A cnn with one stage whose conv weights are ``weight`` ([out, in, 3, 3])."""
    net = create_model("cnn", num_classes=2, in_channels=weight.shape[1], image_size=8, widths=[weight.shape[0]], embedding_dim=4)
    net.blocks[0][0].weight.data.copy_(weight)
    if gamma is not None:
        net.blocks[0][1].weight.data.copy_(gamma)
    return net


def filters(*values: list[float]) -> torch.Tensor:
    """Filters of one input channel whose 9 taps are ``values`` padded with zeros."""
    w = torch.zeros(len(values), 1, 3, 3)
    for i, v in enumerate(values):
        w[i].view(-1)[: len(v)] = torch.tensor(v)
    return w


def test_registered_criteria() -> None:
    # the stable names of docs/method.md ("Pruning"), used in search spaces and exported configs
    assert CRITERIA.names() == ["l1", "l2", "bn_scale", "fpgm", "taylor", "activation", "random"]
    assert DATA_CRITERIA == ["taylor", "activation"]


def test_unknown_criterion_lists_names() -> None:
    with pytest.raises(KeyError) as err:
        select_channels(auxiliary(), WIDTHS, "magic")
    for name in ALL:
        assert name in str(err.value)


@pytest.mark.parametrize("seed", range(6))
def test_l1_keeps_what_ln_structured_keeps(seed: int) -> None:
    torch.manual_seed(seed)
    shapes = [(16, 3), (32, 16), (64, 32), (7, 5), (128, 64)]
    for out_c, in_c in shapes:
        conv = nn.Conv2d(in_c, out_c, 3)
        for k in sorted({1, out_c // 2, out_c - 1, out_c}):
            net = tiny_tap_net(conv.weight.detach())
            picked = select_channels(net, {"block0": k}, "l1")["block0"]
            ref = nn.Conv2d(in_c, out_c, 3)
            ref.weight.data.copy_(conv.weight.detach())
            torch_prune.ln_structured(ref, "weight", amount=out_c - k, n=1, dim=0)
            kept = ref.weight_mask.flatten(1).any(1).nonzero().flatten()
            assert torch.equal(picked, kept), (out_c, in_c, k)
            if 0 < k < out_c:  # the fractional form of amount keeps the same count
                frac = nn.Conv2d(in_c, out_c, 3)
                frac.weight.data.copy_(conv.weight.detach())
                torch_prune.ln_structured(frac, "weight", amount=(out_c - k) / out_c, n=1, dim=0)
                assert torch.equal(frac.weight_mask.flatten(1).any(1).nonzero().flatten(), kept)


def test_l1_ranks_by_absolute_sum() -> None:
    # |w| sums 6, 3, 5 (signs must not matter)
    net = tiny_tap_net(filters([1, -2, 3], [3], [-5]))
    assert channel_scores(net, ["block0"], "l1")["block0"].tolist() == [6.0, 3.0, 5.0]
    assert select_channels(net, {"block0": 2}, "l1")["block0"].tolist() == [0, 2]


def test_l2_hand_checked() -> None:
    # L2 norms 5, 4, 1: L1 (7, 4, 1) ranks filter 1 like L2, but [0.5]*16 beats [3, 4] in L1 only
    net = tiny_tap_net(filters([3, 4], [4], [1]))
    assert torch.allclose(channel_scores(net, ["block0"], "l2")["block0"], torch.tensor([5.0, 4.0, 1.0]))
    net = tiny_tap_net(filters([3, 4], [1] * 9, [1]))  # L1: 7, 9, 1   L2: 5, 3, 1
    assert select_channels(net, {"block0": 1}, "l2")["block0"].tolist() == [0]
    assert select_channels(net, {"block0": 1}, "l1")["block0"].tolist() == [1]


def test_bn_scale_hand_checked() -> None:
    net = tiny_tap_net(filters([1], [1], [1], [1]), gamma=torch.tensor([0.1, -3.0, 2.0, 0.5]))
    assert torch.allclose(channel_scores(net, ["block0"], "bn_scale")["block0"], torch.tensor([0.1, 3.0, 2.0, 0.5]))
    assert select_channels(net, {"block0": 2}, "bn_scale")["block0"].tolist() == [1, 2]


def test_bn_scale_needs_a_bn() -> None:
    teacher = create_model("preact_resnet18", num_classes=10, in_channels=3)
    with pytest.raises(ValueError, match="BatchNorm"):
        select_channels(teacher, {"block0": 8}, "bn_scale")


def test_fpgm_hand_checked() -> None:
    # 1-D filters at 0, 1, 10: distance sums 11, 10, 19 -> filter 1 is nearest the median
    net = tiny_tap_net(filters([0], [1], [10]))
    assert channel_scores(net, ["block0"], "fpgm")["block0"].tolist() == [11.0, 10.0, 19.0]
    assert select_channels(net, {"block0": 2}, "fpgm")["block0"].tolist() == [0, 2]
    # signs matter (unlike a distance between |w|): filters 1, -1, 0 -> sums 3, 3, 2
    net = tiny_tap_net(filters([1], [-1], [0]))
    assert channel_scores(net, ["block0"], "fpgm")["block0"].tolist() == [3.0, 3.0, 2.0]


def test_random_is_seeded() -> None:
    net = auxiliary()
    a = select_channels(net, WIDTHS, "random", seed=3)
    assert all(torch.equal(a[k], v) for k, v in select_channels(net, WIDTHS, "random", seed=3).items())
    b = select_channels(net, WIDTHS, "random", seed=4)
    assert any(not torch.equal(a[k], b[k]) for k in WIDTHS)
    # a tap's picks do not depend on which other taps are asked for
    assert torch.equal(select_channels(net, {"block2": 32}, "random", seed=3)["block2"], a["block2"])


def test_ties_go_to_the_lower_index() -> None:
    assert top_k(torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0]), 2).tolist() == [1, 2]
    assert top_k(torch.ones(10), 3).tolist() == [0, 1, 2]
    net = tiny_tap_net(filters([1], [2], [2], [2]))
    assert select_channels(net, {"block0": 2}, "l1")["block0"].tolist() == [1, 2]
    with pytest.raises(ValueError, match="cannot keep"):
        top_k(torch.ones(4), 5)


@pytest.mark.parametrize("criterion", ALL)
def test_every_criterion_keeps_k_sorted_and_leaves_model_alone(criterion: str) -> None:
    net = auxiliary()
    net.train()
    net.blocks[1].eval()  # mixed flags must come back as they were
    net.head.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    flags = {n: m.training for n, m in net.named_modules()}
    picked = select_channels(net, WIDTHS, criterion, data=make_split(), normalize=normalize, batches=2, batch_size=16)
    assert list(picked) == list(WIDTHS)
    for name, k in WIDTHS.items():
        idx = picked[name]
        assert idx.dtype == torch.int64 and idx.numel() == k
        assert torch.equal(idx, idx.sort().values) and idx.unique().numel() == k
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats included
    assert flags == {n: m.training for n, m in net.named_modules()}
    assert not net.head.weight.requires_grad and net.blocks[0][0].weight.requires_grad
    assert all(p.grad is None for p in net.parameters())


class CountingSplit(Split):
    """A Split that counts reads of its tensors."""

    def __getattribute__(self, name: str):
        if name in ("images", "labels"):
            reads = object.__getattribute__(self, "__dict__").setdefault("_reads", {})
            reads[name] = reads.get(name, 0) + 1
        return object.__getattribute__(self, name)

    @property
    def reads(self) -> dict[str, int]:
        return self.__dict__.get("_reads", {})


@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_data_criteria_read_only_the_given_split(criterion: str) -> None:
    net = auxiliary()
    base = make_split(64)
    counted = CountingSplit(base.images.clone(), base.labels.clone())
    counted.__dict__.pop("_reads", None)  # construction-time validation reads do not count
    scores = channel_scores(net, list(WIDTHS), criterion, data=counted, normalize=normalize, batches=2, batch_size=8, seed=5)
    assert counted.reads.get("images", 0) > 0
    # exactly the first 2 batches of 8 of the seed-5 permutation are used: changing any other
    # image changes nothing, changing a used one changes the scores
    used = torch.randperm(64, generator=torch.Generator().manual_seed(5))[:16]
    unused = torch.ones(64, dtype=torch.bool)
    unused[used] = False
    other = base.images.clone()
    other[unused] = 0
    same = channel_scores(net, list(WIDTHS), criterion, data=Split(other, base.labels), normalize=normalize,
                          batches=2, batch_size=8, seed=5)
    assert all(torch.allclose(scores[k], same[k], rtol=1e-9, atol=1e-12) for k in WIDTHS)
    marked = base.images.clone()
    marked[used] = 255 - marked[used]
    changed = channel_scores(net, list(WIDTHS), criterion, data=Split(marked, base.labels), normalize=normalize,
                             batches=2, batch_size=8, seed=5)
    assert any(not torch.allclose(scores[k], changed[k]) for k in WIDTHS)


@pytest.mark.parametrize("criterion", [name for name in ALL if name not in DATA_CRITERIA])
def test_weight_criteria_read_no_data(criterion: str) -> None:
    counted = CountingSplit(*make_split(8).__dict__.values())
    counted.__dict__.pop("_reads", None)
    select_channels(auxiliary(), WIDTHS, criterion, data=counted, normalize=normalize)
    assert counted.reads == {}


@pytest.mark.parametrize("criterion", DATA_CRITERIA)
def test_data_criteria_need_data(criterion: str) -> None:
    with pytest.raises(ValueError, match="train split"):
        select_channels(auxiliary(), WIDTHS, criterion)
    with pytest.raises(ValueError, match="normalize"):
        select_channels(auxiliary(), WIDTHS, criterion, data=make_split())


def test_activation_and_taylor_values() -> None:
    net = auxiliary().eval()
    data = make_split(32)
    order = torch.randperm(32, generator=torch.Generator().manual_seed(0))[:24]
    x, y = normalize(data.images[order]), data.labels[order]
    got = channel_scores(net, ["block1"], "activation", data=data, normalize=normalize, batches=3, batch_size=8)
    with torch.no_grad(), TapReader(net, ["block1"]) as reader:
        feat = reader(x)[1]["block1"].double()
    assert torch.allclose(got["block1"], feat.mean((0, 2, 3)))
    # taylor: the conv output's |mean over batches of mean(dCE/d out * out)|
    got = channel_scores(net, ["block1"], "taylor", data=data, normalize=normalize, batches=3, batch_size=8)
    total = 0.0
    for b in range(3):
        xb, yb = x[b * 8 : (b + 1) * 8], y[b * 8 : (b + 1) * 8]
        out = {}
        h = net.blocks[1][0].register_forward_hook(lambda _m, _i, o: out.__setitem__("o", o))
        loss = nn.functional.cross_entropy(net(xb), yb)
        h.remove()
        (g,) = torch.autograd.grad(loss, out["o"])
        total = total + (g * out["o"]).double().mean((0, 2, 3))
    assert torch.allclose(got["block1"], (total / 3).abs().detach(), rtol=1e-6, atol=1e-12)


def test_selection_rejects_bad_taps() -> None:
    net = auxiliary()
    with pytest.raises(ValueError, match="embedding"):
        select_channels(net, {EMBEDDING: 8}, "l1")
    with pytest.raises(KeyError):
        select_channels(net, {"block9": 8}, "l1")
    with pytest.raises(ValueError, match="cannot keep"):
        select_channels(net, {"block0": 17}, "l1")


def test_pruned_taps_apply_and_state() -> None:
    pruned = PrunedTaps({"block0": torch.tensor([0, 2]), "block1": [1]})
    feats = {"block0": torch.arange(12.0).view(1, 4, 3), "block1": torch.randn(2, 3, 2, 2), EMBEDDING: torch.randn(2, 5)}
    out = pruned.apply(feats)
    assert torch.equal(out["block0"], feats["block0"][:, [0, 2]])
    assert torch.equal(out["block1"], feats["block1"][:, [1]])
    assert out[EMBEDDING] is feats[EMBEDDING]
    state = pruned.state_dict()
    assert state == {"block0": [0, 2], "block1": [1]}
    back = PrunedTaps.from_state_dict(state).to("cpu")
    assert back.widths == {"block0": 2, "block1": 1}
    assert torch.equal(PrunedTaps.from_state_dict({"block0": torch.tensor([3])}).indices["block0"], torch.tensor([3]))
    with pytest.raises(ValueError, match="increasing"):
        PrunedTaps({"block0": [2, 1]})


@pytest.mark.parametrize("criterion", ALL)
def test_pruned_tap_equals_structurally_pruned_block(criterion: str) -> None:
    """A's tap restricted to the kept channels == the structurally pruned conv+BN+ReLU+pool on A's path."""
    net = auxiliary().eval()
    x = normalize(make_split(4).images)
    picked = select_channels(net, WIDTHS, criterion, data=make_split(), normalize=normalize, batches=2, batch_size=16)
    names = list(WIDTHS)
    with torch.no_grad(), TapReader(net, names) as reader:
        _, feats = reader(x)
        pruned = PrunedTaps(picked).apply(feats)
        for i, name in enumerate(names):
            block = structurally_pruned_block(net, name, picked[name]).eval()
            conv, bn = block[0], block[1]
            assert conv.weight.shape[0] == conv.out_channels == bn.num_features == WIDTHS[name]
            assert torch.equal(bn.running_var, net.blocks[i][1].running_var[picked[name]])
            assert torch.equal(conv.bias, net.blocks[i][0].bias[picked[name]])
            inputs = x if i == 0 else feats[names[i - 1]]  # A's unpruned path
            out = block(inputs)
            assert out.shape == pruned[name].shape
            assert torch.allclose(out, pruned[name], atol=1e-6, rtol=0)
    # the source network is untouched
    assert net.blocks[0][0].out_channels == 16


def test_structurally_pruned_block_errors_and_preact() -> None:
    net = create_model("cnn", num_classes=10, in_channels=3, image_size=32)
    with pytest.raises(ValueError, match="not inside"):
        structurally_pruned_block(net, EMBEDDING, [0])
    # a pre-activation stage has its conv inside the stage but no BN after it: only the conv is sliced
    pre = create_model("preact_resnet18", num_classes=10, in_channels=3)
    assert structurally_pruned_block(pre, "block0", [0]).get_submodule("1.conv2").out_channels == 1


def test_torch_pruning_scores_match_their_definitions() -> None:
    net = auxiliary()
    l2 = channel_scores(net, list(WIDTHS), "l2")
    bn = channel_scores(net, list(WIDTHS), "bn_scale")
    for i, name in enumerate(WIDTHS):
        w = net.blocks[i][0].weight.detach()
        assert torch.allclose(l2[name], w.flatten(1).norm(dim=1), rtol=1e-6)
        assert torch.allclose(bn[name], net.blocks[i][1].weight.detach().abs())
