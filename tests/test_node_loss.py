"""A worker node lost under a study on a real multi-node Ray (``ray.cluster_utils.Cluster``): the
node is removed while the artifact runs, two search trials at once and a final seed run on it,
and a replacement joins 2 s later, as an autoscaler would provide; the study (digits and a
CIFAR-10 fabricated in its real on-disk format) finishes, each run continues from its last
finished stage or epoch checkpoint, and the table is whole. Its digits search is warm-started
from the session's two-node study (tests/conftest.py), with another sampler seed: its two trials
are that study's two best configs, marked as such everywhere."""
from __future__ import annotations

import io
import json
import re
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pytest

from study.ray_runs import NoNodeError, fit
from study.resources import PLACEMENT_TIMEOUT_ENV, TrialResources
from study.workers import STAGES_DIR

from .data_fixtures import write_cifar10
from .test_study import LEAN_CURRICULUM, LEAN_FIXED, MULTI_FIXED, TINY_SPACE, merged_plan, run_cli

EPOCHS = 12  # per search trial and per final row (0.4 s each here): long enough to remove the node mid-run
#: the source study's space (its curricula fit) with the criterion its best trials drew: both
#: trials are warm-started, under another sampler seed
SPACE = {**TINY_SPACE, "criteria": ["l1"], "fixed": {**LEAN_FIXED, "teacher": {"epochs": 2}},
         "budget": {**TINY_SPACE["budget"], "trials": 2, "warm_start": 2, "seed": 1, "epochs": EPOCHS,
                    "early_stopping": False, "final_seeds": 1, "max_failures": 1}}
#: the fabricated benchmark: its artifact runs are the ones the first loss hits; one short trial
CIFAR = {**SPACE, "benchmark": "cifar10", "curriculum": LEAN_CURRICULUM, "fixed": {**SPACE["fixed"], **MULTI_FIXED},
         "budget": {**SPACE["budget"], "trials": 1, "epochs": 2}}
NODE = {"num_cpus": 3}  # digits' two one-CPU trials at once beside CIFAR-10's, all on the one worker node
#: Ray declares a node dead after this many missed health checks of this period: 1.5 s here, ~15 s
#: with Ray's defaults (5 x 3 s)
HEALTH_CHECK = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}


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


class Lost(NamedTuple):
    root: Path
    source: Path
    console: str
    kills: list[dict]
    table: object
    wall_s: float
    no_node: NoNodeError
    no_node_s: float


@pytest.fixture(scope="module")
def lost(tmp_path_factory, two_node_study) -> Lost:
    """The study, with the three losses, then the cluster shrunk below one run (no node joins)."""
    import ray
    from ray.cluster_utils import Cluster

    from study.ray_runs import init_ray
    from study.runner import run_study

    tmp_path = tmp_path_factory.mktemp("lost")
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
            plan = merged_plan(tmp_path, {"digits": SPACE, "cifar10": CIFAR}, "lost", ["--gpus-per-trial", "0"],
                               {"digits": ["--warm-start", str(two_node_study.root)]})
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
    return Lost(root, two_node_study.root, console.getvalue(), kills, outcome["table"], outcome["wall"], no_node.value,
                no_node_s)


