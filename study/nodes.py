"""Lost nodes, said once each: a driver thread that watches the cluster's nodes and, when one dies,
writes one line to the progress display and the study's log naming the node and the runs it took
(from the runs' placement records); Ray Train and Tune retry those runs from their checkpoints."""
from __future__ import annotations

import threading

import ray

from .plan import StudyPlan, final_seeds
from .placement import nodes_of, placement_file, run_placement_file
from .progress import Progress
from .stopping import STOPPING

#: seconds between two looks at the cluster's nodes
POLL_S = 1.0


class NodeWatcher(threading.Thread):
    """Polls ``ray.nodes()`` every :data:`POLL_S` until :meth:`stop`."""

    def __init__(self, plan: StudyPlan, progress: Progress) -> None:
        super().__init__(name="study-nodes", daemon=True)
        self.plan, self.progress = plan, progress
        self._stop_event = threading.Event()
        self.alive = _alive()

    def run(self) -> None:
        while not self._stop_event.wait(POLL_S):
            try:
                now = _alive()
            except Exception:  # the GCS did not answer this time: look again
                continue
            for node_id in self.alive.keys() - now.keys():
                if STOPPING.is_set():  # the driver stops Ray: its nodes go with it
                    return
                runs = self.runs_on(node_id)
                self.progress(f"[study] node lost: {self.alive[node_id]} (node {node_id[:8]}); it took "
                              f"{', '.join(runs) if runs else 'no run'}"
                              + ("; they continue from their last checkpoints" if runs else ""))
            self.alive = now

    def runs_on(self, node_id: str) -> list[str]:
        """The unfinished runs whose workers the node held: artifact runs, search trials, final seeds."""
        storage, runs = self.plan.storage, []
        for bp in self.plan.benchmarks:
            bench, st = bp.benchmark, self.progress.status[bp.benchmark]
            if st.phase == "artifacts" and node_id in nodes_of(storage, run_placement_file(bench, "artifacts")):
                runs.append(f"{bench} artifacts")
            for trial_id in sorted(set(st.running)):  # a copy: the display's thread changes it
                if node_id in nodes_of(storage, placement_file(bench, trial_id)):
                    runs.append(f"{bench} {st.trial_label(trial_id)}")
            if st.phase == "final":
                for seed in final_seeds(bp):
                    if (node_id in nodes_of(storage, run_placement_file(bench, f"final-seed-{seed}"))
                            and not storage.exists(f"{bench}/final/seed-{seed}.json")):
                        runs.append(f"{bench} final seed {seed}")
        return runs

    def stop(self) -> None:
        self._stop_event.set()


def _alive() -> dict[str, str]:
    """Node id -> its address, of the nodes alive now (none when this process has no Ray)."""
    if not ray.is_initialized():
        return {}
    return {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes() if n.get("Alive")}
