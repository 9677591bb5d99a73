"""Test seam for fault injection into a running study, outside the production code.

:func:`diverge_trials_pruning_randomly` is a Ray ``worker_process_setup_hook``: started with it, every
Ray worker of the study makes the trials that sample the ``random`` pruning criterion diverge for
real: the trial's auxiliary network is poisoned with NaN weights, so the curriculum's loss becomes
NaN in the first epoch and the training loop raises its ``DivergedError``.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.abc
import importlib.util
import sys

#: the pruning criterion whose trials diverge
POISONED_CRITERION = "random"
TARGET = "study.workers"


def runtime_env_extra() -> dict:
    """The ``runtime_env`` field that installs the seam in every Ray worker of the study. The hook
    is pickled by value: Ray's workers cannot import this ``tests`` package."""
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return {"worker_process_setup_hook": diverge_trials_pruning_randomly}


def _poison(workers) -> None:
    real = workers.train_student

    def train_student(ctx, method, artifacts, **kwargs):
        if ctx.cfg.prune.criterion == POISONED_CRITERION and artifacts.protocol == "val" and artifacts.auxiliary is not None:
            auxiliary = copy.deepcopy(artifacts.auxiliary)
            for p in auxiliary.parameters():
                p.data.fill_(float("nan"))
            poisoned = dataclasses.replace(artifacts.results["auxiliary"], network=auxiliary)
            artifacts = dataclasses.replace(artifacts, results={**artifacts.results, "auxiliary": poisoned})
        return real(ctx, method, artifacts, **kwargs)

    workers.train_student = train_student


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches :data:`TARGET` once something imports it. Importing it here instead would load torch
    and Ray Train into every Ray worker as it starts, which measurably slows the whole study."""

    def find_spec(self, name, path=None, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _poison(module)

        spec.loader.exec_module = exec_module
        return spec


def diverge_trials_pruning_randomly() -> None:
    if TARGET in sys.modules:
        _poison(sys.modules[TARGET])
    else:
        sys.meta_path.insert(0, _PatchOnImport())
