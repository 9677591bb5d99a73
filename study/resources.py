"""Per-trial resources and how many trials run at once: from the nodes the cluster has now and
those its autoscaler may start (:class:`ClusterShape`), or from ``--max-concurrent-trials``."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence

from indistill.common.errors import ConfigError

BACKENDS = (None, "nccl", "gloo")

# Ray Train's controller collects a worker's report once per health-check poll (default 2 s) and a
# worker's next report blocks until then, so a trial whose epochs are shorter than the poll interval
# waits ~2 s per epoch (measured: 88 % of a digits trial's wall time). ``study.ray_runs.init_ray`` puts
# this variable into every Ray process of the study, once, through ray.init's runtime_env; a value
# the user set in the driver's environment wins.
REPORT_POLL_ENV = ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
# On remote storage Tune uploads its experiment state (what --resume restores) at most every
# SyncConfig.sync_period (Ray's default: 300 s, so a killed driver could lose 5 minutes of finished
# trials); the study uploads it at most every INDISTILL_STATE_SYNC_S seconds (default 30).
STATE_SYNC_ENV = ("INDISTILL_STATE_SYNC_S", "30")
# Ray Train waits this long for a run's workers to be placed before it counts a start-up failure;
# the study allows no retry of it (``study.ray_runs.fit``), so a run that no node can host (the
# cluster shrank below one run's resources) fails with one line after this many seconds instead of
# retrying forever. Set like REPORT_POLL_ENV; time for an autoscaler to start a node fits in it.
PLACEMENT_TIMEOUT_ENV = ("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "600")


def state_sync_period() -> float:
    """:data:`STATE_SYNC_ENV`'s seconds (checked before Ray starts: a malformed value is one line)."""
    text = os.environ.get(STATE_SYNC_ENV[0], STATE_SYNC_ENV[1])
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"${STATE_SYNC_ENV[0]}: expected seconds, got {text!r}") from None


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

    def max_concurrent(self, cluster: Mapping[str, float]) -> int:
        """How many trials fit ``cluster``'s resources taken as one node (see :func:`concurrency`)."""
        return concurrency(self, ClusterShape(up=(cluster,))).count


def default_gpus_per_trial(cluster: Mapping[str, float], workers: int) -> float:
    """No GPU: 0. One-worker trials share a GPU four ways (tiny students); DDP trials: one GPU per worker."""
    if cluster.get("GPU", 0) < 1:
        return 0.0
    return _gpu_default(workers)


def _gpu_default(workers: int) -> float:
    return 0.25 if workers == 1 else float(workers)


# ------------------------------------------------------------------ what the cluster is and may become

#: the head in :func:`grown_nodes`' list (not a node type the autoscaler starts)
HEAD = "head"
#: per-trial flags, by the resource they ask for
FLAGS = {"GPU": "--gpus-per-trial", "CPU": "--cpus-per-trial"}


@dataclass(frozen=True)
class NodeType:
    """A worker node type the cluster's autoscaler may start: one node's resources, and how many
    nodes of it at most (those up now included)."""

    name: str
    resources: Mapping[str, float]
    max_workers: int


@dataclass(frozen=True)
class ClusterShape:
    """The nodes up now and, when known, what the autoscaler may add (:func:`read_cluster_shape`)."""

    up: tuple[Mapping[str, float], ...] = ()  # each alive node's resources, now
    head: Mapping[str, float] | None = None  # the head's (also in ``up``); it stays up
    node_types: tuple[NodeType, ...] | None = None  # None: no autoscaler, or its node types are unknown
    max_workers: int | None = None  # the autoscaler's cap on worker nodes, all types together
    this_machine: bool = False  # one node, the driver's own machine (a local Ray)

    def now(self) -> dict[str, float]:
        """The resources up now, summed over the nodes."""
        total: dict[str, float] = {}
        for node in self.up:
            for key, value in node.items():
                total[key] = total.get(key, 0.0) + value
        return total

    def gpu_types(self) -> list[str]:
        """The node types that may start with at least one GPU."""
        return [t.name for t in self.node_types or () if t.max_workers > 0 and t.resources.get("GPU", 0) >= 1]


