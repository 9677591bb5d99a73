"""Benchmarks as uint8 tensors (train / val / test) and the on-device augmentation ops."""
from indistill.data.augment import augment_batch, normalize
from indistill.data.base import BenchmarkData, BenchmarkSpec, DatasetFormatError, DatasetNotFoundError, DatasetOptionsError, Split
from indistill.data.registry import BENCHMARKS, default_data_root, get_spec, load_benchmark, validate_options
from indistill.data.splits import carve_val

__all__ = [
    "BENCHMARKS",
    "BenchmarkData",
    "BenchmarkSpec",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "DatasetOptionsError",
    "Split",
    "augment_batch",
    "carve_val",
    "default_data_root",
    "get_spec",
    "load_benchmark",
    "normalize",
    "validate_options",
]
