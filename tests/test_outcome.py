"""How a search trial ended and which one is the best: the rule, and its three readers agreeing
(the search record, the Optuna study, the console)."""
import io
import math
from types import SimpleNamespace

import numpy as np
import optuna
import pandas as pd
import pytest

from study.names import OBJECTIVE
from study.optuna_record import RecordedOptunaSearch, optuna_storage
from study.outcome import COMPLETED, FAILED, STATUSES, STOPPED, best_key, count, scored, trial_status
from study.progress import STUDY_LOG, BenchmarkStatus, Progress
from study.results import summarize_trials
from study.storage import Storage

FULL = 6


@pytest.mark.parametrize("failed, epochs, status", [
    (False, 6, COMPLETED), (False, 7, COMPLETED), (False, 5, STOPPED), (False, 0, STOPPED),
    (True, 6, FAILED), (True, 0, FAILED),
])
def test_status(failed, epochs, status):
    assert trial_status(failed, epochs, FULL) == status


def test_best_key_prefers_more_epochs_then_the_higher_map():
    assert best_key(COMPLETED, 6, 0.5) > best_key(STOPPED, 3, 0.9)  # a longer trial beats an early stop
    assert best_key(COMPLETED, 6, 0.6) > best_key(COMPLETED, 6, 0.5)
    assert best_key(FAILED, 6, 0.9) is None and best_key(COMPLETED, 6, math.nan) is None
    assert best_key(COMPLETED, 6, None) is None and best_key(COMPLETED, 6, np.float32(0.5)) == (6, 0.5)
    assert count([FAILED, COMPLETED, FAILED]) == {COMPLETED: 1, STOPPED: 0, FAILED: 2}
    assert STATUSES == (COMPLETED, STOPPED, FAILED)


#: (trial id, last result, error): one of each ending, and a stopped trial with the highest val mAP
TRIALS = [
    ("stopped", {"epoch": 3, OBJECTIVE: 0.9}, False),
    ("full-low", {"epoch": 6, OBJECTIVE: 0.5}, False),
    ("full-high", {"epoch": 6, OBJECTIVE: 0.6}, False),
    ("broken", {"epoch": 1, OBJECTIVE: 0.95}, True),
    ("no-value", {"epoch": 6, OBJECTIVE: math.nan}, False),  # ran to the end without a val mAP
]
OPTUNA_STATE = {COMPLETED: "COMPLETE", STOPPED: "PRUNED", FAILED: "FAIL"}


def _space(trial) -> None:
    trial.suggest_float("x", 0.0, 1.0)


