"""Build a benchmark's teacher / auxiliary / student from the networks its spec declares (docs/benchmarks.md).

A benchmark's ``BenchmarkSpec.networks`` holds each role's entry: an architecture name and its
options (``indistill/data/networks.py``); ``num_classes``, ``in_channels`` and ``image_size`` come
from the benchmark; a config's ``networks.<role>`` overrides the entry.
"""
from __future__ import annotations

import copy
import inspect
from typing import Mapping

from indistill.config.run import ROLES
from indistill.data import BENCHMARKS
from indistill.common.errors import ConfigError
from indistill.models import MODELS, create_model, model_options
from indistill.models.base import TapNet

#: network arguments that come from the benchmark, not from ``networks.<role>``
BENCHMARK_ARGS = ("num_classes", "in_channels", "image_size")


def network_entry(benchmark: str, role: str, overrides: Mapping | None = None) -> dict:
    """The entry of ``role`` on registered ``benchmark`` with ``overrides`` merged in (a fresh dict).

    Overriding ``arch`` with another architecture drops the benchmark's options, which belong to
    the old one.
    """
    spec = BENCHMARKS.get(benchmark)
    if role not in ROLES:
        raise KeyError(f"unknown role {role!r}; choose from: {', '.join(ROLES)}")
    base = copy.deepcopy(dict(spec.networks[role]))
    overrides = copy.deepcopy(dict(overrides or {}))
    if overrides.get("arch", base["arch"]) != base["arch"]:
        base = {}
    return {**base, **overrides}


def intermediate_taps(entry: Mapping) -> int | None:
    """How many intermediate taps the network of ``entry`` has, where its options say (a cnn's ``widths``)."""
    widths = entry.get("widths")
    return len(widths) if widths is not None else None


def check_overrides(benchmark: str, role: str, overrides: Mapping) -> None:
    """``networks.<role>`` of a config: a registered architecture and only its options, else a ConfigError."""
    arch = overrides.get("arch", BENCHMARKS.get(benchmark).networks[role]["arch"])
    MODELS.check(arch, f"networks.{role}.arch")
    allowed = [n for n in model_options(arch) if n not in BENCHMARK_ARGS]
    for key in overrides:
        if key == "arch":
            continue
        if key in BENCHMARK_ARGS:
            raise ConfigError(f"networks.{role}.{key}: set by the benchmark, not by the config")
        if key not in allowed:
            raise ConfigError(f"networks.{role}.{key}: unknown option {key!r} for the {arch} network; "
                              f"allowed: {', '.join(allowed) or '(none)'}")


def create_network(
    benchmark: str,
    role: str,
    *,
    num_classes: int,
    in_channels: int,
    image_size: int,
    overrides: Mapping | None = None,
) -> TapNet:
    """Build ``role`` of ``benchmark``; ``image_size`` goes to architectures that take it."""
    entry = network_entry(benchmark, role, overrides)
    arch = entry.pop("arch")
    if "image_size" in inspect.signature(MODELS.get(arch)).parameters:
        entry["image_size"] = image_size
    return create_model(arch, num_classes=num_classes, in_channels=in_channels, **entry)


def scaled_widths(entry: Mapping, multiplier: float) -> dict:
    """``entry``'s conv widths and embedding scaled by ``multiplier``, each rounded to an integer >= 1
    (the options a config's ``networks.student`` takes); a ConfigError for an architecture without widths."""
    if "widths" not in entry or "embedding_dim" not in entry:
        raise ConfigError(f"student.width: the {entry.get('arch')} student has no widths and embedding to scale")
    return {"widths": [max(1, round(w * multiplier)) for w in entry["widths"]],
            "embedding_dim": max(1, round(entry["embedding_dim"] * multiplier))}


def tap_widths(entry: Mapping) -> dict[str, int]:
    """The channels of each tap of a widths-and-embedding network entry (``block<i>``, ``embedding``), as its taps name them."""
    return {**{f"block{i}": int(w) for i, w in enumerate(entry["widths"])}, "embedding": int(entry["embedding_dim"])}


def check_fits_auxiliary(benchmark: str, student: Mapping, auxiliary: Mapping, multiplier: float) -> None:
    """A ConfigError naming the width, the tap and both numbers when the student scaled by
    ``multiplier`` is wider than the auxiliary at a tap (the auxiliary is pruned to the student)."""
    scaled = tap_widths({**student, **scaled_widths(student, multiplier)})
    if "widths" not in auxiliary or "embedding_dim" not in auxiliary:
        raise ConfigError(f"student.width: the {auxiliary.get('arch')} auxiliary of {benchmark} has no widths to compare with")
    aux = tap_widths(auxiliary)
    if len(aux) != len(scaled):
        raise ConfigError(f"student.width: the {benchmark} student has {len(scaled)} taps, its auxiliary {len(aux)}")
    for tap, want in scaled.items():
        if want > aux[tap]:
            raise ConfigError(f"student.width: {multiplier:g} makes the student's {tap} {want} channels wide, "
                              f"wider than the auxiliary's {aux[tap]} (the auxiliary is pruned to the student)")
