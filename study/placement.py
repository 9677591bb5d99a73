"""Where each run's workers ran: one record per search trial, and one per artifact run and final
seed (what a lost node took), in the study directory."""
from __future__ import annotations

from .storage import Storage


def placement_file(benchmark: str, trial_id: str) -> str:
    return f"{benchmark}/search/placement/{trial_id}.json"


def run_placement_file(benchmark: str, run: str) -> str:
    """The record of a run that is not a search trial: ``artifacts``, ``final-seed-<s>``."""
    return f"{benchmark}/placement/{run}.json"


def write_placement(storage: Storage, rel: str, ranks: list[dict]) -> None:
    """A run's ranks, each ``{node_id, hostname, device}``, in rank order, at ``rel``
    (:func:`placement_file` or :func:`run_placement_file`)."""
    storage.write_json(rel, {"ranks": ranks})


def nodes_of(storage: Storage, rel: str) -> set[str]:
    """The node ids a run's record names (none when there is no record)."""
    if not storage.exists(rel):
        return set()
    return {r["node_id"] for r in storage.read_json(rel)["ranks"] if r}


def read_placements(storage: Storage, benchmark: str) -> dict[str, list[dict]]:
    """Trial id -> where its ranks ran (as :func:`write_placement` wrote it)."""
    rel = placement_file(benchmark, "x").rsplit("/", 1)[0]
    return {name[: -len(".json")]: storage.read_json(f"{rel}/{name}")["ranks"]
            for name in storage.listdir(rel) if name.endswith(".json")}
