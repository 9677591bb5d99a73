"""Warm starts without Ray: which configs of a source study are taken (ranking), which fit a new space
(a skipped one, another benchmark's), the dry run and the one-line stop, the Optuna record that
enqueues each once (a resumed searcher, built again or restored, never twice), and where a trial's
origin shows (trials.json, the table's note, HParams)."""
from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest

from indistill.common.errors import ConfigError
from indistill.config.run import config_to_dict
from indistill.config.schema import to_dict
from study import cli as study_cli
from study.names import OBJECTIVE, WARM_START
from study.optuna_record import RecordedOptunaSearch, optuna_storage
from study.outcome import COMPLETED, FAILED, STOPPED
from study.params import Misfit, define_by_run, drawn_values, fit_values, flatten
from study.resume import yaml_text
from study.results import summarize_trials
from study.search_space import IntRange, base_config, load_space, packaged_spaces
from study.storage import Storage
from study.warm_start import (COLD, Origin, WarmPoint, enqueue, for_resume, hparams_domains, hparams_value, ranked,
                              recorded, resolve, table_note, write)

DIGITS = load_space(packaged_spaces() / "digits.yaml", "digits")
DIGITS_BASE = base_config(DIGITS, "digits")
FULL = DIGITS_BASE.student.epochs


def params(epochs=(2, 1, 3), losses=("pkt", "mse", "cosine"), weights=(0.5, 2.0, 1.5), overlap=True, criterion="l1",
           width=None) -> dict:
    """A trial's sampled values as trials.json holds them (nested, by sampler name)."""
    curriculum = {f"epochs_{k}": e for k, e in enumerate(epochs)}
    for k, (loss, w) in enumerate(zip(losses, weights)):
        curriculum[f"loss_{k}"] = loss
        curriculum[f"weight_{k}_{loss}"] = w
    out = {"curriculum": {**curriculum, "overlap": overlap}, "prune": {"criterion": criterion}}
    if width is not None:
        out["student"] = {"width": width}
    return out


def trial(tid: str, value: float | None, status: str = COMPLETED, ran: int = FULL, **sampled) -> dict:
    """A trials.json row: ``ran`` student epochs, ``sampled`` as :func:`params` takes them."""
    return {"trial_id": tid, "status": status, "epochs": ran, OBJECTIVE: value, "params": params(**sampled)}


def make_source(root: Path, benchmark: str, space, trials: list[dict], name: str = "source") -> Path:
    """A study directory whose search of ``benchmark`` has finished, as a study leaves it."""
    storage = Storage.create(root / name)
    storage.write_json("study.json", {"name": name, "benchmarks": [benchmark]})
    storage.write_text(f"{benchmark}/search_space.yaml", yaml_text(to_dict(space)))
    storage.write_text(f"{benchmark}/base_config.yaml", yaml_text(config_to_dict(base_config(space, benchmark))))
    storage.write_json(f"{benchmark}/search/trials.json", {"trials": trials, "best": trials[0] if trials else None})
    return root / name


def narrowed(space, **curriculum):
    return dataclasses.replace(space, curriculum=dataclasses.replace(space.curriculum, **curriculum))


# ----------------------------------------------------------------------------- ranking


def test_ranked_by_the_studys_rule_most_epochs_then_val_map():
    trials = [trial("full-low", 0.80), trial("stopped-high", 0.95, STOPPED, ran=10), trial("full-high", 0.85),
              trial("failed", 0.99, FAILED), trial("no-value", float("nan")), trial("full-mid", 0.82),
              trial("stopped-low", 0.60, STOPPED, ran=10)]
    assert [t["trial_id"] for t in ranked(trials, DIGITS, 3)] == ["full-high", "full-mid", "full-low"]
    assert [t["trial_id"] for t in ranked(trials, DIGITS, 5)] == ["full-high", "full-mid", "full-low",
                                                                  "stopped-high", "stopped-low"]
    assert ranked(trials, DIGITS, 100)[-1]["trial_id"] == "stopped-low"  # failed and unscored ones never


