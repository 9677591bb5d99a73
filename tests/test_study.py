"""The Ray study end to end with a tiny budget: two benchmarks at once on a two-node Ray cluster;
its table, failures, console, TensorBoard files, Optuna record, report and export."""
import io
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pytest
import yaml

from tests import faults

TINY_SPACE = {
    "benchmark": "digits",
    # one Tune retry, which the injected divergence (tests/faults.py) does not spend on training:
    # a diverged trial is not retried
    "budget": {"trials": 4, "epochs": 4, "grace_period": 1, "reduction_factor": 2, "seed": 0, "max_failures": 1,
               "final_seeds": 2},
    "curriculum": {
        "epochs": [{"low": 1, "high": 1}, {"low": 0, "high": 1}, {"low": 0, "high": 1}],
        "losses": ["mse", "pkt"],
        "weights": {"mse": {"low": 0.5, "high": 2.0}},
        "overlap": [False, True],
    },
    "criteria": ["l1", "random"],
    "fixed": {
        "device": "cpu",  # the nodes' GPUs are logical: Ray reserves them, torch has none
        "teacher": {"epochs": 1},
        "auxiliary": {"ce": {"epochs": 1}, "pkt": {"epochs": 1}},
        "student": {"curriculum": {"epochs": [1, 1, 1]}, "schedules": {"mkt": {"epochs": 2}}},
    },
}


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "study.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=900)


#: the study's second benchmark: a tiny CIFAR-10 fabricated in its real on-disk format, InDistill's
#: two rows only, a small CNN teacher, one retrieval cut-off, a one-epoch curriculum (two student
#: epochs with the grace period), every trial complete (criterion l1: the fault hook spares it); a
#: compression frontier: two student widths, val mAP against the student's parameters
MULTI_FIXED = {"networks": {"teacher": {"arch": "cnn", "widths": [16, 32, 64], "embedding_dim": 64}}, "eval": {"ks": [10]}}
LEAN_FIXED = {**TINY_SPACE["fixed"], "methods": ["indistill"],
              "student": {**TINY_SPACE["fixed"]["student"], "curriculum": {"epochs": [1, 0, 0]}}}
LEAN_CURRICULUM = {**TINY_SPACE["curriculum"], "epochs": [{"low": 1, "high": 1}, {"low": 0, "high": 0}, {"low": 0, "high": 0}]}
CIFAR_SPACE = {**TINY_SPACE, "benchmark": "cifar10", "criteria": ["l1"], "curriculum": LEAN_CURRICULUM,
               "fixed": {**LEAN_FIXED, **MULTI_FIXED},
               "budget": {**TINY_SPACE["budget"], "trials": 2, "epochs": 2, "early_stopping": False, "final_seeds": 1,
                          "frontier_points": 2},
               "student": {"width": [0.5, 1.0]}, "objectives": ["val_map", "params"]}
BENCHMARKS = ("digits", "cifar10")


def merged_plan(tmp: Path, spaces: dict[str, dict], name: str, options: list[str],
                per_benchmark: dict[str, list[str]] | None = None):
    """One study plan of several benchmarks, each with its own search space (written under
    ``tmp``) and its ``per_benchmark`` options, in ``tmp/studies/<name>``, planned on the running
    Ray's resources."""
    import dataclasses

    import ray

    from study.cli import build_parser
    from study.plan import make_plan

    plans = []
    for bench, space in spaces.items():
        path = tmp / f"{bench}.yaml"
        path.write_text(yaml.safe_dump(space))
        args = build_parser().parse_args(["run", "--benchmarks", bench, "--search-space", str(path),
                                          "--storage", str(tmp / "studies"), "--name", name, *options,
                                          *(per_benchmark or {}).get(bench, [])])
        plans.append(make_plan(args, ray.cluster_resources()))
    return dataclasses.replace(plans[0], benchmarks=tuple(bp for p in plans for bp in p.benchmarks))


class Study(NamedTuple):
    table: pd.DataFrame
    root: Path
    console: str
    node_ids: frozenset


@pytest.fixture
def study(two_node_study) -> Study:
    """The session's two-node study (tests/conftest.py: other modules start studies from it)."""
    return two_node_study


