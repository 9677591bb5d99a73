"""Stage cache keys: the whole config subtree that determines a stage, minus an explicit exclude list."""
import copy
import shutil

import pytest

from indistill.engine.configure import build_config
from indistill.engine import keys
from indistill.engine.stages import ARTIFACT_STAGES, excluded, stage_key
from indistill.method.methods import METHODS

STAGES = [(s, None) for s in ARTIFACT_STAGES] + [("student", m) for m in METHODS.names()]


def _key(stage, method, overrides=None, protocol="test", benchmark="digits"):
    return stage_key(stage, build_config(overrides or {}, benchmark=benchmark), protocol, method)


# (change, stages whose key it changes); every other stage's key must stay the same
CHANGES = [
    ({"seed": 1}, {"teacher", "auxiliary", "prune", "student:indistill", "student:ce", "student:pkt", "student:mkt"}),
    ({"teacher": {"epochs": 3}}, {"teacher", "auxiliary", "prune", "student:indistill", "student:pkt", "student:mkt"}),
    ({"networks": {"teacher": {"embedding_dim": 64}}},
     {"teacher", "auxiliary", "prune", "student:indistill", "student:pkt", "student:mkt"}),
    ({"auxiliary": {"pkt": {"epochs": 3}}}, {"auxiliary", "prune", "student:indistill", "student:pkt", "student:mkt"}),
    ({"prune": {"criterion": "random"}}, {"prune", "student:indistill"}),
    ({"prune": {"target": "running_stats"}}, {"student:indistill"}),  # how a student reads the indices
    ({"networks": {"student": {"embedding_dim": 64}}},
     {"prune", "student:indistill", "student:ce", "student:pkt", "student:mkt"}),
    ({"student": {"curriculum": {"weights": [2.0, 1.0, 1.0]}}}, {"student:indistill"}),
    ({"student": {"mkt": {"gamma": 0.5}}}, {"student:mkt"}),
    ({"student": {"ce_weight": 0.5}}, {"student:indistill", "student:pkt", "student:mkt"}),
    # the shared schedule reaches the methods without their own; CE and MKT have their own
    ({"student": {"epochs": 20}}, {"student:indistill", "student:pkt"}),
    ({"student": {"schedules": {"ce": {"epochs": 10}}}}, {"student:ce"}),
    ({"student": {"batch_size": 32}}, {"student:indistill", "student:ce", "student:pkt", "student:mkt"}),
    ({"student": {"seed": 7}}, {"student:indistill", "student:ce", "student:pkt", "student:mkt"}),
    # where and how fast a run executes, and what else it runs, change nothing
    ({"device": "cpu", "threads": 1, "channels_last": False, "methods": ["ce"], "eval": {"ks": [5]},
      "data": {"root": "/elsewhere", "download": True}, "student": {"eval_every": 1}}, set()),
]


@pytest.mark.parametrize("change,changed", CHANGES, ids=[str(c) for c, _ in CHANGES])
@pytest.mark.parametrize("stage,method", STAGES, ids=[f"{s}:{m}" if m else s for s, m in STAGES])
def test_a_change_moves_exactly_the_stages_that_read_it(stage, method, change, changed):
    name = f"{stage}:{method}" if method else stage
    moved = _key(stage, method) != _key(stage, method, change)
    assert moved == (name in changed)


@pytest.mark.parametrize("stage,method", STAGES, ids=[f"{s}:{m}" if m else s for s, m in STAGES])
def test_every_field_outside_the_exclude_list_enters_the_key(stage, method, monkeypatch):
    """A perturbed leaf anywhere in the config tree (a field added later included) moves the key
    unless an excluded path covers it."""
    cfg = build_config({}, benchmark="digits")
    tree = keys.config_tree(cfg)
    tree["a_field_added_later"] = {"value": 1}
    monkeypatch.setattr(keys, "config_tree", lambda _cfg: tree)
    base = stage_key(stage, cfg, "test", method)
    skip = excluded(stage, cfg, method)
    checked = 0
    for path in _leaves(tree):
        perturbed = copy.deepcopy(tree)
        _set(perturbed, path, ["perturbed"])
        monkeypatch.setattr(keys, "config_tree", lambda _cfg, t=perturbed: t)
        covered = any(path == p or path.startswith(p + ".") for p in skip)
        if stage == "student" and path.startswith(keys.SCHEDULE_FIELDS):
            continue  # replaced by the resolved schedule (checked in the table above)
        assert (stage_key(stage, cfg, "test", method) != base) != covered, path
        checked += 1
    assert checked > 20


def _leaves(tree, prefix=""):
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            yield from _leaves(v, path + ".")
        else:
            yield path


def _set(tree, path, value):
    *parents, leaf = path.split(".")
    for p in parents:
        tree = tree[p]
    tree[leaf] = value


@pytest.mark.parametrize("stage,method", STAGES, ids=[f"{s}:{m}" if m else s for s, m in STAGES])
def test_data_options_enter_every_key_but_decoding_threads(stage, method):
    base = _key(stage, method, benchmark="imagenet")
    assert _key(stage, method, {"data": {"options": {"classes": 10}}}, benchmark="imagenet") != base
    assert _key(stage, method, {"data": {"options": {"workers": 3}}}, benchmark="imagenet") == base


def test_protocols_are_cached_apart():
    for stage, method in STAGES:
        assert _key(stage, method, protocol="val") != _key(stage, method, protocol="test")


def test_a_given_auxiliary_enters_by_content_and_drops_the_teacher(tmp_path):
    a, b, c = tmp_path / "a.pt", tmp_path / "copy" / "a.pt", tmp_path / "c.pt"
    a.write_bytes(b"weights")
    b.parent.mkdir()
    shutil.copy(a, b)
    c.write_bytes(b"other weights")

    def key(path, **more):
        return stage_key("auxiliary", build_config({"auxiliary": {"checkpoint": str(path)}, **more}, benchmark="cifar10"))

    assert key(a) == key(b)  # the same file on another node, or under another path
    assert key(a) != key(c)
    assert key(a) == key(a, teacher={"epochs": 3})  # the teacher is not read
