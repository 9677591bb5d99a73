"""The report's results, frontier and search-front figures from hand-made tables and trials: what they draw."""
import json

import matplotlib
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba

from indistill.evaluation.table import column
from study.names import PARETO_FILE, STUDENT_ROWS, WIDTH
from study.outcome import COMPLETED, FAILED, STOPPED
from study.report import frontier_points, has_widths, plot_frontier, plot_results, plot_search_front, write_report
from study.storage import Storage

MAP = column("cosine", "map")
STUDENTS = [label for label, _method, _tuned in STUDENT_ROWS]
PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path) -> bool:
    return path.read_bytes()[:8] == PNG


def errorbars(ax) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """label -> (x, y) of each errorbar's data line."""
    return {c.get_label(): tuple(np.asarray(d) for d in c.lines[0].get_data()) for c in ax.containers}


def aggregated() -> pd.DataFrame:
    return pd.DataFrame({
        "benchmark": ["digits"] * 3,
        "network": ["teacher", "CE", "InDistill (tuned)"],
        MAP: [95.0, 87.0, 90.0],
        f"{MAP} std": [np.nan, 1.5, 0.5],
    }).set_index(["benchmark", "network"])


def test_results_are_points_with_error_bars_on_an_axis_spanning_the_values(tmp_path):
    fig = plot_results(aggregated(), tmp_path / "r.png")
    assert matplotlib.get_backend().lower() == "agg"
    ax = fig.axes[0]
    assert not ax.patches  # no bars
    (x, y), = errorbars(ax).values()
    assert list(x) == [95.0, 87.0, 90.0] and list(y) == [2, 1, 0]  # the table's first row on top
    lo, hi = ax.get_xlim()
    assert 80 < lo <= 87.0 - 1.5 and 95.0 <= hi < 100  # the data's range with a margin, not from 0
    assert hi - lo < 12
    assert [t.get_text() for t in ax.get_yticklabels()] == ["digits / teacher", "digits / CE",
                                                            "digits / InDistill (tuned)"]
    assert is_png(tmp_path / "r.png")


def test_results_of_equal_values_still_get_an_axis_around_them(tmp_path):
    table = aggregated().assign(**{MAP: 90.0, f"{MAP} std": np.nan})
    lo, hi = plot_results(table, tmp_path / "r.png").axes[0].get_xlim()
    assert lo < 90.0 < hi and lo > 80


def per_seed() -> pd.DataFrame:
    """Teacher and auxiliary once, each student row at widths 0.5 and 1 over two seeds."""
    rows = [{"benchmark": "digits", "network": "teacher", "seed": 0, "params": 200_000, WIDTH: np.nan, MAP: 97.0},
            {"benchmark": "digits", "network": "auxiliary", "seed": 0, "params": 60_000, WIDTH: np.nan, MAP: 95.0}]
    for i, label in enumerate(STUDENTS):
        for width, params, base in ((1.0, 15_000, 90.0), (0.5, 4_000, 80.0)):
            for seed, noise in ((0, -1.0), (1, 1.0)):
                rows.append({"benchmark": "digits", "network": label, "seed": seed, "params": params, WIDTH: width,
                             MAP: base + i + noise})
    return pd.DataFrame(rows)


def test_frontier_points_are_each_widths_mean_and_std_by_parameters():
    points = frontier_points(per_seed())
    ce = points[STUDENTS[0]]
    assert list(ce["params"]) == [4_000, 15_000] and list(ce[WIDTH]) == [0.5, 1.0]
    assert list(ce["mean"]) == [80.0, 90.0]
    assert ce["std"].tolist() == pytest.approx([np.sqrt(2), np.sqrt(2)])
    teacher = points["teacher"]
    assert len(teacher) == 1 and teacher[WIDTH].isna().all() and teacher["std"].tolist() == [0.0]


