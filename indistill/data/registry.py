"""The benchmark registry and ``load_benchmark``: official splits plus a fixed stratified val carve.

``BENCHMARKS`` is the one list of benchmarks: the CLIs' choices, each benchmark's default config
(``BenchmarkSpec.default_config``) and networks (``BenchmarkSpec.networks``) come from its specs.
"""
from __future__ import annotations

import os
from pathlib import Path

from indistill.common.registry import Registry
from indistill.data import cifar, cub200, digits, fashionmnist, imagenet
from indistill.data.base import VAL_SEED, BenchmarkData, BenchmarkSpec, DatasetFormatError, LoadRequest
from indistill.data.options import check_options
from indistill.data.splits import carve_val

BENCHMARKS: Registry[BenchmarkSpec] = Registry("benchmark")
for _spec in (digits.SPEC, cifar.CIFAR10, cifar.CIFAR100, fashionmnist.SPEC, cub200.SPEC, imagenet.SPEC):
    BENCHMARKS.register(_spec.name, _spec)


def default_data_root() -> Path:
    """``$INDISTILL_DATA`` if set, else ``~/.cache/indistill/data``."""
    env = os.environ.get("INDISTILL_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "indistill" / "data"


def validate_options(benchmark: str, options: dict | None) -> dict:
    """``data.options`` of ``benchmark`` checked: returns a plain dict copy.

    An unknown key or a bad value raises ``DatasetOptionsError`` (a ``ConfigError``, hence a
    ``UserError``) naming ``data.options.<key>`` and what is allowed; an unknown benchmark raises
    ``UnknownNameError``.
    """
    return check_options(BENCHMARKS.get(benchmark), options)


def get_spec(name: str, options: dict | None = None) -> BenchmarkSpec:
    """The registered spec of ``name`` (adjusted for ``options``, e.g. an ImageNet class subset)."""
    spec = BENCHMARKS.get(name)
    options = check_options(spec, options)
    return spec.for_options(spec, options) if spec.for_options else spec


def load_benchmark(
    name: str,
    root: str | Path | None = None,
    *,
    download: bool = False,
    cache_dir: str | Path | None = None,
    options: dict | None = None,
) -> BenchmarkData:
    """Load benchmark ``name``: train (minus val), val and test splits as uint8 tensors on the CPU.

    ``root`` defaults to ``default_data_root()``, ``cache_dir`` to ``<root>/cache``. Raises
    ``DatasetNotFoundError`` when the data is missing, ``DatasetFormatError`` when it is malformed
    (both name the file), ``DatasetOptionsError`` for bad ``options`` and ``UnknownNameError`` for
    an unknown name. The dataset files are only read; a failed load writes nothing to the cache.
    """
    options = validate_options(name, options)
    spec = get_spec(name, options)
    root_path = Path(root).expanduser() if root is not None else default_data_root()
    cache_path = Path(cache_dir).expanduser() if cache_dir is not None else root_path / "cache"
    raw = spec.loader(LoadRequest(root=root_path, download=download, cache_dir=cache_path, options=options))
    for split_name, split in (("train", raw.train), ("test", raw.test)):
        # the loaders check what they read and name the file; this is the last line of defence
        where = f"{name} data under {root_path}, {split_name} split"
        if len(split) == 0:
            raise DatasetFormatError(f"{where}: no images")
        if tuple(split.images.shape[1:]) != spec.input_shape:
            raise DatasetFormatError(f"{where}: images {tuple(split.images.shape[1:])}, expected {spec.input_shape}")
        lo, hi = int(split.labels.min()), int(split.labels.max())
        if lo < 0 or hi >= spec.num_classes:
            raise DatasetFormatError(f"{where}: labels span {lo}..{hi}, expected 0..{spec.num_classes - 1}")
    train, val = carve_val(raw.train, spec.val_fraction, seed=VAL_SEED)
    return BenchmarkData(spec=spec, train=train, val=val, test=raw.test)
