"""``indistill-study report STUDY --compare OTHER`` from two hand-made Optuna records: the best so far
and the expected best of n trials of both studies, per k, in the CSV, the table and the figure."""
from __future__ import annotations

import math
from pathlib import Path

import optuna
import pandas as pd
import pytest

from indistill.evaluation.stats import expected_max
from study import cli as study_cli
from study.names import WARM_START
from study.optuna_record import OPTUNA_FILE, sqlite_url
from study.storage import Storage


def make_study(root: Path, name: str, values: list[float | None], warm: int = 0) -> Path:
    """A study directory whose digits record holds one COMPLETE trial per value (None: a FAIL), the
    first ``warm`` of them warm-started."""
    storage = Storage.create(root / name)
    storage.write_json("study.json", {"name": name, "benchmarks": ["digits"]})
    db = root / name / "digits" / "search" / OPTUNA_FILE
    db.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name="digits", storage=sqlite_url(db), direction="maximize")
    for i, v in enumerate(values):
        attrs = {WARM_START: {"study": "/s", "benchmark": "digits", "trial_id": f"t{i}"}} if i < warm else {}
        study.add_trial(optuna.trial.create_trial(
            params={"x": float(i)}, distributions={"x": optuna.distributions.FloatDistribution(0, 10)},
            value=v, intermediate_values={20: v} if v is not None else {},
            state=optuna.trial.TrialState.COMPLETE if v is not None else optuna.trial.TrialState.FAIL,
            user_attrs=attrs))
    return root / name


def test_compare_writes_both_studies_curves_side_by_side(tmp_path, capsys):
    cold = make_study(tmp_path, "cold", [0.50, 0.70, None, 0.60])
    warm = make_study(tmp_path, "warm", [0.80, 0.75, 0.90], warm=2)
    assert study_cli.main(["report", str(warm), "--compare", str(cold)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert f"{warm}/report/digits-compare.png" in printed and f"{warm}/report/digits-compare.csv" in printed
    frame = pd.read_csv(warm / "report/digits-compare.csv")
    assert list(frame["k"]) == [1, 2, 3, 4]
    assert list(frame["warm best so far"][:3]) == [80.0, 80.0, 90.0] and math.isnan(frame["warm best so far"][3])
    assert list(frame["cold best so far"]) == [50.0, 70.0, 70.0, 70.0]  # a failed trial changes nothing
    cold_values = [0.50, 0.70, 0.60]  # the completed ones
    assert list(frame["cold expected best"][:3]) == pytest.approx([100 * expected_max(cold_values, n) for n in (1, 2, 3)])
    assert math.isnan(frame["cold expected best"][3])
    assert frame["warm expected best"][0] == pytest.approx(100 * (0.80 + 0.75 + 0.90) / 3)
    assert list(frame["warm warm-started"]) == [True, True, False, False] and not frame["cold warm-started"].any()
    md = (warm / "report/report.md").read_text()
    assert f"## Compared with {cold}" in md and "![digits: both studies' searches](digits-compare.png)" in md
    assert "| 1 | 80.00 | 81.67 | yes | 50.00 | 60.00 |  |" in md and "| 4 |  |  |  | 70.00 |  |  |" in md
    assert (warm / "report/digits-compare.png").read_bytes()[:4] == b"\x89PNG"


def test_compare_of_studies_without_a_common_search_says_so(tmp_path, capsys):
    warm = make_study(tmp_path, "warm", [0.8])
    other = Storage.create(tmp_path / "other")
    other.write_json("study.json", {"name": "other", "benchmarks": ["cifar10"]})
    assert study_cli.main(["report", str(warm), "--compare", str(tmp_path / "other")]) == 0
    md = (warm / "report/report.md").read_text()
    assert "The studies have no benchmark with a search record in common (digits; cifar10)." in md
    assert study_cli.main(["report", str(warm), "--compare", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: no such study directory" in capsys.readouterr().err
