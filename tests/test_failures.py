"""A failed trial's reason: classified, recorded before Tune sees the error, read into the Optuna
record; a diverged trial is not retried, any other failure is (budget.max_failures)."""
import optuna
import pytest
from ray.train import WorkerGroupError

from indistill.engine.loop import DivergedError
from study.failures import (DIVERGED, ERROR, NO_NODE, NO_RECORD, NODE_LOST, Failures, NodeLostError, NoNodeError,
                            failure_file, failure_kind)
from study.names import OBJECTIVE
from study.optuna_record import RecordedOptunaSearch, optuna_storage
from study.storage import Storage

LOST = NodeLostError("node lost: 192.0.2.2 (node 18ddd88b) died under the run")
NAN = DivergedError("[student/indistill] loss became nan in epoch 1 of 4")


@pytest.mark.parametrize("exc, kind", [
    (LOST, NODE_LOST),
    (NoNodeError("no node can host the run: it needs 1 worker(s) of 1 CPU"), NO_NODE),
    (NAN, DIVERGED),
    (WorkerGroupError("rank 0 failed", {0: NAN}), DIVERGED),  # Ray Train's wrapper of a worker's error
    # a worker's error that reached the driver as text only (its type did not unpickle)
    (RuntimeError('Traceback (most recent call last):\n  File "loop.py", line 5, in run\n    step()\n'
                  'indistill.engine.loop.DivergedError: [student] loss became nan'), DIVERGED),
    (WorkerGroupError("rank 0 failed", {0: ValueError("bad")}), ERROR),
    (RuntimeError("x"), ERROR),
])
def test_the_kind_of_a_failure(exc, kind):
    assert failure_kind(exc) == kind


def test_a_diverged_trial_is_not_retried_and_any_other_failure_is(tmp_path):
    failures = Failures(Storage.create(tmp_path), "digits")
    failures.start_attempt("t1")  # a first attempt: nothing recorded, nothing raised
    assert failures.record("t1", LOST) == {"kind": NODE_LOST, "reason": f"NodeLostError: {LOST}"}
    assert (tmp_path / failure_file("digits", "t1")).is_file()
    failures.start_attempt("t1")  # the retry of a lost node's trial runs, and its old record goes
    assert failures.read("t1") is None
    failures.record("t2", NAN)
    for _retry in range(2):  # every retry of a divergence stops at once, with the divergence's reason
        with pytest.raises(DivergedError, match=r"^\[student/indistill\] loss became nan in epoch 1 of 4 \(a divergence is "
                                                r"not retried\)$"):
            failures.start_attempt("t2")
    assert failures.read("t2")["kind"] == DIVERGED  # kept: the record still says why
    logs = {t: [line[20:] for line in (tmp_path / "digits/logs/trials" / f"{t}.log").read_text().splitlines()]
            for t in ("t1", "t2")}
    assert logs["t1"] == [f"[trial] failed (node lost): NodeLostError: {LOST}",
                          f"[trial] retried after it failed (node lost): NodeLostError: {LOST}"]
    assert logs["t2"] == [f"[trial] failed (diverged): DivergedError: {NAN}",
                          *[f"[trial] not retried: it diverged (DivergedError: {NAN})"] * 2]


def _space(trial) -> None:
    trial.suggest_float("x", 0.0, 1.0)


def test_a_failed_trial_is_fail_in_the_optuna_record_with_its_reason(tmp_path):
    failures = Failures(Storage.create(tmp_path / "study"), "digits")
    searcher = RecordedOptunaSearch(space=_space, metric=OBJECTIVE, mode="max", study_name="digits",
                                    storage=optuna_storage(tmp_path / "o.db"), full_epochs=4, failures=failures)
    for tid in ("lost", "diverged", "silent", "fine", "no-value"):
        searcher.suggest(tid)
    failures.record("lost", LOST)
    failures.record("diverged", WorkerGroupError("rank 0 failed", {0: NAN}))
    searcher.on_trial_complete("lost", {"epoch": 2, OBJECTIVE: 0.5, "training_iteration": 2}, error=True)
    searcher.on_trial_complete("diverged", None, error=True)
    searcher.on_trial_complete("silent", None, error=True)  # its process died with its node: no record
    searcher.on_trial_complete("fine", {"epoch": 4, OBJECTIVE: 0.6, "training_iteration": 4})
    searcher.on_trial_complete("no-value", {"epoch": 4, "training_iteration": 4})
    trials = optuna.load_study(study_name="digits", storage=f"sqlite:///{tmp_path / 'o.db'}").trials
    assert [t.state.name for t in trials] == ["FAIL", "FAIL", "FAIL", "COMPLETE", "FAIL"]
    got = [(t.user_attrs.get("fail_kind"), t.user_attrs.get("fail_reason")) for t in trials]
    assert got == [(NODE_LOST, f"NodeLostError: {LOST}"),
                   (DIVERGED, f"DivergedError: {NAN}"),  # the worker's own error
                   (ERROR, NO_RECORD), (None, None), (ERROR, "its last result has no val mAP")]
