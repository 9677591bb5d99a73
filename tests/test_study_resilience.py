"""A study on S3 whose driver is SIGKILLed, then stopped by SIGINT and SIGTERM, each time resumed
(one driver per study throughout); the two-node study: tests/test_study.py."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from study.lease import LEASE_FILE

from .s3 import BUCKET, S3
from .test_study import LEAN_FIXED, TINY_SPACE, assert_plain_progress


def _space(tmp_path: Path, fixed: dict | None = None, curriculum: dict | None = None, **budget) -> Path:
    # Tune may retry a failed trial once (no fault is injected)
    space = {**TINY_SPACE, "fixed": fixed or TINY_SPACE["fixed"], "curriculum": curriculum or TINY_SPACE["curriculum"],
             "budget": {**TINY_SPACE["budget"], "max_failures": 1, **budget}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def _snapshot(s3: S3, prefix: str) -> dict[str, dict]:
    """Tune's last experiment state in the bucket: trial id -> {status, last_result}."""
    files = [k for k in s3.keys(prefix) if k.rsplit("/", 1)[-1].startswith("experiment_state-") and k.endswith(".json")]
    if not files:
        return {}
    try:
        state = json.loads(s3.read(sorted(files)[-1]))
    except (json.JSONDecodeError, KeyError):  # replaced while read: try again
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
@pytest.mark.ray
def test_killed_driver_on_s3_resumes_without_losing_finished_trials(tmp_path, s3, two_node_study):
    """A study on S3 (moto on 127.0.0.1, through AWS_ENDPOINT_URL): SIGKILL the driver once
    trials have finished, resume, and find the table, configs and TensorBoard files in the bucket.
    While it lives, a second driver of the study is refused; its Optuna record in the bucket holds
    every finished trial after the kill. Its first two trials are warm-started from the session's
    local two-node study: after a kill and two stops, each is in the record once."""
    # three trials, two at a time: the third starts when one finishes, so the kill lands mid-search
    space = _space(tmp_path, trials=3, epochs=4, final_seeds=1, fixed=LEAN_FIXED, warm_start=2)
    cmd = [sys.executable, "-m", "study.cli", "run", "--search-space", str(space),
           "--storage", f"s3://{BUCKET}/studies", "--name", "killed", "--warm-start", str(two_node_study.root)]
    # Tune snapshots its state at most every TUNE_GLOBAL_CHECKPOINT_S (>= 10 s by default) and the
    # study uploads it every INDISTILL_STATE_SYNC_S: 1 s each makes the kill land soon after the
    # first trials finish
    env = {**os.environ, **s3.env, "TUNE_GLOBAL_CHECKPOINT_S": "1", "INDISTILL_STATE_SYNC_S": "1",
           "INDISTILL_LEASE_S": "6"}  # the lease renewed every 2 s
    search = "studies/killed/ray/digits-search/"
    with open(tmp_path / "first.log", "w") as log:
        driver = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        finished: dict[str, dict] = {}
        refused = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and driver.poll() is None:
            if refused is None and f"studies/killed/{LEASE_FILE}" in s3.keys("studies/killed/"):
                # a second driver of the live study: one line naming the first, exit 2, before Ray
                refused = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=120)
            snap = _snapshot(s3, search)
            finished = {k: v for k, v in snap.items() if v["status"] == "TERMINATED"}
            if finished and len(finished) < 3 and len(snap) == 3:
                break
            time.sleep(0.5)
        # Tune uploads its trial list and its searcher's state (the count of trials it created) as
        # separate files: a kill between the two made a resumed search run 4 trials for a budget of
        # 3. Once all three exist, that count no longer changes: let the upload that listed the
        # third land whole (three sync periods), then kill
        time.sleep(3)
        assert driver.poll() is None, "the study ended before it could be killed:\n" + (tmp_path / "first.log").read_text()[-3000:]
        assert finished, "no trial finished in time"
        assert refused is not None and refused.returncode == 2, refused
        (line,) = refused.stderr.splitlines()
        assert f"the study has a live driver: pid {driver.pid} on host {socket.gethostname()}, driving it since " in line
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

    # what the bucket holds now (the driver is dead; an upload may have landed after the last poll)
    finished = {k: v for k, v in _snapshot(s3, search).items() if v["status"] == "TERMINATED"}
    assert 0 < len(finished) < 3, finished  # killed mid-search
    results_before = {tid: len(_trial_results(s3, search, tid)) for tid in finished}
    # the Optuna record in the bucket holds every trial Tune had finished, with its value
    recorded = _optuna_finished(s3, tmp_path / "killed.db")
    assert len(recorded) >= len(finished), (recorded, finished)
    assert {v["last_result"]["val_map"] for v in finished.values()} <= set(recorded), (recorded, finished)
    # the killed driver's lease (this host, its process gone) is stale at once: C takes the study
    # over and renews the lease; SIGINT stops C in its search, SIGTERM stops D in its final runs,
    # each within seconds, releasing the lease; E resumes the study to its end
    stopped = {name: _signal_stop(tmp_path, s3, [*cmd, "--resume"], env, name, sig, phase)
               for name, sig, phase in (("c", signal.SIGINT, "[digits] search: resuming the search"),
                                        ("d", signal.SIGTERM, "[digits] final:"))}
    print(f"seconds from the signal to the driver's exit: {stopped}")
    assert all(seconds < 15 for seconds in stopped.values()), stopped
    resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    # C resumed the search (its phase line, waited for above); E finds it done and goes on to the final runs
    assert "[digits] artifacts: already prepared" in resumed.stdout and "[digits] search:" not in resumed.stdout, resumed.stdout
    # the console (not a terminal): the tool's own lines only, then the end table within 100 columns
    out = resumed.stdout.splitlines()
    end = out.index(next(line for line in out if line.startswith("[study] done")))
    assert_plain_progress(out[: end + 1], ["digits"], phases=("artifacts", "final"))
    table = out[end + 1: next(i for i, line in enumerate(out) if line.startswith("study directory"))]
    assert table and all(len(line) <= 100 for line in table), table  # the locations below name the study's URI
    assert resumed.stderr.strip() == "", resumed.stderr[-2000:]
    trials = {t["trial_id"]: t for t in json.loads(s3.read("studies/killed/digits/search/trials.json"))["trials"]}
    assert len(trials) == 3  # the budget, neither lost nor repeated
    assert len(_optuna_finished(s3, tmp_path / "resumed.db")) == 3  # the record too
    # the warm start, enqueued when the study began and never again: the source's two best, once each
    from study.names import WARM_START
    from study.search_space import load_space
    from study.warm_start import ranked

    source = json.loads((two_node_study.root / "digits/search/trials.json").read_text())["trials"]
    best = [t["trial_id"] for t in ranked(source, load_space(space, "digits"), 2)]
    record = _optuna_trials(tmp_path / "resumed.db")
    assert [(t.user_attrs.get(WARM_START) or {}).get("trial_id") for t in record] == [*best, None], record
    assert f"studies/killed/{LEASE_FILE}" not in s3.keys("studies/killed/")  # released at the end
    for tid, before in finished.items():
        after = trials[tid]
        assert after["status"] in ("completed", "stopped early"), after
        assert after["epochs"] == before["last_result"]["epoch"]
        assert after["val_map"] == before["last_result"]["val_map"]
        assert len(_trial_results(s3, search, tid)) == results_before[tid]  # kept, not re-run
    # everything a user reads is in the bucket: the table, the configs, TensorBoard's files
    keys = s3.keys("studies/killed/")
    assert "InDistill (tuned)" in s3.read("studies/killed/results.md").decode()
    assert {"studies/killed/digits/search/best_config.yaml", "studies/killed/digits/base_config.yaml",
            "studies/killed/digits/search_space.yaml", "studies/killed/digits/final/run/final.pt"} <= set(keys)
    events = [k for k in keys if "/tensorboard/" in k and "tfevents" in k]
    assert {k.split("/tensorboard/")[1].split("/")[0] for k in events} >= {"trials", "final"}
    # and the export command reads it back from S3
    out = tmp_path / "export"
    exported = subprocess.run([sys.executable, "-m", "study.cli", "export", f"s3://{BUCKET}/studies/killed", "--out", str(out)],
                              env=env, capture_output=True, text=True, timeout=300)
    assert exported.returncode == 0, exported.stderr[-2000:]
    best = yaml.safe_load((out / "digits" / "best_config.yaml").read_text())
    tuned = yaml.safe_load(s3.read("studies/killed/digits/search/best_config.yaml"))
    assert (best["student"]["curriculum"], best["prune"]) == (tuned["student"]["curriculum"], tuned["prune"])
    assert (out / "digits" / "student.pt").read_bytes() == s3.read("studies/killed/digits/final/run/final.pt")