class Concurrency(NamedTuple):
    """How many trials (or final runs) run at once, and why, in words for the plan line."""

    count: int
    reason: str

    def text(self, runs: int, what: str) -> tuple[int, str]:
        """For ``runs`` runs (called ``what``): how many at once, and the plan line's words."""
        n = max(1, min(runs, self.count))
        if n < self.count:
            return n, f"{n} at a time: all its {what} (room for {self.count}: {self.reason})"
        return n, f"{n} at a time: {self.reason}"


def _slots(node: Mapping[str, float], need: Mapping[str, float]) -> int:
    """How many workers asking ``need`` fit one node."""
    return min(math.floor(node.get(key, 0.0) / amount + 1e-9) for key, amount in need.items() if amount > 0)


def _workers(nodes: Sequence[tuple[str, Mapping[str, float], int]], need: Mapping[str, float]) -> int:
    return sum(count * _slots(res, need) for _name, res, count in nodes)


def grown_nodes(shape: ClusterShape, res: TrialResources) -> list[tuple[str, Mapping[str, float], int]]:
    """(name, resources, count) of the nodes the cluster can grow to for trials of ``res``: the
    head, then each node type at its ``max_workers`` (the types that hold the most of the trials'
    workers first while the cluster-wide ``max_workers`` allows; types that hold none are left out)."""
    need = res.per_worker()
    types = shape.node_types or ()
    left = math.inf if shape.max_workers is None else shape.max_workers
    counts = {}
    for node_type in sorted(types, key=lambda t: -_slots(t.resources, need)):
        counts[node_type.name] = int(min(node_type.max_workers, left))
        if counts[node_type.name] > 0 and _slots(node_type.resources, need) > 0:
            left -= counts[node_type.name]
    head = [(HEAD, shape.head, 1)] if shape.head is not None else []
    return head + [(t.name, t.resources, counts[t.name]) for t in types
                   if counts[t.name] > 0 and _slots(t.resources, need) > 0]


def _amount(nodes: Sequence[tuple[str, Mapping[str, float], int]], res: TrialResources) -> str:
    """The resource that bounds the trials on ``nodes`` (those that hold one), as '8 GPUs'."""
    need = res.per_worker()
    held = [(res_, count) for _name, res_, count in nodes if _slots(res_, need) > 0]
    total = {key: sum(count * r.get(key, 0.0) for r, count in held) for key in need}
    key = min(sorted(need, key=lambda k: k != "GPU"), key=lambda k: math.floor(total[k] / need[k] + 1e-9))
    return counted(total[key], key)


def counted(value: float, unit: str) -> str:
    """``2 workers``, ``1 GPU``, ``0.5 GPUs``."""
    return f"{value:g} {unit}" + ("" if value == 1 else "s")


def concurrency(res: TrialResources, shape: ClusterShape, explicit: int | None = None) -> Concurrency:
    """How many trials of ``res`` run at once, and why: ``explicit`` (``--max-concurrent-trials``);
    else what fits the nodes the cluster can grow to (the head plus every node type at its
    ``max_workers``) when the autoscaler's node types are known, or what is up now when that is
    more; else what fits the nodes up now (at least one). Each node holds whole workers.

    A trial that fits no node up now nor any node type (types known) is a one-line ConfigError:
    it would wait for ever."""
    need = res.per_worker()
    up = [("", node, 1) for node in shape.up]
    now = _workers(up, need) // res.workers
    if shape.node_types is not None:
        grown = grown_nodes(shape, res)
        later = _workers(grown, need) // res.workers
        if later == 0 and now == 0:
            raise _fits_nowhere(res, shape)
        types = ", ".join(f"{name} x{count}" for name, _res, count in grown if name != HEAD)
        if explicit is None and types and later >= now:
            return Concurrency(later, f"the cluster can grow to {_amount(grown, res)} (node types {types})")
    if explicit is not None:
        return Concurrency(explicit, "--max-concurrent-trials")
    if shape.this_machine:
        return Concurrency(max(1, now), f"this machine's {_amount(up, res)}")
    unknown = " (the autoscaler's node types are unknown)" if shape.node_types is None else ""
    return Concurrency(max(1, now), f"the cluster's {_amount(up, res)} up now{unknown}")


