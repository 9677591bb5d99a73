"""Data types shared by every benchmark: uint8 image splits and their metadata."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from indistill.config.run import CONFIG_DIR, ROLES
from indistill.common.errors import UserError
from indistill.common.errors import ConfigError

#: Seed of the train -> (train, val) carve. Fixed on purpose: it is part of the protocol,
#: not of a run, so every run and trial sees the same validation split.
VAL_SEED = 0


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A dataset is not on disk; the message says where we looked and how to get it.

    Also a ``FileNotFoundError``, so handlers written for that keep catching it.
    """


class DatasetFormatError(UserError):
    """A dataset is on disk but malformed (format, shapes, counts, label range, undecodable
    image); the message names the file and what is wrong with it."""


class DatasetOptionsError(ConfigError):
    """``data.options`` holds a key the benchmark does not know or a value it does not accept;
    the message names ``data.options.<key>`` and what is allowed."""


@dataclass(frozen=True)
class DataOption:
    """One ``data.options`` key a benchmark accepts. ``check`` returns an error text for a bad
    value (None when the value is fine)."""

    name: str
    check: Callable[[Any], str | None]
    help: str


@dataclass(frozen=True)
class Split:
    """Images as one uint8 tensor ``[N, C, H, W]`` and int64 labels ``[N]``."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must be int64 [N] matching images")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: Tensor) -> "Split":
        return Split(self.images[index], self.labels[index])

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class RawSplits:
    """What a benchmark loader returns: the official train and test splits."""

    train: Split
    test: Split


@dataclass(frozen=True)
class LoadRequest:
    """Everything a loader may need. ``options`` holds benchmark-specific extras."""

    root: Path
    download: bool
    cache_dir: Path
    options: dict


@dataclass(frozen=True)
class BenchmarkSpec:
    """A registered benchmark: how to load it, how to treat its images, which networks it trains and
    where its default run config is (README "Adding a benchmark")."""

    name: str
    loader: Callable[[LoadRequest], RawSplits]
    num_classes: int
    input_shape: tuple[int, int, int]  # C, H, W of the stored (working-size) images
    mean: tuple[float, ...]
    std: tuple[float, ...]
    val_fraction: float  # share of the official train split carved out as val
    crop_padding: int  # random-crop padding of the training augmentation, 0 = no crop
    flip: bool  # random horizontal flip in training
    description: str
    how_to_get: str  # printed when the data is missing
    networks: Mapping[str, Mapping[str, Any]]  # role -> zoo entry (data/networks.py), for every role
    options: tuple[DataOption, ...] = ()  # the data.options keys it accepts
    #: the spec for checked ``data.options`` (e.g. a class subset changes ``num_classes``); None: the same spec
    for_options: Callable[["BenchmarkSpec", dict], "BenchmarkSpec"] | None = None
    config: Path | None = None  # the default run config; None: indistill/config/defaults/<name>.yaml

    def __post_init__(self) -> None:
        if set(self.networks) != set(ROLES):
            raise ValueError(f"benchmark {self.name!r}: networks needs exactly the roles {', '.join(ROLES)}, "
                             f"got {', '.join(self.networks) or 'none'}")

    @property
    def default_config(self) -> Path:
        """The YAML every run config of this benchmark is merged over."""
        return self.config if self.config is not None else CONFIG_DIR / f"{self.name}.yaml"


@dataclass(frozen=True)
class BenchmarkData:
    """A loaded benchmark: train (minus val), val and test splits plus metadata."""

    spec: BenchmarkSpec
    train: Split
    val: Split
    test: Split

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.spec.input_shape

    def train_full(self) -> Split:
        """The official train split (train + val), used for the final retrain."""
        return Split(torch.cat([self.train.images, self.val.images]), torch.cat([self.train.labels, self.val.labels]))
