"""The reference recipes as their published code runs them (issue: fidelity)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from indistill.engine.configure import build_config
from indistill.data import Split, augment_batch, get_spec
from indistill.data.augment import black, normalize
from indistill.common.errors import CheckpointError
from indistill.evaluation.embedding import embed
from indistill.config.fidelity import FIDELITY, fidelity_markdown
from indistill.method.losses import LOSSES
from indistill.models import load_checkpoint
from indistill.models.base import EMBEDDING, TapReader
from indistill.models.resnet import PreActBlock
from indistill.models.zoo import create_network
from indistill.method.pruning import PrunedTaps, create_target
from indistill.engine.batches import DeviceSplit
from indistill.engine.loop import LAST, Loop, resets_at
from indistill.method.methods import StudentBatch, create_method

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- optimiser reset


@pytest.mark.parametrize(
    ("reset", "expected"),
    [
        ("never", [False, False, False, False, False]),
        ("epoch", [False, True, True, True, True]),
        ("lr_change", [False, False, True, False, True]),  # lr drops at epochs 2 and 4
        ("phase", [False, False, False, True, False]),  # phases 0, 0, 0, 1, 1
    ],
)
def test_resets_at_each_policy(reset: str, expected: list[bool]) -> None:
    cfg = build_config({"student": {"optim": {"lr_schedule": [[0, 1e-3], [2, 1e-4], [4, 1e-5]], "reset": reset}}})
    phases = [0, 0, 0, 1, 1]
    assert [resets_at(cfg.student.optim, e, phases.__getitem__) for e in range(5)] == expected


def _adam_steps_after(tmp_path: Path, reset: str, epochs: int, phase_of=None) -> int:
    """Adam's per-parameter step count in the last checkpoint of a tiny loop (4 batches per epoch)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    optim = build_config({"student": {"optim": {"lr_schedule": [[0, 1e-2], [2, 1e-3]], "reset": reset}}}).student.optim

    def step(xb, yb, epoch):
        return F.cross_entropy(model(xb), yb), {}

    batches = lambda epoch: ((x[i : i + 4], y[i : i + 4]) for i in range(0, 16, 4))  # noqa: E731
    work = tmp_path / reset
    Loop(work, model, optim, epochs, step, batches, log=lambda _m: None, phase_of=phase_of).run()
    state = torch.load(work / LAST, weights_only=False)["optimizer"]["state"]
    return int(state[0]["step"])


@pytest.mark.parametrize(
    ("reset", "steps"),
    [("never", 12), ("epoch", 4), ("lr_change", 4), ("phase", 8)],  # 3 epochs x 4 steps; lr drops at 2; phase at 1
)
def test_adam_state_after_boundaries(tmp_path: Path, reset: str, steps: int) -> None:
    assert _adam_steps_after(tmp_path, reset, 3, phase_of=[0, 1, 1].__getitem__) == steps


def test_resume_is_bit_identical_with_epoch_reset(tmp_path: Path) -> None:
    optim = build_config({"student": {"optim": {"reset": "epoch"}}}).student.optim

    def train(work: Path, stop_after: int | None) -> nn.Module:
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(16, 3, generator=g), torch.randint(0, 2, (16,), generator=g)

        class Stop(Exception):
            pass

        def hook(epoch, metrics, ckpt):
            if stop_after is not None and epoch + 1 == stop_after:
                raise Stop

        loop = Loop(work, model, optim, 4, lambda xb, yb, e: (F.cross_entropy(model(xb), yb), {}),
                    lambda epoch: ((x[i : i + 4], y[i : i + 4]) for i in range(0, 16, 4)), hooks=[hook], log=lambda _m: None)
        try:
            loop.run()
        except Stop:
            model2 = nn.Linear(3, 2)
            Loop(work, model2, optim, 4, lambda xb, yb, e: (F.cross_entropy(model2(xb), yb), {}),
                 lambda epoch: ((x[i : i + 4], y[i : i + 4]) for i in range(0, 16, 4)), log=lambda _m: None).run()
            return model2
        return model

    whole = train(tmp_path / "whole", None)
    resumed = train(tmp_path / "resumed", 2)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- schedules and MKT


