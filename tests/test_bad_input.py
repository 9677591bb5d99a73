"""Every bad input gets one line, exit 2, and nothing on disk changes (issue #11).

Each case fabricates a working directory (an existing run directory, a study directory, config
and search-space files, checkpoints in torch's real format, datasets in their real on-disk
formats via ``data_fixtures``), breaks one thing, runs a CLI in-process, and checks: exit code 2,
exactly one ``error:`` line that starts with ``PROG: error:`` and names the bad file or field, no
traceback, and every file and folder under the working directory unchanged (SHA-256).

The second half checks recovery: a corrupted checkpoint, kept-indices file or evaluation cache
inside an existing run directory is set aside (renamed, not deleted) with one line naming it,
and the stage resumes from its last good checkpoint or is redone.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml

from indistill.cli import main as indistill_main
from indistill.models.zoo import create_network
from study.cli import main as study_main

from .data_fixtures import write_cifar10

REPO = Path(__file__).resolve().parent.parent
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00\x90wS\xde"
HTML = b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n"


def snapshot(root: Path) -> dict[str, str]:
    """Every file (SHA-256), folder and link under ``root``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            out[os.path.relpath(p, root)] = "<link>" if os.path.islink(p) else "<dir>"
        for f in filenames:
            p = os.path.join(dirpath, f)
            if os.path.islink(p):
                out[os.path.relpath(p, root)] = f"<link {os.readlink(p)}>"
            else:
                out[os.path.relpath(p, root)] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


@dataclass
class Case:
    prog: str  # "indistill" or "indistill-study"
    argv: list[str]
    names: str  # the bad file or field, as the message must name it
    words: str = ""  # a further phrase the message must hold


CASES: dict[str, Callable[[Path], Case]] = {}


def case(fn: Callable[[Path], Case]) -> Callable[[Path], Case]:
    CASES[fn.__name__] = fn
    return fn


# ----------------------------------------------------------------------------- fabrication

TINY = {"device": "cpu", "threads": 1, "methods": ["indistill"], "teacher": {"epochs": 1},
        "auxiliary": {"ce": {"epochs": 1}, "pkt": {"epochs": 1}},
        "student": {"epochs": 3, "curriculum": {"epochs": [1, 1, 1]}}}


def existing_run(root: Path) -> Path:
    """An earlier run's directory (config, results, a stage checkpoint) that a failed run must leave alone."""
    rdir = root / "runs" / "digits-seed0"
    (rdir / "stages" / "teacher-0123456789ab").mkdir(parents=True)
    (rdir / "config.yaml").write_text(yaml.safe_dump({**TINY, "benchmark": "digits", "seed": 0}))
    (rdir / "results.csv").write_text("network,cosine map\nteacher,81.9\n")
    (rdir / "results.md").write_text("| network | cosine map |\n|---|---|\n| teacher | 81.9 |\n")
    torch.save({"model": {}, "history": []}, rdir / "stages" / "teacher-0123456789ab" / "final.pt")
    return rdir


def run_case(root: Path, config: dict | str | bytes | Path | None, *extra: str, name: str = "c.yaml") -> Case:
    """``indistill run`` with ``config`` (a dict as YAML, raw text or bytes, or a path) over an existing run."""
    existing_run(root)
    args = ["run", "--out", str(root / "runs")]
    if isinstance(config, Path):
        args += ["--config", str(config)]
    elif config is not None:
        path = root / name
        if isinstance(config, dict):
            path.write_text(yaml.safe_dump(config, sort_keys=False))
        elif isinstance(config, bytes):
            path.write_bytes(config)
        else:
            path.write_text(config)
        args += ["--config", str(path)]
    return Case("indistill", args + list(extra), "")


def with_checkpoint(root: Path, content: bytes | Callable[[Path], None], role: str = "teacher") -> tuple[Path, list[str]]:
    path = root / f"{role}.pt"
    if callable(content):
        content(path)
    else:
        path.write_bytes(content)
    return path, []


def digits_net(role: str, **overrides):
    return create_network("digits", role, num_classes=10, in_channels=1, image_size=32, overrides=overrides)


def ckpt_case(root: Path, content, role: str = "teacher", words: str = "") -> Case:
    path, _ = with_checkpoint(root, content, role)
    c = run_case(root, {**TINY, role: {**TINY.get(role, {}), "checkpoint": str(path)}}
                 if role == "teacher" else {**TINY, "auxiliary": {"checkpoint": str(path)}})
    c.names, c.words = str(path), words
    return c


