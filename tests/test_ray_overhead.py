"""The Ray-overhead figures computed from a study's per-trial timing records (hand-checked values)."""
import json

import pytest

from perf.ray_overhead import main, search_efficiency, summarize, trial_overheads

TRIALS = [
    {"trial_id": "a", "timing": {"wall_s": 10.0, "loop_s": 8.0, "epochs": 3, "startup_s": 1.0, "ray_startup_s": 0.5, "report_s": 0.5}},
    {"trial_id": "b", "timing": {"wall_s": 20.0, "loop_s": 18.0, "epochs": 3, "startup_s": 1.5, "ray_startup_s": 1.0, "report_s": 0.3}},
    {"trial_id": "c", "timing": None},  # stopped by ASHA: no record
]


def test_overhead_per_trial_and_summary():
    frame = trial_overheads(TRIALS)
    assert frame["trial"].tolist() == ["a", "b"]
    assert frame["overhead_s"].tolist() == [2.0, 2.0]
    assert frame["overhead_frac"].tolist() == pytest.approx([0.2, 0.1])
    s = summarize(frame)
    assert s["trials"] == 2 and s["median_overhead_s"] == 2.0
    assert s["median_overhead_frac"] == pytest.approx(0.15)
    assert s["total_overhead_frac"] == pytest.approx(4 / 30)
    assert s["median_ray_startup_s"] == 0.75
    assert s["median_startup_s"] == 1.25 and s["median_report_s_per_epoch"] == pytest.approx(0.2)  # (0.25 + 0.15) / 2
    assert summarize(trial_overheads(TRIALS[2:])) == {"trials": 0}


def test_main_reads_a_study_directory(tmp_path, capsys):
    (tmp_path / "digits/search").mkdir(parents=True)
    provenance = {"versions": {"ray": "2.60.0"}, "git": {"commit": "0123456789abcdef", "dirty": False}}
    (tmp_path / "study.json").write_text(json.dumps({"benchmarks": ["digits"], "provenance": provenance}))
    (tmp_path / "digits/search/trials.json").write_text(json.dumps({"trials": TRIALS, "max_concurrent": 2}))
    intervals = {"artifacts": [{"start": 0.0, "end": 30.0}], "search": [{"start": 30.0, "end": 130.0}]}
    (tmp_path / "digits/phases.json").write_text(json.dumps({"artifacts_s": 30.0, "search_s": 100.0, "intervals": intervals}))
    assert main([str(tmp_path), "--json", str(tmp_path / "o.json")]) == 0
    out = capsys.readouterr().out
    assert "2 trials ran to the end" in out and "overhead 2.0 s = 15% of the trial" in out
    assert "phases (wall s): artifacts 30, search 100\n" in out
    assert "start-up 1.2 s (median; Ray's part 0.8 s), reporting 0.20 s per epoch" in out
    assert "100 s x 2 slots, 26 s in trial loops: 87% of the slot time" in out
    report = json.loads((tmp_path / "o.json").read_text())
    assert report["benchmarks"]["digits"]["summary"]["total_overhead_frac"] == pytest.approx(4 / 30)
    # what produced the figures: the study's recorded versions and commit, this machine, the command
    measured = report["measured"]
    assert measured["provenance"] == provenance and measured["machine"]["cpu_usable"] >= 1
    assert measured["command"] == f"python -m perf.ray_overhead {tmp_path} --json {tmp_path / 'o.json'}"
    assert main([str(tmp_path / "nothing")]) == 2


def test_search_efficiency_counts_every_slot_second():
    e = search_efficiency(TRIALS, search_s=20.0, concurrent=2)
    assert e["loop_s"] == 26.0 and e["overhead_frac"] == pytest.approx(1 - 26 / 40)
