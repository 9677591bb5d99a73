"""A benchmark none of whose search trials finished fails the study: `indistill-study run` prints the
table of what finished and ends with one line naming the benchmark and the first trial's own error,
exit code 1. Driven through the real runner on a study directory whose search is recorded as done
(no Ray process starts: Ray's calls are stubbed)."""
from __future__ import annotations

from pathlib import Path

import pytest

from study.cli import build_parser, main
from study.names import NETWORKS_FILE
from study.plan import make_plan
from study.resume import write_study_state
from study.runner import BenchmarkFailed, StudyFailed, run_benchmark

REASON = "RuntimeError: Expected to have finished reduction in the prior iteration before starting a new one."


def _failed_search(tmp_path: Path, monkeypatch) -> list[str]:
    """A study ``tiny`` of digits whose artifacts are prepared and whose two search trials failed; the argv
    that resumes it."""
    monkeypatch.chdir(tmp_path)
    argv = ["run", "--benchmarks", "digits", "--storage", str(tmp_path / "studies"), "--name", "tiny", "--resume"]
    plan = make_plan(build_parser().parse_args(argv))
    write_study_state(plan)
    plan.storage.write_json(f"digits/{NETWORKS_FILE}", {"rows": []})
    failed = {"status": "failed", "epochs": 1, "val_map": None, "params": {}, "timing": None, "placement": []}
    plan.storage.write_json("digits/search/trials.json", {
        "trials": [{**failed, "trial_id": "a", "reason": REASON}, {**failed, "trial_id": "b", "reason": "ValueError: x"}],
        "best": None, "counts": {"failed": 2}, "max_concurrent": 1})
    return argv


def test_a_benchmark_without_a_finished_trial_fails(tmp_path, monkeypatch):
    argv = _failed_search(tmp_path, monkeypatch)
    plan = make_plan(build_parser().parse_args(argv))
    from study.resources import Concurrency
    from study.runner import new_progress

    with pytest.raises(BenchmarkFailed) as err:
        run_benchmark(plan, plan.benchmarks[0], new_progress(plan, None), Concurrency(2, "this machine's 2 CPUs"))
    assert str(err.value) == (f"none of its 2 search trials finished (the first: {REASON}); no final runs; "
                              "logs: digits/logs/trials/")


def _no_ray(*_a, **_k):
    raise AssertionError("ray.init was called")


def test_the_study_exits_1_and_says_why_in_its_last_line(tmp_path, monkeypatch, capsys):
    import ray

    import study.ray_runs as ray_runs
    import study.resources as resources
    import study.runner as runner
    from study.resources import ClusterShape

    argv = _failed_search(tmp_path, monkeypatch)
    monkeypatch.setattr(ray_runs, "init_ray", lambda *_a, **_k: None)
    local = ClusterShape(({"CPU": 2.0},), {"CPU": 2.0}, None, None, True)  # a local Ray of 2 CPUs
    for module in (runner, resources):
        monkeypatch.setattr(module, "read_cluster_shape", lambda: local)
    monkeypatch.setattr(ray, "init", _no_ray)  # nothing else may start one
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    assert main([*argv, "--verbose"]) == 1
    out, err = capsys.readouterr()
    assert "(no rows yet)" in out and "study directory" in out  # what finished, and where everything is
    assert err.splitlines()[-1] == (f"indistill-study: failed: study tiny: 1 benchmark(s) failed: digits: none of its 2 "
                                    f"search trials finished (the first: {REASON}); no final runs; logs: digits/logs/trials/")
    assert isinstance(StudyFailed("s", None, [("digits", ValueError("x"))]).__cause__, ValueError)
