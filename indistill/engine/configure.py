"""A benchmark's run configuration, loaded and checked against the registries.

Above ``indistill.config.run`` (the plain dataclasses) and the layers that own the registries: the
benchmark (``indistill.data``), the pruning criterion (``indistill.method.pruning``), the curriculum's
losses (``indistill.method.losses``) and the networks (``indistill.models``). Each name is checked by its
registry (``Registry.check``), so an error is one line naming the field and the allowed values.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping

from indistill.config.run import ROLES, RunConfig, check_schedules, deep_merge
from indistill.data import BENCHMARKS, default_data_root, validate_options
from indistill.method.losses import LOSSES
from indistill.models.zoo import check_overrides, intermediate_taps, network_entry
from indistill.method.pruning import CRITERIA
from indistill.config.schema import from_dict
from indistill.common.errors import ConfigError
from indistill.config.yamlio import load_yaml_file

def default_config_dict(benchmark: str) -> dict:
    """The registered benchmark's default config (``BenchmarkSpec.default_config``) as a plain dict."""
    spec = BENCHMARKS.check(benchmark, "benchmark")
    data = load_yaml_file(spec.default_config, "config").data
    data.setdefault("benchmark", benchmark)
    return data


def build_config(overrides: Mapping | None = None, benchmark: str | None = None) -> RunConfig:
    """Merge ``overrides`` over the default of its benchmark and validate the result."""
    overrides = dict(overrides or {})
    name = benchmark or overrides.get("benchmark") or RunConfig.benchmark  # the dataclass's default
    if not isinstance(name, str):
        raise ConfigError(f"benchmark: expected a string, got {name!r}")
    if benchmark and overrides.get("benchmark") not in (None, benchmark):
        raise ConfigError(f"benchmark: the config says {overrides['benchmark']!r} but {benchmark!r} was asked for")
    merged = deep_merge(default_config_dict(name), overrides)
    merged["benchmark"] = name
    cfg = from_dict(RunConfig, merged)
    validate_config(cfg)
    return cfg


def load_config(path: str | Path | None = None, benchmark: str | None = None, overrides: Mapping | None = None) -> RunConfig:
    """Load a YAML config (merged over its benchmark's default), then apply ``overrides``.

    An error about a field the file sets names the file and its line (``c.yaml:3: student.epochs: ...``).
    """
    if not path:
        return build_config(dict(overrides or {}), benchmark=benchmark)
    doc = load_yaml_file(path, "config")
    data = deep_merge(doc.data, overrides) if overrides else doc.data
    with doc.blame(unless=overrides):
        return build_config(data, benchmark=benchmark)


def with_data_root(cfg: RunConfig, root: str | Path | None = None) -> RunConfig:
    """``cfg`` with its data root resolved once, where the run is planned: ``root``, else the
    config's ``data.root``, else ``$INDISTILL_DATA``, else ``~/.cache/indistill/data``; as an
    absolute path, so every process of the run (a Ray worker on another node too) reads the same
    place instead of resolving its own environment and working directory."""
    chosen = root or cfg.data.root
    path = Path(chosen).expanduser().absolute() if chosen else default_data_root().absolute()
    return cfg.replace(data=dataclasses.replace(cfg.data, root=str(path)))


def validate_config(cfg: RunConfig) -> None:
    """The names ``cfg`` holds against their registries, and its curriculum against its student."""
    BENCHMARKS.check(cfg.benchmark, "benchmark")
    validate_options(cfg.benchmark, cfg.data.options)
    CRITERIA.check(cfg.prune.criterion, "prune.criterion")
    curriculum = cfg.student.curriculum
    for i, name in enumerate(curriculum.losses):
        LOSSES.check(name, f"student.curriculum.losses[{i}]")
    LOSSES.check(curriculum.embedding_loss, "student.curriculum.embedding_loss")
    n_taps = intermediate_taps(network_entry(cfg.benchmark, "student", cfg.networks.student))
    if n_taps is not None and len(curriculum.epochs) != n_taps:
        raise ConfigError(
            f"student.curriculum.epochs: the student has {n_taps} intermediate taps, "
            f"so the curriculum needs {n_taps} entries, got {len(curriculum.epochs)}"
        )
    check_schedules(cfg)
    for role in ROLES:
        check_overrides(cfg.benchmark, role, getattr(cfg.networks, role))