def run_two_node_study(tmp_path_factory) -> Study:
    """One study of two benchmarks at once on a two-node Ray cluster (the head holds the drivers
    only; each node one CPU and one logical GPU: two runs of 1 CPU + 0.5 GPU at a time, never on
    one node). Every trial that samples the 'random' criterion diverges (a worker hook, see
    tests/faults.py)."""
    import ray
    from ray.cluster_utils import Cluster

    from study.ray_runs import init_ray
    from study.runner import run_study

    from .data_fixtures import write_cifar10

    tmp = tmp_path_factory.mktemp("study")
    write_cifar10(tmp / "data", per_batch=20, test=20)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": True})
    nodes = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    console = io.StringIO()
    try:
        # the data root only in the driver's environment (the nodes started without it): the plan
        # resolves it once, and every worker on either node reads it from the config
        with pytest.MonkeyPatch.context() as env:
            env.setenv("INDISTILL_DATA", str(tmp / "data"))
            init_ray(cluster.address, configure_logging=False, log_to_driver=False,
                     runtime_env_extra=faults.runtime_env_extra())
            assert ray.cluster_resources()["GPU"] == 2
            plan = merged_plan(tmp, dict(zip(BENCHMARKS, (TINY_SPACE, CIFAR_SPACE))), "tiny",
                               ["--gpus-per-trial", "0.5", "--dist-backend", "gloo"])
        table = run_study(plan, out=console)
    finally:
        ray.shutdown()
        cluster.shutdown()
    return Study(table, Path(plan.storage.uri), console.getvalue(), frozenset(n.node_id for n in nodes))


@pytest.mark.e2e
@pytest.mark.ray
def test_study_table_rows_and_trial_accounting(study):
    table, root = study.table, study.root
    rows = {bench: [n for b, n in table.index if b == bench] for bench in BENCHMARKS}
    assert rows["digits"] == ["teacher", "auxiliary", "student (ce)", "student (pkt)", "student (mkt)",
                              "InDistill (paper defaults)", "InDistill (tuned)"]
    widths = sorted(pd.read_csv(root / "cifar10/search/pareto.csv")["width"])
    assert rows["cifar10"] == ["teacher", "auxiliary", *(f"{label} @ {w:g}x" for w in widths
                                                         for label in ("InDistill (paper defaults)", "InDistill (tuned)"))]
    for name in ("results.csv", "results.md", "results.tex"):
        assert (root / name).is_file()
    tuned = table.loc[("digits", "InDistill (tuned)")]
    # every student row over the two final seeds, teacher and auxiliary once; epochs and the tuned mark
    assert table.loc["digits", "n"].tolist() == [1, 1, 2, 2, 2, 2, 2]
    assert table.loc["digits", "epochs"].tolist() == ["1", "1+1", "4", "4", "2 (MKT's recipe)", "4", "4"]
    assert table.loc[("digits", "InDistill (tuned)"), "tuned"] == "4 trials"
    per_seed = pd.read_csv(root / "results_per_seed.csv")
    per_seed = per_seed[per_seed["benchmark"] == "digits"]
    assert sorted(per_seed[per_seed["network"] == "student (ce)"]["seed"]) == [0, 1]
    ce = per_seed[per_seed["network"] == "student (ce)"].set_index("seed")["cosine map"]
    ref = per_seed[per_seed["network"] == "InDistill (tuned)"].set_index("seed")["cosine map"]
    assert table.loc[("digits", "student (ce)"), "diff mean"] == pytest.approx((ce - ref).mean())
    assert tuned["cosine map"] == pytest.approx(ref.mean())  # the mean of its seeds
    assert pd.isna(table.loc[("digits", "teacher"), "diff mean"])  # only students are compared
    assert "±" in (root / "results.md").read_text()
    import json

    trials = json.loads((root / "digits/search/trials.json").read_text())
    assert len(trials["trials"]) == 4
    assert sum(trials["counts"].values()) == 4
    failed = [t for t in trials["trials"] if t["status"] == "failed"]
    sampled_random = [t for t in trials["trials"] if t["params"]["prune"]["criterion"] == faults.POISONED_CRITERION]
    assert len(failed) == len(sampled_random) >= 1, trials  # the injected NaN trials fail, the study goes on
    assert all("DivergedError" in t["reason"] for t in failed), failed  # a real divergence of the loss
    for t in failed:  # not retried: its retry (budget.max_failures 1) stopped at once, and trained nothing again
        (error,) = (root / "ray" / "digits-search").glob(f"*{t['trial_id']}*/error.txt")
        assert error.read_text().count("Failure # ") == 2 and "(a divergence is not retried)" in error.read_text()
        log = (root / "digits" / "logs" / "trials" / f"{t['trial_id']}.log").read_text()
        assert log.count("[run] failed: DivergedError") == 1, log  # one attempt trained, and failed
    assert trials["best"]["params"]["prune"]["criterion"] == "l1"
    # the best trial: the most epochs, then the highest last val mAP; the table shows its val mAP in %
    scored = [t for t in trials["trials"] if t["status"] != "failed" and t["val_map"] is not None
              and t["val_map"] == t["val_map"]]  # not NaN
    assert trials["best"]["trial_id"] == max(scored, key=lambda t: (t["epochs"], t["val_map"]))["trial_id"]
    assert tuned["best val map"] == pytest.approx(100.0 * trials["best"]["val_map"])
    assert tuned["trials failed"] == len(failed)
    for t in trials["trials"]:  # where each trial ran, and its wall vs in-loop time up to its last report
        if t["status"] != "failed":
            assert 0 < t["timing"]["loop_s"] < t["timing"]["wall_s"] and t["timing"]["epochs"] == t["epochs"] >= 1
            assert [r["device"] for r in t["placement"]] == ["cpu"]
        else:
            assert t["timing"] is None  # diverged in its first epoch: never reported
    assert trials["max_concurrent"] == 2
    phases = json.loads((root / "digits/phases.json").read_text())
    assert set(phases) == {"artifacts_s", "search_s", "final_s", "intervals"}
    assert all(phases[f"{p}_s"] > 0 for p in phases["intervals"])
    spans = [phases["intervals"][p] for p in ("artifacts", "search", "final")]  # one attempt each, in order
    assert [len(s) for s in spans] == [1, 1, 1]
    assert spans[0][0]["end"] <= spans[1][0]["start"] and spans[1][0]["end"] <= spans[2][0]["start"]