def _signal_stop(tmp_path: Path, s3: S3, cmd: list[str], env: dict, name: str, sig: signal.Signals, phase: str) -> float:
    """Start a driver (its console in ``<name>.log``); once it prints ``phase`` and holds the
    study's lease (renewing it), send ``sig``: it exits 128 + the signal in one line saying the
    study is resumable, its lease released and its Ray processes gone. Seconds from the signal to
    its exit."""
    log, lease = tmp_path / f"{name}.log", f"studies/killed/{LEASE_FILE}"
    with open(log, "w") as out:
        driver = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while phase not in log.read_text():
            assert driver.poll() is None and time.monotonic() < deadline, f"{name} never printed {phase!r}:\n" + log.read_text()[-3000:]
            time.sleep(0.2)
        holder = json.loads(s3.read(lease))
        assert (holder["host"], holder["pid"]) == (socket.gethostname(), driver.pid), holder
        time.sleep(3)  # past a renewal: the lease is still this driver's
        renewed = json.loads(s3.read(lease))
        assert renewed["token"] == holder["token"] and renewed["renewed"] > holder["renewed"], (holder, renewed)
        t0 = time.monotonic()
        driver.send_signal(sig)
        _out, err = driver.communicate(timeout=60)
        seconds = time.monotonic() - t0
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 128 + sig, err
    (line,) = err.splitlines()
    assert line.startswith(f"indistill-study: stopped by {sig.name} after ") and "resumable" in line, line
    # the stop is said once: Ray going down is no lost node and no failed benchmark on the console
    console = log.read_text()
    assert "node lost" not in console and " failed: " not in console, console[-2000:]
    assert lease not in s3.keys("studies/killed/")
    # Ray's processes went with it (ray.shutdown in the stop): the next driver starts on a clean machine
    assert _wait_for_group_exit(driver.pid, 15), "Ray processes of the stopped driver still run"
    return seconds


