"""``data.options``: the keys each benchmark accepts and their checks."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from indistill.data.base import BenchmarkSpec, DataOption, DatasetOptionsError


def _workers(value: Any) -> str | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return None
    return f"must be a positive integer (decode threads), got {value!r}"


#: Threads decoding images into the cache (CUB-200, ImageNet).
WORKERS = DataOption("workers", _workers, "threads decoding images into the cache (default: min(16, CPUs))")


def check_options(spec: BenchmarkSpec, options: Any) -> dict:
    """``options`` checked against what ``spec`` accepts; returns a plain dict copy.

    Raises :class:`DatasetOptionsError` naming ``data.options.<key>`` and the allowed keys.
    """
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise DatasetOptionsError(f"data.options: expected a mapping, got {type(options).__name__} {options!r}")
    known = {opt.name: opt for opt in spec.options}
    for key, value in options.items():
        if not isinstance(key, str):
            raise DatasetOptionsError(f"data.options: keys must be strings, got {key!r}")
        opt = known.get(key)
        if opt is None:
            allowed = (
                f"allowed: {', '.join(sorted(known))}" if known else f"{spec.name} takes no data options"
            )
            raise DatasetOptionsError(f"data.options.{key}: unknown option for benchmark {spec.name}; {allowed}")
        problem = opt.check(value)
        if problem:
            raise DatasetOptionsError(f"data.options.{key}: {problem}")
    return dict(options)