@pytest.mark.e2e
@pytest.mark.ray
def test_the_frontier_benchmark_has_a_pareto_front_optuna_agrees_with_and_every_row_at_each_width(study):
    import json

    import optuna

    from indistill.evaluation.size import student_size
    from study.search_space import base_config, load_space, with_width

    root = study.root
    record = optuna.load_study(study_name="cifar10", storage=f"sqlite:///{root / 'cifar10/search/optuna.db'}")
    assert [d.name for d in record.directions] == ["MAXIMIZE", "MINIMIZE"]
    pareto = pd.read_csv(root / "cifar10/search/pareto.csv", dtype={"trial_id": str})
    assert sorted(t.user_attrs["tune_trial_id"] for t in record.best_trials) == sorted(pareto["trial_id"])
    trials = {t["trial_id"]: t for t in json.loads((root / "cifar10/search/trials.json").read_text())["trials"]}
    space = load_space(root / "cifar10/search_space.yaml", "cifar10")
    for _, point in pareto.iterrows():  # a point's size is its width's student, counted
        trial = trials[point["trial_id"]]
        assert trial["width"] == point["width"] and trial["val_map"] == pytest.approx(point["val_map"])
        assert point["params"] == student_size(with_width(base_config(space, "cifar10"), point["width"]))[0]
    # the kept channels of every width the search could sample were computed once, by the artifact run
    prunes = sorted(p.name for p in (root / "cifar10/artifacts/stages").iterdir() if p.name.startswith("prune-"))
    assert len(prunes) == 2 * 2  # two widths, two protocols
    points = json.loads((root / "cifar10/search/points.json").read_text())["points"]
    assert sorted(p["width"] for p in points) == sorted(pareto["width"])
    assert all((root / f"cifar10/search/points/{p['tag']}.yaml").is_file() for p in points)
    per_seed = pd.read_csv(root / "results_per_seed.csv")
    sized = per_seed[(per_seed["benchmark"] == "cifar10") & per_seed["width"].notna()]
    assert sorted(set(sized["width"])) == sorted(pareto["width"]) and (sized["macs"] > 0).all()
    assert (root / "report/frontier.png").is_file() == (len(pareto) > 1)
    assert (root / "report/cifar10-front.png").is_file()


@pytest.mark.e2e
@pytest.mark.ray
def test_the_console_shows_progress_and_the_runs_log_to_files(study):
    root, console = study.root, study.console
    lines = console.splitlines()
    assert_plain_progress(lines, BENCHMARKS)  # plain lines, no ANSI, no duplicates, no Ray internals
    assert any(" failed (" in line for line in lines)  # the injected NaN trials, as events
    assert (root / "logs/study.log").read_text().splitlines() == lines
    # the runs' own lines are in their log files, not on the console
    assert "[teacher] epoch 1/1" in (root / "digits/logs/artifacts.log").read_text()
    assert len(list((root / "digits/logs/trials").glob("*.log"))) == 4
    assert "[student/indistill] epoch" in (root / "digits/logs/final/seed-0.log").read_text()
    assert "epoch 1/" not in console