def _optuna_trials(local: Path) -> list:
    """The trials of the Optuna record copied to ``local``, in the order they were created."""
    import optuna

    return optuna.load_study(study_name="digits", storage=f"sqlite:///{local}").get_trials(deepcopy=False)


def _optuna_finished(s3: S3, local: Path) -> list[float]:
    """The values (a stopped trial's: its last intermediate one) of the finished trials in the
    bucket's Optuna record."""
    import optuna
    from optuna.trial import TrialState

    local.write_bytes(s3.read("studies/killed/digits/search/optuna.db"))
    trials = optuna.load_study(study_name="digits", storage=f"sqlite:///{local}").get_trials(deepcopy=False)
    values = {TrialState.COMPLETE: lambda t: t.value, TrialState.PRUNED: lambda t: t.intermediate_values[max(t.intermediate_values)]}
    return [values[t.state](t) for t in trials if t.state in values]


def _trial_results(s3: S3, search: str, trial_id: str) -> list[dict]:
    # Tune's trial directory: <trial name>_<n>_<params>_<date>, the trial named trial-<k>-<id> (study.tblog.TrialNamer)
    (key,) = [k for k in s3.keys(search) if f"-{trial_id}_" in k and k.endswith("/result.json")]
    return [json.loads(line) for line in s3.read(key).decode().splitlines() if line.strip()]