def study_case(root: Path, *extra: str, space: dict | str | bytes | None = None) -> Case:
    args = ["run", "--storage", str(root / "studies")]
    if space is not None:
        path = root / "space.yaml"
        if isinstance(space, dict):
            path.write_text(yaml.safe_dump(space, sort_keys=False))
        elif isinstance(space, bytes):
            path.write_bytes(space)
        else:
            path.write_text(space)
        args += ["--search-space", str(path)]
    return Case("indistill-study", args + list(extra), "")


SPACE = {
    "benchmark": "digits",
    "budget": {"trials": 2, "epochs": 8, "grace_period": 1},
    "curriculum": {"epochs": [{"low": 1, "high": 1}] * 3, "losses": ["mse", "pkt"]},
    "criteria": ["l1"],
}


def study_dir(root: Path, state: str | None = None) -> Path:
    """A finished-looking study directory (state, table, best config); ``state`` replaces study.json's text."""
    sdir = root / "studies" / "default"
    (sdir / "digits" / "search").mkdir(parents=True)
    (sdir / "study.json").write_text(state if state is not None else json.dumps({"name": "default", "benchmarks": ["digits"]}))
    (sdir / "results.md").write_text("| network | cosine map |\n|---|---|\n| teacher | 81.9 |\n")
    (sdir / "digits" / "search" / "best_config.yaml").write_text(yaml.safe_dump({**TINY, "benchmark": "digits"}))
    return sdir


TRUNCATED_STATE = '{"name": "default", "benchmarks": ["dig'


# ----------------------------------------------------------------------------- config files


@case
def config_empty_file(root):
    c = run_case(root, "")
    c.names, c.words = str(root / "c.yaml"), "empty"
    return c


@case
def config_only_comments(root):
    c = run_case(root, "# seed: 1\n# everything commented out\n")
    c.names, c.words = str(root / "c.yaml"), "empty"
    return c


@case
def config_duplicate_top_level_key(root):
    c = run_case(root, "device: cpu\nseed: 1\nseed: 2\n")
    c.names, c.words = f"{root / 'c.yaml'}:3", "seed: duplicate key (first given at line 2)"
    return c


@case
def config_duplicate_nested_key(root):
    c = run_case(root, "student:\n  epochs: 5\n  curriculum: {epochs: [1, 1, 1]}\n  epochs: 6\n")
    c.names, c.words = f"{root / 'c.yaml'}:4", "student.epochs: duplicate key"
    return c


@case
def config_unknown_top_level_key(root):
    c = run_case(root, "device: cpu\nstudnet:\n  epochs: 5\n")
    c.names, c.words = f"{root / 'c.yaml'}:2", "unknown key 'studnet'"
    return c


@case
def config_unknown_nested_key(root):
    c = run_case(root, "student:\n  epochs: 5\n  curriculum:\n    epochs: [1, 1, 1]\n    overlapp: true\n")
    c.names, c.words = f"{root / 'c.yaml'}:5", "student.curriculum.overlapp: unknown key"
    return c


@case
def config_unknown_key_deep_in_a_list_schedule(root):
    c = run_case(root, "teacher:\n  optim:\n    name: adam\n    lr: 0.1\n")
    c.names, c.words = f"{root / 'c.yaml'}:4", "teacher.optim.lr: unknown key"
    return c


@case
def config_syntax_error(root):
    c = run_case(root, "student: {epochs: 3\nseed: 1\n")
    c.names, c.words = str(root / "c.yaml"), "not valid YAML"
    return c


@case
def config_tab_indentation(root):
    c = run_case(root, "student:\n\tepochs: 3\n")
    c.names, c.words = f"{root / 'c.yaml'}:2", "not valid YAML"
    return c


@case
def config_python_tag(root):
    c = run_case(root, "seed: !!python/object/apply:os.system ['echo hi']\n")
    c.names, c.words = f"{root / 'c.yaml'}:1", "the tag !!python/object/apply:os.system is not allowed"
    return c


@case
def config_two_documents(root):
    c = run_case(root, "seed: 1\n---\nseed: 2\n")
    c.names, c.words = f"{root / 'c.yaml'}:2", "single document"
    return c


@case
def config_top_level_list(root):
    c = run_case(root, "- seed: 1\n- device: cpu\n")
    c.names, c.words = f"{root / 'c.yaml'}:1", "expected a mapping"
    return c


