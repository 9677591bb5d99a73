"""The study across a two-node Ray cluster, and a study whose driver is SIGKILLed then resumed."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .test_study import TINY_SPACE


def _space(tmp_path: Path, **budget) -> Path:
    space = {**TINY_SPACE, "budget": {**TINY_SPACE["budget"], **budget}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


@pytest.mark.e2e
def test_two_node_cluster_with_logical_gpus_places_trials_on_both_nodes(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from study.cli import build_parser, make_plan
    from study.runner import run_study

    # head: the Tune driver only; two worker nodes with one CPU and one logical GPU each, so two
    # concurrent trials (1 CPU + 0.5 GPU) cannot share a node
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": True})
    nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    # no early stopping: every trial runs all its epochs, so trials overlap in time
    # two trials at once, one CPU per node: they cannot share a node
    space = _space(tmp_path, trials=2, epochs=4, early_stopping=False, final_seeds=1)
    args = build_parser().parse_args(["run", "--search-space", str(space), "--storage", str(tmp_path / "studies"),
                                      "--name", "two-node", "--gpus-per-trial", "0.5", "--dist-backend", "gloo"])
    try:
        ray.init(address=cluster.address, configure_logging=False, log_to_driver=False)
        assert ray.cluster_resources()["GPU"] == 2
        plan = make_plan(args, ray.cluster_resources())
        assert plan.trial_resources.max_concurrent(ray.cluster_resources()) == 2
        table = run_study(plan, log=lambda _m: None)
    finally:
        ray.shutdown()
        cluster.shutdown()
    trials = json.loads((tmp_path / "studies/two-node/digits/search/trials.json").read_text())
    assert trials["counts"] == {"completed": 2, "stopped early": 0, "failed": 0}
    placements = [rank for t in trials["trials"] for rank in t["placement"]]
    assert len(placements) == 2  # one rank per trial, each recorded
    assert {p["node_id"] for p in placements} == {n.node_id for n in nodes}
    assert {p["device"] for p in placements} == {"cpu"}  # logical GPUs: the worker falls back to CPU
    assert table.loc[("digits", "InDistill (tuned)"), "cosine map"] > 0


def _snapshot(search_dir: Path) -> dict[str, dict]:
    """Tune's last persisted experiment state: trial id -> {status, last_result}."""
    files = sorted(search_dir.glob("experiment_state-*.json"))
    if not files:
        return {}
    try:
        state = json.loads(files[-1].read_text())
    except (json.JSONDecodeError, OSError):  # caught mid-write: try again
        return {}
    out = {}
    for trial_json, meta_json in state["trial_data"]:
        trial, meta = json.loads(trial_json), json.loads(meta_json)
        last = meta["last_result"]
        out[trial["trial_id"]] = {"status": trial["status"], "last_result": json.loads(last) if isinstance(last, str) else last}
    return out


def _wait_for_group_exit(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.5)
    return False


@pytest.mark.e2e
def test_killed_driver_resumes_without_losing_finished_trials(tmp_path):
    space = _space(tmp_path, trials=4, final_seeds=1)
    cmd = [sys.executable, "-m", "study.cli", "run", "--search-space", str(space),
           "--storage", str(tmp_path / "studies"), "--name", "killed"]
    # Tune snapshots its state at most every TUNE_GLOBAL_CHECKPOINT_S (>= 10 s by default); 1 s makes
    # the kill land soon after the first trials finish
    env = {**os.environ, "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    search_dir = tmp_path / "studies/killed/ray/digits-search"
    with open(tmp_path / "first.log", "w") as log:
        driver = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        finished: dict[str, dict] = {}
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and driver.poll() is None:
            snap = _snapshot(search_dir)
            finished = {k: v for k, v in snap.items() if v["status"] == "TERMINATED"}
            if finished and len(finished) < 4:
                break
            time.sleep(0.5)
        assert driver.poll() is None, "the study ended before it could be killed:\n" + (tmp_path / "first.log").read_text()[-3000:]
        assert finished, "no trial finished in time"
        results_before = {tid: len(_trial_results(search_dir, tid)) for tid in finished}
        driver.send_signal(signal.SIGKILL)  # the driver alone; its local Ray shares its fate
        driver.wait(30)
    finally:
        if driver.poll() is None:
            driver.kill()
        # the raylet and GCS die with the driver; Ray's dashboard and runtime-env agents can linger for
        # a minute before noticing: stop them so the resumed study starts on a clean machine
        if not _wait_for_group_exit(driver.pid, 10):
            os.killpg(driver.pid, signal.SIGKILL)
            _wait_for_group_exit(driver.pid, 10)

    resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming the search" in resumed.stdout and "artifacts already prepared" in resumed.stdout
    trials = {t["trial_id"]: t for t in json.loads((tmp_path / "studies/killed/digits/search/trials.json").read_text())["trials"]}
    assert len(trials) == 4  # the budget, neither lost nor repeated
    for tid, before in finished.items():
        after = trials[tid]
        assert after["status"] in ("completed", "stopped early"), after
        assert after["epochs"] == before["last_result"]["epoch"]
        assert after["val_map"] == before["last_result"]["val_map"]
        assert len(_trial_results(search_dir, tid)) == results_before[tid]  # kept, not re-run
    assert "InDistill (tuned)" in (tmp_path / "studies/killed/results.md").read_text()


def _trial_results(search_dir: Path, trial_id: str) -> list[dict]:
    (trial_dir,) = [d for d in search_dir.iterdir() if d.is_dir() and f"_{trial_id}_" in d.name]
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines() if line.strip()]
