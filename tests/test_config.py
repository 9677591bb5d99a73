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


# ----------------------------------------------------------------------------- from_dict's coercion rules

import dataclasses  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

from indistill.config.run import (  # noqa: E402
    AuxiliaryConfig, CurriculumConfig, DataConfig, EvalConfig, MethodSchedules, MKTConfig, OptimConfig, RunConfig,
    Schedule, StageConfig, StudentConfig, TeacherConfig,
)
from indistill.config.schema import from_dict, to_dict  # noqa: E402
from study.search_space import LogRange, SearchSpace  # noqa: E402



def _keys(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


@dataclass(frozen=True)
class _Range:
    low: float
    high: float

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError(f"high: empty range: low {self.low} > high {self.high}")


@dataclass(frozen=True)
class _Unions:
    """Field types beyond the run config's, with the same rules."""

    either: int | str = 0
    number: float | int = 0.0
    size: tuple[float, ...] | _Range | None = None
    anything: Any = None


@pytest.mark.parametrize("cls, data, field_name, value", [
    (MKTConfig, {"weight": 3}, "weight", 3.0),  # an int for a float becomes a float
    (MKTConfig, {"weight": 2.5}, "weight", 2.5),
    (StageConfig, {"epochs": 10**30}, "epochs", 10**30),
    (CurriculumConfig, {"epochs": [1, 2, 3]}, "epochs", (1, 2, 3)),  # a list for a tuple
    (CurriculumConfig, {"epochs": (1, 2, 3)}, "epochs", (1, 2, 3)),  # a tuple too
    (CurriculumConfig, {"weights": [1, 2, 0.5]}, "weights", (1.0, 2.0, 0.5)),
    (OptimConfig, {"lr_schedule": [[0, 1], [5, 0.5]]}, "lr_schedule", ((0, 1.0), (5, 0.5))),
    (OptimConfig, {"name": "sgd"}, "name", "sgd"),
    (TeacherConfig, {"checkpoint": None}, "checkpoint", None),  # None for an optional field
    (TeacherConfig, {"checkpoint": ""}, "checkpoint", ""),
    (DataConfig, {"download": True}, "download", True),
    (DataConfig, {"options": None}, "options", {}),  # None for a mapping is an empty one
    (DataConfig, {"options": {1: [2, 3], "a": None}}, "options", {1: [2, 3], "a": None}),  # any keys and values
    # None for a section is the section's class built from nothing, not the field's default
    (AuxiliaryConfig, {"pkt": None}, "pkt", StageConfig()),
    (StudentConfig, {"optim": None}, "optim", OptimConfig()),
    # a section given in part: its class's defaults for the rest, not the enclosing field's default
    (MethodSchedules, {"ce": {"optim": None}}, "ce", Schedule(epochs=None, optim=None)),
    (_Unions, {"either": 3}, "either", 3),  # unions: the first member that accepts the value
    (_Unions, {"either": "x"}, "either", "x"),
    (_Unions, {"number": 3}, "number", 3.0),
    (_Unions, {"size": [1, 0.5]}, "size", (1.0, 0.5)),
    (_Unions, {"size": {"low": 1, "high": 2}}, "size", _Range(1.0, 2.0)),
    (_Unions, {"size": None}, "size", None),
    (_Unions, {"anything": {"k": [1]}}, "anything", {"k": [1]}),
])
def test_from_dict_accepts(cls, data, field_name, value):
    got = getattr(from_dict(cls, data), field_name)
    assert got == value
    assert type(got) is type(value)
    if isinstance(value, tuple):
        assert [type(v) for v in got] == [type(v) for v in value]


def test_from_dict_builds_defaults_from_nothing_and_copies_mappings():
    assert from_dict(MKTConfig, None) == MKTConfig() == from_dict(MKTConfig, {})
    options = {"a": [1]}
    got = from_dict(DataConfig, {"options": options}).options
    assert got == options and got is not options and got["a"] is options["a"]
    anything = {"k": 1}
    assert from_dict(_Unions, {"anything": anything}).anything is anything
    cfg = build_config(benchmark="digits")
    assert from_dict(RunConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize("cls, data, path, message", [
    # scalars: no conversion between bool, int, float and str
    (MKTConfig, {"weight": True}, "", "weight: expected a number, got True"),
    (MKTConfig, {"weight": "3"}, "", "weight: expected a number, got '3'"),
    (StageConfig, {"epochs": 3.0}, "", "epochs: expected an integer, got 3.0"),
    (StageConfig, {"epochs": True}, "", "epochs: expected an integer, got True"),
    (StageConfig, {"epochs": "3"}, "", "epochs: expected an integer, got '3'"),
    (StageConfig, {"epochs": None}, "", "epochs: expected an integer, got None"),
    (DataConfig, {"download": 1}, "", "download: expected true or false, got 1"),
    (DataConfig, {"download": "yes"}, "", "download: expected true or false, got 'yes'"),
    (DataConfig, {"root": 5}, "", "root: expected a string, got 5"),
    (TeacherConfig, {"checkpoint": 3}, "", "checkpoint: expected a string, got 3"),
    (OptimConfig, {"name": "ADAM"}, "", "name: 'ADAM' is not allowed; choose from: adam, sgd"),
    (OptimConfig, {"name": None}, "", "name: None is not allowed; choose from: adam, sgd"),
    (OptimConfig, {"name": ["adam"]}, "", "name: ['adam'] is not allowed; choose from: adam, sgd"),
    (_Unions, {"either": 1.5}, "", "either: invalid value 1.5"),  # no member takes it: no member's own error
    (_Unions, {"size": {"low": 2, "high": 1}}, "", "size: invalid value {'low': 2, 'high': 1}"),
    (_Unions, {"size": "big"}, "", "size: invalid value 'big'"),
    # lists: only a list or a tuple, items named by index, fixed-length tuples counted before their items
    (CurriculumConfig, {"epochs": "123"}, "", "epochs: expected a list, got '123'"),
    (CurriculumConfig, {"epochs": {1, 2, 3}}, "", "epochs: expected a list, got {1, 2, 3}"),
    (CurriculumConfig, {"epochs": 3}, "", "epochs: expected a list, got 3"),
    (CurriculumConfig, {"epochs": None}, "", "epochs: expected a list, got None"),
    (CurriculumConfig, {"epochs": [1, "a", 3]}, "", "epochs[1]: expected an integer, got 'a'"),
    (OptimConfig, {"lr_schedule": [[0]]}, "", "lr_schedule[0]: expected 2 items, got 1"),
    (OptimConfig, {"lr_schedule": [["a"]]}, "", "lr_schedule[0]: expected 2 items, got 1"),
    (OptimConfig, {"lr_schedule": [[0, 0.1], []]}, "", "lr_schedule[1]: expected 2 items, got 0"),
    (OptimConfig, {"lr_schedule": [[0, 0.1, 2]]}, "", "lr_schedule[0]: expected 2 items, got 3"),
    (OptimConfig, {"lr_schedule": [[0, "x"]]}, "", "lr_schedule[0][1]: expected a number, got 'x'"),
    (OptimConfig, {"lr_schedule": [5]}, "", "lr_schedule[0]: expected a list, got 5"),
    (EvalConfig, {"split": "val", "ks": [1.0]}, "", "ks[0]: expected an integer, got 1.0"),
    # mappings: a section takes a dict only (its type named), a dict field likewise (its value shown)
    (RunConfig, [], "", "config: expected a mapping, got list"),
    (StudentConfig, {"curriculum": []}, "", "curriculum: expected a mapping, got list"),
    (StudentConfig, {"curriculum": "x"}, "", "curriculum: expected a mapping, got str"),
    (StudentConfig, {"optim": OptimConfig()}, "", "optim: expected a mapping, got OptimConfig"),
    (DataConfig, {"options": [1]}, "", "options: expected a mapping, got [1]"),
    (DataConfig, {"options": "x"}, "", "options: expected a mapping, got 'x'"),
    (LogRange, 3, "curriculum.weights.mse", "curriculum.weights.mse: expected a mapping, got int"),
    # keys: the first unknown one (by name), then the first missing one (in field order)
    (RunConfig, {"zeta": 1, "alpha": 2}, "",
     f"alpha: unknown key 'alpha' at the top level; allowed keys: {_keys(RunConfig)}"),
    (RunConfig, {1: 2}, "", f"1: unknown key 1 at the top level; allowed keys: {_keys(RunConfig)}"),
    (RunConfig, {"student": {"zz": 1, "epochs": "x"}}, "",
     f"student.zz: unknown key 'zz' in student; allowed keys: {_keys(StudentConfig)}"),
    (LogRange, {"lo": 1}, "curriculum.weights.mse",
     "curriculum.weights.mse.lo: unknown key 'lo' in curriculum.weights.mse; allowed keys: low, high"),
    (LogRange, {}, "", "low: required key missing at the top level"),
    (LogRange, {"low": 1}, "", "high: required key missing at the top level"),
    (SearchSpace, {"zz": 1}, "",
     f"zz: unknown key 'zz' at the top level; allowed keys: {_keys(SearchSpace)}"),
    (SearchSpace, {"budget": {"trials": "x"}}, "", "curriculum: required key missing at the top level"),
    (SearchSpace, {"curriculum": {"epochs": [{"low": 1}]}}, "",
     "curriculum.epochs[0].high: required key missing in curriculum.epochs[0]"),
    (SearchSpace, {"curriculum": {"epochs": [None]}}, "",
     "curriculum.epochs[0].low: required key missing in curriculum.epochs[0]"),
    # the dataclasses' own checks, prefixed with the section's path; a section is checked after its fields
    (RunConfig, {"student": {"epochs": 0}}, "", "student.epochs: must be >= 1, got 0"),
    (RunConfig, {"teacher": {"optim": {"lr_schedule": [[5, 0.1]]}}}, "",
     "teacher.optim.lr_schedule: must start at epoch 0, got 5"),
    (LogRange, {"low": 1, "high": 0.5}, "curriculum.weights.mse",
     "curriculum.weights.mse.high: empty range: low 1.0 > high 0.5"),
    (LogRange, {"low": 0, "high": 1}, "", "low: must be > 0 for a log-uniform range, got 0.0"),
    (MKTConfig, {"weight": float("nan")}, "", "weight: must be >= 0"),
    (SearchSpace, {"curriculum": None}, "", "curriculum.epochs: needs one {low, high} range per curriculum layer"),
    (RunConfig, {"student": {"epochs": 0, "batch_size": "x"}}, "", "student.batch_size: expected an integer, got 'x'"),
    # several errors: the first field in the order the input gives them; a section's check after its fields
    (RunConfig, {"student": {"epochs": "x"}, "seed": "y"}, "", "student.epochs: expected an integer, got 'x'"),
    (RunConfig, {"seed": "y", "student": {"epochs": "x"}}, "", "seed: expected an integer, got 'y'"),
    (RunConfig, {"seed": -1, "student": {"epochs": 0}}, "", "student.epochs: must be >= 1, got 0"),
    (RunConfig, {"threads": 0, "seed": -1}, "", "seed: must be >= 0"),
])
def test_from_dict_refuses(cls, data, path, message):
    with pytest.raises(ConfigError) as err:
        from_dict(cls, data, path)
    assert str(err.value) == message
    assert err.value.where == message.partition(": ")[0]


@dataclass(frozen=True)
class _Checked:
    x: int = 0

    def __post_init__(self) -> None:
        if self.x == 1:
            raise TypeError("x: not comparable")
        if self.x == 2:
            raise ConfigError("x: said as is")
        if self.x == 3:
            raise AssertionError("x: a bug")


@dataclass(frozen=True)
class _Outer:
    inner: _Checked = _Checked()


@pytest.mark.parametrize("x, error, message", [
    (1, ConfigError, "inner.x: not comparable"),  # a TypeError is prefixed like a ValueError
    (2, ConfigError, "x: said as is"),  # a ConfigError is the check's own last word
    (3, AssertionError, "x: a bug"),  # a failed assertion is a bug, not a config error
])
def test_a_sections_own_check_raising(x, error, message):
    with pytest.raises(error) as err:
        from_dict(_Outer, {"inner": {"x": x}})
    assert type(err.value) is error and str(err.value) == message


def test_to_dict_is_plain_yaml():
    opt = OptimConfig(lr_schedule=((0, 1e-3), (5, 1e-4)))
    assert to_dict(opt) == {"name": "adam", "lr_schedule": [[0, 1e-3], [5, 1e-4]], "weight_decay": 0.0,
                            "momentum": 0.9, "reset": "never"}
    data = to_dict(DataConfig(options={"sizes": (1, 2), "nested": {"t": ((3,),)}}))
    assert data == {"root": None, "download": False, "options": {"sizes": [1, 2], "nested": {"t": [[3]]}}}
    plain = to_dict(build_config(benchmark="digits"))
    assert yaml.safe_load(yaml.safe_dump(plain)) == plain
