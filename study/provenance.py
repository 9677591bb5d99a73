"""What produced a study: the package and library versions, the git commit, each benchmark's sampler
and scheduler settings and a fingerprint of its splits (recorded in ``study.json``), and the device
kinds that ran its trials (read from ``<benchmark>/search/trials.json`` at the end). Imports no Ray,
and no Optuna until a sampler's settings are asked for."""
from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import platform
import subprocess
import sys
from pathlib import Path
from typing import Iterable

from indistill.common.io import stable_hash

from .names import EMBEDDING_EPOCH, OBJECTIVE, TRIALS_FILE
from .plan import BenchmarkPlan, StudyPlan
from .search_space import SearchSpace, sampled_widths, shortest_curriculum
from .storage import Storage

#: the distribution this code is installed as (pyproject.toml's project name)
PACKAGE = "indistill-study"
#: the libraries whose versions are recorded, each with its name in a sentence
LIBRARIES: dict[str, str] = {PACKAGE: PACKAGE, "python": "Python", "torch": "torch", "ray": "Ray",
                             "optuna": "Optuna", "numpy": "numpy"}
#: the repository root of a git checkout of this code (``study/`` lives in it)
SOURCE_ROOT = Path(__file__).resolve().parent.parent
GIT_TIMEOUT_S = 10.0


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    """The installed versions of the package, Python and the libraries of :data:`LIBRARIES`
    (None for one that is not installed), read from the installed metadata: nothing is imported."""
    return {key: platform.python_version() if key == "python" else _version(key) for key in LIBRARIES}


def _git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True,
                          timeout=GIT_TIMEOUT_S).stdout.strip()