@case
def config_binary_png(root):
    c = run_case(root, PNG, name="c.png")
    c.names, c.words = str(root / "c.png"), "binary"
    return c


@case
def config_latin1_text(root):
    c = run_case(root, "# r\xe9glages\nseed: 1\n".encode("latin-1"))
    c.names, c.words = str(root / "c.yaml"), "not UTF-8"
    return c


@case
def config_is_a_directory(root):
    (root / "confs").mkdir()
    c = run_case(root, root / "confs")
    c.names, c.words = str(root / "confs"), "is a directory"
    return c


@case
def config_missing_file(root):
    c = run_case(root, root / "nope.yaml")
    c.names, c.words = str(root / "nope.yaml"), "no such config file"
    return c


@case
def config_unreadable_symlink_loop(root):
    os.symlink(root / "loop.yaml", root / "loop.yaml")
    c = run_case(root, root / "loop.yaml")
    c.names, c.words = str(root / "loop.yaml"), "cannot read"
    return c


@case
def config_wrong_type(root):
    c = run_case(root, "device: cpu\nseed: abc\n")
    c.names, c.words = f"{root / 'c.yaml'}:2", "seed: expected an integer"
    return c


@case
def config_bad_value(root):
    c = run_case(root, "student:\n  curriculum:\n    weights: [1, -1, 1]\n")
    c.names, c.words = f"{root / 'c.yaml'}:3", "student.curriculum.weights: must be >= 0"
    return c


@case
def config_wrong_type_in_a_list(root):
    c = run_case(root, "student:\n  curriculum:\n    epochs:\n      - 1\n      - two\n      - 1\n")
    c.names, c.words = f"{root / 'c.yaml'}:5", "student.curriculum.epochs[1]: expected an integer, got 'two'"
    return c


@case
def config_short_learning_rate_pair(root):
    c = run_case(root, "teacher:\n  optim:\n    lr_schedule:\n      - [0, 0.001]\n      - [5]\n")
    c.names, c.words = f"{root / 'c.yaml'}:5", "teacher.optim.lr_schedule[1]: expected 2 items, got 1"
    return c


@case
def config_section_not_a_mapping(root):
    c = run_case(root, "device: cpu\nstudent: [1, 2]\n")
    c.names, c.words = f"{root / 'c.yaml'}:2", "student: expected a mapping, got list"
    return c


@case
def config_unknown_benchmark(root):
    c = run_case(root, "benchmark: mnist\n")
    c.names, c.words = f"{root / 'c.yaml'}:1", "unknown benchmark 'mnist'"
    return c


@case
def config_unknown_network_option(root):
    c = run_case(root, {**TINY, "networks": {"student": {"depth": 3}}})
    c.names, c.words = "networks.student.depth", "unknown option 'depth' for the cnn network"
    return c


@case
def config_network_option_set_by_benchmark(root):
    c = run_case(root, {**TINY, "networks": {"teacher": {"num_classes": 100}}})
    c.names, c.words = "networks.teacher.num_classes", "set by the benchmark"
    return c


@case
def config_network_too_deep_for_the_images(root):
    c = run_case(root, {**TINY, "networks": {"auxiliary": {"widths": [16, 32, 64, 128, 256]}}})
    c.names, c.words = "networks.auxiliary", "too small"
    return c


@case
def config_cuda_without_gpu(root):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    c = run_case(root, {**TINY, "device": "cuda"})
    c.names, c.words = "device", "no CUDA GPU"
    return c


# ----------------------------------------------------------------------------- command-line flags


@case
def flag_device_cuda_without_gpu(root):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    c = run_case(root, TINY, "--device", "cuda")
    c.names, c.words = "device", "no CUDA GPU"
    return c


@case
def flag_negative_seed(root):
    c = run_case(root, TINY, "--seed", "-1")
    c.names, c.words = "seed", "must be >= 0"
    return c


@case
def flag_unknown_method(root):
    c = run_case(root, TINY, "--methods", "indistill,fitnet")
    c.names, c.words = "--methods", "unknown method 'fitnet'"
    return c


@case
def flag_benchmark_contradicts_config(root):
    c = run_case(root, {**TINY, "benchmark": "digits"}, "--benchmark", "cifar10")
    c.names, c.words = "benchmark", "the config says 'digits' but 'cifar10' was asked for"
    return c