@pytest.mark.e2e
@pytest.mark.ray
def test_both_benchmarks_ran_at_once_across_the_two_nodes(study):
    import json

    root = study.root
    trials = {b: json.loads((root / b / "search/trials.json").read_text()) for b in BENCHMARKS}
    assert trials["cifar10"]["counts"] == {"completed": 2, "stopped early": 0, "failed": 0}
    assert [len(t["placement"]) for t in trials["cifar10"]["trials"]] == [1, 1]  # one worker each
    assert len(list((root / "cifar10/logs/trials").glob("*.log"))) == 2
    per_seed = pd.read_csv(root / "results_per_seed.csv")
    widths = len(pd.read_csv(root / "cifar10/search/pareto.csv"))
    assert sorted(per_seed[per_seed["benchmark"] == "cifar10"]["network"]) == [
        *["InDistill (paper defaults)"] * widths, *["InDistill (tuned)"] * widths, "auxiliary", "teacher"]
    placements = [rank for b in BENCHMARKS for t in trials[b]["trials"] for rank in t["placement"]]
    assert {p["device"] for p in placements} == {"cpu"}  # logical GPUs: the CPU fallback
    assert {p["node_id"] for p in placements} == study.node_ids  # the trials ran on both nodes
    # the benchmarks advanced at once: every pair's active spans (artifacts to final) overlap
    spans = {}
    for bench in BENCHMARKS:
        intervals = json.loads((root / bench / "phases.json").read_text())["intervals"]
        assert set(intervals) == {"artifacts", "search", "final"}, bench
        spans[bench] = (min(i["start"] for v in intervals.values() for i in v), max(i["end"] for v in intervals.values() for i in v))
    for a in BENCHMARKS:
        for b in BENCHMARKS:
            assert spans[a][0] < spans[b][1], (a, b, spans)
    # the artifact runs started together
    starts = [json.loads((root / b / "phases.json").read_text())["intervals"]["artifacts"][0]["start"] for b in BENCHMARKS]
    assert max(starts) - min(starts) < 5.0, starts


def assert_plain_progress(lines: list[str], benchmarks, phases=("artifacts", "search", "final")) -> None:
    """A study's console when stdout is not a terminal: no ANSI escapes, no duplicate lines, no
    Ray/Tune internals; every benchmark's ``phases`` and the study's end as one line per event."""
    assert lines and not [line for line in lines if "\x1b" in line]
    events = [line for line in lines if line.startswith("[")]
    assert len(events) == len(set(events)), [e for e in events if events.count(e) > 1]
    internal = re.compile(r"\(raylet\)|\(pid=|repeated \d+x|Trial status|PreemptionWatcher|PlacementGroupCleaner|"
                          r"[╭│╰]|INFO |WARNING |View detailed results|Error file")
    assert not [line for line in lines if internal.search(line)]
    for bench in benchmarks:
        for phase in phases:
            assert any(line.startswith(f"[{bench}] {phase}: ") for line in events), (bench, phase, lines)
        assert "search" not in phases or any(re.match(rf"\[{bench}\] search: trial-\d+-\w+ (completed|stopped early|failed)",
                                                       line) for line in events), bench
    assert re.match(r"\[study\] done in \d+", events[-1]), events[-1]