def test_the_record_the_optuna_study_and_the_console_agree(tmp_path):
    # the search record, from Tune-shaped results
    grid = [SimpleNamespace(metrics={**last, "trial_id": tid}, error=RuntimeError("x") if err else None,
                            metrics_dataframe=pd.DataFrame([last]), config={}, path=f"/r/{tid}")
            for tid, last, err in TRIALS]
    record = summarize_trials(grid, SimpleNamespace(base=SimpleNamespace(student=SimpleNamespace(epochs=FULL))))
    statuses = {t["trial_id"]: t["status"] for t in record["trials"]}
    assert statuses == {"stopped": STOPPED, "full-low": COMPLETED, "full-high": COMPLETED, "broken": FAILED,
                        "no-value": COMPLETED}
    assert record["best"]["trial_id"] == "full-high" and record["counts"] == count(statuses.values())
    assert [t["reason"] for t in record["trials"]][:2] == ["ASHA stopped it after 3 epochs (0 in the embedding phase)", ""]
    assert record["trials"][3]["reason"] == "RuntimeError: x"
    empty = summarize_trials([SimpleNamespace(**{**vars(grid[3]), "error": RuntimeError()})],
                             SimpleNamespace(base=SimpleNamespace(student=SimpleNamespace(epochs=FULL))))
    assert empty["trials"][0]["reason"] == "RuntimeError"  # an empty message: its type, once
    # the Optuna study
    searcher = RecordedOptunaSearch(space=_space, metric=OBJECTIVE, mode="max",
                                    study_name="s", storage=optuna_storage(tmp_path / "o.db"), full_epochs=FULL)
    for tid, last, err in TRIALS:
        searcher.suggest(tid)
        searcher.on_trial_complete(tid, {**last, "training_iteration": last["epoch"]}, error=err)
    recorded = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'o.db'}").trials
    # a trial without a val mAP is FAIL there, whatever its status: Optuna cannot model it
    assert [t.state.name for t in recorded] == [OPTUNA_STATE[statuses[tid]] if scored(last[OBJECTIVE]) else "FAIL"
                                                for tid, last, _ in TRIALS]
    assert recorded[3].intermediate_values == {1: 0.95}  # the failed trial's last report is kept
    # the console
    p = Progress(Storage.create(tmp_path / "p"), [BenchmarkStatus("digits", trials=5, seeds=1, concurrent=1, full_epochs=FULL)], io.StringIO())
    for tid, last, err in TRIALS:
        p.trial_started("digits", tid, tid)
        p.trial_finished("digits", tid, last, error="RuntimeError: x" if err else None)
    st = p.status["digits"]
    assert st.counts == record["counts"] and st.best.trial_id == "full-high" and st.best.val_map == 0.6
    lines = (tmp_path / "p" / STUDY_LOG).read_text().splitlines()
    assert "broken failed (RuntimeError: x), val mAP 95.00; best 60.00 (full-high)" in lines[3]
    assert "no-value completed; best 60.00 (full-high)" in lines[4]


def _t(tid, value, size, status="completed"):
    return {"trial_id": tid, "status": status, "val_map": value, "student_params": size}


def test_the_pareto_front_is_the_completed_trials_none_dominates_sorted_by_size():
    from study.outcome import pareto_front

    trials = [_t("a", 0.80, 100), _t("b", 0.85, 400), _t("c", 0.84, 400),  # c: b is better at the same size
              _t("d", 0.90, 1600), _t("e", 0.79, 1600),                       # e: dominated by a, b and d
              _t("f", 0.95, 50, status="stopped early"),                      # stopped: never on the front
              _t("g", float("nan"), 10), _t("h", 0.80, 100)]                  # NaN: never; h equals a: both stay
    front = pareto_front(trials, "val_map", "student_params")
    assert [t["trial_id"] for t in front] == ["a", "h", "b", "d"]


def test_the_optuna_rule_and_ours_agree_on_a_random_set():
    """Optuna's own best_trials of a two-direction study told the same values are our front."""
    import random

    import optuna

    from study.outcome import pareto_front

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = random.Random(1)
    trials = [_t(str(i), round(rng.uniform(0.5, 0.9), 2), rng.choice([100, 400, 1600])) for i in range(40)]
    study = optuna.create_study(directions=["maximize", "minimize"])
    for t in trials:
        trial = study.ask()
        trial.set_user_attr("id", t["trial_id"])
        study.tell(trial, [t["val_map"], t["student_params"]])
    theirs = sorted(t.user_attrs["id"] for t in study.best_trials)
    assert sorted(t["trial_id"] for t in pareto_front(trials, "val_map", "student_params")) == theirs


def test_spread_keeps_the_ends_and_spaces_the_rest():
    from study.outcome import spread

    front = [{"trial_id": str(i), "val_map": i / 10} for i in range(7)]
    assert [t["trial_id"] for t in spread(front, 3)] == ["0", "3", "6"]
    assert [t["trial_id"] for t in spread(front, 2)] == ["0", "6"]
    assert [t["trial_id"] for t in spread(front, 10)] == [str(i) for i in range(7)]
    assert [t["trial_id"] for t in spread(front, 1)] == ["6"]  # one point: the best val mAP