def test_reference_schedules() -> None:
    s = build_config(benchmark="cifar10").student
    assert s.schedule("indistill")[0] == 70 and s.schedule("indistill")[1].lr_schedule == ((0, 1e-3), (60, 1e-4))
    epochs, optim = s.schedule("mkt")
    assert (epochs, optim.lr_schedule, optim.reset) == (50, ((0, 1e-3),), "epoch")
    epochs, optim = s.schedule("ce")
    assert (epochs, optim.lr_schedule, optim.reset) == (80, ((0, 1e-3), (50, 1e-4)), "lr_change")
    aux = build_config(benchmark="cifar10").auxiliary.pkt
    assert (aux.epochs, aux.optim.lr_schedule, aux.optim.reset) == (40, ((0, 1e-3), (30, 1e-4)), "lr_change")


def test_mkt_weight_schedule() -> None:
    cfg = build_config(benchmark="cifar10").student
    taps = ("block0", "block1", "block2")
    mkt = create_method("mkt", cfg, taps)
    assert mkt.epochs == 50
    g = torch.Generator().manual_seed(0)
    feats = {t: torch.randn(8, 5, generator=g) for t in (*taps, EMBEDDING)}
    other = {t: torch.randn(8, 5, generator=g) for t in (*taps, EMBEDDING)}
    pkt = lambda t: LOSSES.get("pkt")(other[t], feats[t])  # noqa: E731
    for epoch, weight in ((0, 100.0), (1, 70.0), (3, 100 * 0.7**3)):
        loss, parts = mkt.loss(StudentBatch(epoch, torch.zeros(8, dtype=torch.long), torch.zeros(8, 2), feats, other))
        assert float(parts["mkt_weight"]) == pytest.approx(weight)
        expected = pkt(EMBEDDING) + weight * sum(pkt(t) for t in taps)
        assert float(loss) == pytest.approx(float(expected), rel=1e-6)


# ----------------------------------------------------------------------------- the reference teacher


def test_preact_block_shortcut_adds_the_preactivated_input() -> None:
    block = PreActBlock(2, 2, 1).eval()
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
    x = torch.tensor([[[[-1.0, 2.0], [3.0, -4.0]], [[0.5, -0.5], [-2.0, 1.0]]]])
    # eval BN with fresh statistics is the identity, convs are zero: out = relu(x), not x
    assert torch.allclose(block(x), F.relu(x), atol=1e-4)
    # with a 1x1-like conv2 (centre tap 1) the residual branch adds relu(bn2(conv1(a)))
    with torch.no_grad():
        block.conv1.weight[:, :, 1, 1] = torch.eye(2)
        block.conv2.weight[:, :, 1, 1] = torch.eye(2)
    a = F.relu(x)
    assert torch.allclose(block(x), F.relu(a) + a)


def _reference_resnet_state(num_classes: int = 10, in_channels: int = 3) -> dict[str, torch.Tensor]:
    """Keys and shapes of the reference code's ResNet18 state_dict, random values."""
    g = torch.Generator().manual_seed(0)
    state: dict[str, torch.Tensor] = {}

    def bn(name: str, c: int) -> None:
        state[f"{name}.weight"] = torch.rand(c, generator=g) + 0.5
        state[f"{name}.bias"] = torch.randn(c, generator=g) * 0.1
        state[f"{name}.running_mean"] = torch.randn(c, generator=g) * 0.1
        state[f"{name}.running_var"] = torch.rand(c, generator=g) + 0.5
        state[f"{name}.num_batches_tracked"] = torch.tensor(7)

    state["conv1.weight"] = torch.randn(64, in_channels, 3, 3, generator=g) * 0.1
    bn("bn1", 64)
    c = 64
    for i, (w, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2))):
        for j in range(2):
            p = f"layer{i + 1}.{j}"
            c_in = c if j == 0 else w
            bn(f"{p}.bn1", c_in)
            state[f"{p}.conv1.weight"] = torch.randn(w, c_in, 3, 3, generator=g) * 0.05
            bn(f"{p}.bn2", w)
            state[f"{p}.conv2.weight"] = torch.randn(w, w, 3, 3, generator=g) * 0.05
            if j == 0 and (stride != 1 or c_in != w):
                state[f"{p}.shortcut.0.weight"] = torch.randn(w, c_in, 1, 1, generator=g) * 0.1
        c = w
    state["linear.weight"] = torch.randn(num_classes, 512, generator=g) * 0.05
    state["linear.bias"] = torch.zeros(num_classes)
    return state