@pytest.mark.e2e
@pytest.mark.ray
def test_tensorboard_event_files_have_the_expected_tags(study):
    import json
    import math

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata as hparams_metadata

    from tests.test_tensorboard_logs import _dashboard, _value

    root = study.root
    trials = json.loads((root / "digits/search/trials.json").read_text())["trials"]
    trial_dirs = sorted((root / "digits/tensorboard/trials").iterdir())
    # one run per trial, trial-<k>-<Tune's trial id>, k the creation order
    names = [d.name for d in trial_dirs]
    assert all(re.fullmatch(r"trial-\d{3}-[0-9a-f]{8}", n) for n in names), names
    assert [int(n.split("-")[1]) for n in names] == [0, 1, 2, 3]
    assert {n.split("-")[2] for n in names} == {t["trial_id"] for t in trials}
    # the HParams experiment: every searched hyperparameter under its stable name; val_map the one metric
    exp = EventAccumulator(str(root / "digits/tensorboard"))
    exp.Reload()
    experiment = hparams_metadata.parse_experiment_plugin_data(
        exp.SummaryMetadata(hparams_metadata.EXPERIMENT_TAG).plugin_data.content)
    # val_map first; the frontier benchmark of the study adds its size objective and its width column
    assert [m.name.tag for m in experiment.metric_infos] == ["val_map", "student_params"]
    columns = {f"curriculum/{what}_{k}" for what in ("epochs", "loss", "weight") for k in range(3)}
    columns |= {"curriculum/overlap", "prune/criterion", "prune/target", "benchmark", "student/width"}
    assert {h.name for h in experiment.hparam_infos} == columns
    domains = {h.name: [_value(v) for v in h.domain_discrete.values] for h in experiment.hparam_infos}
    assert domains["prune/criterion"] == ["l1", "random"] and domains["curriculum/loss_1"] == ["mse", "pkt"]
    tags: set = set()
    for d in trial_dirs:  # trials that diverged at once log no scalars: look at all of them
        acc = EventAccumulator(str(d))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
        start = hparams_metadata.parse_session_start_info_plugin_data(
            acc.SummaryMetadata(hparams_metadata.SESSION_START_INFO_TAG).plugin_data.content)
        # its HParams row, in its own run (digits searches no width)
        assert set(start.hparams) == columns - {"student/width"} and start.group_name == f"digits/{d.name}"
    assert {"loss", "lr", "phase", "val_map", "val/cosine/map"} <= tags
    assert any(t.startswith("loss/block") for t in tags)
    # what the HParams dashboard shows: every trial once, with its sampled values and last val mAP
    experiment, groups = _dashboard(root)
    assert [m.name.tag for m in experiment.metric_infos] == ["val_map", "student_params"]
    rows = {g.name: g for g in groups if g.name.startswith("digits/")}  # the other benchmark's trials too
    assert set(rows) == {f"digits/{n}" for n in names} and len(groups) == len(rows) + CIFAR_SPACE["budget"]["trials"]
    by_id = {n.split("-")[2]: rows[f"digits/{n}"] for n in names}
    for t in trials:
        row = by_id[t["trial_id"]]
        assert _value(row.hparams["prune/criterion"]) == t["params"]["prune"]["criterion"]
        assert _value(row.hparams["curriculum/loss_0"]) == t["params"]["curriculum"]["loss_0"]
        if t["status"] == "completed" and t["val_map"] is not None and not math.isnan(t["val_map"]):
            assert {m.name.tag: m.value for m in row.metric_values}["val_map"] == pytest.approx(t["val_map"])
    frontier = json.loads((root / "cifar10/search/trials.json").read_text())["trials"]
    for t in frontier:  # the frontier benchmark's rows: the width sampled, the size as a second metric
        row = next(g for g in groups if g.name.startswith("cifar10/") and g.name.endswith(t["trial_id"]))
        assert row.hparams["student/width"].number_value == t["width"]
        assert {m.name.tag: m.value for m in row.metric_values}["student_params"] == t["student_params"]
    # Tune's own TensorBoard logger is off (it duplicated every trial); its JSON and CSV logs stay
    assert not list((root / "ray").rglob("events.out.tfevents*"))
    assert list((root / "ray/digits-search").rglob("result.json")) and list((root / "ray/digits-search").rglob("progress.csv"))
    # the artifact stages' curves, for both protocols
    for stage, tag in (("teacher", "loss"), ("auxiliary-ce", "loss"), ("auxiliary", "loss/embedding")):
        for protocol in ("val", "test"):
            acc = EventAccumulator(str(root / f"digits/tensorboard/artifacts/{stage}/{protocol}"))
            acc.Reload()
            assert tag in acc.Tags()["scalars"], (stage, protocol)
    final = EventAccumulator(str(root / "digits/tensorboard/final/indistill-tuned/seed-0"), size_guidance={"tensors": 0})
    final.Reload()
    assert {"final/pr_cosine", "final/pr_euclidean"} <= set(final.Tags()["tensors"])
    assert "test/cosine/map" in final.Tags()["scalars"]
    # the PR curve is the one behind map: the mean of its 11 points is the logged test map
    curve = final.Tensors("final/pr_cosine")[0]
    from tensorboard.util import tensor_util

    precision = tensor_util.make_ndarray(curve.tensor_proto)[4]
    assert precision.mean() == pytest.approx(final.Scalars("test/cosine/map")[-1].value, abs=1e-4)
    baseline = EventAccumulator(str(root / "digits/tensorboard/final/student-ce/seed-1"))
    baseline.Reload()
    assert {"loss", "lr", "test/cosine/map"} <= set(baseline.Tags()["scalars"])


