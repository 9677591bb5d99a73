"""Every registered benchmark is complete, and a new one is added the way docs/benchmarks.md says."""
from __future__ import annotations

import pytest
import torch
import yaml

from indistill.cli import main as indistill_main
from indistill.config.run import ROLES
from indistill.engine.configure import build_config, load_config
from indistill.data import BENCHMARKS, BenchmarkSpec, Split, get_spec, load_benchmark
from indistill.data.base import LoadRequest, RawSplits
from indistill.data.networks import trio
from indistill.models import MODELS, TapReader
from indistill.models.zoo import BENCHMARK_ARGS, create_network, network_entry
from indistill.common.errors import ConfigError
from study.cli import main as study_main
from study.search_space import default_space_path, load_space


def build(benchmark: str, role: str):
    spec = get_spec(benchmark)
    c, size, _ = spec.input_shape
    return create_network(benchmark, role, num_classes=spec.num_classes, in_channels=c, image_size=size)


def check_complete(name: str) -> None:
    """What a benchmark needs besides its data: a default config, a network per role, a search space."""
    spec = BENCHMARKS.get(name)
    assert spec.default_config.is_file(), spec.default_config
    cfg = build_config(benchmark=name)
    assert cfg.benchmark == name
    assert set(spec.networks) == set(ROLES)
    for role in ROLES:
        entry = network_entry(name, role)
        assert entry["arch"] in MODELS and not set(BENCHMARK_ARGS) & set(entry), (role, entry)
    student, auxiliary = build(name, "student"), build(name, "auxiliary")
    # InDistill prunes the auxiliary's taps to the student's widths: same taps, never wider in the student
    assert [t.name for t in student.intermediate_taps] == [t.name for t in auxiliary.intermediate_taps]
    assert all(s.channels <= a.channels for s, a in zip(student.intermediate_taps, auxiliary.intermediate_taps))
    assert len(cfg.student.curriculum.epochs) == len(student.intermediate_taps)
    space = load_space(default_space_path(name), name)  # its own search space, else search_spaces/default.yaml
    assert len(space.curriculum.epochs) == len(student.intermediate_taps)


@pytest.mark.parametrize("name", BENCHMARKS.names())
def test_every_registered_benchmark_is_complete(name: str) -> None:
    check_complete(name)


# ----------------------------------------------------------------------------- a toy benchmark, as docs/benchmarks.md adds one

TOY = "toy"


def load_toy(request: LoadRequest) -> RawSplits:
    """Step 1: a loader returning the official train and test splits as uint8 tensors."""
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        return Split(torch.randint(0, 256, (n, 1, 16, 16), generator=g, dtype=torch.uint8), torch.arange(n) % 3)

    return RawSplits(train=split(60), test=split(30))


def toy_spec(config) -> BenchmarkSpec:
    """Step 1: the spec, with a network per role (three padded conv stages fit 16x16 images)."""
    wide = {"arch": "cnn", "widths": [8, 16, 16], "embedding_dim": 16, "padding": 1}
    return BenchmarkSpec(
        name=TOY, loader=load_toy, num_classes=3, input_shape=(1, 16, 16), mean=(0.5,), std=(0.25,),
        val_fraction=0.2, crop_padding=0, flip=False, description="random 16x16 images, 3 classes",
        how_to_get="nothing to get: made up by the test",
        networks=trio({**wide, "widths": [16, 32, 32]}, wide,
                      {"arch": "cnn", "widths": [4, 8, 8], "embedding_dim": 8, "padding": 1}),
        config=config,
    )


def test_a_toy_benchmark_added_as_the_readme_says(tmp_path, capsys) -> None:
    config = tmp_path / "toy.yaml"  # step 3: its default config (in the package: indistill/config/defaults/toy.yaml)
    config.write_text(yaml.safe_dump({"benchmark": TOY, "teacher": {"epochs": 2}, "student": {
        "epochs": 6, "batch_size": 16, "curriculum": {"epochs": [1, 1, 2]}}}))
    assert TOY not in BENCHMARKS
    with BENCHMARKS.registered(TOY, toy_spec(config)):  # step 2: registered (in the package: data/registry.py)
        check_complete(TOY)
        cfg = build_config(benchmark=TOY)
        assert (cfg.teacher.epochs, cfg.student.epochs, cfg.student.curriculum.epochs) == (2, 6, (1, 1, 2))
        user = tmp_path / "user.yaml"
        user.write_text(yaml.safe_dump({"student": {"curriculum": {"epochs": [1, 1], "losses": ["mse"] * 2, "weights": [1.0] * 2}}}))
        with pytest.raises(ConfigError, match="the student has 3 intermediate taps, so the curriculum needs 3 entries"):
            load_config(user, benchmark=TOY)
        data = load_benchmark(TOY, tmp_path)
        assert (len(data.train), len(data.val), len(data.test)) == (48, 12, 30)
        for role in ROLES:
            net = build(TOY, role).eval()
            with torch.no_grad(), TapReader(net, [t.name for t in net.taps]) as reader:
                logits, feats = reader(data.test.images[:4].float() / 255)
            assert logits.shape == (4, 3) and list(feats) == [t.name for t in net.taps]
        assert [t.channels for t in build(TOY, "student").intermediate_taps] == [4, 8, 8]
        # the CLIs list it and take it
        assert indistill_main(["config", "--benchmark", TOY]) == 0
        assert yaml.safe_load(capsys.readouterr().out)["student"]["curriculum"]["epochs"] == [1, 1, 2]
        assert "toy" in run_help(indistill_main, capsys) and "toy" in run_help(study_main, capsys)
    assert TOY not in BENCHMARKS
    assert "toy" not in run_help(indistill_main, capsys) and "toy" not in run_help(study_main, capsys)
    with pytest.raises(ConfigError, match="unknown benchmark 'toy'"):
        build_config(benchmark=TOY)
    with pytest.raises(KeyError, match="unknown benchmark 'toy'"):
        network_entry(TOY, "student")


def run_help(main, capsys) -> str:
    """What ``<prog> run --help`` prints."""
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    return capsys.readouterr().out