def test_frontier_is_a_line_per_student_row_on_a_log_axis_and_single_marked_networks(tmp_path):
    fig = plot_frontier(per_seed(), tmp_path / "f.png")
    ax, = fig.axes
    assert ax.get_xscale() == "log"
    drawn = errorbars(ax)
    assert set(drawn) == {"teacher", "auxiliary", *STUDENTS}
    for i, label in enumerate(STUDENTS):
        x, y = drawn[label]
        assert list(x) == [4_000, 15_000] and list(y) == [80.0 + i, 90.0 + i]
    lines = {c.get_label(): c.lines[0] for c in ax.containers}
    assert lines[STUDENTS[0]].get_linestyle() == "-"
    for label, marker, params, value in (("teacher", "*", 200_000, 97.0), ("auxiliary", "D", 60_000, 95.0)):
        x, y = drawn[label]
        assert list(x) == [params] and list(y) == [value]
        assert lines[label].get_marker() == marker and lines[label].get_linestyle() == "None"
    lo, hi = ax.get_xlim()
    assert lo < 4_000 and hi > 200_000
    assert is_png(tmp_path / "f.png")


def test_frontier_has_a_panel_per_benchmark(tmp_path):
    other = per_seed().assign(benchmark="cifar10")
    fig = plot_frontier(pd.concat([per_seed(), other]), tmp_path / "f.png")
    assert len(fig.axes) == 2 and all(ax.get_xscale() == "log" for ax in fig.axes)


def test_a_frontier_needs_student_rows_at_several_widths():
    assert has_widths(per_seed())
    one = per_seed()[per_seed()[WIDTH] != 0.5]
    assert not has_widths(one)
    assert not has_widths(per_seed().drop(columns=WIDTH))


def trials() -> list[dict]:
    return [
        {"trial_id": "a", "status": COMPLETED, "val_map": 0.80, "student_params": 4_000},
        {"trial_id": "b", "status": COMPLETED, "val_map": 0.90, "student_params": 15_000},
        {"trial_id": "c", "status": STOPPED, "val_map": 0.70, "student_params": 8_000},
        {"trial_id": "d", "status": COMPLETED, "val_map": 0.85, "student_params": 30_000},
        {"trial_id": "e", "status": STOPPED, "val_map": 0.75, "student_params": 2_000},
        {"trial_id": "f", "status": FAILED, "val_map": None, "student_params": 1_000},
    ]


def test_search_front_marks_completed_filled_stopped_hollow_and_steps_through_the_front(tmp_path):
    fig = plot_search_front(trials(), {"e", "a", "b"}, "student_params", tmp_path / "front.png")
    ax, = fig.axes
    assert ax.get_xscale() == "log"
    by_label = {c.get_label(): c for c in ax.collections}
    filled, hollow = by_label[COMPLETED], by_label[STOPPED]
    assert filled.get_offsets().tolist() == [[4_000, 80.0], [15_000, 90.0], [30_000, 85.0]]
    assert hollow.get_offsets().tolist() == [[8_000, 70.0], [2_000, 75.0]]
    assert len(hollow.get_facecolors()) == 0 or all(c[3] == 0 for c in hollow.get_facecolors())
    assert tuple(filled.get_facecolors()[0]) == to_rgba("C0")
    assert len(hollow.get_edgecolors()) and hollow.get_edgecolors()[0][3] > 0
    front, = [line for line in ax.get_lines() if line.get_label() == "Pareto front"]
    assert front.get_drawstyle() == "steps-post"
    assert list(front.get_xdata()) == [2_000, 4_000, 15_000]  # the Pareto ids' points, by size
    assert list(front.get_ydata()) == [75.0, 80.0, 90.0]
    assert is_png(tmp_path / "front.png")


def test_search_front_leaves_out_failed_and_unsized_trials(tmp_path):
    unsized = [*trials(), {"trial_id": "g", "status": COMPLETED, "val_map": 0.99},
               {"trial_id": "h", "status": FAILED, "val_map": 0.95, "student_params": 500}]
    ax = plot_search_front(unsized, {"g", "h"}, "student_params", tmp_path / "front.png").axes[0]
    points = np.concatenate([c.get_offsets() for c in ax.collections])
    assert len(points) == 5 and 1_000 not in points[:, 0] and 500 not in points[:, 0]
    assert not [line for line in ax.get_lines() if line.get_label() == "Pareto front"]


def a_study(tmp_path, *, widths: bool, pareto: bool) -> Storage:
    (tmp_path / "digits/search").mkdir(parents=True)
    (tmp_path / "study.json").write_text(json.dumps({"benchmarks": ["digits"]}))
    frame = per_seed() if widths else per_seed().drop(columns=WIDTH)
    frame.to_csv(tmp_path / "results_per_seed.csv", index=False)
    (tmp_path / "digits/search/trials.json").write_text(json.dumps({"trials": trials()}))
    if pareto:
        rows = [t for t in trials() if t["trial_id"] in ("a", "b", "e")]
        pd.DataFrame(rows)[["trial_id", "val_map", "student_params"]].to_csv(tmp_path / f"digits/{PARETO_FILE}",
                                                                             index=False)
    return Storage.create(tmp_path)