@pytest.mark.e2e
@pytest.mark.ray
def test_export_reproduces_the_tuned_map(study, tmp_path, monkeypatch):
    import torch

    from indistill.cli import main as indistill_main

    root = study.root
    proc = run_cli("export", str(root), "--out", str(tmp_path / "best"))
    assert proc.returncode == 0, proc.stderr
    best = tmp_path / "best" / "digits" / "best_config.yaml"
    assert best.is_file() and (tmp_path / "best" / "digits" / "student.pt").is_file()
    assert (tmp_path / "best" / "results.md").is_file()
    assert yaml.safe_load(best.read_text())["threads"] == 1  # what the trial's worker ran with (1 CPU)
    # the study ran with its driver's resolved data root; the export leaves it to whoever reproduces
    assert Path(yaml.safe_load((root / "digits" / "base_config.yaml").read_text())["data"]["root"]).is_absolute()
    assert yaml.safe_load(best.read_text())["data"]["root"] is None
    assert "--seeds 0,1" in best.read_text().splitlines()[1]
    threads = torch.get_num_threads()
    try:  # default flags: the exported config sets the threads itself
        assert indistill_main(["run", "--config", str(best), "--out", str(tmp_path / "runs"), "--seeds", "0,1"]) == 0
    finally:
        torch.set_num_threads(threads)
    ours = pd.read_csv(tmp_path / "runs" / "digits-seed0" / "results_per_seed.csv")
    study_rows = pd.read_csv(root / "results_per_seed.csv")
    study_rows = study_rows[study_rows["benchmark"] == "digits"]
    for seed in (0, 1):
        mine = ours[(ours["network"] == "student (indistill)") & (ours["seed"] == seed)].iloc[0]
        theirs = study_rows[(study_rows["network"] == "InDistill (tuned)") & (study_rows["seed"] == seed)].iloc[0]
        for col in ("cosine map", "euclidean map", "cosine map_legacy"):
            assert mine[col] == pytest.approx(theirs[col], abs=1e-6), (seed, col)
    # the frontier benchmark: a config per retrained Pareto point; one reproduces its row
    pareto = pd.read_csv(root / "cifar10/search/pareto.csv")
    exported = sorted((tmp_path / "best" / "cifar10" / "frontier").glob("width-*/config.yaml"))
    assert [p.parent.name for p in exported] == sorted(f"width-{w:g}" for w in pareto["width"])
    point = exported[0]
    width = float(point.parent.name.removeprefix("width-"))
    monkeypatch.setenv("INDISTILL_DATA", str(root.parent.parent / "data"))  # the fabricated CIFAR-10 of the study
    threads = torch.get_num_threads()
    try:
        assert indistill_main(["run", "--config", str(point), "--out", str(tmp_path / "point"), "--seeds", "0"]) == 0
    finally:
        torch.set_num_threads(threads)
    ours = pd.read_csv(tmp_path / "point" / "cifar10-seed0" / "results_per_seed.csv")
    study_rows = pd.read_csv(root / "results_per_seed.csv")
    theirs = study_rows[(study_rows["benchmark"] == "cifar10") & (study_rows["network"] == "InDistill (tuned)")
                        & (study_rows["width"] == width)].iloc[0]
    mine = ours[ours["network"] == "student (indistill)"].iloc[0]
    assert mine["cosine map"] == pytest.approx(theirs["cosine map"], abs=1e-6)