def _fits_nowhere(res: TrialResources, shape: ClusterShape) -> ConfigError:
    """The one-line error for trials that fit no node up now nor any node type, naming the resource."""
    need = res.per_worker()
    nodes = [*shape.up, *(t.resources for t in shape.node_types or () if t.max_workers > 0)]
    types = ", ".join(t.name for t in shape.node_types or ()) or "none"
    where = f"no node up now nor any node type of the cluster's autoscaler ({types})"
    short = [k for k in sorted(need, key=lambda k: k != "GPU") if all(n.get(k, 0.0) < need[k] for n in nodes)]
    if not short:  # each resource fits some node, never all on one
        asks = " and ".join(counted(v, k) for k, v in need.items())
        return ConfigError(f"{FLAGS['CPU']}/{FLAGS['GPU']}: a trial's worker asks {asks}, which {where} holds at once")
    key = short[0]
    most = max((n.get(key, 0.0) for n in nodes), default=0.0)
    if key == "GPU" and most == 0:
        return ConfigError(f"--gpus-per-trial: {res.gpus:g} GPU(s) per trial, but {where} has a GPU; "
                           f"use --gpus-per-trial 0 for a CPU study")
    return ConfigError(f"{FLAGS.get(key, FLAGS['CPU'])}: a trial's worker asks {counted(need[key], key)}, but no node "
                       f"up now nor any node type of the cluster's autoscaler ({types}) has more than {counted(most, key)}")


def gpus_per_trial(given: float | None, shape: ClusterShape, workers: int, *, remote: bool) -> tuple[float, str]:
    """``--gpus-per-trial``, else its default, and a line saying why when that default does not come
    from GPUs up now. GPUs up now, or node types with GPUs: GPU trials (0.25 GPU for one-worker
    trials, one GPU per DDP worker). On a cluster joined with --address/$RAY_ADDRESS, node types
    known without a GPU: CPU trials, said so; nothing known: a one-line ConfigError (never a silent
    CPU study). A local Ray without GPUs: CPU trials, as always."""
    if given is not None:
        return given, ""
    if shape.now().get("GPU", 0) >= 1:
        return _gpu_default(workers), ""
    gpu_types = shape.gpu_types()
    if gpu_types:
        gpus = _gpu_default(workers)
        return gpus, (f"GPU trials: --gpus-per-trial {gpus:g} by default, as no GPU is up yet but the autoscaler can "
                      f"start node types with GPUs ({', '.join(gpu_types)}); --gpus-per-trial 0 runs a CPU study")
    if not remote:
        return 0.0, ""
    if shape.node_types is not None:
        types = ", ".join(t.name for t in shape.node_types) or "none"
        return 0.0, f"CPU trials: no node up now nor any node type of the cluster's autoscaler ({types}) has a GPU"
    raise ConfigError("--gpus-per-trial: the cluster has no GPU up now and its autoscaler's node types are unknown; "
                      "give --gpus-per-trial N for GPU trials (or 0 for a CPU study)")


# ------------------------------------------------------------------ reading it from Ray (the one place)


