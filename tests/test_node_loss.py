"""A worker node lost under a study on a real multi-node Ray (``ray.cluster_utils.Cluster``): the
node is removed while the artifact runs, two search trials at once and a final seed run on it,
and a replacement joins 2 s later, as an autoscaler would provide; the study (digits and a
CIFAR-10 fabricated in its real on-disk format) finishes, each run continues from its last
finished stage or epoch checkpoint, and the table is whole."""
from __future__ import annotations

import io
import json
import re
import threading
import time
from pathlib import Path

import pytest

from study.ray_runs import NoNodeError, fit
from study.resources import PLACEMENT_TIMEOUT_ENV, TrialResources
from study.workers import STAGES_DIR

from .data_fixtures import write_cifar10
from .test_study import LEAN_CURRICULUM, LEAN_FIXED, MULTI_FIXED, TINY_SPACE, merged_plan

EPOCHS = 12  # per search trial and per final row (0.4 s each here): long enough to remove the node mid-run
SPACE = {**TINY_SPACE, "criteria": ["l1"], "curriculum": LEAN_CURRICULUM,
         "fixed": {**LEAN_FIXED, "teacher": {"epochs": 2}},
         "budget": {**TINY_SPACE["budget"], "trials": 2, "epochs": EPOCHS, "early_stopping": False, "final_seeds": 1,
                    "max_failures": 1}}
#: the fabricated benchmark: its artifact runs are the ones the first loss hits; one short trial
CIFAR = {**SPACE, "benchmark": "cifar10", "fixed": {**SPACE["fixed"], **MULTI_FIXED},
         "budget": {**SPACE["budget"], "trials": 1, "epochs": 2}}
NODE = {"num_cpus": 3}  # digits' two one-CPU trials at once beside CIFAR-10's, all on the one worker node
#: Ray declares a node dead after this many missed health checks of this period: 1.5 s here, ~15 s
#: with Ray's defaults (5 x 3 s)
HEALTH_CHECK = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}


def _results(root: Path, pattern: str) -> dict[str, list[dict]]:
    """Tune's result.json lines of each trial directory matching ``pattern`` (what Tune has received)."""
    out = {}
    for path in root.glob(pattern):
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        try:
            out[path.parent.name] = [json.loads(line) for line in lines]
        except json.JSONDecodeError:  # a line being written
            continue
    return out


def kill_node_when(cluster, node, conditions, running: threading.Event) -> list[dict]:
    """Remove the worker node when each condition holds (in order), a replacement joining 2 s
    later, while ``running``; on the main thread (Ray starts a node's processes only there)."""
    kills = []
    for name, condition in conditions:
        seen = None
        while running.is_set() and seen is None:
            seen = condition()
            time.sleep(0.05)
        if seen is None:
            break
        t0, lost = time.time(), node.node_id
        cluster.remove_node(node, allow_graceful=False)
        time.sleep(2)
        node = cluster.add_node(**NODE)
        kills.append({"phase": name, "at": t0, "seen": seen, "lost": lost})
    return kills