def test_a_multi_objective_source_gives_its_whole_pareto_set():
    frontier = load_space(packaged_spaces() / "digits-frontier.yaml", "digits")
    trials = [{**trial(tid, v, width=w), "student_params": p} for tid, v, w, p in
              [("small", 0.70, 0.5, 4000), ("mid", 0.88, 1.0, 15000), ("dominated", 0.80, 1.0, 15000),
               ("big", 0.94, 2.0, 57000), ("big-worse", 0.60, 2.0, 57000)]]
    assert [t["trial_id"] for t in ranked(trials, frontier, 1)] == ["small", "mid", "big"]  # not budget.warm_start


# ----------------------------------------------------------------------------- fitting


def test_a_config_of_the_same_space_fits_as_the_sample_it_was():
    p = params()
    assert fit_values(DIGITS, DIGITS_BASE, drawn_values(DIGITS_BASE, p, DIGITS)) == flatten(p)


WEIGHTS = {"mse": {"low": 0.1, "high": 10.0}, "pkt": {"low": 0.1, "high": 10.0}}


@pytest.mark.parametrize("space, sampled, why", [
    (narrowed(DIGITS, losses=("mse", "pkt"), weights=WEIGHTS), {},
     "curriculum/loss_2: 'cosine' is not among this space's choices (mse, pkt)"),
    (narrowed(DIGITS, epochs=(IntRange(1, 3), IntRange(1, 3), IntRange(1, 2))), {},
     "curriculum/epochs_2: 3 is outside this space's range 1..2"),
    (narrowed(DIGITS, weights={**WEIGHTS, "cosine": {"low": 2.0, "high": 10.0}}), {},
     "curriculum/weight_2: 1.5 is outside this space's range 2..10"),
    (narrowed(DIGITS, weights={**WEIGHTS, "pkt": {"low": 1.0, "high": 1.0}}), {},
     "curriculum/weight_0: 0.5 in the source trial, fixed at 1.0 in this space"),
    (narrowed(DIGITS, overlap=(False,)), {}, "curriculum/overlap: True is not among this space's choices (False)"),
    (dataclasses.replace(DIGITS, criteria=("l2", "fpgm")), {},
     "prune/criterion: 'l1' is not among this space's choices (l2, fpgm)"),
    (narrowed(DIGITS, epochs=(IntRange(1, 3),) * 4), {}, "curriculum: 3 layers in the source trial, 4 in this space"),
    (load_space(packaged_spaces() / "digits-frontier.yaml", "digits"), {},
     "student/width: the source trial has no value (its space does not search it)"),
])
def test_a_config_that_does_not_fit_names_the_parameter(space, sampled, why):
    values = drawn_values(DIGITS_BASE, params(**sampled), DIGITS)
    with pytest.raises(Misfit) as exc:
        fit_values(space, DIGITS_BASE, values)
    assert str(exc.value) == why


def test_a_width_the_new_space_does_not_search_does_not_fit():
    frontier = load_space(packaged_spaces() / "digits-frontier.yaml", "digits")
    values = drawn_values(DIGITS_BASE, params(width=0.5), frontier)
    assert fit_values(frontier, DIGITS_BASE, values)["student/width"] == 0.5
    with pytest.raises(Misfit, match=r"^student/width: 0.5 in the source trial; this space does not search it$"):
        fit_values(DIGITS, DIGITS_BASE, values)
    with pytest.raises(Misfit, match=r"^student/width: 0.75 is not among this space's choices \(0.5, 1.0, 2.0\)$"):
        fit_values(frontier, DIGITS_BASE, drawn_values(DIGITS_BASE, params(width=0.75), frontier))


def test_a_source_weight_the_source_fixed_is_the_value_it_ran_with():
    fixed = narrowed(DIGITS, weights={**WEIGHTS, "cosine": {"low": 3.0, "high": 3.0}})
    p = params()
    del p["curriculum"]["weight_2_cosine"]  # not sampled: the source ran it at 3
    assert fit_values(DIGITS, DIGITS_BASE, drawn_values(DIGITS_BASE, p, fixed))["curriculum/weight_2_cosine"] == 3.0


# ----------------------------------------------------------------------------- resolving a source study