@pytest.mark.e2e
@pytest.mark.ray
def test_table_and_tensorboard_commands(study):
    root = study.root
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
        ({"budget": {**TINY_SPACE["budget"], "epochs": 3}},
         "budget.epochs: 3 student epochs per trial are too few: the longest curriculum this space samples lasts 3 epochs, "
         "plus budget.grace_period = 1 embedding-phase epochs"),
    ],
)
def test_search_space_errors_are_one_line_exit_2(tmp_path, patch, message, capsys, monkeypatch):
    """In this process (the real command as a process: tests/test_bad_input.py), Ray never started."""
    import ray

    from study.cli import main

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started"))
    space = tmp_path / "bad.yaml"
    space.write_text(yaml.safe_dump({**TINY_SPACE, **patch}))
    assert main(["run", "--search-space", str(space), "--storage", str(tmp_path / "s")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "s").exists()  # nothing started


def test_unknown_benchmark_is_rejected_before_ray(tmp_path, capsys):
    from study.cli import main

    assert main(["run", "--benchmarks", "digits,mnist", "--storage", str(tmp_path / "s")]) == 2
    assert "--benchmarks: unknown benchmark 'mnist'" in capsys.readouterr().err


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
    restored.end(history)  # nothing trained in this attempt: the last epoch is reported again
    assert reports == [{"loss": 1.0, "epoch": 2, "embedding_epoch": 2, "val/cosine/map": 0.5, "val_map": 0.5,
                        "loop_time_s": 0.0, "report_time_s": 0.0}]
    import time

    fresh = workers.EpochReporter(None, started_at=time.time() - 10.0)
    fresh(1, {**history[1], "epoch_time_s": 1.5, "eval_time_s": 0.5}, None)
    fresh.end(history)  # it reported already: nothing more
    assert len(reports) == 2 and reports[1]["loop_time_s"] == 2.0 and reports[1]["epoch"] == 2
    assert 10.0 <= reports[1]["trial_wall_s"] < 60.0
    assert reports[1]["startup_s"] == pytest.approx(reports[1]["trial_wall_s"] - 2.0, abs=0.5)  # 10 s minus the epoch
    fresh(2, {**history[1], "epoch_time_s": 1.0}, None)
    assert reports[2]["loop_time_s"] == 3.0 and reports[2]["startup_s"] == reports[1]["startup_s"]
    assert 0 < reports[2]["report_time_s"] < 1.0  # the first report's own cost


@pytest.mark.e2e
@pytest.mark.ray
def test_optuna_study_is_persisted_with_honest_states(study):
    import json

    import optuna

    root = study.root
    trials = json.loads((root / "digits/search/trials.json").read_text())["trials"]
    record = optuna.load_study(study_name="digits", storage=f"sqlite:///{root / 'digits/search/optuna.db'}")
    states = sorted(t.state.name for t in record.trials)
    status_to_state = {"completed": "COMPLETE", "stopped early": "PRUNED", "failed": "FAIL"}
    assert states == sorted(status_to_state[t["status"]] for t in trials)
    by_params = {json.dumps(t["params"], sort_keys=True): t for t in trials}
    for ot in record.trials:
        if ot.state.name == "FAIL":  # the injected divergence, with its reason
            assert ot.user_attrs["fail_kind"] == "diverged", ot.user_attrs
            assert ot.user_attrs["fail_reason"].startswith("DivergedError: [student/indistill] loss became nan in epoch 1 of 4")
            continue
        nested: dict = {}
        for key, value in ot.params.items():
            node = nested
            *parents, leaf = key.split("/")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        ours = by_params[json.dumps(nested, sort_keys=True)]
        assert sorted(ot.intermediate_values) == list(range(1, ours["epochs"] + 1))  # one value per epoch
        assert ot.intermediate_values[ours["epochs"]] == pytest.approx(ours["val_map"])
        if ot.state.name == "COMPLETE":
            assert ot.value == pytest.approx(ours["val_map"]) and ours["epochs"] == 4
    for t in trials:  # nothing was judged inside its curriculum
        if t["status"] == "stopped early":
            curriculum = sum(v for k, v in t["params"]["curriculum"].items() if k.startswith("epochs_"))
            assert t["epochs"] - curriculum >= TINY_SPACE["budget"]["grace_period"], t


class _Trial:
    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id
        self.config: dict = {}


def test_asha_rungs_count_embedding_epochs_only():
    """A long curriculum's low val mAP is never compared with a short one's embedding-phase mAP."""
    from ray.tune.schedulers import TrialScheduler

    from study.cli import build_parser
    from study.plan import make_plan
    from study.early_stopping import scheduler_for

    space = {**TINY_SPACE, "budget": {**TINY_SPACE["budget"], "epochs": 6, "grace_period": 1, "reduction_factor": 2}}
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "space.yaml"
        path.write_text(yaml.safe_dump(space))
        plan = make_plan(build_parser().parse_args(["run", "--search-space", str(path), "--storage", str(Path(tmp) / "s")]))
    asha = scheduler_for(plan.benchmarks[0])
    short, long_ = _Trial("short"), _Trial("long")
    for t in (short, long_):
        asha.on_trial_add(None, t)
    # short curriculum (1 epoch): its second epoch is its first in the embedding phase, val mAP high
    assert asha.on_trial_result(None, short, {"val_map": 0.1, "epoch": 1, "embedding_epoch": 0}) == TrialScheduler.CONTINUE
    assert asha.on_trial_result(None, short, {"val_map": 0.9, "epoch": 2, "embedding_epoch": 1}) == TrialScheduler.CONTINUE
    # long curriculum (3 epochs): far below the short one during its curriculum, yet never stopped there
    for epoch in (1, 2, 3):
        assert asha.on_trial_result(None, long_, {"val_map": 0.2, "epoch": epoch, "embedding_epoch": 0}) == TrialScheduler.CONTINUE
    # at equal embedding progress it is compared, and stopped when it is worse
    assert asha.on_trial_result(None, long_, {"val_map": 0.5, "epoch": 4, "embedding_epoch": 1}) == TrialScheduler.STOP


@pytest.mark.e2e
@pytest.mark.ray
def test_report_figures_decode_and_are_embedded(study):
    import matplotlib.image as mpimg

    root = study.root
    proc = run_cli("report", str(root))
    assert proc.returncode == 0, proc.stderr
    report = root / "report"
    # the frontier benchmark (a two-objective search) has no per-epoch figure, its search's front instead
    expected = {f"{b}-{figure}.png" for b in BENCHMARKS for figure in ("trials", "best-so-far", "importance")}
    expected = expected - {"cifar10-trials.png"} | {"cifar10-front.png", "results.png", "timeline.png"}
    assert expected <= {p.name for p in report.glob("*.png")}
    md = (report / "report.md").read_text()
    for name in expected:
        image = mpimg.imread(report / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, name
        assert image[..., :3].std() > 0.01, name  # not a blank canvas
        assert f"({name})" in md
    assert "Trials: 4 (" in md and "InDistill (tuned)" in md


def test_recorded_optuna_search_states_and_resume(tmp_path):
    """PRUNED / FAIL / COMPLETE as trials really ended, last results kept, a restored searcher tolerant."""
    import pickle

    import optuna

    from study.optuna_record import RecordedOptunaSearch, optuna_storage, sqlite_url
    from study.params import define_by_run
    from study.search_space import SearchSpace
    from indistill.config.schema import from_dict

    space = from_dict(SearchSpace, {k: v for k, v in TINY_SPACE.items() if k != "fixed"})
    db = tmp_path / "optuna.db"
    searcher = RecordedOptunaSearch(space=define_by_run(space), metric="val_map", mode="max", study_name="digits",
                                    storage=optuna_storage(db), full_epochs=4)
    for tid in ("stopped", "full", "broken"):
        assert searcher.suggest(tid)
    searcher.on_trial_result("stopped", {"val_map": 0.5, "training_iteration": 1, "epoch": 1})
    searcher.on_trial_complete("stopped", {"val_map": 0.6, "training_iteration": 2, "epoch": 2})
    for i in (1, 2, 3):
        searcher.on_trial_result("full", {"val_map": 0.1 * i, "training_iteration": i, "epoch": i})
    snapshot = pickle.dumps(searcher)  # what Tune checkpoints before the last completion
    searcher.on_trial_complete("full", {"val_map": 0.8, "training_iteration": 4, "epoch": 4})
    searcher.on_trial_complete("broken", {"val_map": 0.2, "training_iteration": 1, "epoch": 1}, error=True)
    record = optuna.load_study(study_name="digits", storage=sqlite_url(db))
    by_state = {t.state.name: t for t in record.trials}
    assert sorted(by_state) == ["COMPLETE", "FAIL", "PRUNED"]
    assert by_state["PRUNED"].intermediate_values == {1: 0.5, 2: 0.6}  # the value ASHA judged it on is kept
    assert by_state["COMPLETE"].value == 0.8 and by_state["COMPLETE"].intermediate_values[4] == 0.8
    assert by_state["FAIL"].value is None
    # a resumed study restores the older snapshot and sees the finished trial complete again
    restored = pickle.loads(snapshot)
    restored.on_trial_complete("full", {"val_map": 0.8, "training_iteration": 4, "epoch": 4})
    again = optuna.load_study(study_name="digits", storage=sqlite_url(db))
    assert [t.state.name for t in again.trials] == [t.state.name for t in record.trials]
