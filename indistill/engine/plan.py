"""The plan of a run: which artifact stages (:data:`~indistill.engine.stages.ARTIFACT_STAGES`) a
config and a protocol need, picked from what the config's methods declare they need (a source
network, pruning), and the files a student run reads from the stage cache."""
from __future__ import annotations

from indistill.config.run import RunConfig
from indistill.engine.keys import Protocol
from indistill.engine.stages import ARTIFACT_STAGES, stage_dirname
from indistill.method.methods import METHODS


def needs(cfg: RunConfig, what: str) -> bool:
    """Whether any of the config's methods declares ``what`` (``needs_source``, ``needs_pruning``)."""
    return any(getattr(METHODS.get(m), what) for m in cfg.methods)


def roles_needed(cfg: RunConfig) -> list[str]:
    """The networks a run builds: the teacher (a table row), the auxiliary when a method needs a source, the student."""
    return ["teacher", *(["auxiliary"] if needs(cfg, "needs_source") else []), "student"]


def artifact_stages(cfg: RunConfig, protocol: Protocol) -> tuple[str, ...]:
    """The artifact stages ``cfg.methods`` need under ``protocol``, in build order: the auxiliary for
    a method that needs a source, the kept channels for one that needs pruning, and what those read
    (a given auxiliary checkpoint reads no teacher); under ``test`` the teacher too (a table row).
    Under ``val`` (a search) the teacher is built only to train the auxiliary."""
    wanted = {"auxiliary"} if needs(cfg, "needs_source") else set()
    if needs(cfg, "needs_pruning"):
        wanted.add("prune")
    for stage in reversed(ARTIFACT_STAGES.values()):  # what the wanted stages read, back to the first
        if stage.name in wanted and not (stage.name == "auxiliary" and cfg.auxiliary.checkpoint):
            wanted.update(stage.reads)
    if protocol == "test":
        wanted.add("teacher")
    return tuple(s for s in ARTIFACT_STAGES if s in wanted)


def artifact_files(cfg: RunConfig, protocol: Protocol) -> list[str]:
    """What a student run reads from the stage cache (paths relative to it): the finished file of
    every artifact stage it needs but the teacher, a given auxiliary checkpoint aside."""
    stages = [s for s in artifact_stages(cfg, protocol) if s != "teacher"]
    if cfg.auxiliary.checkpoint and "auxiliary" in stages:
        stages.remove("auxiliary")
    return [f"{stage_dirname(s, cfg, protocol)}/{ARTIFACT_STAGES[s].file}" for s in stages]
