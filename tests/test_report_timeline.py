"""The report's figures from hand-written inputs: the phase timeline (phases.json), the best-so-far line (Optuna trials)."""
import json

from PIL import Image

from study.report import phase_intervals, plot_timeline, timeline_table
from study.storage import Storage


def test_timeline_rows_are_seconds_from_the_first_start_in_start_order(tmp_path):
    (tmp_path / "digits").mkdir()
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "digits/phases.json").write_text(json.dumps({"artifacts_s": 10, "intervals": {
        "artifacts": [{"start": 1000.0, "end": 1010.0}], "search": [{"start": 1010.0, "end": 1050.0}]}}))
    (tmp_path / "cifar10/phases.json").write_text(json.dumps({"intervals": {
        "artifacts": [{"start": 1001.0, "end": 1030.0}, {"start": 1100.0, "end": 1104.4}]}}))
    intervals = phase_intervals(Storage.create(tmp_path), ["digits", "cifar10", "fashionmnist"])
    assert len(intervals) == 4  # a benchmark without phases.json has none
    assert timeline_table(intervals)[2:] == [
        "| digits | artifacts | 0 | 10 | 10 |",
        "| cifar10 | artifacts | 1 | 30 | 29 |",
        "| digits | search | 10 | 50 | 40 |",
        "| cifar10 | artifacts | 100 | 104 | 4 |",
    ]
    plot_timeline(intervals, tmp_path / "t.png")
    with Image.open(tmp_path / "t.png") as im:
        assert im.size[0] > 500 and im.size[1] > 100


def test_best_so_far_follows_the_search_records_rule():
    """A trial that ran longer beats an early-stopped one with a higher val mAP, as in trials.json."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from study.report import best_so_far

    study = optuna.create_study(direction="maximize")
    dist = {"x": FloatDistribution(0.0, 1.0)}
    study.add_trial(create_trial(state=TrialState.PRUNED, params={"x": 0.1}, distributions=dist,
                                 intermediate_values={1: 0.5, 2: 0.9}))
    study.add_trial(create_trial(state=TrialState.FAIL, params={"x": 0.2}, distributions=dist))
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.6, params={"x": 0.3}, distributions=dist,
                                 intermediate_values={1: 0.2, 2: 0.4, 3: 0.5, 4: 0.6}))
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.55, params={"x": 0.4}, distributions=dist,
                                 intermediate_values={4: 0.55}))
    values, best = best_so_far(study)
    assert values == [0.9, None, 0.6, 0.55]
    assert best == [0.9, 0.9, 0.6, 0.6]
