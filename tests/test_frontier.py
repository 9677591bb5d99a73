"""The compression frontier's search side without Ray: the width in the space, its validation,
the widths a space can sample, and their configs."""
import dataclasses
import random

import pytest

from indistill.common.errors import ConfigError
from study.params import WIDTH, apply_params, describe, drawn_values, study_hparams, trial_hparams
from study.search_space import (
    StudentSpace,
    WidthRange,
    base_config,
    default_space_path,
    load_space,
    sampled_widths,
    validate_space,
    with_width,
)


@pytest.fixture(scope="module")
def digits():
    space = load_space(default_space_path("digits"), "digits")
    return space, base_config(space, "digits")


def _with(space, width, objectives=("val_map",)):
    return dataclasses.replace(space, student=StudentSpace(width=width), objectives=tuple(objectives))


@pytest.mark.parametrize(("multiplier", "widths", "embedding"), [(0.5, [4, 8, 16], 32), (1.0, [8, 16, 32], 64),
                                                                  (2.0, [16, 32, 64], 128), (0.3, [2, 5, 10], 19),
                                                                  (0.01, [1, 1, 1], 1)])
def test_a_width_scales_every_conv_stage_and_the_embedding_rounded_to_at_least_one(digits, multiplier, widths, embedding):
    _, base = digits  # the digits student: widths [8, 16, 32], embedding 64
    student = with_width(base, multiplier).networks.student
    assert student["widths"] == widths and student["embedding_dim"] == embedding


def test_a_width_wider_than_the_auxiliary_is_refused_naming_the_tap_and_both_numbers(digits):
    space, _ = digits
    with pytest.raises(ConfigError, match=r"student.width: 2.5 makes the student's block0 20 channels wide, wider "
                                          r"than the auxiliary's 16"):
        validate_space(_with(space, (1.0, 2.5)), "digits")
    with pytest.raises(ConfigError, match="student.width: 2.1 makes"):
        validate_space(_with(space, WidthRange(0.5, 2.1)), "digits")
    validate_space(_with(space, (0.5, 1.0, 2.0), ("val_map", "params")), "digits")  # 2.0: the auxiliary's own widths


def test_a_size_objective_needs_widths_and_the_objectives_are_checked(digits):
    space, _ = digits
    with pytest.raises(ConfigError, match="objectives: params as an objective needs student.width"):
        validate_space(dataclasses.replace(space, objectives=("val_map", "params")), "digits")
    with pytest.raises(ValueError, match=r"objectives: \[val_map\] or \[val_map, <size>\]"):
        dataclasses.replace(space, objectives=("params",))


def test_a_space_file_with_widths_loads_and_names_a_bad_entry(tmp_path):
    good = tmp_path / "frontier.yaml"
    good.write_text(default_space_path("digits").read_text() + "student: {width: [0.5, 1.0]}\nobjectives: [val_map, macs]\n")
    space = load_space(good, "digits")
    assert space.student.width == (0.5, 1.0) and space.size_objective == "macs"
    bad = tmp_path / "bad.yaml"
    bad.write_text(default_space_path("digits").read_text() + "student: {width: [0.5, -1.0]}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: student.width\[1\]: must be > 0"):
        load_space(bad, "digits")


def test_the_widths_a_list_samples_are_its_multipliers(digits):
    space, base = digits
    assert sampled_widths(_with(space, (2.0, 0.5, 1.0, 0.5)), base) == [0.5, 1.0, 2.0]
    assert sampled_widths(space, base) == []


def test_every_width_a_range_samples_builds_one_of_the_students_it_lists(digits):
    """Property: the distinct students of a range are exactly the students of its multipliers."""
    space, base = digits
    ranged = _with(space, WidthRange(0.5, 1.0))
    listed = {str(with_width(base, m).networks.student) for m in sampled_widths(ranged, base)}
    assert len(listed) == len(sampled_widths(ranged, base)) > 10
    rng = random.Random(0)
    for m in [0.5, 1.0, *(rng.uniform(0.5, 1.0) for _ in range(300))]:
        assert str(with_width(base, m).networks.student) in listed


def test_a_sampled_width_reaches_the_config_the_hparams_row_and_the_table_text(digits):
    space, base = digits
    frontier = _with(space, (0.5, 1.0, 2.0), ("val_map", "params"))
    params = {"student": {"width": 0.5}, "prune": {"criterion": "l2"}}
    cfg = apply_params(base, params, frontier)
    assert cfg.networks.student == {"widths": [4, 8, 16], "embedding_dim": 32} and cfg.prune.criterion == "l2"
    row = trial_hparams(cfg, frontier, drawn_values(base, params, frontier))
    assert row[WIDTH.name()] == 0.5
    domains = {d.name: d for d in study_hparams(frontier, base)}
    assert domains[WIDTH.name()].interval == (0.5, 2.0) and domains[WIDTH.name()].differs
    assert describe(params) == "criterion=l2; width=0.5"
    assert apply_params(base, {}, frontier).networks.student == base.networks.student  # no width drawn: the base's


class _Trial:
    """What ASHA reads of a Tune trial: its id (and the scheduler, its config)."""

    def __init__(self, trial_id: str, width: float) -> None:
        self.trial_id, self.config = trial_id, {"student": {"width": width}}


