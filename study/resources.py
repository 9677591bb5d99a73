"""Per-trial resources and how many trials run at once."""
from __future__ import annotations

import math
from dataclasses import dataclass

BACKENDS = (None, "nccl", "gloo")

# Ray Train's controller collects a worker's report once per health-check poll (default 2 s) and a
# worker's next report blocks until then, so a trial whose epochs are shorter than the poll interval
# waits ~2 s per epoch (measured: 88 % of a digits trial's wall time). ``study.runner.init_ray`` puts
# this variable into every Ray process of the study, once, through ray.init's runtime_env; a value
# the user set in the driver's environment wins.
REPORT_POLL_ENV = ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
# On remote storage Tune uploads its experiment state (what --resume restores) at most every
# SyncConfig.sync_period (Ray's default: 300 s, so a killed driver could lose 5 minutes of finished
# trials); the study uploads it at most every INDISTILL_STATE_SYNC_S seconds (default 30).
STATE_SYNC_ENV = ("INDISTILL_STATE_SYNC_S", "30")


@dataclass(frozen=True)
class TrialResources:
    """Resources of one trial's Ray Train run, split evenly over its workers."""

    workers: int = 1
    gpus: float = 0.0  # per trial
    cpus: float = 1.0  # per trial
    backend: str | None = None  # torch.distributed backend; None: nccl with GPUs, else gloo

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"--dist-backend: unknown backend {self.backend!r}; choose from: auto, nccl, gloo")
        if self.workers < 1:
            raise ValueError(f"--workers-per-trial: must be >= 1, got {self.workers}")
        if self.gpus < 0 or self.cpus <= 0:
            raise ValueError("--gpus-per-trial must be >= 0 and --cpus-per-trial > 0")
        per_worker = self.gpus / self.workers
        if self.workers > 1 and self.gpus > 0 and (per_worker < 1 or per_worker != int(per_worker)):
            raise ValueError(
                f"--gpus-per-trial: multi-worker (DDP) trials need whole GPUs per worker; "
                f"{self.gpus} GPUs over {self.workers} workers is {per_worker:g} each"
            )

    @property
    def use_gpu(self) -> bool:
        return self.gpus > 0

    def per_worker(self) -> dict[str, float]:
        res = {"CPU": self.cpus / self.workers}
        if self.use_gpu:
            res["GPU"] = self.gpus / self.workers
        return res

    def max_concurrent(self, cluster: dict[str, float]) -> int:
        """How many trials fit the cluster at once (GPUs / GPUs per trial, bounded by CPUs)."""
        limits = [math.floor(cluster.get("CPU", 0) / self.cpus + 1e-9)]
        if self.use_gpu:
            limits.append(math.floor(cluster.get("GPU", 0) / self.gpus + 1e-9))
        return max(1, min(limits))


def default_gpus_per_trial(cluster: dict[str, float], workers: int) -> float:
    """No GPU: 0. One-worker trials share a GPU four ways (tiny students); DDP trials: one GPU per worker."""
    if cluster.get("GPU", 0) < 1:
        return 0.0
    return 0.25 if workers == 1 else float(workers)