@pytest.mark.e2e
@pytest.mark.ray
def test_a_lost_node_loses_no_finished_stage_or_epoch(lost):
    root, kills = lost.root, lost.kills
    assert [k["phase"] for k in kills] == ["artifacts", "search", "final"], (kills, lost.console)

    logs = root / "digits" / "logs"
    seconds: dict[str, float] = {}

    # the artifact runs: a stage finished before the loss is not trained again (teacher: val, test)
    for bench in ("cifar10", "digits"):
        artifacts = (root / bench / "logs" / "artifacts.log").read_text()
        assert artifacts.count("[teacher] epoch 2/2") == 2, artifacts
    seconds["cifar10 artifacts"] = _seconds_lost((root / "cifar10" / "logs" / "artifacts.log").read_text(), kills[0]["at"])

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
        seconds[run_dir] = _seconds_lost(text, kills[1]["at"])
    assert not list((root / "digits" / "search").glob("failures/*.json"))  # their retries did not fail

    # the final seed: its finished row is kept, its second row resumes; the table has both rows
    final = (logs / "final" / "seed-0.log").read_text()
    assert final.count(f"epoch {EPOCHS}/{EPOCHS}") == 2, final
    assert re.search(r"resuming after epoch \d+", final), final
    rerun["final"] = len(re.findall(rf"\] epoch \d+/{EPOCHS}", final)) - 2 * EPOCHS
    seconds["final"] = _seconds_lost(final, kills[2]["at"])
    for bench in ("digits", "cifar10"):
        rows = json.loads((root / bench / "final" / "seed-0.json").read_text())["rows"]
        assert sorted(r["network"] for r in rows) == ["InDistill (paper defaults)", "InDistill (tuned)"], rows
    table = lost.table
    assert table.loc[("cifar10", "InDistill (tuned)"), "n"] == table.loc[("digits", "InDistill (tuned)"), "n"] == 1
    assert max(rerun.values()) <= 1, rerun

    print(f"node loss: epochs re-run {rerun}; seconds from the loss to the run's first line after it {seconds}; "
          f"no node: one line after {lost.no_node_s:.0f} s; study {lost.wall_s:.0f} s")
    # one line per lost node, naming the runs it took
    said = [line for line in lost.console.splitlines() if line.startswith("[study] node lost: ")]
    assert len(said) == 3, lost.console
    assert "cifar10 artifacts" in said[0] and said[0].endswith("; they continue from their last checkpoints"), said
    assert said[1].count("digits trial-00") == 2, said
    assert "digits final seed 0" in said[2], said

    (line,) = str(lost.no_node).splitlines()
    assert line.startswith("no node can host the run: it needs 1 worker(s) of 1 CPU; the cluster's 1 live node(s) "
                           f"have: 0 CPU; waited 15 s (${PLACEMENT_TIMEOUT_ENV[0]})"), line
    assert lost.no_node_s < 15 + 30, lost.no_node_s


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


@pytest.mark.e2e
@pytest.mark.ray
def test_the_warm_started_search_evaluates_the_sources_best_configs_and_marks_them(lost):
    import optuna

    from indistill.config.schema import from_dict
    from study.names import WARM_START
    from study.params import flatten
    from study.search_space import SearchSpace
    from study.warm_start import Origin, ranked

    from .test_tensorboard_logs import _dashboard, _value

    source = json.loads((lost.source / "digits/search/trials.json").read_text())["trials"]
    best = ranked(source, from_dict(SearchSpace, {k: v for k, v in SPACE.items() if k != "fixed"}), 2)
    origins = [Origin(str(lost.source), "digits", t["trial_id"]).as_dict() for t in best]
    record = optuna.load_study(study_name="digits", storage=f"sqlite:///{lost.root / 'digits/search/optuna.db'}")
    # the two trials are the source's two best, in order, with the source's sampled values (budget.seed 1, not 0)
    assert [t.user_attrs.get(WARM_START) for t in record.trials] == origins
    assert [t.params for t in record.trials] == [flatten(t["params"]) for t in best]
    trials = json.loads((lost.root / "digits/search/trials.json").read_text())["trials"]
    by_origin = {t[WARM_START]["trial_id"]: t for t in trials}
    assert sorted(by_origin) == sorted(o["trial_id"] for o in origins)
    assert all(by_origin[t["trial_id"]]["params"] == t["params"] for t in best)
    assert f"[digits] search: warm start: the first 2 trials are {lost.source} digits trial" in lost.console
    # the table's note for the tuned row
    note = pd.read_csv(lost.root / "results.csv", index_col=[0, 1]).loc[("digits", "InDistill (tuned)"), "warm start"]
    assert note.startswith(f"2 warm-started trials from {lost.source} (digits); the best "), note
    # TensorBoard's HParams: the origin a column, each digits trial's value in its row
    experiment, groups = _dashboard(lost.root)
    (column,) = [h for h in experiment.hparam_infos if h.name == WARM_START]
    texts = [Origin.of(o).text for o in origins]
    assert sorted(_value(v) for v in column.domain_discrete.values) == sorted(["none", *texts])
    assert sorted(_value(g.hparams[WARM_START]) for g in groups if g.name.startswith("digits/")) == sorted(texts)


@pytest.mark.e2e
@pytest.mark.ray
def test_report_compare_sets_the_source_and_the_warm_searches_side_by_side(lost):
    proc = run_cli("report", str(lost.root), "--compare", str(lost.source))
    assert proc.returncode == 0, proc.stderr
    frame = pd.read_csv(lost.root / "report/digits-compare.csv")
    assert list(frame["k"]) == [1, 2, 3, 4]  # the source searched 4 trials, this study 2
    assert list(frame["lost warm-started"]) == [True, True, False, False]
    assert not frame["tiny warm-started"].any()
    md = (lost.root / "report/report.md").read_text()
    assert f"## Compared with {lost.source}" in md and "(digits-compare.png)" in md
