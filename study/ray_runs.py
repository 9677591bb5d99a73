"""The study's Ray plumbing: ``ray.init`` with the study's environment, one quiet Ray Train run,
and the Tune function trainables that launch a search trial and a final seed as Ray Train runs."""
from __future__ import annotations

import dataclasses
import os
import re
import time
from dataclasses import dataclass
from typing import Callable

import ray
import ray.train
from ray import tune
from ray.train.torch import TorchConfig, TorchTrainer
from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
from ray.tune.integration.ray_train import TuneReportCallback

from indistill.config.run import config_to_dict
from indistill.engine.plan import artifact_files

from .failures import Failures, NodeLostError, NoNodeError
from .names import SIZE_OBJECTIVES
from .plan import BenchmarkPlan, StudyPlan
from .resources import PLACEMENT_TIMEOUT_ENV, REPORT_POLL_ENV, TrialResources, state_sync_period
from .params import trial_config
from .storage import Storage
from .tblog import AUTO_LOGGERS_ENV
from .warm_start import hparams_value as warm_start_hparams
from .workers import final_seed, run_trial  # the Ray Train runs' entry points


QUIET = ray.train.LoggingConfig(log_level="WARNING")  # our own per-epoch lines are the progress output


def sync_config() -> tune.SyncConfig:
    """Tune's upload period of the experiment state (:func:`~study.resources.state_sync_period`)."""
    return tune.SyncConfig(sync_period=state_sync_period())


def runtime_env(**extra) -> dict:
    """The study's Ray job environment: :data:`~study.resources.REPORT_POLL_ENV` and
    :data:`~study.resources.PLACEMENT_TIMEOUT_ENV` in every Ray process of the study (the driver's
    value when set, else the study's), plus ``extra`` runtime_env fields. Set once, by
    :func:`init_ray`, not by each run."""
    env = {name: os.environ.get(name, default) for name, default in (REPORT_POLL_ENV, PLACEMENT_TIMEOUT_ENV)}
    return {"env_vars": env, **extra}


def init_ray(address: str | None = None, *, runtime_env_extra: dict | None = None, **kwargs) -> None:
    """``ray.init`` with the study's :func:`runtime_env` (``runtime_env_extra``: more of its fields),
    and the driver's own Tune setting :data:`~study.tblog.AUTO_LOGGERS_ENV` unless the user set it:
    the one place the study sets environment variables."""
    os.environ.setdefault(*AUTO_LOGGERS_ENV)
    ray.init(address=address, runtime_env=runtime_env(**(runtime_env_extra or {})), **kwargs)


def fit(fn: Callable[[dict], None], config: dict, resources: TrialResources, name: str, storage_path: str,
        max_failures: int, **run_options) -> None:
    """One quiet Ray Train run of ``fn`` on ``resources``; a run whose workers no node could host
    within :data:`~study.resources.PLACEMENT_TIMEOUT_ENV`'s seconds raises :class:`NoNodeError`."""
    failures = ray.train.FailureConfig(max_failures=max_failures, controller_failure_limit=0)
    trainer = TorchTrainer(
        fn, train_loop_config=config, scaling_config=_scaling(resources),
        torch_config=TorchConfig(backend=resources.backend),
        run_config=ray.train.RunConfig(name=name, storage_path=storage_path, logging_config=QUIET,
                                       failure_config=failures, **run_options),
    )
    try:
        trainer.fit()
    except ray.train.ControllerError as exc:
        if not isinstance(exc.controller_failure, WorkerGroupStartupTimeoutError):
            raise
        raise NoNodeError(_no_node(resources)) from None
    except (ray.train.WorkerGroupError, ray.exceptions.RayActorError) as exc:
        lost = _lost_nodes(str(exc))
        if not lost:
            raise
        raise NodeLostError(f"node lost: {', '.join(lost)} died under the run") from None


#: how a Ray Train worker's failure names the node it ran on
_WORKER_NODE = re.compile(r"node_id='([0-9a-f]+)',\s*node_ip='([^']*)'")
#: how an actor whose node died says so
_DEAD_NODE = re.compile(r"node has died\. Node Id: ([0-9a-f]+)")


def _lost_nodes(text: str, wait_s: float = 20.0) -> list[str]:
    """The nodes a run's failure names that are dead (``ip (node <id>)``), waiting up to
    ``wait_s`` for the cluster to declare a node whose workers stopped answering dead."""
    named = {m.group(1): m.group(2) for m in _WORKER_NODE.finditer(text)}
    named.update({m.group(1): "" for m in _DEAD_NODE.finditer(text) if m.group(1) not in named})
    if not named or not ("health check failed" in text or "unavailable" in text or "died" in text):
        return []
    deadline = time.monotonic() + wait_s
    while True:
        alive = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        dead = [f"{ip} (node {node[:8]})".strip() for node, ip in named.items() if node not in alive]
        if dead or time.monotonic() > deadline:
            return dead
        time.sleep(1.0)


