"""Benchmarks as uint8 tensors (train / val / test) and the on-device augmentation ops."""
from .augment import augment_batch, normalize
from .base import BenchmarkData, BenchmarkSpec, DatasetNotFoundError, Split
from .registry import BENCHMARKS, default_data_root, get_spec, load_benchmark
from .splits import carve_val

__all__ = [
    "BENCHMARKS",
    "BenchmarkData",
    "BenchmarkSpec",
    "DatasetNotFoundError",
    "Split",
    "augment_batch",
    "carve_val",
    "default_data_root",
    "get_spec",
    "load_benchmark",
    "normalize",
]
