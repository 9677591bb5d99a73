"""The study across a two-node Ray cluster, and a study whose driver is SIGKILLed then resumed."""
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from .s3 import BUCKET, S3
from .test_study import TINY_SPACE


def _space(tmp_path: Path, benchmark: str | None = "digits", fixed: dict | None = None,
           curriculum: dict | None = None, **budget) -> Path:
    space = {**TINY_SPACE, "benchmark": benchmark, "fixed": fixed or TINY_SPACE["fixed"],
             "curriculum": curriculum or TINY_SPACE["curriculum"], "budget": {**TINY_SPACE["budget"], **budget}}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


#: two benchmarks at once: digits plus a tiny fabricated dataset in its real on-disk format; a
#: small CNN teacher everywhere and one retrieval cut-off keep them short
MULTI = ("digits", "cifar10")
MULTI_FIXED = {"networks": {"teacher": {"arch": "cnn", "widths": [16, 32, 64], "embedding_dim": 64}}, "eval": {"ks": [10]}}
#: the e2e studies below test orchestration, not the baselines: InDistill's two rows only, and a
#: one-epoch curriculum (two student epochs with the grace period)
LEAN_FIXED = {**TINY_SPACE["fixed"], "methods": ["indistill"],
              "student": {**TINY_SPACE["fixed"]["student"], "curriculum": {"epochs": [1, 0, 0]}}}
LEAN_CURRICULUM = {**TINY_SPACE["curriculum"], "epochs": [{"low": 1, "high": 1}, {"low": 0, "high": 0}, {"low": 0, "high": 0}]}