@case
def flag_out_is_a_file(root):
    (root / "out.txt").write_text("not a directory\n")
    c = run_case(root, TINY, "--out", str(root / "out.txt"))
    c.names, c.words = str(root / "out.txt"), "is a file, not a directory"
    return c


@case
def flag_out_below_a_file(root):
    (root / "out.txt").write_text("not a directory\n")
    c = run_case(root, TINY, "--out", str(root / "out.txt" / "runs"))
    c.names, c.words = str(root / "out.txt"), "is a file, not a directory"
    return c


@case
def flag_out_run_directory_is_a_file(root):
    (root / "other").mkdir()
    (root / "other" / "digits-seed0").write_text("a file where the run directory goes\n")
    c = run_case(root, TINY, "--out", str(root / "other"))
    c.names, c.words = str(root / "other" / "digits-seed0"), "is a file, not a directory"
    return c


@case
def flag_data_root_with_a_truncated_cifar_batch(root):
    write_cifar10(root / "data")
    batch = root / "data" / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:1000])
    c = run_case(root, None, "--benchmark", "cifar10", "--device", "cpu", "--data-root", str(root / "data"))
    c.names = str(batch)
    return c


# ----------------------------------------------------------------------------- checkpoints


def _truncated_teacher(path: Path) -> None:
    torch.save(digits_net("teacher").state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


class Planted:
    """A Python object inside a checkpoint (torch's weights-only loader must refuse it)."""

    def __reduce__(self):
        return (print, ("this must never run",))


@case
def checkpoint_garbage_bytes(root):
    return ckpt_case(root, b"garbage, not a checkpoint\n", words="not a readable torch checkpoint")


@case
def checkpoint_html_error_page(root):
    return ckpt_case(root, HTML, words="starts with b'<!DOCTYPE")


@case
def checkpoint_empty_file(root):
    return ckpt_case(root, b"", words="empty")


@case
def checkpoint_truncated(root):
    return ckpt_case(root, _truncated_teacher, words="truncated or damaged")


@case
def checkpoint_another_architecture(root):
    state = create_network("cifar10", "teacher", num_classes=10, in_channels=1, image_size=32).state_dict()
    return ckpt_case(root, lambda p: torch.save(state, p), words="does not fit the CNN it is loaded into: missing keys")


@case
def checkpoint_other_widths(root):
    state = digits_net("teacher", widths=[16, 64, 128]).state_dict()
    return ckpt_case(root, lambda p: torch.save(state, p), words="shape mismatch at blocks.0.0.bias: file (16,) vs network (32,) (+6 more)")


@case
def checkpoint_with_a_python_object(root):
    return ckpt_case(root, lambda p: torch.save({"model": Planted()}, p), words="refused")


@case
def checkpoint_bare_tensor(root):
    return ckpt_case(root, lambda p: torch.save(torch.zeros(3), p), words="not a state_dict")


@case
def checkpoint_json_file(root):
    return ckpt_case(root, b'{"conv1.weight": [1, 2, 3]}\n', words="not a readable torch checkpoint")


@case
def checkpoint_is_a_directory(root):
    return ckpt_case(root, lambda p: p.mkdir(), words="is a directory")


@case
def checkpoint_missing(root):
    return ckpt_case(root, lambda p: None, words="no such checkpoint file")


@case
def auxiliary_checkpoint_truncated(root):
    def write(p):
        torch.save({"model": digits_net("auxiliary").state_dict(), "history": []}, p)
        p.write_bytes(p.read_bytes()[:-200])

    c = ckpt_case(root, write, role="auxiliary", words="truncated or damaged")
    c.words = "auxiliary.checkpoint"
    return c


@case
def auxiliary_checkpoint_is_a_student(root):
    state = digits_net("student").state_dict()
    return ckpt_case(root, lambda p: torch.save(state, p), role="auxiliary", words="shape mismatch")


# ----------------------------------------------------------------------------- search spaces and studies


@case
def space_empty_file(root):
    c = study_case(root, space="")
    c.names, c.words = str(root / "space.yaml"), "search space file is empty"
    return c


@case
def space_without_curriculum(root):
    c = study_case(root, space={"budget": {"trials": 2}})
    c.names, c.words = str(root / "space.yaml"), "curriculum: required key missing"
    return c


@case
def space_duplicate_key(root):
    c = study_case(root, space="criteria: [l1]\ncurriculum: {epochs: [{low: 1, high: 1}]}\ncriteria: [l2]\n")
    c.names, c.words = f"{root / 'space.yaml'}:3", "criteria: duplicate key"
    return c


@case
def space_unknown_key(root):
    c = study_case(root, space={**SPACE, "curriculum": {**SPACE["curriculum"], "loss": ["mse"]}})
    c.names, c.words = str(root / "space.yaml"), "curriculum.loss: unknown key"
    return c


@case
def space_logit_loss_for_a_layer(root):
    c = study_case(root, space={**SPACE, "curriculum": {**SPACE["curriculum"], "losses": ["mse", "kd"]}})
    c.names, c.words = f"{root / 'space.yaml'}:", "curriculum.losses[1]: unknown loss 'kd'; choose from: mse, pkt, cosine"
    return c


@case
def space_unknown_key_under_fixed(root):
    c = study_case(root, space={**SPACE, "fixed": {"student": {"epochz": 3}}})
    c.names, c.words = str(root / "space.yaml"), "fixed.student.epochz: unknown key"
    return c


@case
def space_binary(root):
    c = study_case(root, space=PNG)
    c.names, c.words = str(root / "space.yaml"), "binary"
    return c


@case
def space_syntax_error(root):
    c = study_case(root, space="curriculum:\n  epochs: [{low: 1, high: 2}\n")
    c.names, c.words = str(root / "space.yaml"), "not valid YAML"
    return c


@case
def space_python_tag(root):
    c = study_case(root, space="budget: !!python/object/new:dict {}\n")
    c.names, c.words = f"{root / 'space.yaml'}:1", "not allowed"
    return c


@case
def space_is_a_directory(root):
    (root / "spaces").mkdir()
    c = study_case(root, "--search-space", str(root / "spaces"))
    c.names, c.words = str(root / "spaces"), "is a directory"
    return c


@case
def space_fixed_garbage_teacher_checkpoint(root):
    (root / "t.pt").write_bytes(HTML)
    c = study_case(root, space={**SPACE, "fixed": {"teacher": {"checkpoint": str(root / "t.pt")}}})
    c.names, c.words = str(root / "t.pt"), "teacher.checkpoint"
    return c


@case
def study_storage_is_a_file(root):
    (root / "studies.txt").write_text("a file\n")
    c = study_case(root, space=SPACE)
    c.argv[c.argv.index("--storage") + 1] = str(root / "studies.txt")
    c.names, c.words = str(root / "studies.txt"), "is a file, not a directory"
    return c


@case
def study_directory_is_a_file(root):
    (root / "studies").mkdir()
    (root / "studies" / "mine").write_text("a file\n")
    c = study_case(root, "--name", "mine", space=SPACE)
    c.names, c.words = str(root / "studies" / "mine"), "is a file, not a directory"
    return c


@case
def study_name_with_a_slash(root):
    c = study_case(root, "--name", "../elsewhere", space=SPACE)
    c.names = "--name"
    return c


@case
def study_gpus_without_a_gpu(root):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    c = study_case(root, "--gpus-per-trial", "1", space=SPACE)
    c.names, c.words = "--gpus-per-trial", "no CUDA GPU"
    return c


@case
def study_zero_concurrent_trials(root):
    c = study_case(root, "--max-concurrent-trials", "0", space=SPACE)
    c.names, c.words = "--max-concurrent-trials", "must be >= 1, got 0"
    return c


@case
def study_zero_trials(root):
    c = study_case(root, "--trials", "0", space=SPACE)
    c.names = "--trials"
    return c


@case
def study_unknown_benchmark(root):
    c = study_case(root, "--benchmarks", "digits,mnist")
    c.names, c.words = "--benchmarks", "unknown benchmark 'mnist'"
    return c


@case
def study_resume_with_truncated_state(root):
    study_dir(root, TRUNCATED_STATE)
    c = study_case(root, "--resume", space=SPACE)
    c.names, c.words = str(root / "studies" / "default" / "study.json"), "not a valid JSON file"
    return c


@case
def study_resume_of_nothing(root):
    c = study_case(root, "--resume", space=SPACE)
    c.names, c.words = "--resume", "no study"
    return c


@case
def study_exists_without_resume(root):
    study_dir(root)
    c = study_case(root, space=SPACE)
    c.names, c.words = "--name", "already exists"
    return c


@case
def study_data_missing(root):
    (root / "data").mkdir()
    c = study_case(root, "--benchmarks", "cifar10", "--data-root", str(root / "data"))
    c.names, c.words = str(root / "data"), "cifar10 data not found"
    return c


@case
def study_data_with_a_bad_cifar_batch(root):
    write_cifar10(root / "data")
    batch = root / "data" / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(HTML)
    c = study_case(root, "--benchmarks", "cifar10", "--data-root", str(root / "data"))
    c.names = str(batch)
    return c


@case
def table_of_an_indistill_run_directory(root):
    rdir = existing_run(root)
    return Case("indistill-study", ["table", str(rdir)], str(rdir), "not a study directory")


@case
def table_of_a_missing_directory(root):
    return Case("indistill-study", ["table", str(root / "nope")], str(root / "nope"), "no such study directory")


@case
def table_with_truncated_state(root):
    sdir = study_dir(root, TRUNCATED_STATE)
    return Case("indistill-study", ["table", str(sdir)], str(sdir / "study.json"), "truncated?")


@case
def table_with_a_state_that_is_not_a_study(root):
    sdir = study_dir(root, "[1, 2, 3]\n")
    return Case("indistill-study", ["table", str(sdir)], str(sdir / "study.json"), "not a study state")


@case
def export_onto_an_existing_file(root):
    sdir = study_dir(root)
    (root / "best.txt").write_text("keep me\n")
    return Case("indistill-study", ["export", str(sdir), "--out", str(root / "best.txt")], str(root / "best.txt"),
                "is a file, not a directory")


@case
def export_with_truncated_state(root):
    sdir = study_dir(root, TRUNCATED_STATE)
    return Case("indistill-study", ["export", str(sdir), "--out", str(root / "best")], str(sdir / "study.json"))


@case
def export_with_a_damaged_best_config(root):
    sdir = study_dir(root)
    (sdir / "digits" / "search" / "best_config.yaml").write_text("student: {epochs: 3\n")
    return Case("indistill-study", ["export", str(sdir), "--out", str(root / "best")],
                str(sdir / "digits" / "search" / "best_config.yaml"), "not valid YAML")


@case
def report_with_truncated_state(root):
    sdir = study_dir(root, TRUNCATED_STATE)
    return Case("indistill-study", ["report", str(sdir)], str(sdir / "study.json"))


@case
def tensorboard_port_out_of_range(root):
    sdir = study_dir(root)
    return Case("indistill-study", ["tensorboard", str(sdir), "--port", "70000"], "--port", "70000 is not a port number")


@case
def tensorboard_port_not_a_number(root):
    sdir = study_dir(root)
    return Case("indistill-study", ["tensorboard", str(sdir), "--port", "http"], "--port", "expected a port number")


@case
def tensorboard_of_a_file(root):
    (root / "study.json").write_text("{}\n")
    return Case("indistill-study", ["tensorboard", str(root / "study.json")], str(root / "study.json"),
                "is a file, not a study directory")


def test_at_least_forty_cases():
    assert len(CASES) >= 40


@pytest.fixture
def no_ray(monkeypatch):
    """Ray must never start for bad input: fail loudly if validation lets a case through."""
    import ray

    def refuse(*_a, **_k):
        raise AssertionError("ray.init was called: bad input got past validation")

    monkeypatch.setattr(ray, "init", refuse)


def run_in_process(c: Case) -> int:
    main = indistill_main if c.prog == "indistill" else study_main
    try:
        return main(c.argv)
    except SystemExit as exc:  # argparse's own errors
        return int(exc.code or 0)


def one_line_error(c: Case, root: Path, capsys) -> str:
    """Run case ``c`` over ``root``: exit 2, one ``error:`` line naming the bad file or field, no
    traceback, nothing under ``root`` changed; returns the line."""
    before = snapshot(root)
    rc = run_in_process(c)
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    lines = [line for line in (out + err).splitlines() if "error:" in line]
    assert len(lines) == 1, (out, err)
    line = lines[0]
    assert re.match(rf"{re.escape(c.prog)}( [a-z]+)?: error: ", line), line  # argparse names the subcommand too
    assert c.names in line, line
    assert c.words in line, line
    assert "Traceback" not in out + err
    assert snapshot(root) == before  # nothing written, renamed or removed
    return line


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, tmp_path, capsys, monkeypatch, no_ray):
    root = tmp_path / "work"
    root.mkdir()
    monkeypatch.chdir(root)
    monkeypatch.delenv("INDISTILL_DEBUG", raising=False)
    one_line_error(CASES[name](root), root, capsys)


