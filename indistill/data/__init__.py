"""Benchmarks as uint8 tensors (train / val / test) and the on-device augmentation ops."""
from .augment import augment_batch, normalize
from .base import BenchmarkData, BenchmarkSpec, DatasetFormatError, DatasetNotFoundError, DatasetOptionsError, Split
from .registry import BENCHMARKS, default_data_root, get_spec, load_benchmark, validate_options
from .splits import carve_val

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
