"""The study's student rows and the config each is trained from (Ray-free: the driver plans with it,
the final runs train with it)."""
from __future__ import annotations

from indistill.config.run import RunConfig

from .names import SEARCHED, STUDENT_ROWS


def with_searched(cfg: RunConfig) -> RunConfig:
    """``cfg`` whose methods include the searched one: the study's artifacts always serve it."""
    return cfg if SEARCHED in cfg.methods else cfg.replace(methods=(*cfg.methods, SEARCHED))


def final_rows(base: RunConfig, tuned: RunConfig) -> list[tuple[str, RunConfig, str]]:
    """(row label, config, method) of every student row (:data:`~study.names.STUDENT_ROWS`): the
    baselines and the paper-default row from ``base``, the tuned row from ``tuned``; baselines that the
    base config's ``methods`` leave out are left out."""
    return [(label, tuned if is_tuned else base, method) for label, method, is_tuned in STUDENT_ROWS
            if method == SEARCHED or method in base.methods]
