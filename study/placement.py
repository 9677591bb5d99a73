"""Where each search trial's workers ran: one record per trial in the study directory."""
from __future__ import annotations

from .storage import Storage


def placement_file(benchmark: str, trial_id: str) -> str:
    return f"{benchmark}/search/placement/{trial_id}.json"


def write_placement(storage: Storage, benchmark: str, trial_id: str, ranks: list[dict]) -> None:
    """The trial's ranks, each ``{node_id, hostname, device}``, in rank order."""
    storage.write_json(placement_file(benchmark, trial_id), {"ranks": ranks})


def read_placements(storage: Storage, benchmark: str) -> dict[str, list[dict]]:
    """Trial id -> where its ranks ran (as :func:`write_placement` wrote it)."""
    rel = placement_file(benchmark, "x").rsplit("/", 1)[0]
    return {name[: -len(".json")]: storage.read_json(f"{rel}/{name}")["ranks"]
            for name in storage.listdir(rel) if name.endswith(".json")}
