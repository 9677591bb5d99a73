"""How many trials run at once: from the node types an autoscaling cluster may start (hand-made
tables, cluster.yaml), ``--max-concurrent-trials``, this machine; the one-line error of a cluster
with no GPU in sight; and a study on Ray's fake autoscaler (the ``fake_multinode`` provider that
``ray.cluster_utils.AutoscalingCluster`` configures), whose trials run at once on nodes it starts.

The fake cluster is started and stopped here, by its processes' ids: ``AutoscalingCluster.start``
and ``shutdown`` run ``ray stop --force``, which ends every Ray process on the machine."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest
import yaml

from indistill.common.errors import ConfigError
from study.resources import (
    ClusterShape,
    Concurrency,
    NodeType,
    TrialResources,
    concurrency,
    gpus_per_trial,
    grown_nodes,
    node_types_from_config,
)

from .test_study import LEAN_CURRICULUM, LEAN_FIXED, TINY_SPACE

REPO = Path(__file__).resolve().parent.parent
HEAD = {"CPU": 8.0, "GPU": 0.0}  # cluster.yaml's head_cpu
QUARTER = TrialResources(workers=1, gpus=0.25, cpus=1.0)


def cluster_yaml() -> ClusterShape:
    """cluster.yaml as the study sees it right after ``ray up``: the head up, no worker yet."""
    types, cap = node_types_from_config(yaml.safe_load((REPO / "cluster.yaml").read_text()))
    return ClusterShape(up=(HEAD,), head=HEAD, node_types=types, max_workers=cap)


# ----------------------------------------------------------------------------- the node-type tables


def test_cluster_yaml_node_types_are_read_without_the_head():
    shape = cluster_yaml()
    assert shape.node_types == (NodeType("gpu_1x", {"CPU": 4.0, "GPU": 1.0}, 8),
                                NodeType("gpu_8x", {"CPU": 192.0, "GPU": 8.0}, 2))
    assert shape.max_workers == 10


def test_a_cluster_with_no_gpu_up_yet_runs_what_its_node_types_hold():
    shape = cluster_yaml()
    # the bug: what is up when the driver starts (the head, 0 GPUs) allows one 0.25-GPU trial at a time
    assert QUARTER.max_concurrent(shape.now()) == 1
    # gpu_1x: min(4 CPUs / 1, 1 GPU / 0.25) = 4 trials a node, x8; gpu_8x: min(192 / 1, 8 / 0.25) = 32, x2
    assert concurrency(QUARTER, shape) == Concurrency(4 * 8 + 32 * 2, "the cluster can grow to 24 GPUs "
                                                                      "(node types gpu_1x x8, gpu_8x x2)")
    # DDP trials of 2 workers x 1 GPU: 8 + 2 x 8 = 24 worker slots, 12 trials
    assert concurrency(TrialResources(workers=2, gpus=2.0, cpus=4.0), shape).count == 12
    # CPU trials go everywhere: 8 on the head, 4 x 8, 192 x 2
    assert concurrency(TrialResources(cpus=1.0), shape) == Concurrency(8 + 32 + 384, "the cluster can grow to "
                                                                                    "424 CPUs (node types gpu_1x x8, gpu_8x x2)")


def test_one_gpu_per_trial_on_eight_one_gpu_nodes():
    shape = ClusterShape(up=(HEAD,), head=HEAD, node_types=(NodeType("gpu_1x", {"CPU": 4, "GPU": 1}, 8),))
    assert concurrency(TrialResources(gpus=1.0, cpus=1.0), shape) == Concurrency(
        8, "the cluster can grow to 8 GPUs (node types gpu_1x x8)")
    assert concurrency(TrialResources(gpus=1.0, cpus=1.0), shape).text(20, "trials") == (
        8, "8 at a time: the cluster can grow to 8 GPUs (node types gpu_1x x8)")
    assert concurrency(TrialResources(gpus=1.0, cpus=1.0), shape).text(3, "seeds") == (
        3, "3 at a time: all its seeds (room for 8: the cluster can grow to 8 GPUs (node types gpu_1x x8))")


def test_the_cluster_wide_max_workers_goes_to_the_types_that_hold_the_most():
    types = (NodeType("small", {"CPU": 4, "GPU": 1}, 8), NodeType("big", {"CPU": 32, "GPU": 8}, 2))
    shape = ClusterShape(up=(HEAD,), head=HEAD, node_types=types, max_workers=3)
    one = TrialResources(gpus=1.0, cpus=1.0)
    assert [(name, count) for name, _res, count in grown_nodes(shape, one)] == [("head", 1), ("small", 1), ("big", 2)]
    assert concurrency(one, shape) == Concurrency(2 * 8 + 1, "the cluster can grow to 17 GPUs (node types small x1, big x2)")


def test_a_cpu_that_bounds_the_trials_is_named():
    shape = ClusterShape(up=({"CPU": 1},), head={"CPU": 1}, node_types=(NodeType("gpu", {"CPU": 1, "GPU": 1}, 2),))
    assert concurrency(TrialResources(gpus=0.5, cpus=1.0), shape) == Concurrency(
        2, "the cluster can grow to 2 CPUs (node types gpu x2)")


def test_more_up_now_than_the_node_types_add_and_unknown_node_types():
    gpu = {"CPU": 4.0, "GPU": 1.0}
    manual = ClusterShape(up=(HEAD, gpu, gpu, gpu), head=HEAD, node_types=(NodeType("gpu_1x", gpu, 1),))
    assert concurrency(TrialResources(gpus=1.0), manual) == Concurrency(3, "the cluster's 3 GPUs up now")
    unknown = ClusterShape(up=(HEAD,), head=HEAD)
    assert concurrency(QUARTER, unknown) == Concurrency(1, "the cluster's 0 GPUs up now (the autoscaler's node types "
                                                           "are unknown)")
    assert concurrency(TrialResources(cpus=2.0), unknown) == Concurrency(4, "the cluster's 8 CPUs up now (the "
                                                                            "autoscaler's node types are unknown)")


def test_max_concurrent_trials_and_this_machine():
    assert concurrency(QUARTER, cluster_yaml(), explicit=3) == Concurrency(3, "--max-concurrent-trials")
    laptop = ClusterShape(up=({"CPU": 2.0},), head={"CPU": 2.0}, this_machine=True)
    assert concurrency(TrialResources(cpus=1.0), laptop) == Concurrency(2, "this machine's 2 CPUs")
    assert concurrency(TrialResources(cpus=1.0), laptop, explicit=5) == Concurrency(5, "--max-concurrent-trials")


def test_a_trial_that_fits_no_node_the_cluster_can_have_is_one_line():
    cpu_only = ClusterShape(up=(HEAD,), head=HEAD, node_types=(NodeType("cpu_16", {"CPU": 16}, 4),))
    with pytest.raises(ConfigError) as exc:
        concurrency(QUARTER, cpu_only)
    assert str(exc.value) == ("--gpus-per-trial: 0.25 GPU(s) per trial, but no node up now nor any node type of the "
                              "cluster's autoscaler (cpu_16) has a GPU; use --gpus-per-trial 0 for a CPU study")
    with pytest.raises(ConfigError) as exc:
        concurrency(TrialResources(cpus=32.0), cpu_only, explicit=2)
    assert str(exc.value) == ("--cpus-per-trial: a trial's worker asks 32 CPUs, but no node up now nor any node type "
                              "of the cluster's autoscaler (cpu_16) has more than 16 CPUs")


# ----------------------------------------------------------------------------- the GPU default


def test_the_default_gpus_come_from_the_node_types_the_cluster_can_start():
    shape = cluster_yaml()
    assert gpus_per_trial(None, shape, 1, remote=True) == (
        0.25, "GPU trials: --gpus-per-trial 0.25 by default, as no GPU is up yet but the autoscaler can start node "
              "types with GPUs (gpu_1x, gpu_8x); --gpus-per-trial 0 runs a CPU study")
    assert gpus_per_trial(None, shape, 2, remote=True)[0] == 2.0  # DDP: one GPU per worker
    assert gpus_per_trial(0.0, shape, 1, remote=True) == (0.0, "")  # given: as given
    up = ClusterShape(up=(HEAD, {"CPU": 4.0, "GPU": 1.0}))
    assert gpus_per_trial(None, up, 1, remote=True) == (0.25, "")  # GPUs up now, as before
    cpu_only = ClusterShape(up=(HEAD,), head=HEAD, node_types=(NodeType("cpu_16", {"CPU": 16}, 4),))
    assert gpus_per_trial(None, cpu_only, 1, remote=True) == (
        0.0, "CPU trials: no node up now nor any node type of the cluster's autoscaler (cpu_16) has a GPU")


def test_a_cluster_with_no_gpu_in_sight_asks_for_gpus_per_trial():
    unknown = ClusterShape(up=(HEAD,), head=HEAD)
    with pytest.raises(ConfigError) as exc:
        gpus_per_trial(None, unknown, 1, remote=True)
    assert str(exc.value) == ("--gpus-per-trial: the cluster has no GPU up now and its autoscaler's node types are "
                              "unknown; give --gpus-per-trial N for GPU trials (or 0 for a CPU study)")
    laptop = ClusterShape(up=({"CPU": 2.0},), this_machine=True)
    assert gpus_per_trial(None, laptop, 1, remote=False) == (0.0, "")  # a local Ray: CPU trials, as always


def test_the_study_on_such_a_cluster_stops_with_one_line(tmp_path, capsys, monkeypatch):
    """``indistill-study run --address ...`` on a cluster with no GPU up and node types unknown, without
    --gpus-per-trial: exit 2 and one line, before any run (Ray's connection and the cluster are faked)."""
    import study.resources
    import study.ray_runs
    import study.runner
    from study.cli import main

    monkeypatch.setattr(study.ray_runs, "init_ray", lambda *_a, **_k: None)
    monkeypatch.setattr(study.resources, "read_cluster_shape", lambda: ClusterShape(up=(HEAD,), head=HEAD))
    monkeypatch.setattr(study.runner, "run_study", lambda *_a, **_k: pytest.fail("the study started"))
    monkeypatch.delenv("INDISTILL_DEBUG", raising=False)
    assert main(["run", "--address", "10.0.0.1:6379", "--storage", str(tmp_path / "s")]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == ["indistill-study: error: --gpus-per-trial: the cluster has no GPU up now and its "
                                "autoscaler's node types are unknown; give --gpus-per-trial N for GPU trials (or 0 for "
                                "a CPU study)"]
    assert not (tmp_path / "s" / "default" / "study.json").exists()


# ----------------------------------------------------------------------------- Ray's fake autoscaler

#: the fake cluster: a CPU-only head and one worker type with logical GPUs that starts at zero
GPU_NODE = {"CPU": 1, "GPU": 2, "object_store_memory": 100 * 1024**2}
MAX_GPU_NODES = 2
#: two-worker (data-parallel, gloo) trials of one GPU and half a CPU a worker: one trial a node, two
#: at once on the two nodes the autoscaler can start; three trials, so that a third waits
TRIAL_ARGS = ["--workers-per-trial", "2", "--gpus-per-trial", "2", "--cpus-per-trial", "1", "--dist-backend", "gloo"]
AUTOSCALING_SPACE = {**TINY_SPACE, "criteria": ["l1"], "curriculum": LEAN_CURRICULUM,
                     "fixed": {**LEAN_FIXED, "device": "cpu"},  # logical GPUs: train on the CPU
                     "budget": {**TINY_SPACE["budget"], "trials": 3, "epochs": 2, "early_stopping": False,
                                "final_seeds": 1}}


class FakeCluster(NamedTuple):
    address: str
    temp_dir: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_autoscaling_config(gcs_address: str) -> dict:
    """What ``AutoscalingCluster`` writes for ``fake_multinode`` (Ray's example config, its head and
    one worker type), with the GCS address its provider starts the worker nodes against."""
    return {
        "cluster_name": "fake-autoscaling", "max_workers": MAX_GPU_NODES,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "gpu_node": {"resources": GPU_NODE, "node_config": {}, "min_workers": 0, "max_workers": MAX_GPU_NODES},
        },
        "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0, "idle_timeout_minutes": 5,
        "docker": {}, "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
    }


def _cluster_processes(temp_dir: str) -> dict[int, object]:
    """This cluster's processes: those whose command line names its own temp dir (GCS, raylets,
    autoscaler, dashboard, log monitors) and all their descendants (agents, workers)."""
    import ray  # noqa: F401  (puts Ray's vendored psutil on the path)
    import psutil

    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        if any(temp_dir in arg for arg in proc.info["cmdline"] or []):
            found[proc.pid] = proc
    for proc in list(found.values()):
        with contextlib.suppress(psutil.Error):
            found.update({child.pid: child for child in proc.children(recursive=True)})
    return found


def _stop(temp_dir: str) -> list[int]:
    """SIGTERM this cluster's processes (by id), SIGKILL what is left after 3 s (the GCS and raylets
    take longer to wind down, and nothing of a test cluster needs keeping); the ids still alive."""
    import psutil

    procs = _cluster_processes(temp_dir)
    for proc in procs.values():
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _gone, alive = psutil.wait_procs(list(procs.values()), timeout=3)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    return sorted(_cluster_processes(temp_dir))


@contextlib.contextmanager
def fake_autoscaling_cluster() -> Iterator[FakeCluster]:
    """The head ``AutoscalingCluster.start`` would start (``ray start --head --autoscaling-config=...``
    with RAY_FAKE_CLUSTER=1), on free ports and its own temp dir; stopped by its processes' ids."""
    temp_dir = tempfile.mkdtemp(prefix="ray-as-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    port = _free_port()
    address = f"127.0.0.1:{port}"
    config = Path(temp_dir) / "autoscaling.json"
    config.write_text(json.dumps(fake_autoscaling_config(address)))
    # AUTOSCALER_UPDATE_INTERVAL_S: what AutoscalingCluster sets; RAY_AUTH_MODE: no token, as the driver
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_AUTH_MODE": "disabled"}
    ray_cli = str(Path(sys.executable).with_name("ray"))
    try:
        started = subprocess.run([ray_cli, "start", "--head", f"--port={port}", f"--autoscaling-config={config}",
                                  "--num-cpus=1", "--num-gpus=0", f"--object-store-memory={100 * 1024**2}",
                                  f"--temp-dir={temp_dir}", f"--dashboard-port={_free_port()}",
                                  f"--ray-client-server-port={_free_port()}",
                                  f"--dashboard-agent-listen-port={_free_port()}", "--disable-usage-stats"],
                                 env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        yield FakeCluster(address, temp_dir)
    finally:
        t0 = time.monotonic()
        left = _stop(temp_dir)
        print(f"fake cluster stopped in {time.monotonic() - t0:.1f} s")
        assert not left, f"Ray processes of the fake cluster still alive: {left}"
        shutil.rmtree(temp_dir, ignore_errors=True)


def _intervals(root: Path, benchmark: str) -> dict[str, tuple[float, float]]:
    """Each search trial's (start, end) in epoch seconds, from Tune's own results: its first
    report's timestamp minus the time the trial had run by then, and its last report's timestamp."""
    found = {}
    for result in (root / "ray" / f"{benchmark}-search").glob("*/result.json"):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        found[rows[0]["trial_id"]] = (rows[0]["timestamp"] - rows[0]["time_total_s"], rows[-1]["timestamp"])
    return found


def _most_at_once(intervals) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals], key=lambda e: (e[0], e[1]))
    running = most = 0
    for _t, step in events:
        running += step
        most = max(most, running)
    return most


def _nodes(address: str) -> list[dict]:
    import ray

    ray.init(address=address, log_to_driver=False, configure_logging=False)
    try:
        return [n for n in ray.nodes() if n["Alive"]]
    finally:
        ray.shutdown()


@pytest.mark.e2e
@pytest.mark.ray
def test_trials_run_at_once_on_the_nodes_the_autoscaler_starts(tmp_path):
    """A study of two-worker trials joins a cluster with no GPU up (a CPU head, GPU nodes from zero):
    its plan comes from the node type the autoscaler may start (2 nodes x 1 trial), the autoscaler
    starts both, two trials run at once on them, never on the head, and every trial trains to its end
    with its two workers on one node."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(AUTOSCALING_SPACE))
    with fake_autoscaling_cluster() as cluster:
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "study.cli", "run", "--address", cluster.address, "--benchmarks", "digits",
             "--search-space", str(space), "--storage", str(tmp_path / "studies"), "--name", "auto",
             "--data-root", str(tmp_path / "data"), *TRIAL_ARGS],
            capture_output=True, text=True, cwd=REPO, timeout=600,
            env={**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"})
        study_s = time.monotonic() - t0
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        nodes = _nodes(cluster.address)
    root = tmp_path / "studies" / "auto"
    lines = (root / "logs/study.log").read_text().splitlines()
    assert any(line.startswith("[study] auto: digits at once on 1 CPUs, 0 GPUs up now;") for line in lines), lines
    assert ("[digits] search: 3 trials (0.5 CPU, 1 GPU per worker x 2 workers), 2 at a time: the cluster can grow "
            "to 4 GPUs (node types gpu_node x2); logs: digits/logs/trials/") in lines, lines
    trials = json.loads((root / "digits/search/trials.json").read_text())
    assert trials["max_concurrent"] == 2
    assert trials["counts"] == {"completed": 3, "stopped early": 0, "failed": 0}
    head = next(n["NodeID"] for n in nodes if "node:__internal_head__" in n["Resources"])
    started = {n["NodeID"] for n in nodes if n["Resources"].get("GPU") == GPU_NODE["GPU"]}
    assert len(started) == MAX_GPU_NODES and head not in started  # the autoscaler grew to its limit
    placed = {t["trial_id"]: {r["node_id"] for r in t["placement"]} for t in trials["trials"]}
    assert set().union(*placed.values()) == started, placed  # every trial on a started node, both used
    assert all(len(t["placement"]) == 2 and len(placed[t["trial_id"]]) == 1 for t in trials["trials"]), placed
    spans = _intervals(root, "digits")
    assert sorted(spans) == sorted(placed)
    at_once = _most_at_once(spans.values())
    assert at_once == 2, spans  # more trials at once than one node holds: both nodes worked together
    assert json.loads((root / "digits/final/seed-0.json").read_text())["rows"]  # the two-worker final run too
    print(f"fake autoscaler: {len(started)} GPU nodes started, {at_once} of 3 trials at once, study {study_s:.0f} s")