def _reference_resnet_embedding(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The reference forward up to its 512-d feature, written from the reference's semantics."""
    def bn(name, t):
        return F.batch_norm(t, state[f"{name}.running_mean"], state[f"{name}.running_var"],
                            state[f"{name}.weight"], state[f"{name}.bias"], False, 0.0, 1e-5)

    out = F.relu(bn("bn1", F.conv2d(x, state["conv1.weight"], padding=1)))
    for i, stride in enumerate((1, 2, 2, 2)):
        for j in range(2):
            p = f"layer{i + 1}.{j}"
            s = stride if j == 0 else 1
            a = F.relu(bn(f"{p}.bn1", out))
            short = F.conv2d(a, state[f"{p}.shortcut.0.weight"], stride=s) if f"{p}.shortcut.0.weight" in state else a
            h = F.relu(bn(f"{p}.bn2", F.conv2d(a, state[f"{p}.conv1.weight"], stride=s, padding=1)))
            out = F.conv2d(h, state[f"{p}.conv2.weight"], padding=1) + short
    return F.avg_pool2d(out, 4).flatten(1)


def _reference_cnn_state(widths=(16, 32, 64), fc=128, num_classes=10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    state: dict[str, torch.Tensor] = {}
    c = 3
    for i, w in enumerate(widths, start=1):
        state[f"conv{i}.weight"] = torch.randn(w, c, 3, 3, generator=g) * 0.2
        state[f"conv{i}.bias"] = torch.randn(w, generator=g) * 0.1
        state[f"conv{i}_bn.weight"] = torch.rand(w, generator=g) + 0.5
        state[f"conv{i}_bn.bias"] = torch.randn(w, generator=g) * 0.1
        state[f"conv{i}_bn.running_mean"] = torch.randn(w, generator=g) * 0.1
        state[f"conv{i}_bn.running_var"] = torch.rand(w, generator=g) + 0.5
        state[f"conv{i}_bn.num_batches_tracked"] = torch.tensor(3)
        c = w
    state["fc1.weight"] = torch.randn(fc, widths[-1] * 4, generator=g) * 0.1
    state["fc1.bias"] = torch.randn(fc, generator=g) * 0.1
    state["fc2.weight"] = torch.randn(num_classes, fc, generator=g) * 0.1
    state["fc2.bias"] = torch.randn(num_classes, generator=g) * 0.1
    return state


def _reference_cnn_embedding(state: dict[str, torch.Tensor], x: torch.Tensor, n: int = 3) -> torch.Tensor:
    out = x
    for i in range(1, n + 1):
        out = F.conv2d(out, state[f"conv{i}.weight"], state[f"conv{i}.bias"])
        out = F.batch_norm(out, state[f"conv{i}_bn.running_mean"], state[f"conv{i}_bn.running_var"],
                           state[f"conv{i}_bn.weight"], state[f"conv{i}_bn.bias"], False, 0.0, 1e-5)
        out = F.max_pool2d(F.relu(out), 2)
    return F.relu(F.linear(out.flatten(1), state["fc1.weight"], state["fc1.bias"]))


def _net(role: str) -> nn.Module:
    return create_network("cifar10", role, num_classes=10, in_channels=3, image_size=32).eval()


@pytest.mark.parametrize(("role", "state_fn", "forward"), [
    ("teacher", _reference_resnet_state, _reference_resnet_embedding),
    ("auxiliary", _reference_cnn_state, _reference_cnn_embedding),
    ("student", lambda: _reference_cnn_state((8, 16, 32), 64), _reference_cnn_embedding),
])
def test_released_checkpoints_load_and_give_equal_features(tmp_path: Path, role, state_fn, forward) -> None:
    state = state_fn()
    path = tmp_path / f"{role}.pt"
    torch.save(state, path)
    net = load_checkpoint(_net(role), path)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), TapReader(net, (EMBEDDING,)) as reader:
        ours = reader(x)[1][EMBEDDING]
        assert torch.allclose(ours, forward(state, x), rtol=1e-5, atol=1e-4)


def test_own_stage_checkpoints_load(tmp_path: Path) -> None:
    src = _net("auxiliary")
    torch.save({"epoch": 3, "model": src.state_dict(), "history": []}, tmp_path / "final.pt")
    dst = load_checkpoint(_net("auxiliary"), tmp_path / "final.pt")
    for a, b in zip(src.state_dict().values(), dst.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda s: s.pop("conv2_bn.running_var"), r"missing keys blocks\.1\.1\.running_var"),
    (lambda s: s.update({"conv4.weight": torch.zeros(1)}), r"unexpected keys blocks\.3\.0\.weight"),
    (lambda s: s.update({"fc2.weight": torch.zeros(100, 128)}), r"shape mismatch at head\.weight: file \(100, 128\) vs network \(10, 128\)"),
])
def test_checkpoint_mismatch_is_one_line(tmp_path: Path, mutate, message) -> None:
    state = _reference_cnn_state()
    mutate(state)
    torch.save(state, tmp_path / "aux.pt")
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(_net("auxiliary"), tmp_path / "aux.pt")
    assert "\n" not in str(err.value) and "aux.pt" in str(err.value)


