"""The Ray study end to end on a local Ray with a tiny budget: table, failures, TensorBoard, export."""
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

TINY_SPACE = {
    "benchmark": "digits",
    "budget": {"trials": 4, "epochs": 3, "grace_period": 2, "reduction_factor": 2, "seed": 0, "max_failures": 1},
    "curriculum": {
        "epochs": [{"low": 1, "high": 1}, {"low": 0, "high": 1}, {"low": 0, "high": 1}],
        "losses": ["mse", "pkt"],
        "weights": {"mse": {"low": 0.5, "high": 2.0}},
        "overlap": [False, True],
    },
    "criteria": ["l1", "random"],
    "fixed": {
        "teacher": {"epochs": 1},
        "auxiliary": {"ce": {"epochs": 1}, "pkt": {"epochs": 1}},
        "student": {"curriculum": {"epochs": [1, 1, 1]}},
    },
}


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "study.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=900)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    import ray

    from study.cli import build_parser, make_plan
    from study.runner import run_study

    tmp = tmp_path_factory.mktemp("study")
    space = tmp / "space.yaml"
    space.write_text(yaml.safe_dump(TINY_SPACE))
    args = build_parser().parse_args(["run", "--search-space", str(space), "--storage", str(tmp / "studies"), "--name", "tiny"])
    plan = make_plan(args)
    import dataclasses

    plan = dataclasses.replace(plan, faults={"random": "nan"})  # every trial that samples 'random' diverges
    ray.init(num_cpus=2, include_dashboard=True, configure_logging=False, log_to_driver=False)
    try:
        table = run_study(plan, log=lambda _m: None)
    finally:
        ray.shutdown()
    return plan, table, Path(plan.storage.uri)


@pytest.mark.e2e
def test_study_table_rows_and_trial_accounting(study):
    plan, table, root = study
    rows = [n for _, n in table.index]
    assert rows == ["teacher", "auxiliary", "student (ce)", "student (pkt)", "student (mkt)",
                    "InDistill (paper defaults)", "InDistill (tuned)"]
    for name in ("results.csv", "results.md", "results.tex"):
        assert (root / name).is_file()
    tuned = table.loc[("digits", "InDistill (tuned)")]
    assert 0 < tuned["cosine map"] <= 100 and 0 < tuned["best val map"] <= 100
    import json

    trials = json.loads((root / "digits/search/trials.json").read_text())
    assert len(trials["trials"]) == 4
    assert sum(trials["counts"].values()) == 4
    failed = [t for t in trials["trials"] if t["status"] == "failed"]
    sampled_random = [t for t in trials["trials"] if t["params"]["prune"]["criterion"] == "random"]
    assert len(failed) == len(sampled_random) >= 1, trials  # the injected NaN trials fail, the study goes on
    assert all("DivergedError" in t["reason"] or "NaN" in t["reason"] or "nan" in t["reason"] for t in failed)
    assert trials["best"]["params"]["prune"]["criterion"] == "l1"
    assert tuned["trials failed"] == len(failed)
    for t in trials["trials"]:  # where each trial ran, and its wall vs in-loop time up to its last report
        if t["status"] != "failed":
            assert 0 < t["timing"]["loop_s"] < t["timing"]["wall_s"] and t["timing"]["epochs"] == t["epochs"] >= 1
            assert [r["device"] for r in t["placement"]] == ["cpu"]
        else:
            assert t["timing"] is None  # diverged in its first epoch: never reported
    assert trials["max_concurrent"] == 2
    phases = json.loads((root / "digits/phases.json").read_text())
    assert set(phases) == {"artifacts_s", "search_s", "final_s"} and all(v > 0 for v in phases.values())


@pytest.mark.e2e
def test_tensorboard_event_files_have_the_expected_tags(study):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, root = study
    trial_dirs = sorted((root / "digits/tensorboard/trials").iterdir())
    assert trial_dirs
    tags: set = set()
    for d in trial_dirs:  # trials that diverged at once log nothing: look at all of them
        acc = EventAccumulator(str(d))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"loss", "lr", "phase", "val_map", "val/cosine/map"} <= tags
    assert any(t.startswith("loss/block") for t in tags)
    final = EventAccumulator(str(root / "digits/tensorboard/final"), size_guidance={"tensors": 0})
    final.Reload()
    assert "final/pr_cosine" in final.Tags()["tensors"]
    tune_events = list((root / "ray/digits-search").rglob("events.out.tfevents*"))
    assert tune_events, "Tune writes its own event files"
    tune_tags: set = set()
    for event_file in tune_events:  # failed trials may have logged nothing
        tune_acc = EventAccumulator(str(event_file.parent))
        tune_acc.Reload()
        tune_tags |= set(tune_acc.Tags()["scalars"])
    assert "ray/tune/val_map" in tune_tags