def test_the_best_fitting_configs_of_the_source_are_the_first_trials_and_a_misfit_is_a_notice(tmp_path):
    trials = [trial("a", 0.80), trial("b", 0.90, losses=("pkt", "mse", "mse"), weights=(0.5, 2.0, 3.0)),
              trial("c", 0.85, losses=("cosine", "mse", "mse"), weights=(1.0, 2.0, 3.0)), trial("d", 0.70)]
    source = make_source(tmp_path, "digits", DIGITS, trials)
    space = narrowed(DIGITS, losses=("mse", "pkt"), weights=WEIGHTS)
    warm = resolve([str(source)], "digits", None, space, base_config(space, "digits"))
    # the 3 best (b, c, a); c's first loss is not a choice: skipped, d does not take its place
    assert [p.origin.trial_id for p in warm.points] == ["b"]
    assert warm.skipped == (f"{source} digits trial c (val mAP 85.00): curriculum/loss_0: 'cosine' is not "
                            "among this space's choices (mse, pkt)",
                            f"{source} digits trial a (val mAP 80.00): curriculum/loss_2: 'cosine' is not "
                            "among this space's choices (mse, pkt)")
    assert warm.points[0].params == flatten(trials[1]["params"])
    assert warm.points[0].origin == Origin(str(source), "digits", "b") and warm.points[0].val_map == 0.90
    assert warm.sources == (str(source),) and warm.benchmark == "digits"
    same = resolve([str(source)], "digits", None, DIGITS, DIGITS_BASE)
    assert [p.origin.trial_id for p in same.points] == ["b", "c", "a"] and same.skipped == ()
    two = resolve([str(source)], "digits", None, dataclasses.replace(DIGITS, budget=dataclasses.replace(
        DIGITS.budget, warm_start=2, trials=1)), DIGITS_BASE)
    assert [p.origin.trial_id for p in two.points] == ["b"]  # budget.warm_start 2, within budget.trials 1
    assert two.skipped == (f"{source} digits trial c (val mAP 85.00): beyond budget.trials (1)",)


def test_another_benchmarks_curriculum_as_first_guesses(tmp_path):
    cifar = load_space(packaged_spaces() / "default.yaml", "cifar10")  # 1-8, 1-8, 1-10 per layer
    trials = [trial("long", 0.60, ran=cifar.budget.epochs, epochs=(6, 1, 1)),
              trial("short", 0.55, ran=cifar.budget.epochs, epochs=(2, 2, 4))]
    source = make_source(tmp_path, "cifar10", cifar, trials)
    with pytest.raises(ConfigError, match=r"has no digits \(its benchmarks: cifar10\); --warm-start-benchmark"):
        resolve([str(source)], "digits", None, DIGITS, DIGITS_BASE)
    warm = resolve([str(source)], "digits", "cifar10", DIGITS, DIGITS_BASE)
    assert [(p.origin.benchmark, p.origin.trial_id) for p in warm.points] == [("cifar10", "short")]
    assert warm.points[0].params["curriculum/epochs_2"] == 4
    assert warm.skipped == (f"{source} cifar10 trial long (val mAP 60.00): curriculum/epochs_0: 6 is "
                            "outside this space's range 1..3",)


def test_a_source_that_is_not_a_finished_study_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^--warm-start: .*nowhere: no such study directory$"):
        resolve([str(tmp_path / "nowhere")], "digits", None, DIGITS, DIGITS_BASE)
    source = make_source(tmp_path, "digits", DIGITS, [])
    (source / "digits/search/trials.json").unlink()
    with pytest.raises(ConfigError, match=r"its digits search has not finished \(no digits/search/trials.json\)"):
        resolve([str(source)], "digits", None, DIGITS, DIGITS_BASE)


@pytest.fixture
def no_ray(monkeypatch):
    import ray

    def refuse(*_a, **_k):
        raise AssertionError("ray.init was called")

    monkeypatch.setattr(ray, "init", refuse)