@pytest.mark.parametrize("content", [b"<html>not found</html>", b""])
def test_unreadable_checkpoint_is_one_line(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "t.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match=r"t\.pt: not a readable torch checkpoint") as err:
        load_checkpoint(_net("teacher"), tmp_path / "t.pt")
    assert "\n" not in str(err.value)


def test_truncated_checkpoint_is_one_line(tmp_path: Path) -> None:
    torch.save(_reference_cnn_state(), tmp_path / "aux.pt")
    data = (tmp_path / "aux.pt").read_bytes()
    (tmp_path / "aux.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_checkpoint(_net("auxiliary"), tmp_path / "aux.pt")


# ----------------------------------------------------------------------------- pruned targets


def _trained_looking_aux() -> nn.Module:
    aux = _net("auxiliary")
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in aux.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g))
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.2)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g))
    return aux.eval()


def test_batch_stats_targets_match_a_pruned_conv_with_a_fresh_bn_in_train_mode() -> None:
    aux = _trained_looking_aux()
    keep = {"block0": [0, 2, 3, 5, 8, 9, 12, 15], "block1": list(range(0, 32, 2)), "block2": list(range(1, 64, 2))}
    target = create_target("batch_stats", aux, PrunedTaps(keep))
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), TapReader(aux, ("block0", "block1", "block2"), keep_inputs=True) as reader:
        feats = reader(x)[1]
        got = target(feats, reader.inputs, ("block0", "block1", "block2"))
        block_input = x
        for i, tap in enumerate(("block0", "block1", "block2")):
            conv, bn = aux.blocks[i][0], aux.blocks[i][1]
            idx = torch.tensor(keep[tap])
            # the reference: a new conv with the kept filters (its own random bias) and a new BN with gamma copied
            pruned_conv = nn.Conv2d(conv.in_channels, len(idx), 3)
            pruned_conv.weight = nn.Parameter(conv.weight[idx].clone())
            fresh_bn = nn.BatchNorm2d(len(idx))
            fresh_bn.weight = nn.Parameter(bn.weight[idx].clone())
            fresh_bn.train()
            expected = F.max_pool2d(F.relu(fresh_bn(pruned_conv(block_input))), 2)
            assert torch.allclose(got[tap], expected, atol=1e-5), tap
            # and it is not the auxiliary's own (running-stats) tap restricted to the channels
            assert not torch.allclose(feats[tap][:, idx], expected, atol=1e-3)
            block_input = feats[tap]  # the next block reads the auxiliary's unpruned path


