"""Networks with named taps: points where intermediate features are read by forward hooks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from torch import Tensor, nn

EMBEDDING = "embedding"


@dataclass(frozen=True)
class TapSpec:
    """A named feature point.

    ``module`` is the dotted path of the submodule whose output *is* the tap. For intermediate
    taps, ``conv``/``bn`` name the convolution (and its BatchNorm, if any) that produce the
    tap's channels: pruning scores their output filters.
    """

    name: str
    module: str
    channels: int
    conv: str | None = None
    bn: str | None = None


class TapNet(nn.Module):
    """Base class: subclasses set ``self.taps`` (intermediate taps shallow -> deep, then the embedding)."""

    taps: tuple[TapSpec, ...]

    @property
    def intermediate_taps(self) -> tuple[TapSpec, ...]:
        return tuple(t for t in self.taps if t.name != EMBEDDING)

    @property
    def embedding_tap(self) -> TapSpec:
        return next(t for t in self.taps if t.name == EMBEDDING)

    @property
    def embedding_dim(self) -> int:
        return self.embedding_tap.channels

    def tap(self, name: str) -> TapSpec:
        for t in self.taps:
            if t.name == name:
                return t
        raise KeyError(f"{type(self).__name__} has no tap {name!r}; taps: {[t.name for t in self.taps]}")


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying network of a DDP / compiled wrapper."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


class TapReader:
    """Runs a network and returns its logits plus the requested tap features.

    Hooks stay registered for the reader's lifetime (cheap per step); call :meth:`close`
    (or use it as a context manager) to remove them. ``forward()`` of the network is untouched.
    With ``keep_inputs`` the inputs of the tap modules of the last call are in :attr:`inputs`.
    """

    def __init__(self, model: nn.Module, names: Iterable[str], keep_inputs: bool = False) -> None:
        self.model = model
        self.keep_inputs = keep_inputs
        self.inputs: dict[str, Tensor] = {}
        net = unwrap(model)
        if not isinstance(net, TapNet):
            raise TypeError(f"{type(net).__name__} is not a TapNet")
        self.names = tuple(names)
        self._features: dict[str, Tensor] = {}
        self._handles = []
        for name in self.names:
            spec = net.tap(name)
            module = net.get_submodule(spec.module)
            self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(_module: nn.Module, inputs, output: Tensor) -> None:
            self._features[name] = output
            if self.keep_inputs:
                self.inputs[name] = inputs[0]

        return hook

    def __call__(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        self._features = {}
        self.inputs = {}
        logits = self.model(x)
        features, self._features = self._features, {}
        return logits, features

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "TapReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_taps(model: nn.Module, x: Tensor, names: Iterable[str]) -> tuple[Tensor, dict[str, Tensor]]:
    """One-off: logits and the named tap features of ``model(x)``."""
    with TapReader(model, names) as reader:
        return reader(x)
