"""The Optuna side of a search: honest trial states, persisted where Optuna's own tools open it.

Ray's ``OptunaSearch`` tells Optuna COMPLETE for every trial that reported a value, including the
ones ASHA stopped early, so TPE would model truncated val mAPs as final. :class:`RecordedOptunaSearch`
tells PRUNED for a trial that stopped before its full budget (its per-epoch intermediate values
are already reported), FAIL for an errored one, and COMPLETE only for a trial that ran every epoch.

The study lives in an SQLite file per benchmark (``<study>/<benchmark>/search/optuna.db``, study
name = the benchmark), so ``optuna.load_study`` and ``optuna-dashboard`` open it. For a remote
study directory the file is written in a local mirror and uploaded (:class:`RecordUpload`) after
every proposed and every finished trial, so a driver lost mid-search resumes with the record.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import optuna
from optuna.trial import TrialState
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from .failures import ERROR, NO_RECORD, Failures
from .names import WARM_START
from .outcome import FAILED, STOPPED, scored, trial_status
from .storage import Storage
from .warm_start import WarmPoint, enqueue

OPTUNA_FILE = "optuna.db"


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def optuna_storage(path: Path) -> optuna.storages.RDBStorage:
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.RDBStorage(sqlite_url(path))


@dataclass(frozen=True)
class RecordUpload:
    """Copies the local SQLite file ``local`` to ``rel`` of a remote study directory (picklable:
    Tune snapshots the searcher that holds it)."""

    storage: Storage
    local: str
    rel: str

    def __call__(self) -> None:
        self.storage.upload_file(Path(self.local), self.rel)


class RecordedOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that tells Optuna PRUNED / FAIL / COMPLETE as the trial really ended.

    ``full_epochs``: the student epochs of a trial that ran its whole budget (``epoch`` in its last
    report equals it); ``persist``: called after each proposed and each finished trial (the
    :class:`RecordUpload` of a remote study directory); ``failures``: where a failed trial's
    reason is read from, into its ``fail_kind`` and ``fail_reason`` user attributes;
    ``warm_start``: the configs the search evaluates first, each with its origin.
    """

    def __init__(self, *args, full_epochs: int, persist: RecordUpload | None = None,
                 failures: Failures | None = None, warm_start: Sequence[WarmPoint] = (), **kwargs) -> None:
        self.warm_start = tuple(warm_start)  # before OptunaSearch's __init__: it sets the study up
        super().__init__(*args, **kwargs)
        self.full_epochs = full_epochs
        self.persist = persist
        self.failures = failures

    def _setup_study(self, mode) -> None:
        """Optuna's study, with the warm start enqueued once (:func:`study.warm_start.enqueue`). Not
        Ray's ``points_to_evaluate``: it enqueues again whenever a searcher is built on the same
        persisted record, and without the origin. Tune's restore (``--resume``) unpickles the
        searcher and does not come here."""
        super()._setup_study(mode)
        enqueue(self._ot_study, self.warm_start)

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        origin = self._ot_trials[trial_id].user_attrs.get(WARM_START) if params is not None else None
        if origin:  # a warm-started trial: its origin travels in its config (trials.json, HParams)
            params[WARM_START] = origin
        if params is not None and getattr(self, "persist", None) is not None:
            self.persist()
        return params

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        ot_trial = self._ot_trials[trial_id]
        if self._ot_study._storage.get_trial(ot_trial._trial_id).state.is_finished():
            # a resumed study's searcher (restored from an older snapshot) may meet a trial the
            # persisted record already holds as finished: that record stays as it is
            self._completed_trials.add(trial_id)
            return
        result = result or {}
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        values = [result.get(m) for m in metrics]
        value, step = values[0], result.get(TRAINING_ITERATION)
        if len(metrics) == 1 and scored(value) and step is not None:
            # Tune hands a trial's last result (the one ASHA stopped it on, or its final epoch) only
            # here, not to on_trial_result: record it, as PRUNED trials are modelled by it (Optuna
            # takes no intermediate values in a multi-objective study)
            ot_trial.report(value, step)
        status = trial_status(error, int(result.get("epoch", 0)), self.full_epochs)
        told: float | list[float] | None = values if len(metrics) > 1 else value
        if status == FAILED or not all(scored(v) for v in values):
            state, told = TrialState.FAIL, None
            for key, text in self._failure(trial_id, error).items():
                ot_trial.set_user_attr(key, text)
        elif status == STOPPED:
            state, told = TrialState.PRUNED, None  # Optuna keeps its last intermediate value (single objective)
        else:
            state = TrialState.COMPLETE
        ot_trial.set_user_attr("tune_trial_id", trial_id)
        self._ot_study.tell(ot_trial, told, state=state)
        self._completed_trials.add(trial_id)
        if getattr(self, "persist", None) is not None:
            self.persist()

    def _failure(self, trial_id: str, error: bool) -> dict[str, str]:
        """``{fail_kind, fail_reason}`` of a FAIL trial: from its failure record, else what is known."""
        if not error:
            return {"fail_kind": ERROR, "fail_reason": "its last result has no val mAP"}
        failures = getattr(self, "failures", None)  # a searcher snapshotted before it had one
        entry = failures.read(trial_id) if failures is not None else None
        return {"fail_kind": entry["kind"], "fail_reason": entry["reason"]} if entry else {"fail_kind": ERROR,
                                                                                       "fail_reason": NO_RECORD}