def test_the_dry_run_names_the_warm_start_and_each_skipped_config(tmp_path, capsys, no_ray):
    source = make_source(tmp_path, "digits", DIGITS, [trial("a", 0.8), trial("c", 0.85, criterion="random")])
    space = tmp_path / "space.yaml"
    space.write_text(yaml_text({**to_dict(DIGITS), "criteria": ["l1", "l2"]}))
    code = study_cli.main(["run", "--dry-run", "--warm-start", str(source), "--search-space", str(space),
                           "--storage", str(tmp_path / "studies"), "--name", "warm"])
    out, err = capsys.readouterr()
    assert code == 0
    assert f"  warm start   : the first trial is {source} digits trial a (val mAP 80.00); 1 skipped" in out.splitlines()
    assert err.splitlines() == [f"indistill-study: notice: digits: --warm-start skips {source} digits trial c (val mAP "
                                "85.00): prune/criterion: 'random' is not among this space's choices (l1, l2)"]
    assert not (tmp_path / "studies").exists()


def test_when_no_config_fits_the_study_stops_before_ray_in_one_line(tmp_path, capsys, no_ray):
    source = make_source(tmp_path, "digits", DIGITS, [trial("a", 0.8), trial("c", 0.85, criterion="random")])
    space = tmp_path / "space.yaml"
    space.write_text(yaml_text({**to_dict(DIGITS), "criteria": ["l2"]}))
    code = study_cli.main(["run", "--warm-start", str(source), "--search-space", str(space),
                           "--storage", str(tmp_path / "studies"), "--name", "warm"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"indistill-study: error: --warm-start: no config of {source} (digits) fits the digits search space: "
        f"{source} digits trial c (val mAP 85.00): prune/criterion: 'random' is not among this space's "
        f"choices (l2); {source} digits trial a (val mAP 80.00): prune/criterion: 'l1' is not among "
        "this space's choices (l2)"]
    assert not (tmp_path / "studies").exists()
    code = study_cli.main(["run", "--dry-run", "--warm-start-benchmark", "cifar10", "--storage", str(tmp_path / "s")])
    assert code == 2 and "--warm-start-benchmark: needs --warm-start SOURCE" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the Optuna record, resumed


def points(n: int = 3) -> list[WarmPoint]:
    samples = [params(epochs=(e, 1, 1), weights=(0.3 * (e + 1), 1.0, 2.0)) for e in (1, 2, 3)][:n]
    return [WarmPoint(Origin("/s/source", "digits", f"t{i}"), flatten(p), 0.8) for i, p in enumerate(samples)]


def test_enqueue_puts_each_origin_in_the_record_once():
    study = optuna.create_study(direction="maximize")
    assert enqueue(study, points()) == 3
    assert enqueue(study, points()) == 0  # a second driver on the same record
    assert [t.user_attrs[WARM_START]["trial_id"] for t in study.trials] == ["t0", "t1", "t2"]
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.WAITING}


def searcher(db: Path, warm) -> RecordedOptunaSearch:
    return RecordedOptunaSearch(space=define_by_run(DIGITS), metric=OBJECTIVE, mode="max",
                                sampler=optuna.samplers.TPESampler(seed=1), study_name="digits",
                                storage=optuna_storage(db), full_epochs=FULL, warm_start=warm)


def origins(db: Path) -> list[str]:
    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{db}")
    return [t.user_attrs[WARM_START]["trial_id"] for t in study.trials if WARM_START in t.user_attrs]


def test_the_warm_points_are_the_first_proposals_and_a_resume_never_enqueues_them_twice(tmp_path):
    db, warm = tmp_path / "optuna.db", points()
    first = searcher(db, warm)
    proposed = first.suggest("tune-a")
    assert flatten({k: v for k, v in proposed.items() if k != WARM_START}) == warm[0].params
    assert proposed[WARM_START] == warm[0].origin.as_dict()
    first.on_trial_complete("tune-a", {OBJECTIVE: 0.7, "epoch": FULL, "training_iteration": FULL})
    # Tune's restore (--resume with its experiment state): the searcher unpickled, not built again
    state = tmp_path / "searcher.pkl"
    first.save(str(state))
    restored = pickle.loads(pickle.dumps(first))
    restored.restore(str(state))
    assert flatten({k: v for k, v in restored.suggest("tune-b").items() if k != WARM_START}) == warm[1].params
    # a searcher built again on the same record (--resume without Tune's state): nothing enqueued again
    again = searcher(db, warm)
    assert origins(db) == ["t0", "t1", "t2"]
    third = again.suggest("tune-c")
    assert third[WARM_START]["trial_id"] == "t2"
    fourth = again.suggest("tune-d")  # the sampler's own proposal
    assert WARM_START not in fourth
    assert origins(db) == ["t0", "t1", "t2"]
    record = optuna.load_study(study_name="digits", storage=f"sqlite:///{db}")
    assert record.trials[0].state == optuna.trial.TrialState.COMPLETE
    assert record.trials[0].params == warm[0].params  # the sampled values equal the source trial's