def test_report_adds_the_frontier_and_the_search_front_when_the_study_has_them(tmp_path):
    written = write_report(a_study(tmp_path, widths=True, pareto=True))
    assert "report/frontier.png" in written and "report/digits-front.png" in written
    assert is_png(tmp_path / "report/frontier.png") and is_png(tmp_path / "report/digits-front.png")
    md = (tmp_path / "report/report.md").read_text()
    assert "## Compression frontier" in md and "![compression frontier](frontier.png)" in md
    assert md.index("## digits") < md.index("![search front](digits-front.png)") < md.index("## Compression frontier")


def test_report_of_a_study_without_widths_or_pareto_file_has_neither(tmp_path):
    written = write_report(a_study(tmp_path, widths=False, pareto=False))
    assert written == ["report/report.md"]
    md = (tmp_path / "report/report.md").read_text()
    assert "frontier" not in md.lower() and "front.png" not in md


def test_report_draws_the_front_of_the_pareto_files_ids_read_as_text(tmp_path, monkeypatch):
    import study.report

    drawn = []
    original = study.report.plot_search_front

    def spy(trials, pareto_ids, size_key, path):
        drawn.append((pareto_ids, size_key))
        return original(trials, pareto_ids, size_key, path)

    monkeypatch.setattr(study.report, "plot_search_front", spy)
    storage = a_study(tmp_path, widths=False, pareto=False)
    numbered = [{**t, "trial_id": f"00{i}", "student_macs": 10 * t["student_params"]} for i, t in enumerate(trials())]
    (tmp_path / "digits/search/trials.json").write_text(json.dumps({"trials": numbered}))
    (tmp_path / f"digits/{PARETO_FILE}").write_text("trial_id,val_map,student_macs\n000,0.8,40000\n001,0.9,150000\n")
    assert "report/digits-front.png" in write_report(storage)
    assert drawn == [({"000", "001"}, "student_macs")]  # not 0 and 1; the size the front was searched over