def _no_node(resources: TrialResources) -> str:
    """One line: what the run needs, what the cluster's live nodes have."""
    need = ", ".join(f"{v:g} {k}" for k, v in resources.per_worker().items())
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    have = "; ".join(", ".join(f"{node.get(k, 0):g} {k}" for k in resources.per_worker()) for node in nodes) or "none"
    name, default = PLACEMENT_TIMEOUT_ENV
    job_env = (ray.get_runtime_context().runtime_env or {}).get("env_vars") or {}  # what the controller read
    waited = float(job_env.get(name, os.environ.get(name, default)))
    return (f"no node can host the run: it needs {resources.workers} worker(s) of {need}; the cluster's "
            f"{len(nodes)} live node(s) have: {have}; waited {waited:g} s (${name})")


def _scaling(resources: TrialResources) -> ray.train.ScalingConfig:
    return ray.train.ScalingConfig(
        num_workers=resources.workers, use_gpu=resources.use_gpu, resources_per_worker=resources.per_worker()
    )


def ray_storage(storage: Storage) -> str:
    """Where Ray Train and Tune keep their runs' state: ``<study>/ray``."""
    return storage.join("ray")


def train_run(fn: Callable[[dict], None], name: str, config: dict, plan: StudyPlan, workers: int) -> None:
    """One Ray Train run of ``fn`` with ``workers`` workers of the study's per-worker resources (one retry)."""
    res = dataclasses.replace(plan.trial_resources, workers=workers,
                              gpus=(float(workers) if plan.trial_resources.use_gpu else 0.0),
                              cpus=plan.trial_resources.cpus / plan.trial_resources.workers * workers)
    fit(fn, config, res, name, ray_storage(plan.storage), max_failures=1)


def as_trainable(fn: Callable[[dict, object], None], name: str, spec: object):
    """``fn`` as a Tune trainable registered under ``name``: Tune registers trainables by name
    cluster-wide, so the concurrent searches of several benchmarks need one name each. The trial
    function only launches a Ray Train run, whose workers hold the CPUs/GPUs; a placement group
    may not be empty, so the trial reserves a sliver of memory instead."""

    def run(params: dict, spec: object) -> None:
        fn(params, spec)

    run.__name__ = run.__qualname__ = name
    return tune.with_resources(tune.with_parameters(run, spec=spec), {"CPU": 0, "memory": 32 * 1024**2})


@dataclass(frozen=True)
class TrialSpec:
    """Constants a trial needs, passed through the object store."""

    plan: BenchmarkPlan
    storage: str
    ray_storage: str
    resources: TrialResources
    verbose: bool = False


def tune_trial(params: dict, spec: TrialSpec) -> None:
    """The Tune function trainable: one Ray Train run of the student stage for ``params``."""
    ctx = tune.get_context()
    trial_id = ctx.get_trial_id()
    plan = spec.plan
    cfg, hparams = trial_config(plan.base, params, plan.space)
    hparams.update(warm_start_hparams(plan, params))  # a warm-started study: each trial's origin
    config = {
        "cfg": config_to_dict(cfg), "hparams": hparams, "storage": spec.storage, "trial_id": trial_id,
        "trial_name": ctx.get_trial_name(), "verbose": spec.verbose,
        "started_at": time.time(),  # wall-clock start of the trial, for its Ray overhead
        "fetch": artifact_files(cfg, "val"),  # what the trial reads of the stage cache
        "curriculum_epochs": sum(cfg.student.curriculum.epochs),  # its embedding phase starts after them
    }
    if plan.space.student.width is not None:  # a frontier search: the student's size, reported every epoch
        from indistill.evaluation.size import student_size

        params_count, macs = student_size(cfg)
        config["size"] = {SIZE_OBJECTIVES["params"]: params_count, SIZE_OBJECTIVES["macs"]: macs}
    failures = Failures(Storage(spec.storage), plan.benchmark)
    failures.start_attempt(trial_id)
    try:
        # named after the trial (no timestamp): a retried trial resumes its own checkpoints
        fit(run_trial, config, spec.resources, f"{spec.plan.benchmark}-trial-{trial_id}", spec.ray_storage,
            max_failures=0, callbacks=[TuneReportCallback()], checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2))
    except Exception as exc:
        failures.record(trial_id, exc)  # before Tune sees the error: the Optuna record reads it
        raise


@dataclass(frozen=True)
class FinalSpec:
    """Constants of the final runs of one benchmark, passed through the object store."""

    benchmark: str
    config: dict
    ray_storage: str
    resources: TrialResources


def final_trial(params: dict, spec: FinalSpec) -> None:
    """The Tune function trainable of one final seed: one Ray Train run of ``final_seed``."""
    fit(final_seed, {**spec.config, "seed": params["seed"]}, spec.resources,
        f"{spec.benchmark}-final-seed{params['seed']}", spec.ray_storage, max_failures=1)


def tune_verbosity(plan: StudyPlan) -> int:
    """Tune's console output: none (our progress display instead) unless --verbose (its status tables)."""
    return 1 if plan.verbose else 0