#: the cases of ``indistill-study run`` (built by study_case)
STUDY_RUN_CASES = [name for name in CASES if name.startswith(("space_", "study_"))]


@pytest.mark.parametrize("name", STUDY_RUN_CASES)
def test_bad_input_of_a_dry_run(name, tmp_path, capsys, monkeypatch, no_ray):
    """``run --dry-run`` meets every bad study input with the line ``run`` gives, word for word."""
    root = tmp_path / "work"
    root.mkdir()
    monkeypatch.chdir(root)
    monkeypatch.delenv("INDISTILL_DEBUG", raising=False)
    c = CASES[name](root)
    assert (c.prog, c.argv[0]) == ("indistill-study", "run")
    line = one_line_error(c, root, capsys)
    c.argv.append("--dry-run")
    assert one_line_error(c, root, capsys) == line


# ----------------------------------------------------------------------------- end to end (subprocess)


def _python(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def test_one_line_end_to_end_and_a_traceback_only_on_request(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_bytes(PNG)
    proc = _python("-m", "indistill.cli", "run", "--config", str(bad), "--out", str(tmp_path / "runs"),
                   env={"INDISTILL_DEBUG": ""})
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"indistill: error: {bad}: a binary file, not a config (YAML text): byte 8 is NUL"]
    assert not (tmp_path / "runs").exists()
    proc = _python("-m", "indistill.cli", "run", "--config", str(bad), env={"INDISTILL_DEBUG": "1"})
    assert proc.returncode == 2 and "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("indistill: error: ")
    proc = _python("-m", "study.cli", "--debug", "table", str(tmp_path), env={"INDISTILL_DEBUG": ""})
    assert proc.returncode == 2 and "Traceback" in proc.stderr and "not a study directory" in proc.stderr


def test_study_cli_end_to_end_one_line(tmp_path):
    proc = _python("-m", "study.cli", "tensorboard", str(tmp_path), "--port", "70000", env={"INDISTILL_DEBUG": ""})
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert errors == ["indistill-study tensorboard: error: argument --port: 70000 is not a port number (1-65535)"]
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- recovery inside a run directory


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """A real (tiny) finished ``indistill run`` on digits: (its --out folder, its config)."""
    root = tmp_path_factory.mktemp("finished")
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    assert indistill_main(["run", "--config", str(cfg), "--out", str(root / "runs")]) == 0
    return root / "runs", cfg


def _copy_run(finished_run, tmp_path) -> tuple[Path, Path, Path]:
    runs, cfg = finished_run
    out = tmp_path / "runs"
    shutil.copytree(runs, out)
    return out, out / "digits-seed0", cfg


def _stage(rdir: Path, prefix: str) -> Path:
    (found,) = [p for p in (rdir / "stages").iterdir() if p.name.startswith(prefix + "-") and
                not p.name.startswith(prefix + "-ce")]
    return found


def _rerun(out: Path, cfg: Path, capsys) -> list[str]:
    assert indistill_main(["run", "--config", str(cfg), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err and "error:" not in captured.err
    return [line for line in captured.out.splitlines() if "set aside" in line]


def test_corrupted_files_in_a_run_are_set_aside_and_the_run_recovers(finished_run, tmp_path, capsys):
    out, rdir, cfg = _copy_run(finished_run, tmp_path)
    capsys.readouterr()
    results = (rdir / "results.csv").read_text()
    teacher_final = _stage(rdir, "teacher") / "final.pt"
    teacher_final.write_bytes(teacher_final.read_bytes()[:300])  # truncated
    indices = _stage(rdir, "prune") / "indices.pt"
    indices.write_bytes(HTML)  # not a checkpoint
    (evaluation,) = _stage(rdir, "auxiliary").glob("eval-test-*.json")
    evaluation.write_text(evaluation.read_text()[:40])  # truncated JSON
    lines = _rerun(out, cfg, capsys)
    assert len(lines) == 3, lines
    expect = {teacher_final: "resuming from last.pt", indices: "selecting the channels again", evaluation: "evaluating again"}
    for path, then in expect.items():
        (line,) = [l for l in lines if str(path) in l]
        assert then in line and f"set aside as {path.name}.corrupt" in line, line
        assert (path.parent / f"{path.name}.corrupt").is_file() and path.is_file()  # kept, and redone
    assert (rdir / "results.csv").read_text() == results  # the same weights: the same table


def test_a_stage_whose_checkpoints_are_both_corrupted_is_trained_again(finished_run, tmp_path, capsys):
    out, rdir, cfg = _copy_run(finished_run, tmp_path)
    capsys.readouterr()
    student = _stage(rdir, "student-indistill-test")
    (student / "final.pt").write_bytes(b"")
    (student / "last.pt").write_bytes(b"\x80\x02garbage")
    lines = _rerun(out, cfg, capsys)
    assert len(lines) == 2, lines
    assert "final.pt: not a readable torch stage checkpoint: the file is empty" in lines[0] and "resuming from last.pt" in lines[0]
    assert "last.pt: not a readable torch stage checkpoint" in lines[1] and "training this stage again" in lines[1]
    state = torch.load(student / "final.pt", weights_only=True)
    assert len(state["history"]) == 3  # all three epochs trained again
    assert (student / "final.pt.corrupt").read_bytes() == b"" and (student / "last.pt.corrupt").is_file()


def test_a_stage_checkpoint_of_another_network_is_set_aside(finished_run, tmp_path, capsys):
    out, rdir, cfg = _copy_run(finished_run, tmp_path)
    capsys.readouterr()
    teacher = _stage(rdir, "teacher")
    shutil.copy(_stage(rdir, "auxiliary") / "final.pt", teacher / "final.pt")  # the auxiliary's weights
    (line,) = _rerun(out, cfg, capsys)
    assert str(teacher / "final.pt") in line and "does not fit the CNN" in line and "shape mismatch" in line
    assert (teacher / "final.pt.corrupt").is_file()


def test_a_failed_run_leaves_the_run_directory_as_it_was(finished_run, tmp_path, capsys):
    """A rerun whose input turns out bad (a given checkpoint) writes nothing, config.yaml included."""
    out, rdir, cfg = _copy_run(finished_run, tmp_path)
    before = snapshot(out)
    (tmp_path / "t.pt").write_bytes(b"")
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump({**TINY, "teacher": {"epochs": 1, "checkpoint": str(tmp_path / "t.pt")}}))
    assert indistill_main(["run", "--config", str(changed), "--out", str(out)]) == 2
    assert "t.pt: not a readable torch checkpoint: the file is empty" in capsys.readouterr().err
    assert snapshot(out) == before


def _linear_loop(work: Path, log: list[str], epochs: int = 2):
    from indistill.config.run import OptimConfig
    from indistill.engine.loop import Loop

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.arange(8) % 3

    def step(xb, yb, epoch):
        return torch.nn.functional.cross_entropy(model(xb), yb), {}

    return Loop(work, model, OptimConfig(), epochs, step, lambda epoch: iter([(x, y)]), name="unit", log=log.append)


def test_a_checkpoint_from_past_the_stage_end_is_set_aside(tmp_path):
    """A last.pt that claims more epochs than the stage has (e.g. copied from a longer run) is not resumed."""
    log: list[str] = []
    _linear_loop(tmp_path, log, epochs=3).run()
    (tmp_path / "final.pt").unlink()
    log.clear()
    history = _linear_loop(tmp_path, log, epochs=2).run()
    assert len(history) == 2
    assert len(log) == 3 and "epoch 3 is not between 0 and the stage's 2 epochs" in log[0], log
    assert "set aside as last.pt.corrupt, training this stage again" in log[0]
    assert (tmp_path / "last.pt.corrupt").is_file() and (tmp_path / "final.pt").is_file()


class _Recorder:
    """An epoch hook with an ``end``: what the loop called, in order."""

    def __init__(self) -> None:
        self.calls: list = []

    def __call__(self, epoch, metrics, checkpoint) -> None:
        self.calls.append(("epoch", epoch))

    def end(self, history) -> None:
        self.calls.append(("end", len(history)))


@pytest.mark.parametrize("case", ["fresh", "resumed after its last epoch", "finished"])
def test_a_hooks_end_is_called_once_with_the_whole_history(tmp_path, case):
    log: list[str] = []
    if case != "fresh":
        _linear_loop(tmp_path, log, epochs=2).run()
    if case == "resumed after its last epoch":
        (tmp_path / "final.pt").unlink()  # last.pt holds epoch 2 of 2: nothing is left to train
    loop = _linear_loop(tmp_path, log, epochs=2)
    hook = _Recorder()
    loop.hooks.append(hook)
    assert len(loop.run()) == 2
    assert hook.calls == ([("epoch", 0), ("epoch", 1), ("end", 2)] if case == "fresh" else [("end", 2)])
