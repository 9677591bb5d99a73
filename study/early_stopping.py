"""Early stopping of a search: ASHA on embedding-phase epochs, one ASHA per student width when the
space searches the width (a smaller student's val mAP is lower by construction: it is compared
only with trials of its own width)."""
from __future__ import annotations

from typing import Any, Callable

from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from .names import EMBEDDING_EPOCH, OBJECTIVE, WIDTH
from .plan import BenchmarkPlan
from .search_space import shortest_curriculum


class PerGroupScheduler(FIFOScheduler):
    """A scheduler per group of trials (``group_of(trial)``), each made by ``make`` on the group's
    first trial: a trial's results reach only its group's scheduler, so it is stopped only by
    comparison with its own group. Trials run in creation order (FIFO)."""

    def __init__(self, make: Callable[[], TrialScheduler], group_of: Callable[[Trial], Any]) -> None:
        super().__init__()
        self._make, self._group_of = make, group_of
        self.groups: dict[Any, TrialScheduler] = {}

    def _scheduler(self, trial: Trial) -> TrialScheduler:
        key = self._group_of(trial)
        if key not in self.groups:
            self.groups[key] = self._make()
        return self.groups[key]

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        return True  # every group's scheduler has its own metric and mode

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        self._scheduler(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        self._scheduler(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        return self._scheduler(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self._scheduler(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self._scheduler(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "\n".join(f"{key}: {s.debug_string()}" for key, s in self.groups.items())


def trial_width(trial: Trial) -> Any:
    """The student width a trial sampled (Tune nests ``student/width``), None without one."""
    return (trial.config or {}).get("student", {}).get(WIDTH)


def scheduler_for(bp: BenchmarkPlan) -> TrialScheduler:
    """ASHA on embedding-phase epochs: no trial is judged inside its curriculum, and rungs compare
    trials after equal numbers of embedding epochs (``max_t``: the shortest curriculum's); one ASHA
    per width for a space with widths; FIFO (none) with ``early_stopping: false``."""
    budget = bp.space.budget
    if not budget.early_stopping:
        return FIFOScheduler()
    max_t = bp.base.student.epochs - shortest_curriculum(bp.space)

    def asha() -> ASHAScheduler:
        return ASHAScheduler(time_attr=EMBEDDING_EPOCH, metric=OBJECTIVE, mode="max", max_t=max_t,
                             grace_period=min(budget.grace_period, max_t), reduction_factor=budget.reduction_factor)

    if bp.space.student.width is None:
        return asha()
    return PerGroupScheduler(asha, trial_width)