@pytest.mark.e2e
@pytest.mark.ray
def test_a_lost_node_loses_no_finished_stage_or_epoch(tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from study.ray_runs import init_ray
    from study.runner import run_study

    write_cifar10(tmp_path / "data", per_batch=40, test=20)
    root = tmp_path / "studies" / "lost"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": HEALTH_CHECK})
    node = cluster.add_node(**NODE)
    cluster.wait_for_nodes()

    def artifacts_stage_done():  # CIFAR-10's artifact run has finished a stage, not all six
        progress = root / "cifar10" / "artifacts" / "progress.json"
        done = json.loads(progress.read_text())["done"] if progress.exists() else 0
        return done if 1 <= done < 6 else None

    def trials_at_epoch_3():  # both trials' Train runs have uploaded their epoch-3 checkpoints, neither is done
        seen = {d.name: max((int(c.name.split("-")[1]) for c in d.glob("epoch-*")), default=0)
                for d in (root / "ray").glob("digits-trial-*")}
        return seen if len(seen) == 2 and 3 <= min(seen.values()) and max(seen.values()) < EPOCHS else None

    def final_row_done():  # the final seed's first student row is finished, its second has an epoch checkpoint
        students = list((root / "digits" / STAGES_DIR).glob("student-*"))
        done = [d for d in students if (d / "final.pt").exists()]
        training = [d for d in students if (d / "last.pt").exists() and not (d / "final.pt").exists()]
        return len(done) if len(done) == 1 and training else None

    console = io.StringIO()
    running, outcome = threading.Event(), {}

    def study() -> None:
        try:
            t0 = time.time()
            outcome["table"] = run_study(plan, out=console)
            outcome["wall"] = time.time() - t0
        except BaseException as exc:
            outcome["error"] = exc
        finally:
            running.clear()

    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv(PLACEMENT_TIMEOUT_ENV[0], "15")  # into the study's runtime_env: the no-node check below
            env.setenv("INDISTILL_DATA", str(tmp_path / "data"))
            init_ray(cluster.address, configure_logging=False, log_to_driver=False)
            plan = merged_plan(tmp_path, {"digits": SPACE, "cifar10": CIFAR}, "lost", ["--gpus-per-trial", "0"])
        running.set()
        driver = threading.Thread(target=study, daemon=True)
        driver.start()
        kills = kill_node_when(cluster, node, [("artifacts", artifacts_stage_done), ("search", trials_at_epoch_3),
                                               ("final", final_row_done)], running)
        driver.join(600)
        # the cluster shrinks below one run's resources, no node joins: one line within the timeout
        cluster.remove_node(cluster.list_all_nodes()[-1], allow_graceful=False)
        t0 = time.monotonic()
        with pytest.raises(NoNodeError) as no_node:
            fit(lambda _config: None, {}, TrialResources(), "no-node", str(tmp_path / "ray"), max_failures=0)
        no_node_s = time.monotonic() - t0
    finally:
        ray.shutdown()
        cluster.shutdown()
    if "error" in outcome:
        raise outcome["error"]
    assert [k["phase"] for k in kills] == ["artifacts", "search", "final"], (kills, console.getvalue())

    logs = root / "digits" / "logs"
    lost: dict[str, float] = {}

    # the artifact runs: a stage finished before the loss is not trained again (teacher: val, test)
    for bench in ("cifar10", "digits"):
        artifacts = (root / bench / "logs" / "artifacts.log").read_text()
        assert artifacts.count("[teacher] epoch 2/2") == 2, artifacts
    lost["cifar10 artifacts"] = _seconds_lost((root / "cifar10" / "logs" / "artifacts.log").read_text(), kills[0]["at"])

    # both search trials, on the lost node at once: each resumed from its last reported epoch checkpoint
    trials = json.loads((root / "digits" / "search" / "trials.json").read_text())["trials"]
    assert [(t["status"], t["epochs"]) for t in trials] == [("completed", EPOCHS)] * 2, trials
    rerun = {}
    for run_dir, seen in kills[1]["seen"].items():
        text = (logs / "trials" / f"{run_dir.removeprefix('digits-trial-')}.log").read_text()
        (resumed,) = [int(e) for e in re.findall(r"resuming after epoch (\d+)", text)] or [0]
        assert resumed >= max(seen - 1, 1), (seen, text)  # the newest upload may not have been registered yet
        epochs = [int(e) for e in re.findall(rf"\[student/indistill\] epoch (\d+)/{EPOCHS}", text)]
        assert all(epochs.count(e) == 1 for e in range(1, resumed + 1)), text  # none before the resume again
        assert sorted(set(epochs)) == list(range(1, EPOCHS + 1)), text
        # the trial says why it ran again, naming the node (its Tune retry: budget.max_failures)
        lost_node = rf"NodeLostError: node lost: \S+ \(node {kills[1]['lost'][:8]}\) died under the run"
        assert re.search(rf"\[trial\] failed \(node lost\): {lost_node}\n", text), text
        assert re.search(rf"\[trial\] retried after it failed \(node lost\): {lost_node}\n", text), text
        rerun[run_dir] = len(epochs) - EPOCHS
        lost[run_dir] = _seconds_lost(text, kills[1]["at"])
    assert not list((root / "digits" / "search").glob("failures/*.json"))  # their retries did not fail

    # the final seed: its finished row is kept, its second row resumes; the table has both rows
    final = (logs / "final" / "seed-0.log").read_text()
    assert final.count(f"epoch {EPOCHS}/{EPOCHS}") == 2, final
    assert re.search(r"resuming after epoch \d+", final), final
    rerun["final"] = len(re.findall(rf"\] epoch \d+/{EPOCHS}", final)) - 2 * EPOCHS
    lost["final"] = _seconds_lost(final, kills[2]["at"])
    for bench in ("digits", "cifar10"):
        rows = json.loads((root / bench / "final" / "seed-0.json").read_text())["rows"]
        assert sorted(r["network"] for r in rows) == ["InDistill (paper defaults)", "InDistill (tuned)"], rows
    table = outcome["table"]
    assert table.loc[("cifar10", "InDistill (tuned)"), "n"] == table.loc[("digits", "InDistill (tuned)"), "n"] == 1
    assert max(rerun.values()) <= 1, rerun

    print(f"node loss: epochs re-run {rerun}; seconds from the loss to the run's first line after it {lost}; "
          f"no node: one line after {no_node_s:.0f} s; study {outcome['wall']:.0f} s")
    # one line per lost node, naming the runs it took
    said = [line for line in console.getvalue().splitlines() if line.startswith("[study] node lost: ")]
    assert len(said) == 3, console.getvalue()
    assert "cifar10 artifacts" in said[0] and said[0].endswith("; they continue from their last checkpoints"), said
    assert said[1].count("digits trial-00") == 2, said
    assert "digits final seed 0" in said[2], said

    (line,) = str(no_node.value).splitlines()
    assert line.startswith("no node can host the run: it needs 1 worker(s) of 1 CPU; the cluster's 1 live node(s) "
                           f"have: 0 CPU; waited 15 s (${PLACEMENT_TIMEOUT_ENV[0]})"), line
    assert no_node_s < 15 + 30, no_node_s


def _seconds_lost(log: str, t: float) -> float:
    """Seconds from ``t`` (a loss) to the run's first line after it: the line that ends the longest
    pause of the log in the 90 s after ``t`` (its stamps have whole seconds; a line the run wrote
    just before it noticed the loss does not count)."""
    stamps = [time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) for line in log.splitlines()]
    window = [s for s in stamps if int(t) - 1 <= s <= t + 90]
    if len(window) < 2:
        raise AssertionError(f"no lines around {t}")
    _gap, after = max((b - max(a, t), b) for a, b in zip(window, window[1:]))
    return after - t