def test_a_resumed_study_keeps_the_warm_start_it_was_started_with(tmp_path):
    storage = Storage.create(tmp_path / "study")
    assert for_resume(storage, "digits", [], None) is None
    source = make_source(tmp_path, "digits", DIGITS, [trial("a", 0.8)])
    warm = resolve([str(source)], "digits", None, DIGITS, DIGITS_BASE)
    write(storage, "digits", warm)
    assert recorded(storage, "digits") == warm
    assert for_resume(storage, "digits", [], None) == warm
    assert for_resume(storage, "digits", [str(source)], None) == warm
    (source / "digits/search/trials.json").unlink()  # the recorded points, not the source, are resumed
    assert for_resume(storage, "digits", [str(source)], "digits") == warm
    with pytest.raises(ConfigError, match=r"^--resume: digits was started with --warm-start .*source \(digits\), not "
                                          r"--warm-start .*other \(digits\); start a new study"):
        for_resume(storage, "digits", [str(tmp_path / "other")], None)


# ----------------------------------------------------------------------------- where the origin shows


def test_trials_json_the_tables_note_and_hparams_carry_the_origin():
    origin = Origin("/s/source", "digits", "t0")
    nested = {**params(), WARM_START: origin.as_dict()}
    grid = [SimpleNamespace(metrics={"epoch": FULL, OBJECTIVE: v, "trial_id": tid}, error=None,
                            metrics_dataframe=pd.DataFrame([{OBJECTIVE: v}]), config=config, path=f"/r/{tid}")
            for tid, v, config in (("warm", 0.9, nested), ("cold", 0.8, params()))]
    record = summarize_trials(grid, SimpleNamespace(base=DIGITS_BASE))
    warm, cold = record["trials"]
    assert warm[WARM_START] == origin.as_dict() and WARM_START not in cold
    assert warm["params"] == params()  # the origin is not a sampled value
    assert table_note(record) == "1 warm-started trial from /s/source (digits); the best re-ran /s/source digits trial t0"
    record["best"] = cold
    assert table_note(record).endswith("the best is one the sampler proposed")
    assert table_note({"trials": [cold], "best": cold}) == ""
    plan = SimpleNamespace(benchmark="digits", space=DIGITS, base=DIGITS_BASE,
                           warm_start=SimpleNamespace(points=[WarmPoint(origin, {}, 0.9)]))
    (domain,) = hparams_domains([plan, SimpleNamespace(benchmark="x", warm_start=None)])
    assert domain.name == WARM_START and domain.values == (COLD, "/s/source digits trial t0")
    assert hparams_value(plan, nested) == {WARM_START: "/s/source digits trial t0"}
    assert hparams_value(plan, params()) == {WARM_START: COLD}
    assert hparams_value(SimpleNamespace(warm_start=None), nested) == {}
    assert hparams_domains([SimpleNamespace(benchmark="x")]) == []


def test_the_end_of_study_summary_says_the_tuned_rows_warm_start():
    from study.names import TUNED
    from study.results import WARM_START_COLUMN, summary

    index = pd.MultiIndex.from_tuples([("digits", TUNED)], names=["benchmark", "network"])
    table = pd.DataFrame({"tuned": ["3 trials"], "best trial": ["t1"], "best val map": [88.5], "trials completed": [3],
                          "best config": ["1ep mse w=1"], WARM_START_COLUMN: ["2 warm-started trials from /s (digits); "
                                                                            "the best re-ran /s digits trial t0"]},
                         index=index)
    lines = summary(table)
    assert lines[-3:] == ["digits, InDistill (tuned): best trial t1, val map 88.50 (3 trials: 3 completed)",
                          "  config: 1ep mse w=1",
                          "  warm start: 2 warm-started trials from /s (digits); the best re-ran /s digits trial t0"]
