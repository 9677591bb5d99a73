"""--resume refuses a study whose inputs changed, naming what changed; where and how fast it runs may change."""
import subprocess
import sys

import pytest
import yaml

from indistill.common.errors import ConfigError
from study.cli import build_parser
from study.plan import make_plan
from study.resume import STATE, check_new_or_resume, write_study_state

from .test_study import TINY_SPACE


def _plan(tmp_path, space: dict, *extra: str, resume: bool = False):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    args = ["run", "--search-space", str(path), "--storage", str(tmp_path / "studies"), "--name", "s", *extra]
    return make_plan(build_parser().parse_args([*args, *(["--resume"] if resume else [])]))


@pytest.fixture
def started(tmp_path):
    plan = _plan(tmp_path, TINY_SPACE)
    write_study_state(plan)
    return plan


def test_the_same_inputs_resume(tmp_path, started):
    check_new_or_resume(_plan(tmp_path, TINY_SPACE, resume=True))
    # where the data lives and how many CPUs a trial gets do not define the experiment
    check_new_or_resume(_plan(tmp_path, TINY_SPACE, "--data-root", str(tmp_path), "--cpus-per-trial", "2", resume=True))


def test_a_study_recorded_before_a_field_existed_resumes(tmp_path, started):
    """A study started by a version without ``budget.warm_start``: its recorded search space lacks
    the field and its hash differs; read through today's schema, the field takes its default, and
    that is the same input. A field whose recorded value is not the default still differs."""
    import json

    from indistill.common.io import stable_hash

    root = tmp_path / "studies/s"
    recorded = yaml.safe_load((root / "digits/search_space.yaml").read_text())
    del recorded["budget"]["warm_start"]
    (root / "digits/search_space.yaml").write_text(yaml.safe_dump(recorded))
    state = json.loads((root / STATE).read_text())
    state["inputs"]["digits"]["search space"] = stable_hash(recorded)
    (root / STATE).write_text(json.dumps(state))
    check_new_or_resume(_plan(tmp_path, TINY_SPACE, resume=True))
    with pytest.raises(ConfigError, match=r"budget\.warm_start: 3 then, 2 now"):
        check_new_or_resume(_plan(tmp_path, {**TINY_SPACE, "budget": {**TINY_SPACE["budget"], "warm_start": 2}},
                                  resume=True))


CHANGES = [
    ({"budget": {**TINY_SPACE["budget"], "trials": 8}}, (), "digits's search space differs", "budget.trials: 4 then, 8 now"),
    ({"criteria": ["l1"]}, (), "digits's search space differs", "criteria: ['l1', 'random'] then, ['l1'] now"),
    ({"fixed": {**TINY_SPACE["fixed"], "teacher": {"epochs": 2}}}, (), "digits's base config differs",
     "teacher.epochs: 1 then, 2 now"),
    ({}, ("--epochs", "6"), "digits's base config differs", "student.epochs: 4 then, 6 now"),
    ({"benchmark": None}, ("--benchmarks", "digits,fashionmnist"), "has benchmarks digits, not digits,fashionmnist", ""),
]


@pytest.mark.parametrize("patch,flags,what,detail", CHANGES, ids=[c[2] + c[3] for c in CHANGES])
def test_changed_inputs_are_refused_naming_the_change(tmp_path, started, patch, flags, what, detail):
    state = (tmp_path / "studies/s" / STATE).read_bytes()
    with pytest.raises(ConfigError) as err:
        check_new_or_resume(_plan(tmp_path, {**TINY_SPACE, **patch}, *flags, resume=True))
    message = str(err.value)
    assert message.startswith("--resume: ") and what in message and detail in message
    assert "start a new study with another --name" in message and "\n" not in message
    assert (tmp_path / "studies/s" / STATE).read_bytes() == state  # nothing written


def test_the_cli_refuses_before_ray_with_one_line(tmp_path, started):
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump({**TINY_SPACE, "criteria": ["l2", "random"]}))
    proc = subprocess.run([sys.executable, "-m", "study.cli", "run", "--search-space", str(changed),
                           "--storage", str(tmp_path / "studies"), "--name", "s", "--resume"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "criteria.0: 'l1' then, 'l2' now" in lines[0], proc.stderr
    assert "Ray" not in proc.stdout + proc.stderr
