"""A study's state in its directory: ``study.json`` and each benchmark's resolved inputs, written
when it starts and checked when it is resumed (this module imports no Ray)."""
from __future__ import annotations

import time

from indistill.config.run import config_to_dict
from indistill.common.io import stable_hash
from indistill.config.schema import from_dict, to_dict
from indistill.common.errors import ConfigError

from .names import INPUT_FILES
from .plan import BenchmarkPlan, StudyPlan
from .provenance import provenance, warn_changed_versions
from .storage import Storage
from .warm_start import write as write_warm_start

STATE = "study.json"
#: base-config fields that say where or how fast a study runs: they may change on --resume
RESUMABLE_FIELDS = ("data.root", "data.download", "threads", "device")


def study_inputs(bp: BenchmarkPlan) -> dict[str, dict]:
    """The inputs that define a benchmark's study: its resolved base config and search space."""
    from indistill.engine.keys import without

    return {"base config": without(config_to_dict(bp.base), RESUMABLE_FIELDS), "search space": to_dict(bp.space)}


def input_hashes(bp: BenchmarkPlan) -> dict[str, str]:
    return {name: stable_hash(tree) for name, tree in study_inputs(bp).items()}


def check_new_or_resume(plan: StudyPlan) -> None:
    """A new study must not exist; a resumed one must, with the same benchmarks and inputs."""
    exists = plan.storage.exists(STATE)
    if exists and not plan.resume:
        raise ConfigError(f"--name: study {plan.storage.uri} already exists; add --resume to continue it or pick another --name")
    if plan.resume and not exists:
        raise ConfigError(f"--resume: no study at {plan.storage.uri} to resume")
    if plan.resume:
        state = plan.storage.check_study()
        check_same_inputs(plan, state)
        warn_changed_versions(state)  # other library versions may resume, with one warning line


def check_same_inputs(plan: StudyPlan, state: dict) -> None:
    """Refuse to resume with other benchmarks, base configs or search spaces than the study's,
    naming the first difference."""
    new_study = "start a new study with another --name to use them (or resume with the study's own inputs)"
    names = [b.benchmark for b in plan.benchmarks]
    if names != state["benchmarks"]:
        raise ConfigError(f"--resume: study {plan.name} has benchmarks {','.join(state['benchmarks'])}, not "
                          f"{','.join(names)}; {new_study}")
    recorded = state.get("inputs", {})
    for bp in plan.benchmarks:
        for name, digest in input_hashes(bp).items():
            if bp.benchmark in recorded and recorded[bp.benchmark].get(name) != digest:
                old = _recorded_input(plan.storage, bp, name)
                if old == study_inputs(bp)[name]:  # a field added since, at its default: the same input
                    continue
                where = ""
                if old is not None:
                    path, was, now = _diff(old, study_inputs(bp)[name])
                    where = f" ({path}: {was!r} then, {now!r} now)" if path else ""
                raise ConfigError(f"--resume: {bp.benchmark}'s {name} differs from the one study {plan.name} was "
                                  f"started with{where}; {new_study}")


def _recorded_input(storage: Storage, bp: BenchmarkPlan, name: str) -> dict | None:
    """The input the study recorded (:data:`~study.names.INPUT_FILES`), read through today's schema
    (a field added since takes its default), as :func:`study_inputs` gives it; None when it is
    missing or no longer reads."""
    rel = f"{bp.benchmark}/{INPUT_FILES[name]}"
    if not storage.exists(rel):
        return None
    import yaml

    from indistill.engine.configure import build_config
    from indistill.engine.keys import without

    from .search_space import SearchSpace

    try:
        old = yaml.safe_load(storage.read_text(rel))
        if name == "base config":
            return without(config_to_dict(build_config(old, benchmark=bp.benchmark)), RESUMABLE_FIELDS)
        return to_dict(from_dict(SearchSpace, old))
    except (yaml.YAMLError, ConfigError, TypeError, ValueError):
        return None


def _diff(a, b, prefix: str = "") -> tuple[str, object, object]:
    """The first dotted path where plain trees ``a`` and ``b`` differ, with both values."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = _diff(a.get(key), b.get(key), f"{prefix}{key}.")
            if found[0]:
                return found
        return "", None, None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = _diff(x, y, f"{prefix}{i}.")
            if found[0]:
                return found
        return "", None, None
    return (prefix.rstrip("."), a, b) if a != b else ("", None, None)




def write_study_state(plan: StudyPlan) -> None:
    """A new study's ``study.json`` (its benchmarks and the hashes of their inputs) and each
    benchmark's complete resolved inputs (with its warm start), for the user and for naming a change
    on --resume."""
    for bp in plan.benchmarks:
        plan.storage.write_text(f"{bp.benchmark}/{INPUT_FILES['base config']}", yaml_text(config_to_dict(bp.base)))
        plan.storage.write_text(f"{bp.benchmark}/{INPUT_FILES['search space']}", yaml_text(to_dict(bp.space)))
        if bp.warm_start:  # what --resume enqueues (study.json last: a study with a state has it)
            write_warm_start(plan.storage, bp.benchmark, bp.warm_start)
    plan.storage.write_json(STATE, {
        "name": plan.name, "benchmarks": [b.benchmark for b in plan.benchmarks], "created": time.time(),
        "space_files": {b.benchmark: b.space_path for b in plan.benchmarks},
        "inputs": {b.benchmark: input_hashes(b) for b in plan.benchmarks},
        "provenance": provenance(plan),
    })


def yaml_text(obj) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)