@pytest.mark.e2e
def test_export_reproduces_the_tuned_map(study, tmp_path):
    import torch

    from indistill.cli import main as indistill_main

    _, table, root = study
    proc = run_cli("export", str(root), "--out", str(tmp_path / "best"))
    assert proc.returncode == 0, proc.stderr
    best = tmp_path / "best" / "digits" / "best_config.yaml"
    assert best.is_file() and (tmp_path / "best" / "digits" / "student.pt").is_file()
    assert (tmp_path / "best" / "results.md").is_file()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # Ray workers run with one thread per CPU; the same reduction order
    try:
        assert indistill_main(["run", "--config", str(best), "--out", str(tmp_path / "runs")]) == 0
    finally:
        torch.set_num_threads(threads)
    ours = pd.read_csv(tmp_path / "runs" / "digits-seed0" / "results.csv", index_col=0)
    tuned = table.loc[("digits", "InDistill (tuned)")]
    for col in ("cosine map", "euclidean map", "cosine map_legacy"):
        assert ours.loc["student (indistill)", col] == pytest.approx(tuned[col], abs=1e-6), col


@pytest.mark.e2e
def test_table_and_tensorboard_commands(study):
    _, _, root = study
    proc = run_cli("table", str(root))
    assert proc.returncode == 0 and "InDistill (tuned)" in proc.stdout
    proc = run_cli("tensorboard", str(root))
    assert proc.returncode == 0 and f"--logdir {root}" in proc.stdout


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"criteria": ["l1", "l7"]}, "criteria[1]: unknown criterion 'l7'; choose from: l1, l2, bn_scale"),
        ({"curriculum": {**TINY_SPACE["curriculum"], "epochs": [{"low": 3, "high": 1}, {"low": 0, "high": 1}, {"low": 0, "high": 1}]}},
         "curriculum.epochs[0].high: empty range: low 3 > high 1"),
        ({"budgett": {}}, "unknown key 'budgett'"),
        ({"curriculum": {**TINY_SPACE["curriculum"], "losses": ["mse", "l2"]}}, "curriculum.losses[1]: unknown loss 'l2'"),
        ({"curriculum": {**TINY_SPACE["curriculum"], "weights": {"mse": {"low": 0.0, "high": 1.0}}}}, "curriculum.weights.mse.low: must be > 0"),
        ({"curriculum": {**TINY_SPACE["curriculum"], "epochs": [{"low": 1, "high": 1}]}}, "the digits student has 3 curriculum layers"),
        ({"budget": {"trials": 0}}, "budget.trials: must be >= 1"),
    ],
)
def test_search_space_errors_are_one_line_exit_2(tmp_path, patch, message):
    space = tmp_path / "bad.yaml"
    space.write_text(yaml.safe_dump({**TINY_SPACE, **patch}))
    proc = run_cli("run", "--search-space", str(space), "--storage", str(tmp_path / "s"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "s").exists()  # nothing started


def test_unknown_benchmark_is_rejected_before_ray(tmp_path):
    proc = run_cli("run", "--benchmarks", "digits,mnist", "--storage", str(tmp_path / "s"))
    assert proc.returncode == 2 and "--benchmarks: unknown benchmark 'mnist'" in proc.stderr


def test_trial_resources_and_concurrency():
    from study.resources import TrialResources, default_gpus_per_trial

    assert TrialResources(1, 0.25, 1).max_concurrent({"CPU": 16, "GPU": 2}) == 8
    assert TrialResources(1, 0.0, 1).max_concurrent({"CPU": 2}) == 2
    assert TrialResources(2, 2.0, 4).max_concurrent({"CPU": 64, "GPU": 8}) == 4
    assert default_gpus_per_trial({"CPU": 8}, 1) == 0.0 and default_gpus_per_trial({"GPU": 4}, 1) == 0.25
    with pytest.raises(ValueError, match="whole GPUs per worker"):
        TrialResources(2, 1.0, 2)


def test_reporter_re_reports_a_trial_restored_at_its_last_epoch(monkeypatch):
    import study.workers as workers

    reports = []
    monkeypatch.setattr(workers.ray.train, "report", lambda metrics, **_kw: reports.append(metrics))
    history = [{"loss": 2.0, "epoch": 0}, {"loss": 1.0, "epoch": 1, "val/cosine/map": 0.5}]
    restored = workers.EpochReporter(None)
    restored.finish(history)  # nothing trained in this attempt: the last epoch is reported again
    assert reports == [{"loss": 1.0, "epoch": 2, "val/cosine/map": 0.5, "val_map": 0.5, "loop_time_s": 0.0, "report_time_s": 0.0}]
    import time

    fresh = workers.EpochReporter(None, started_at=time.time() - 10.0)
    fresh(1, {**history[1], "epoch_time_s": 1.5, "eval_time_s": 0.5}, None)
    fresh.finish(history)  # it reported already: nothing more
    assert len(reports) == 2 and reports[1]["loop_time_s"] == 2.0 and reports[1]["epoch"] == 2
    assert 10.0 <= reports[1]["trial_wall_s"] < 60.0
    assert reports[1]["startup_s"] == pytest.approx(reports[1]["trial_wall_s"] - 2.0, abs=0.5)  # 10 s minus the epoch
    fresh(2, {**history[1], "epoch_time_s": 1.0}, None)
    assert reports[2]["loop_time_s"] == 3.0 and reports[2]["startup_s"] == reports[1]["startup_s"]
    assert 0 < reports[2]["report_time_s"] < 1.0  # the first report's own cost
