"""``indistill-study run --dry-run``: every check ``run`` makes before Ray, then the resolved plan as
plain text lines and exit 0; Ray is not started and nothing is written (issue 22 item 2)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from study import cli as study_cli
from study.names import STUDENT_ROWS
from study.resources import ClusterShape, this_machine_shape
from study.search_space import packaged_spaces

REPO = Path(__file__).resolve().parent.parent
#: the row labels of the embedded digits study's final table (study.names.STUDENT_ROWS, every method)
ROWS = "student (ce), student (pkt), student (mkt), InDistill (paper defaults), InDistill (tuned)"


@pytest.fixture
def no_ray(monkeypatch):
    """A dry run must never start (or join) Ray."""
    import ray

    def refuse(*_a, **_k):
        raise AssertionError("ray.init was called by a dry run")

    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture
def machine(monkeypatch):
    """This machine as the dry run sees it: ``machine(cpus, gpus)`` fixes what Ray and torch detect."""

    def set_machine(cpus: int, gpus: int = 0) -> None:
        monkeypatch.setattr("ray._private.utils.get_num_cpus", lambda **_k: float(cpus))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)

    return set_machine


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """An empty working directory, a data root inside it, no cluster address in the environment."""
    root = tmp_path / "work"
    root.mkdir()
    monkeypatch.chdir(root)
    monkeypatch.setenv("INDISTILL_DATA", str(root / "data"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("INDISTILL_DEBUG", raising=False)
    return root


def dry_run(argv: list[str], capsys) -> tuple[int, list[str], str]:
    """(exit code, stdout lines, stderr) of ``indistill-study run --dry-run ARGV`` in-process."""
    try:
        rc = study_cli.main(["run", "--dry-run", *argv])
    except SystemExit as exc:  # argparse's own errors
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out.splitlines(), err


def test_the_embedded_default_prints_its_plan_and_writes_nothing(work, machine, no_ray, capsys):
    machine(cpus=4)
    rc, lines, err = dry_run([], capsys)
    assert rc == 0 and err == ""
    assert lines == [
        "indistill-study run --dry-run: every check before Ray passed; Ray was not started, nothing was written",
        "study          : default (new)",
        f"storage        : {work / 'studies' / 'default'}",
        "ray            : a local Ray on this machine",
        "benchmarks     : digits",
        "digits:",
        f"  config       : {REPO / 'indistill' / 'config' / 'defaults' / 'digits.yaml'}",
        f"  search space : {packaged_spaces() / 'digits.yaml'}",
        f"  data root    : {work / 'data'}",
        "  trials       : 8, 4 at a time",
        "  epochs       : 20 student epochs per trial and per final row",
        "  early stop   : ASHA on embedding-phase epochs (grace period 6, reduction factor 3, at most 17 epochs)",
        f"  final rows   : {ROWS}",
        "  final seeds  : [0, 1, 2], 3 at a time",
        "resources      : per trial 1 worker, each 1 CPU and 0 GPUs; backend gloo (auto)",
        "artifact run   : 1 worker (teacher, auxiliary, pruning)",
        "concurrency    : 4 trials (and final runs) of each benchmark at a time: this machine's 4 CPUs",
    ]
    assert ROWS == ", ".join(label for label, _method, _tuned in STUDENT_ROWS)
    assert os.listdir(work) == []  # no study directory, no data root: nothing written
    import ray

    assert not ray.is_initialized()


def test_the_checkouts_search_spaces_are_the_packaged_ones():
    """In the editable install the tests run from, the packaged spaces are the checkout's search_spaces/."""
    assert packaged_spaces() == REPO / "search_spaces"
    assert (packaged_spaces() / "digits.yaml").read_text() == (REPO / "search_spaces" / "digits.yaml").read_text()


def test_on_a_gpu_machine_trials_share_its_gpu(work, machine, no_ray, capsys):
    machine(cpus=8, gpus=1)
    rc, lines, _ = dry_run(["--epochs", "25", "--final-seeds", "2", "--name", "gpu"], capsys)
    assert rc == 0
    assert f"storage        : {work / 'studies' / 'gpu'}" in lines
    assert "  trials       : 8, 4 at a time" in lines
    assert "  epochs       : 25 student epochs per trial and per final row (student (mkt) keeps its recipe's 20)" in lines
    assert "  early stop   : ASHA on embedding-phase epochs (grace period 6, reduction factor 3, at most 22 epochs)" in lines
    assert "  final seeds  : [0, 1], 2 at a time" in lines
    assert "resources      : per trial 1 worker, each 1 CPU and 0.25 GPUs; backend nccl (auto)" in lines
    assert "concurrency    : 4 trials (and final runs) of each benchmark at a time: this machine's 1 GPU" in lines
    assert os.listdir(work) == []


def test_a_cluster_is_not_joined_and_its_shape_is_left_to_the_run(work, machine, no_ray, capsys, monkeypatch):
    machine(cpus=2)
    rc, lines, _ = dry_run(["--address", "10.0.0.1:6379", "--workers-per-trial", "2", "--cpus-per-trial", "4"], capsys)
    assert rc == 0
    assert "ray            : the cluster at 10.0.0.1:6379" in lines
    assert "  trials       : 8" in lines and "  final seeds  : [0, 1, 2]" in lines
    assert ("resources      : per trial 2 workers, each 2 CPUs and GPUs decided when the study joins the cluster "
            "(no --gpus-per-trial); backend auto: nccl if trials get GPUs, else gloo") in lines
    assert lines[-1] == ("concurrency    : decided when the study joins the cluster (its nodes and the node types its "
                         "autoscaler may start)")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.2:6379")  # names a cluster too
    rc, lines, _ = dry_run(["--max-concurrent-trials", "3", "--gpus-per-trial", "1", "--dist-backend", "gloo"], capsys)
    assert rc == 0
    assert "ray            : the cluster at 10.0.0.2:6379" in lines
    assert "  trials       : 8, 3 at a time" in lines
    assert "resources      : per trial 1 worker, each 1 CPU and 1 GPU; backend gloo" in lines
    assert lines[-1] == "concurrency    : 3 trials (and final runs) of each benchmark at a time: --max-concurrent-trials"
    assert os.listdir(work) == []


