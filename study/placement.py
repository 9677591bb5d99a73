"""Where each run's workers ran: one record per search trial, and one per artifact run and final
seed (what a lost node took), in the study directory."""
from __future__ import annotations

from .storage import Storage


def placement_file(benchmark: str, trial_id: str) -> str:
    return f"{benchmark}/search/placement/{trial_id}.json"


def run_placement_file(benchmark: str, run: str) -> str:
    """The record of a run that is not a search trial: ``artifacts``, ``final-seed-<s>``."""
    return f"{benchmark}/placement/{run}.json"


def write_placement(storage: Storage, rel: str, ranks: list[dict], earlier: set[str] = frozenset()) -> None:
    """A run's ranks, each ``{node_id, hostname, device}``, in rank order, at ``rel``
    (:func:`placement_file` or :func:`run_placement_file`); ``earlier``: the nodes its earlier
    attempts ran on."""
    now = {r["node_id"] for r in ranks if r}
    storage.write_json(rel, {"ranks": ranks, "earlier": sorted(set(earlier) - now)})


def nodes_of(storage: Storage, rel: str) -> set[str]:
    """The node ids a run's record names, its earlier attempts' too (none without a record)."""
    if not storage.exists(rel):
        return set()
    record = storage.read_json(rel)
    return {r["node_id"] for r in record["ranks"] if r} | set(record.get("earlier", []))


def read_placements(storage: Storage, benchmark: str) -> dict[str, list[dict]]:
    """Trial id -> where its ranks ran (as :func:`write_placement` wrote it)."""
    rel = placement_file(benchmark, "x").rsplit("/", 1)[0]
    return {name[: -len(".json")]: storage.read_json(f"{rel}/{name}")["ranks"]
            for name in storage.listdir(rel) if name.endswith(".json")}
