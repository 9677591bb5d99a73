"""Config loading, saving and validation errors that name the field."""
import subprocess
import sys

import pytest
import yaml

from indistill.config.run import dump_config, save_config
from indistill.engine.configure import build_config, load_config
from indistill.data import BENCHMARKS
from indistill.common.errors import ConfigError


@pytest.mark.parametrize("benchmark", BENCHMARKS.names())
def test_every_benchmark_has_a_valid_default(benchmark):
    cfg = build_config(benchmark=benchmark)
    assert cfg.benchmark == benchmark


def test_cifar10_default_is_the_reference_recipe():
    cfg = build_config(benchmark="cifar10")
    assert (cfg.student.epochs, cfg.student.batch_size) == (70, 128)
    assert cfg.student.optim.name == "adam"
    assert [cfg.student.optim.lr_at(e) for e in (0, 59, 60, 69)] == [1e-3, 1e-3, 1e-4, 1e-4]
    assert cfg.student.curriculum.epochs == (3, 4, 5) and cfg.student.curriculum.losses == ("mse",) * 3
    assert cfg.student.ce_weight == 0.0 and cfg.prune.criterion == "l1"
    assert cfg.teacher.epochs == 80 and [cfg.teacher.optim.lr_at(e) for e in (49, 50)] == [1e-3, 1e-4]


def test_save_load_round_trip(tmp_path):
    cfg = build_config({"seed": 3, "student": {"curriculum": {"overlap": True}}}, benchmark="digits")
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert yaml.safe_load(dump_config(cfg))["seed"] == 3


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"studnet": {}}, "unknown key 'studnet'"),
        ({"student": {"epochs": 0}}, "student.epochs: must be >= 1"),
        ({"student": {"curriculum": {"epochs": [1, 2]}}}, "student.curriculum.losses: needs 2 entries"),
        ({"student": {"curriculum": {"losses": ["mse", "l2", "mse"]}}}, "student.curriculum.losses[1]: unknown loss 'l2'"),
        # kd compares logits, not the features of a tap
        ({"student": {"curriculum": {"losses": ["mse", "kd", "mse"]}}},
         "student.curriculum.losses[1]: unknown loss 'kd'; choose from: mse, pkt, cosine"),
        ({"student": {"curriculum": {"embedding_loss": "kd"}}}, "student.curriculum.embedding_loss: unknown loss 'kd'"),
        ({"prune": {"criterion": "l3"}}, "prune.criterion: unknown criterion 'l3'; choose from: l1, l2"),
        ({"device": "tpu"}, "device: 'tpu' is not allowed; choose from: auto, cpu, cuda"),
        ({"student": {"batch_size": "big"}}, "student.batch_size: expected an integer"),
        ({"teacher": {"optim": {"lr_schedule": [[5, 0.1]]}}}, "teacher.optim.lr_schedule: must start at epoch 0"),
        ({"methods": ["indistill", "fitnet"]}, "methods: unknown method 'fitnet'"),
        ({"student": {"curriculum": {"epochs": [30, 30, 30]}}}, "student.curriculum.epochs: the curriculum lasts 90 epochs"),
    ],
)
def test_validation_errors_name_the_field(overrides, message):
    with pytest.raises(ConfigError) as err:
        build_config(overrides, benchmark="digits")
    assert message in str(err.value)


def test_unknown_benchmark():
    with pytest.raises(ConfigError) as err:
        build_config(benchmark="mnist")
    assert str(err.value) == f"benchmark: unknown benchmark 'mnist'; choose from: {', '.join(BENCHMARKS)}"


def test_yaml_tags_are_not_executed(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("seed: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_cli_reports_config_errors_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("student: {curriculum: {weights: [1, -1, 1]}}\n")
    proc = subprocess.run([sys.executable, "-m", "indistill.cli", "run", "--config", str(bad), "--out", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"indistill: error: {bad}:1: student.curriculum.weights: must be >= 0, got [1.0, -1.0, 1.0]"]