def test_running_stats_target_is_the_restricted_tap() -> None:
    aux = _trained_looking_aux()
    keep = {"block0": list(range(8)), "block1": list(range(16)), "block2": list(range(32))}
    target = create_target("running_stats", aux, PrunedTaps(keep))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad(), TapReader(aux, ("block0", "block1", "block2")) as reader:
        feats = reader(x)[1]
        got = target(feats, reader.inputs, ("block0",))
    for tap, idx in keep.items():
        assert torch.equal(got[tap], feats[tap][:, idx])


# ----------------------------------------------------------------------------- numerics


def test_random_crop_pads_with_black() -> None:
    spec = get_spec("cifar10")
    white = torch.full((64, 3, 32, 32), 255, dtype=torch.uint8)
    x = normalize(white, spec.mean, spec.std)
    out = augment_batch(x, 4, False, generator=torch.Generator().manual_seed(0), fill=black(spec.mean, spec.std))
    raw = out * torch.tensor(spec.std).view(1, 3, 1, 1) * 255 + torch.tensor(spec.mean).view(1, 3, 1, 1) * 255
    padded = raw.abs() < 1e-3  # black: what torchvision's RandomCrop(32, padding=4) pads with
    assert padded.any() and torch.allclose(raw[~padded], torch.tensor(255.0), atol=1e-3)
    # the training batches use it
    split = DeviceSplit.create(Split(white, torch.zeros(64, dtype=torch.long)), spec, torch.device("cpu"))
    xb, _ = next(split.batches(64, seed=0, epoch=0, padding=4, flip=False))
    assert torch.equal(xb.min(), out.min())


def test_retrieval_embeddings_are_fp32_under_bf16_autocast() -> None:
    spec = get_spec("cifar10")
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    split = DeviceSplit.create(Split(images, torch.zeros(16, dtype=torch.long)), spec, torch.device("cpu"))
    net = _net("student")
    plain = embed(net, split)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = embed(net, split)
        assert (net(split.images[:2]).dtype) == torch.bfloat16  # autocast is really on here
    assert under.dtype == torch.float32 and torch.equal(plain, under)


# ----------------------------------------------------------------------------- documentation


def test_the_docs_fidelity_table_is_the_registry() -> None:
    # docs/method.md holds it between the markers of scripts/doc_tables.py, which writes it
    assert fidelity_markdown() in (ROOT / "docs" / "method.md").read_text()


def test_fidelity_keys_exist_and_cifar10_has_the_reference_values() -> None:
    from indistill.config.run import config_to_dict

    cfg = config_to_dict(build_config(benchmark="cifar10"))
    for b in FIDELITY:
        for key in b.keys:
            if not key or key.startswith("networks."):
                continue
            node = cfg
            for part in key.split("."):
                assert part in node, key
                node = node[part]
    assert cfg["student"]["optim"]["reset"] == "epoch" and cfg["prune"]["target"] == "batch_stats"
    assert cfg["precision"] == "fp32" and cfg["student"]["mkt"] == {"weight": 100.0, "gamma": 0.7}
    assert type(create_network("cifar10", "teacher", num_classes=10, in_channels=3, image_size=32)).__name__ == "PreActResNet18"