def an_optuna_study(storage: str | None = None):
    """Four completed trials, one ASHA stopped and one failed, in that order."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="digits", direction="maximize", storage=storage)
    for value in COMPLETED_VALUES:
        study.add_trial(optuna.trial.create_trial(value=value, intermediate_values={e: value - 0.01 * (4 - e)
                                                                                    for e in range(5)}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, intermediate_values={0: 0.5, 1: 0.6}))
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    return study


COMPLETED_VALUES = (0.80, 0.85, 0.82, 0.90)


def test_best_so_far_has_the_expected_best_of_n_trials_beside_it(tmp_path):
    from indistill.evaluation.stats import expected_max
    from study.report import best_so_far, expected_best, plot_best_so_far

    study = an_optuna_study()
    fig = plot_best_so_far(study, tmp_path / "b.png")
    ax, = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    best = lines["best so far"]
    expected, = [line for label, line in lines.items() if label.startswith("expected best of n")]
    assert best.get_drawstyle() == "steps-post"
    assert list(best.get_xdata()) == [1, 2, 3, 4, 5, 6]  # trials run, in creation order
    assert np.allclose(best.get_ydata(), [100 * b for b in best_so_far(study)[1]])
    want = [100 * expected_max(COMPLETED_VALUES, n) for n in range(1, 5)]  # the completed trials only
    assert list(expected.get_xdata()) == [1, 2, 3, 4] and np.allclose(expected.get_ydata(), want)
    assert np.allclose(expected_best(study), [w / 100 for w in want])
    assert expected.get_ydata()[0] == pytest.approx(100 * np.mean(COMPLETED_VALUES))  # one trial: the mean
    assert all(a <= b + 1e-12 for a, b in zip(want, want[1:])) and want[-1] <= 90.0
    assert is_png(tmp_path / "b.png")


def test_the_report_states_the_estimator_and_ends_with_the_provenance(tmp_path):
    from indistill.evaluation.stats import expected_max
    from study.optuna_record import sqlite_url

    storage = a_study(tmp_path, widths=False, pareto=False)
    an_optuna_study(sqlite_url(tmp_path / "digits/search/optuna.db"))
    prov = {"versions": {"indistill-study": "0.1.0", "python": "3.11.7", "torch": "2.14.1", "ray": "2.60.0",
                         "optuna": "5.0.0", "numpy": "2.4.6"}, "git": {"commit": "c73a3e4e9426fd7e", "dirty": False},
            "benchmarks": {"digits": {
                "sampler": {"class": "TPESampler", "algorithm": "TPE", "seed": 0, "n_startup_trials": 10,
                            "multivariate": True, "constant_liar": True},
                "scheduler": {"class": "ASHAScheduler", "time_attr": "embedding_epoch", "max_t": 17,
                              "grace_period": 6, "reduction_factor": 3},
                "splits": {"from": "declaration", "hash": "6a96c975fc66"}}}}
    (tmp_path / "study.json").write_text(json.dumps({"benchmarks": ["digits"], "provenance": prov}))
    (tmp_path / "digits/search/trials.json").write_text(json.dumps({"trials": [
        {"trial_id": "a", "placement": [{"device": "cuda:0"}]}, {"trial_id": "b", "placement": [{"device": "cpu"}]},
        {"trial_id": "c", "placement": [{"device": "cuda:1"}]}]}))
    assert "report/digits-best-so-far.png" in write_report(storage)
    md = (tmp_path / "report/report.md").read_text()
    assert 'Dodge et al. 2019, "Show Your Work"' in md
    assert f"n=1: {100 * expected_max(COMPLETED_VALUES, 1):.2f}" in md
    assert f"n=4: {100 * expected_max(COMPLETED_VALUES, 4):.2f}" in md
    provenance = md[md.index("## Provenance"):]
    assert md.index("## digits") < md.index("## Provenance")
    assert ("Versions: indistill-study 0.1.0, Python 3.11.7, torch 2.14.1, Ray 2.60.0, Optuna 5.0.0, numpy 2.4.6; "
            "git c73a3e4e9426.") in provenance
    assert ("sampler: TPESampler (algorithm TPE, seed 0, n_startup_trials 10, multivariate True, constant_liar True)"
            in provenance)
    assert "scheduler: ASHAScheduler (time_attr embedding_epoch, max_t 17, grace_period 6, reduction_factor 3)" in provenance
    assert "splits: fingerprint 6a96c975fc66 (from the declaration)" in provenance
    assert "trials ran on: cpu (1 trial), cuda (2 trials)" in provenance


def test_the_provenance_of_a_study_that_recorded_none_says_so(tmp_path):
    write_report(a_study(tmp_path, widths=False, pareto=False))
    md = (tmp_path / "report/report.md").read_text()
    assert "## Provenance" in md and "Versions: not recorded in study.json." in md
    assert "trials ran on: none recorded" in md


def test_expected_max_on_a_hand_checked_case():
    from indistill.evaluation.stats import expected_max

    assert expected_max([1.0, 2.0, 3.0], 1) == pytest.approx(2.0)  # one draw: the mean
    assert expected_max([3.0, 1.0, 2.0], 2) == pytest.approx(22 / 9)  # (1*1 + 2*3 + 3*5) / 9, any order
    assert expected_max([1.0, 2.0, 3.0], 200) == pytest.approx(3.0)  # many draws: the maximum
    assert expected_max([1.0, 1.0, 3.0], 2) == pytest.approx((1.0 * 4 + 3.0 * 5) / 9)  # ties: P(max = 1) = (2/3)^2
    assert expected_max([0.7], 5) == pytest.approx(0.7)
    with pytest.raises(ValueError):
        expected_max([], 1)
    with pytest.raises(ValueError):
        expected_max([1.0], 0)


def test_expected_max_rises_with_n_between_the_mean_and_the_maximum():
    from indistill.evaluation.stats import expected_max

    values = np.random.default_rng(0).uniform(0.6, 0.9, size=13)
    curve = [expected_max(values, n) for n in range(1, 40)]
    assert curve[0] == pytest.approx(values.mean())
    assert all(a <= b + 1e-12 for a, b in zip(curve, curve[1:]))
    assert all(values.mean() - 1e-12 <= c <= values.max() + 1e-12 for c in curve)