def read_cluster_shape() -> ClusterShape:
    """The connected Ray cluster's :class:`ClusterShape`: its alive nodes (``ray.nodes()``) and the
    autoscaler's node types (:func:`autoscaler_node_types`)."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    up = tuple(_plain(n["Resources"]) for n in nodes)
    head = next((_plain(n["Resources"]) for n in nodes if "node:__internal_head__" in n["Resources"]), None)
    this_machine = len(nodes) == 1 and nodes[0].get("NodeManagerAddress") == ray.util.get_node_ip_address()
    types, cap = autoscaler_node_types(ray.get_runtime_context().gcs_address)
    return ClusterShape(up, head, types, cap, this_machine)


def this_machine_shape() -> ClusterShape:
    """This machine as a local Ray would see it, read without starting Ray (for ``run --dry-run``):
    the CPUs Ray detects (its own count, container CPU limits included; the CPUs this process may run
    on if that internal helper moved) and the CUDA GPUs torch sees; one node, the head."""
    try:
        from ray._private.utils import get_num_cpus  # what ray.init(num_cpus=None) uses; no public API

        cpus = float(get_num_cpus(override_docker_cpu_warning=True))
    except Exception:
        cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    import torch

    node = {"CPU": cpus, "GPU": float(torch.cuda.device_count() if torch.cuda.is_available() else 0)}
    return ClusterShape(up=(node,), head=node, this_machine=True)


def _plain(resources: Mapping[str, float]) -> dict[str, float]:
    """A node's resources without Ray's per-node markers (``node:<ip>``)."""
    return {k: float(v) for k, v in resources.items() if not k.startswith("node:")}


def autoscaler_node_types(gcs_address: str) -> tuple[tuple[NodeType, ...] | None, int | None]:
    """The worker node types the cluster's autoscaler may start and its cap on worker nodes, or
    (None, None) when unknown. Ray 2.60 has no public API for them; two internal sources, in turn:

    1. the cluster config in the GCS (``ray._private.state.state.get_cluster_config()``, what Ray
       Train and Ray Data read for the same question; reported by the v2 autoscaler of later Ray
       releases and by some platforms, empty on Ray 2.60's own autoscalers);
    2. the autoscaling config file that this cluster's autoscaler (``monitor.py --gcs-address=...
       --autoscaling-config=...``) was started with, when it runs on this machine: the head, where
       ``ray up`` puts it (``~/ray_bootstrap_config.yaml``) and where ``ray submit``, ``ray attach``
       and ``ray job submit`` run the driver.
    """
    try:
        found = _gcs_node_types()
        if found is not None:
            return found, None
        path = _autoscaling_config_file(gcs_address)
        if path is None:
            return None, None
        import yaml

        with open(path) as f:
            return node_types_from_config(yaml.safe_load(f))
    except Exception:  # an internal API that changed, a file that went away: unknown, never a failed study
        return None, None


def _gcs_node_types() -> tuple[NodeType, ...] | None:
    from ray._private.state import state

    config = state.get_cluster_config()
    groups = list(config.node_group_configs) if config is not None else []
    if not groups or any(g.max_count < 0 for g in groups):  # -1: no upper bound, nothing to derive from
        return None
    return tuple(NodeType(g.name, {k: float(v) for k, v in g.resources.items()}, int(g.max_count)) for g in groups)


def _autoscaling_config_file(gcs_address: str) -> str | None:
    """The ``--autoscaling-config`` of the autoscaler process on this machine that serves the GCS at
    ``gcs_address`` (matched by port), as ``ray.init("auto")`` finds a cluster by its processes."""
    import psutil  # Ray's own dependency (vendored with it)

    port = gcs_address.rsplit(":", 1)[-1]
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info["cmdline"] or []
        if not any(os.path.basename(a) == "monitor.py" for a in args[:3]):
            continue
        flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
        path = flags.get("autoscaling-config")
        if path and flags.get("gcs-address", "").rsplit(":", 1)[-1] == port:
            path = os.path.expanduser(path)
            return path if os.path.isabs(path) else os.path.join(proc.cwd(), path)
    return None


def node_types_from_config(config: Mapping) -> tuple[tuple[NodeType, ...], int | None]:
    """The worker node types (all but ``head_node_type``) of an autoscaling config (a cluster
    launcher YAML such as cluster.yaml) and its cluster-wide ``max_workers``. A type's missing
    ``max_workers`` is 0, as for Ray's autoscaler."""
    head = config.get("head_node_type")
    types = tuple(
        NodeType(name, {k: float(v) for k, v in (spec.get("resources") or {}).items()}, int(spec.get("max_workers", 0)))
        for name, spec in (config.get("available_node_types") or {}).items() if name != head
    )
    cap = config.get("max_workers")
    return types, None if cap is None else int(cap)