def git_state(root: Path = SOURCE_ROOT) -> dict | None:
    """``{commit, dirty}`` of the git checkout the code runs from (dirty: tracked files differ from
    the commit); None when ``root`` is not the top of a checkout (an installed copy, even one inside
    somebody's repository), git is missing or does not answer within :data:`GIT_TIMEOUT_S`."""
    try:
        if Path(_git(root, "rev-parse", "--show-toplevel")).resolve() != root.resolve():
            return None
        return {"commit": _git(root, "rev-parse", "HEAD"),
                "dirty": bool(_git(root, "status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return None


def directions(space: SearchSpace) -> list[str]:
    """The Optuna study's directions: val mAP maximised, then a size objective minimised."""
    return ["maximize", *["minimize"] * (len(space.objectives) - 1)]


def study_sampler(space: SearchSpace):
    """The sampler the search is given (:func:`study.runner.run_search`):
    ``optuna.samplers.TPESampler(seed=budget.seed)``, MOTPE with two objectives."""
    import optuna

    return optuna.samplers.TPESampler(seed=space.budget.seed)


class _Objectives:
    """What ``TPESampler`` asks a study when it resolves ``multivariate=None`` (its default)."""

    def __init__(self, count: int) -> None:
        self.count = count

    def _is_multi_objective(self) -> bool:
        return self.count > 1


def sampler_settings(space: SearchSpace) -> dict:
    """The class and settings of the search's sampler, read from an actual instance (its defaults
    where an attribute is missing), so they are the installed Optuna's: seed, start-up trials,
    multivariate (as the sampler resolves it for this many objectives) and the constant liar."""
    sampler = study_sampler(space)
    defaults = {name: p.default for name, p in inspect.signature(type(sampler).__init__).parameters.items()}

    def setting(name: str):
        return getattr(sampler, f"_{name}", defaults.get(name))

    count = len(space.objectives)
    resolve = getattr(sampler, "_is_multivariate", None)
    multivariate = setting("multivariate")
    if resolve is not None:
        multivariate = resolve(_Objectives(count))
    elif multivariate is None:
        multivariate = count == 1
    name = type(sampler).__name__
    return {"class": name, "algorithm": ("MOTPE" if count > 1 else "TPE") if name == "TPESampler" else name,
            "objectives": list(space.objectives), "directions": directions(space), "seed": space.budget.seed,
            "n_startup_trials": setting("n_startup_trials"), "multivariate": bool(multivariate),
            "constant_liar": bool(setting("constant_liar")), "n_ei_candidates": setting("n_ei_candidates"),
            "group": bool(setting("group"))}


def scheduler_settings(bp: BenchmarkPlan) -> dict:
    """The search's scheduler as :func:`study.early_stopping.scheduler_for` builds it, computed from
    the plan without Ray: ASHA on embedding-phase epochs (``max_t`` the shortest curriculum's; one
    per sampled width in a space with ``student.width``), or FIFO with ``early_stopping: false``."""
    budget = bp.space.budget
    if not budget.early_stopping:
        return {"class": "FIFOScheduler"}
    max_t = bp.base.student.epochs - shortest_curriculum(bp.space)
    out = {"class": "ASHAScheduler", "time_attr": EMBEDDING_EPOCH, "metric": OBJECTIVE, "mode": "max",
           "max_t": max_t, "grace_period": min(budget.grace_period, max_t),
           "reduction_factor": budget.reduction_factor}
    if bp.space.student.width is not None:
        out.update(one_per="student.width", widths=sampled_widths(bp.space, bp.base))
    return out


def splits_fingerprint(bp: BenchmarkPlan) -> dict:
    """A fingerprint of the benchmark's splits from their declaration: the spec as the data options
    make it (classes, image shape, the val share), the options, the val carve's seed and the carve's
    code. The study's driver does not hold the data when it writes ``study.json`` (the check before
    Ray loads it and lets it go), and loading CUB-200 or ImageNet again only to hash the labels
    would double a study's start; the official splits plus this declaration fix the splits, as the
    carve is deterministic. :func:`data_fingerprint` hashes loaded data itself."""
    from indistill.data import get_spec, splits, validate_options
    from indistill.data.base import VAL_SEED

    options = validate_options(bp.benchmark, bp.base.data.options)
    spec = get_spec(bp.benchmark, options)
    try:
        carve = hashlib.sha256(inspect.getsource(splits).encode()).hexdigest()[:12]
    except (OSError, TypeError):
        carve = None
    declared = {"benchmark": spec.name, "num_classes": spec.num_classes, "input_shape": list(spec.input_shape),
                "val_fraction": spec.val_fraction, "val_seed": VAL_SEED, "options": options, "carve_code": carve}
    return {"from": "declaration", "hash": stable_hash(declared), **declared}


def data_fingerprint(data) -> str:
    """A hash of a loaded benchmark's splits (:class:`indistill.data.BenchmarkData`): the sizes and
    the label arrays of train (minus val), val and test, in order (so the val carve is in it)."""
    parts = {}
    for name in ("train", "val", "test"):
        labels = getattr(data, name).labels.cpu().numpy().astype("<i8")
        parts[name] = [int(labels.size), hashlib.sha256(labels.tobytes()).hexdigest()]
    return stable_hash(parts)


def provenance(plan: StudyPlan) -> dict:
    """What ``study.json`` records of what produced the study: the versions, the git checkout
    (None outside one), and per benchmark the sampler's and the scheduler's settings and a
    fingerprint of its splits."""
    return {"versions": library_versions(), "git": git_state(),
            "benchmarks": {bp.benchmark: {"sampler": sampler_settings(bp.space), "scheduler": scheduler_settings(bp),
                                          "splits": splits_fingerprint(bp)} for bp in plan.benchmarks}}


def version_changes(recorded: dict, now: dict) -> list[str]:
    """``"<library> <then>, now <now>"`` for each library of :data:`LIBRARIES` whose version differs."""
    return [f"{LIBRARIES[key]} {recorded.get(key)}, now {now.get(key)}" for key in LIBRARIES
            if key in recorded and recorded.get(key) != now.get(key)]


def warn_changed_versions(state: dict) -> str | None:
    """On --resume: one warning line on stderr naming every library whose version differs from the
    one the study was made with (``state``: its ``study.json``); returns it (None: nothing changed,
    or nothing was recorded)."""
    recorded = (state.get("provenance") or {}).get("versions") if isinstance(state, dict) else None
    if not isinstance(recorded, dict):
        return None
    changes = version_changes(recorded, library_versions())
    if not changes:
        return None
    line = f"{PACKAGE}: warning: resuming a study made with {'; '.join(changes)}"
    print(line, file=sys.stderr)
    return line


def versions_text(prov: dict) -> str:
    """The versions (and the git commit) of a recorded provenance in one line."""
    versions = prov.get("versions") or {}
    keys = [*(k for k in LIBRARIES if k in versions), *(k for k in versions if k not in LIBRARIES)]  # study.json sorts
    text = ", ".join(f"{LIBRARIES.get(k, k)} {versions[k]}" for k in keys)
    git = prov.get("git")
    if git:
        text += f"; git {git['commit'][:12]}{' (dirty)' if git.get('dirty') else ''}"
    return text


def device_kinds(storage: Storage, benchmarks: Iterable[str]) -> dict[str, dict[str, int]]:
    """Per benchmark, how many of its search trials ran on each device kind (``cpu``, ``cuda``: the
    placements' devices without their index), from ``<benchmark>/search/trials.json``; a trial whose
    ranks ran on several kinds counts under each. A benchmark without the file is left out."""
    out: dict[str, dict[str, int]] = {}
    for bench in benchmarks:
        rel = f"{bench}/{TRIALS_FILE}"
        if not storage.exists(rel):
            continue
        counts: dict[str, int] = {}
        for trial in storage.read_json(rel).get("trials", []):
            kinds = {str(rank.get("device", "")).split(":")[0] for rank in trial.get("placement") or []
                     if isinstance(rank, dict) and rank.get("device")}
            for kind in sorted(kinds):
                counts[kind] = counts.get(kind, 0) + 1
        out[bench] = dict(sorted(counts.items()))
    return out