@pytest.mark.e2e
@pytest.mark.ray
def test_two_node_cluster_runs_two_benchmarks_at_once(tmp_path, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    from study.cli import build_parser, make_plan
    from study.runner import init_ray, run_study

    from .data_fixtures import write_cifar10

    data = tmp_path / "data"
    write_cifar10(data, per_batch=20, test=20)
    # head: the drivers only; two worker nodes with one CPU and one logical GPU each: two runs
    # (1 CPU + 0.5 GPU) at a time, never on one node, shared by the two benchmarks
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": True})
    nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    # the data root only in the driver's environment (the nodes started without it): the plan
    # resolves it once, and every worker on either node reads it from the config
    monkeypatch.setenv("INDISTILL_DATA", str(data))
    space = _space(tmp_path, trials=2, epochs=2, early_stopping=False, final_seeds=1, benchmark=None,
                   fixed={**LEAN_FIXED, **MULTI_FIXED}, curriculum=LEAN_CURRICULUM)
    args = build_parser().parse_args(["run", "--benchmarks", ",".join(MULTI), "--search-space", str(space),
                                      "--storage", str(tmp_path / "studies"),
                                      "--name", "multi", "--gpus-per-trial", "0.5", "--dist-backend", "gloo"])
    console = io.StringIO()
    try:
        init_ray(cluster.address, configure_logging=False, log_to_driver=False)
        assert ray.cluster_resources()["GPU"] == 2
        plan = make_plan(args, ray.cluster_resources())
        table = run_study(plan, out=console)
    finally:
        ray.shutdown()
        cluster.shutdown()
    root = tmp_path / "studies/multi"
    rows = {bench: [n for b, n in table.index if b == bench] for bench in MULTI}
    assert all(rows[b] == rows["digits"] and "InDistill (tuned)" in rows[b] for b in MULTI), rows
    for bench in MULTI:
        trials = json.loads((root / bench / "search/trials.json").read_text())
        assert trials["counts"] == {"completed": 2, "stopped early": 0, "failed": 0}, bench
        placements = [rank for t in trials["trials"] for rank in t["placement"]]
        assert len(placements) == 2 and {p["device"] for p in placements} == {"cpu"}  # logical GPUs: CPU fallback
    placed = {p["node_id"] for b in MULTI for t in json.loads((root / b / "search/trials.json").read_text())["trials"]
              for p in t["placement"]}
    assert placed == {n.node_id for n in nodes}
    # the benchmarks advanced at once: every pair's active spans (artifacts to final) overlap
    spans = {}
    for bench in MULTI:
        intervals = json.loads((root / bench / "phases.json").read_text())["intervals"]
        assert set(intervals) == {"artifacts", "search", "final"}, bench
        spans[bench] = (min(i["start"] for v in intervals.values() for i in v), max(i["end"] for v in intervals.values() for i in v))
    for a in MULTI:
        for b in MULTI:
            assert spans[a][0] < spans[b][1], (a, b, spans)
    # every benchmark's phases and trials on the console, as plain lines
    assert_plain_progress(console.getvalue().splitlines(), MULTI)
    # the artifact runs started together
    starts = [json.loads((root / b / "phases.json").read_text())["intervals"]["artifacts"][0]["start"] for b in MULTI]
    assert max(starts) - min(starts) < 5.0, starts


def assert_plain_progress(lines: list[str], benchmarks) -> None:
    """A study's console when stdout is not a terminal: no ANSI escapes, no duplicate lines, no
    Ray/Tune internals; every benchmark's phases and the study's end as one line per event."""
    assert lines and not [line for line in lines if "\x1b" in line]
    events = [line for line in lines if line.startswith("[")]
    assert len(events) == len(set(events)), [e for e in events if events.count(e) > 1]
    internal = re.compile(r"\(raylet\)|\(pid=|repeated \d+x|Trial status|PreemptionWatcher|PlacementGroupCleaner|"
                          r"[╭│╰]|INFO |WARNING |View detailed results|Error file")
    assert not [line for line in lines if internal.search(line)]
    for bench in benchmarks:
        for phase in ("artifacts", "search", "final"):
            assert any(line.startswith(f"[{bench}] {phase}: ") for line in events), (bench, phase, lines)
        assert any(re.match(rf"\[{bench}\] search: trial-\d+-\w+ (completed|stopped early|failed)", line)
                   for line in events), bench
    assert re.match(r"\[study\] done in \d+", events[-1]), events[-1]


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
def test_killed_driver_on_s3_resumes_without_losing_finished_trials(tmp_path, s3):
    """A study on S3 (moto on 127.0.0.1, through AWS_ENDPOINT_URL): SIGKILL the driver once
    trials have finished, resume, and find the table, configs and TensorBoard files in the bucket."""
    # three trials, two at a time: the third starts when one finishes, so the kill lands mid-search
    space = _space(tmp_path, trials=3, epochs=3, final_seeds=1, fixed=LEAN_FIXED, curriculum=LEAN_CURRICULUM)
    cmd = [sys.executable, "-m", "study.cli", "run", "--search-space", str(space),
           "--storage", f"s3://{BUCKET}/studies", "--name", "killed"]
    # Tune snapshots its state at most every TUNE_GLOBAL_CHECKPOINT_S (>= 10 s by default) and the
    # study uploads it every INDISTILL_STATE_SYNC_S: 1 s each makes the kill land soon after the
    # first trials finish
    env = {**os.environ, **s3.env, "TUNE_GLOBAL_CHECKPOINT_S": "1", "INDISTILL_STATE_SYNC_S": "1"}
    search = "studies/killed/ray/digits-search/"
    with open(tmp_path / "first.log", "w") as log:
        driver = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        finished: dict[str, dict] = {}
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and driver.poll() is None:
            snap = _snapshot(s3, search)
            finished = {k: v for k, v in snap.items() if v["status"] == "TERMINATED"}
            if finished and len(finished) < 3:
                break
            time.sleep(0.5)
        assert driver.poll() is None, "the study ended before it could be killed:\n" + (tmp_path / "first.log").read_text()[-3000:]
        assert finished, "no trial finished in time"
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
    assert finished
    results_before = {tid: len(_trial_results(s3, search, tid)) for tid in finished}
    resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming the search" in resumed.stdout and "[digits] artifacts: already prepared" in resumed.stdout
    # the console (not a terminal): the tool's own lines only, then the end table within 100 columns
    out = resumed.stdout.splitlines()
    end = out.index(next(line for line in out if line.startswith("[study] done")))
    assert_plain_progress(out[: end + 1], ["digits"])
    table = out[end + 1: next(i for i, line in enumerate(out) if line.startswith("study directory"))]
    assert table and all(len(line) <= 100 for line in table), table  # the locations below name the study's URI
    assert resumed.stderr.strip() == "", resumed.stderr[-2000:]
    trials = {t["trial_id"]: t for t in json.loads(s3.read("studies/killed/digits/search/trials.json"))["trials"]}
    assert len(trials) == 3  # the budget, neither lost nor repeated
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


def _trial_results(s3: S3, search: str, trial_id: str) -> list[dict]:
    # Tune's trial directory: <trial name>_<n>_<params>_<date>, the trial named trial-<k>-<id> (study.tblog.TrialNamer)
    (key,) = [k for k in s3.keys(search) if f"-{trial_id}_" in k and k.endswith("/result.json")]
    return [json.loads(line) for line in s3.read(key).decode().splitlines() if line.strip()]