def test_a_search_space_file_and_its_fixed_overrides_are_named(work, machine, no_ray, capsys):
    machine(cpus=2)
    space = work.parent / "space.yaml"
    space.write_text("benchmark: digits\nbudget: {trials: 3, epochs: 8, grace_period: 1, early_stopping: false}\n"
                     "curriculum: {epochs: [{low: 1, high: 1}, {low: 1, high: 1}, {low: 1, high: 1}]}\n"
                     "fixed: {methods: [indistill], student: {batch_size: 32}}\n")
    os.chdir(work.parent)
    rc, lines, _ = dry_run(["--search-space", "space.yaml", "--storage", str(work / "s")], capsys)
    assert rc == 0
    assert (f"  config       : {REPO / 'indistill' / 'config' / 'defaults' / 'digits.yaml'} with the search space's fixed "
            "methods, student.batch_size") in lines
    assert f"  search space : {space}" in lines  # the full path of a relative --search-space
    assert "  trials       : 3, 2 at a time" in lines
    assert "  early stop   : off: every trial runs its whole budget" in lines
    assert "  final rows   : InDistill (paper defaults), InDistill (tuned)" in lines  # methods: the baselines left out
    assert os.listdir(work) == []


def _error_line(argv: list[str], capsys) -> tuple[int, list[str]]:
    """(exit code, the lines with "error:") of ``indistill-study ARGV`` in-process."""
    try:
        rc = study_cli.main(argv)
    except SystemExit as exc:  # argparse's own errors (after its usage lines)
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, [line for line in (out + err).splitlines() if "error:" in line]


@pytest.mark.parametrize("argv, words", [
    (["--trials", "0"], "indistill-study: error: --trials: must be >= 1, got 0"),
    (["--epochs", "0"], "indistill-study: error: --epochs: must be >= 1, got 0"),
    (["--final-seeds", "-1"], "indistill-study: error: --final-seeds: must be >= 1, got -1"),
    # shorter than the digits config's curriculum: the space's file and the flags that changed it
    (["--epochs", "2"], "indistill-study: error: /"),
    (["--benchmarks", "mnist"], "indistill-study: error: --benchmarks: unknown benchmark 'mnist'"),
    (["--workers-per-trial", "2", "--gpus-per-trial", "0.5"], "indistill-study: error: --gpus-per-trial: multi-worker"),
    (["--resume"], "indistill-study: error: --resume: no study at "),
    (["--cpus-per-trial", "many"], "indistill-study run: error: argument --cpus-per-trial: invalid float value: 'many'"),
])
def test_bad_input_gets_the_same_one_line_error_as_run(argv, words, work, machine, no_ray, capsys):
    machine(cpus=2)
    rc, lines = _error_line(["run", *argv, "--dry-run"], capsys)
    assert rc == 2
    assert len(lines) == 1 and lines[0].startswith(words), lines
    if argv == ["--epochs", "2"]:
        assert lines[0].endswith("search_spaces/digits.yaml with --trials/--epochs/--final-seeds: budget.epochs: 2 "
                                 "student epochs do not fit the digits config: student.curriculum.epochs: the "
                                 "curriculum lasts 7 epochs, more than student.epochs = 2"), lines
    assert _error_line(["run", *argv], capsys) == (2, lines)  # what run says, word for word
    assert os.listdir(work) == []


def test_a_resumed_study_is_checked_and_left_as_it_was(work, machine, no_ray, capsys):
    from study.resume import write_study_state

    machine(cpus=2)
    args = study_cli.build_parser().parse_args(["run", "--name", "old"])
    write_study_state(study_cli.make_plan(args))
    before = {p: p.read_bytes() for p in work.rglob("*") if p.is_file()}
    rc, lines, _ = dry_run(["--name", "old", "--resume"], capsys)
    assert rc == 0
    assert lines[1] == "study          : old (resumed: its state and inputs match)"
    rc, err_lines = _error_line(["run", "--name", "old", "--dry-run"], capsys)
    assert rc == 2 and err_lines == [f"indistill-study: error: --name: study {work / 'studies' / 'old'} already exists; "
                                     "add --resume to continue it or pick another --name"]
    rc, err_lines = _error_line(["run", "--name", "old", "--resume", "--trials", "9", "--dry-run"], capsys)
    assert rc == 2 and err_lines[0].startswith("indistill-study: error: --resume: digits's search space differs")
    assert {p: p.read_bytes() for p in work.rglob("*") if p.is_file()} == before


def test_this_machine_shape_is_what_a_local_ray_would_see(machine):
    machine(cpus=6, gpus=2)
    assert this_machine_shape() == ClusterShape(up=({"CPU": 6.0, "GPU": 2.0},), head={"CPU": 6.0, "GPU": 2.0},
                                                this_machine=True)