def test_indistill_config_prints_the_annotated_reference(capsys) -> None:
    from indistill.cli import main

    assert main(["config", "--benchmark", "cifar10"]) == 0
    out = capsys.readouterr().out
    assert "reset: epoch  # reference: a new Adam at the start of every student epoch" in out
    assert "target: batch_stats  # reference: pruned targets" in out
    import yaml

    assert yaml.safe_load(out)["student"]["curriculum"]["epochs"] == [3, 4, 5]
    # another benchmark's own choices are not called reference
    assert main(["config", "--benchmark", "digits"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 30  # reference" not in out and "reset: epoch  # reference" in out


def test_dataclass_defaults_are_the_reference() -> None:
    from indistill.config.run import RunConfig, config_to_dict

    defaults = config_to_dict(RunConfig(benchmark="cifar10"))
    ref = config_to_dict(build_config(benchmark="cifar10"))
    for key in ("teacher", "auxiliary", "prune", "student"):
        assert defaults[key] == ref[key], key


# ----------------------------------------------------------------------------- no validation leak


def test_search_networks_never_see_the_val_images(tmp_path: Path) -> None:
    from indistill.engine.pipeline import make_context
    from indistill.engine.stages import stage_key
    from indistill.engine.stages import auxiliary_stage, prune_stage, teacher_stage

    cfg = build_config({"device": "cpu", "teacher": {"epochs": 1}, "auxiliary": {"ce": {"epochs": 1}, "pkt": {"epochs": 1}},
                        "prune": {"criterion": "activation"}}, benchmark="digits")
    loaded = make_context(cfg, tmp_path / "stages", log=lambda _m: None)
    # mark the val images: all white, which no digit scan is (their background is black)
    data = dataclasses.replace(loaded.data, val=Split(torch.full_like(loaded.data.val.images, 255), loaded.data.val.labels))
    spec = data.spec
    white = normalize(torch.full((1, 1, 1, 1), 250, dtype=torch.uint8), spec.mean, spec.std).item()
    seen: list[bool] = []

    class Watched(type(loaded)):
        """Every network it builds records whether a batch held a white (val) image."""

        def network(self, role: str):
            net = super().network(role)
            net.register_forward_pre_hook(lambda _m, inp: seen.append(bool((inp[0][:, :, 8:24, 8:24] > white).flatten(1).all(1).any())))
            return net

    ctx = Watched(cfg, data, loaded.device, loaded.cache_root, loaded.log)
    aux = auxiliary_stage(ctx, teacher_stage(ctx, "val").network, "val").network
    prune_stage(ctx, aux, protocol="val")
    assert seen and not any(seen)
    # the final runs' networks do train on them (the check above can fail), cached apart
    seen.clear()
    teacher_stage(ctx, "test")
    assert any(seen)
    assert stage_key("teacher", cfg, "val") != stage_key("teacher", cfg, "test")


def test_a_study_budget_scales_every_student_schedule() -> None:
    from indistill.config.run import scale_schedule, with_student_budget

    cfg = with_student_budget(build_config(benchmark="cifar10"), 20)
    got = {m: (cfg.student.schedule(m)[0], cfg.student.schedule(m)[1].lr_schedule) for m in ("indistill", "ce", "pkt", "mkt")}
    assert got == {
        "indistill": (20, ((0, 1e-3), (17, 1e-4))),  # 60/70 of 20 = 17.1
        "pkt": (20, ((0, 1e-3), (17, 1e-4))),
        "ce": (20, ((0, 1e-3), (12, 1e-4))),  # 50/80 of 20 = 12.5, rounded half to even
        "mkt": (50, ((0, 1e-3),)),  # MKT keeps its recipe's length
    }
    assert cfg.student.schedule("ce")[1].reset == "lr_change" and cfg.student.optim.reset == "epoch"
    # points that collide keep the later value; none falls on or after the last epoch
    short = build_config({"student": {"optim": {"lr_schedule": [[0, 1e-3], [60, 1e-4], [65, 1e-5]]}}}, benchmark="cifar10").student.optim
    assert scale_schedule(short, 70, 2).lr_schedule == ((0, 1e-3), (1, 1e-5))
