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


class _Stop(Exception):
    """Raised by a hook once a partial read (:meth:`TapReader.read`) has everything it asked for."""


class TapReader:
    """Runs a network and returns its logits plus the requested tap features.

    Hooks stay registered for the reader's lifetime (cheap per step); call :meth:`close`
    (or use it as a context manager) to remove them. ``forward()`` of the network is untouched.
    With ``keep_inputs`` the inputs of the tap modules of the last call are in :attr:`inputs`.
    :meth:`read` runs a frozen network only as far as the taps it is asked for.
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
        self._wanted: tuple[frozenset[str], frozenset[str]] | None = None  # (outputs, inputs) of a partial read
        self._handles = []
        for name in self.names:
            module = net.get_submodule(net.tap(name).module)
            if keep_inputs:
                self._handles.append(module.register_forward_pre_hook(self._pre_hook(name)))
            self._handles.append(module.register_forward_hook(self._hook(name)))

    def _pre_hook(self, name: str):
        def hook(_module: nn.Module, inputs) -> None:
            if self._wanted is None or name in self._wanted[1]:
                self.inputs[name] = inputs[0]
                self._stop_when_done()

        return hook

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs, output: Tensor) -> None:
            if self._wanted is None or name in self._wanted[0]:
                self._features[name] = output
                self._stop_when_done()

        return hook

    def _stop_when_done(self) -> None:
        if self._wanted is not None and self._wanted[0] <= self._features.keys() and self._wanted[1] <= self.inputs.keys():
            raise _Stop

    def __call__(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        self._features = {}
        self.inputs = {}
        logits = self.model(x)
        features, self._features = self._features, {}
        return logits, features

    def read(self, x: Tensor, outputs: Iterable[str] = (), inputs: Iterable[str] = ()) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(features, module inputs) of only the named taps: the forward stops as soon as it has them, so the
        modules after them do not run, nor the tap modules whose input alone is asked for.

        Only for a plain network whose skipped part changes no state (frozen, eval mode): there are no logits.
        """
        wanted = (frozenset(outputs), frozenset(inputs))
        unknown = (wanted[0] | wanted[1]) - set(self.names)
        if unknown:
            raise ValueError(f"taps {sorted(unknown)} are not read by this reader (it reads {list(self.names)})")
        if wanted[1] and not self.keep_inputs:
            raise ValueError("reading tap inputs needs a TapReader with keep_inputs=True")
        if unwrap(self.model) is not self.model:
            raise TypeError("a partial read needs the plain network, not a DDP or compiled wrapper")
        self._features, self.inputs, self._wanted = {}, {}, wanted
        try:
            if wanted[0] or wanted[1]:
                self.model(x)
        except _Stop:
            pass
        finally:
            self._wanted = None
        features, self._features = self._features, {}
        return features, self.inputs

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