def _feed(scheduler, trials_results):
    """Each trial added, then its results in order; the action of each trial's last result."""
    actions = {}
    for trial, values in trials_results:
        scheduler.on_trial_add(None, trial)
        for step, value in enumerate(values, start=1):
            actions[trial.trial_id] = scheduler.on_trial_result(None, trial, {"embedding_epoch": step, "val_map": value})
    return actions


def _asha():
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="embedding_epoch", metric="val_map", mode="max", max_t=9, grace_period=1,
                         reduction_factor=2, brackets=1)


@pytest.mark.parametrize("per_width", [True, False])
def test_a_small_student_is_stopped_only_by_trials_of_its_own_width(per_width):
    """Wide students score 0.9, a small one 0.6 at every rung: one ASHA for all stops the small one
    (the control: the rule is what keeps it), one ASHA per width never does."""
    from study.early_stopping import PerGroupScheduler, trial_width

    scheduler = PerGroupScheduler(_asha, trial_width) if per_width else _asha()
    wide = [(_Trial(f"w{i}", 2.0), [0.9 + 0.001 * i] * 4) for i in range(4)]
    small = _Trial("s", 0.5)
    actions = _feed(scheduler, [*wide, (small, [0.6] * 4)])
    assert (actions["s"] == "CONTINUE") is per_width
    if per_width:
        assert set(scheduler.groups) == {2.0, 0.5}
        # within its own width a worse small student is still stopped
        assert _feed(scheduler, [(_Trial("s2", 0.5), [0.3] * 4)])["s2"] == "STOP"


def test_the_table_groups_the_rows_by_width_and_pairs_each_baseline_within_its_width(tmp_path):
    from indistill.evaluation.table import result_row
    from study.names import NETWORKS_FILE, POINTS_FILE, TUNED
    from study.results import build_table, markdown, sized_label
    from study.storage import Storage

    def row(label, seed, cos, width=None, params=100, macs=1000):
        metrics = {m: {"map": cos, "map_legacy": cos, "p@100": cos} for m in ("cosine", "euclidean")}
        out = {"seed": seed, **result_row(label, params, metrics)}
        return out if width is None else {**out, "width": width, "macs": macs}

    storage = Storage.create(tmp_path / "s")
    storage.write_json("study.json", {"name": "s", "benchmarks": ["digits"]})
    storage.write_json(f"digits/{NETWORKS_FILE}", {"rows": [row("teacher", 0, 0.97), row("auxiliary", 0, 0.95)]})
    for seed in (0, 1, 2):
        # at 0.5x the tuned row beats CE by 0.10 every seed, at 2x it loses by 0.02
        rows = [row("student (ce)", seed, 0.70 + 0.01 * seed, 0.5, 3970, 101_872),
                row(TUNED, seed, 0.80 + 0.01 * seed, 0.5, 3970, 101_872),
                row("student (ce)", seed, 0.92 + 0.01 * seed, 2.0, 57_706, 1_237_312),
                row(TUNED, seed, 0.90 + 0.01 * seed, 2.0, 57_706, 1_237_312)]
        storage.write_json(f"digits/final/seed-{seed}.json", {"rows": rows})
    trial = {"trial_id": "t1", "status": "completed", "val_map": 0.81, "epochs": 20, "params": {"student": {"width": 0.5}}}
    storage.write_json("digits/search/trials.json", {"trials": [trial, {**trial, "trial_id": "t2", "val_map": 0.9,
                                                                         "params": {"student": {"width": 2.0}}}],
                                                     "best": trial, "counts": {"completed": 2}})
    storage.write_json(f"digits/{POINTS_FILE}", {"points": [{"width": 0.5, "trial_id": "t1"}, {"width": 2.0, "trial_id": "t2"}]})
    table, per_seed = build_table(storage, ["digits"])
    labels = [n for _b, n in table.index]
    assert labels == ["teacher", "auxiliary", sized_label("student (ce)", 0.5), sized_label(TUNED, 0.5),
                      sized_label("student (ce)", 2.0), sized_label(TUNED, 2.0)]
    assert sized_label(TUNED, 0.5) == "InDistill (tuned) @ 0.5x"
    diff = table["diff mean"]
    assert diff[("digits", "student (ce) @ 0.5x")] == pytest.approx(-10.0)  # CE minus tuned, in points
    assert diff[("digits", "student (ce) @ 2x")] == pytest.approx(2.0)
    assert table.loc[("digits", "InDistill (tuned) @ 2x"), "best trial"] == "t2"
    assert table.loc[("digits", "InDistill (tuned) @ 0.5x"), "macs"] == 101_872
    assert list(table["width"].dropna().unique()) == [0.5, 2.0]
    assert "@ 0.5x" in markdown(table) and "width" in per_seed


def test_the_reports_optuna_figures_read_a_two_objective_study(tmp_path):
    """A two-objective Optuna study has no single value per trial: the best-so-far curve and the
    importances read its first objective (val mAP)."""
    import warnings

    import optuna

    from study.report import best_so_far, plot_importance

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    told = []
    for i in range(6):
        trial = study.ask()
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.suggest_categorical("w", [0.5, 1.0])
        study.tell(trial, [x, 100.0 * i])
        told.append(x)
    values, best = best_so_far(study)
    assert values == pytest.approx(told)
    assert best == pytest.approx([max(told[: i + 1]) for i in range(6)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. Optuna's warning about a target it ranks as to be minimised
        plot_importance(study, tmp_path / "importance.png")
    assert (tmp_path / "importance.png").stat().st_size > 0
