"""Cache keys of the pipeline's stages.

A stage's key hashes the whole config (``to_dict``) with the retrieval protocol, minus the dotted
paths that cannot change it (each artifact stage declares its own, :class:`~indistill.engine.stages.Stage`;
the student's follow from its method, :func:`student_excluded`): a field added to the config later
enters every key unless it is excluded, so a new field can never silently reuse a stale cache.
Given checkpoints enter by their content, not their path.
"""
from __future__ import annotations

import copy
import functools
import hashlib
from pathlib import Path
import typing
from typing import Any, Literal

from indistill.config.run import RunConfig
from indistill.common.io import stable_hash
from indistill.config.schema import to_dict

Protocol = Literal["val", "test"]
#: every protocol, in the order the artifact run builds them: ``val`` (trained without the val
#: images: what a search reads), then ``test`` (the full train split: what the tables read)
PROTOCOLS: tuple[Protocol, ...] = typing.get_args(Protocol)

#: fields that say where, how fast or what else a run executes, never what a stage computes
EXECUTION: tuple[str, ...] = ("device", "compile", "threads", "channels_last", "methods", "eval",
                              "data.root", "data.download", "data.options.workers", "student.eval_every")

#: a given auxiliary checkpoint replaces the teacher and the auxiliary's training
GIVEN_AUXILIARY: tuple[str, ...] = ("teacher", "networks.teacher", "auxiliary.ce", "auxiliary.pkt")

#: the student's shared schedule fields, replaced in its key by the method's resolved schedule
SCHEDULE_FIELDS: tuple[str, ...] = ("student.epochs", "student.optim", "student.schedules")
#: student-config sections only one method reads
METHOD_SECTIONS: dict[str, tuple[str, ...]] = {"indistill": ("student.curriculum",), "mkt": ("student.mkt",)}
#: what a student without a distillation source (cross-entropy) does not read
NO_SOURCE: tuple[str, ...] = ("teacher", "auxiliary", "networks.teacher", "networks.auxiliary", "student.ce_weight")


def file_id(path: str | None) -> str | None:
    """A given checkpoint by its content, so a replaced file is never shadowed and copies of the
    same file on different nodes give the same key (a missing file: its path)."""
    if not path:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        return str(p)
    st = p.stat()
    return _content_hash(str(p.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _content_hash(path: str, _size: int, _mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def config_tree(cfg: RunConfig) -> dict[str, Any]:
    """The config as a plain tree, given checkpoints replaced by their content hash."""
    tree = to_dict(cfg)
    for role in ("teacher", "auxiliary"):
        tree[role]["checkpoint"] = file_id(getattr(cfg, role).checkpoint)
    return tree


def without(tree: dict[str, Any], paths: tuple[str, ...]) -> dict[str, Any]:
    """A copy of ``tree`` without the dotted ``paths`` (missing ones are ignored)."""
    out = copy.deepcopy(tree)
    for path in paths:
        *parents, leaf = path.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return out


def given_auxiliary(cfg: RunConfig) -> tuple[str, ...]:
    """What a given ``auxiliary.checkpoint`` makes unreadable for the stages after the teacher."""
    return GIVEN_AUXILIARY if cfg.auxiliary.checkpoint else ()


def student_excluded(cfg: RunConfig, needs_source: bool, needs_pruning: bool, method: str) -> tuple[str, ...]:
    """The dotted config paths that cannot change the student of ``method`` (whose needs are given)."""
    others = tuple(p for m, paths in METHOD_SECTIONS.items() if m != method for p in paths)
    return (*EXECUTION, *SCHEDULE_FIELDS, *others, *given_auxiliary(cfg),
            *(() if needs_source else NO_SOURCE), *(() if needs_pruning else ("prune",)))


def hashed_key(stage: str, cfg: RunConfig, protocol: Protocol, excluded: tuple[str, ...],
               extra: dict[str, Any] | None = None) -> str:
    """The cache key of ``stage`` under ``protocol``: the config tree without ``excluded``, hashed
    with the stage's name, the protocol and ``extra``."""
    tree = without(config_tree(cfg), excluded)
    return stable_hash({"stage": stage, "protocol": protocol, "config": tree, **(extra or {})})
