"""Load weights into a network built by ``create_network``: the project's own checkpoints or the
reference code's released state_dicts (gsarridis/InDistill ``results/models/*.pt``).

Key formats are recognised by their names:

- ours: a stage checkpoint (``{"model": state_dict, ...}``) or a bare state_dict of our modules;
- the reference CNNs (``Cnn32``, ``Cnn32_Small``): ``conv{i}.*``, ``conv{i}_bn.*``, ``fc1.*``,
  ``fc2.*``, mapped onto our ``blocks.{i-1}.0``, ``blocks.{i-1}.1``, ``embed.1`` and ``head``;
- the reference pre-activation ResNet-18: ``conv1``, ``bn1``, ``layer{1..4}.{0,1}.*``, ``linear``,
  which are our module names already (:class:`~indistill.models.resnet.PreActResNet18`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Mapping

from torch import Tensor, nn

from indistill.common.errors import CheckpointError
from indistill.common.io import read_torch
from indistill.models.cnn import CNN

_CNN_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^conv(\d+)_bn\.(.+)$"), "blocks.{n}.1.{rest}"),
    (re.compile(r"^conv(\d+)\.(.+)$"), "blocks.{n}.0.{rest}"),
    (re.compile(r"^fc1\.(.+)$"), "embed.1.{rest}"),
    (re.compile(r"^fc2\.(.+)$"), "head.{rest}"),
)


def _from_reference_cnn(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, target in _CNN_RULES:
            m = pattern.match(key)
            if m:
                groups = m.groups()
                if len(groups) == 2:
                    key = target.format(n=int(groups[0]) - 1, rest=groups[1])
                else:
                    key = target.format(rest=groups[0])
                break
        out[key] = value
    return out


def _is_reference_cnn(state: Mapping[str, Tensor]) -> bool:
    return any(re.match(r"^conv\d+_bn\.", k) for k in state) and any(k.startswith("fc1.") for k in state)


#: (architecture class, detector, translator): key formats other than our own module names
KEY_FORMATS: tuple[tuple[type[nn.Module], Callable[[Mapping], bool], Callable[[Mapping], dict]], ...] = (
    (CNN, _is_reference_cnn, _from_reference_cnn),
)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a checkpoint file: a stage checkpoint's ``model`` entry, or a bare state_dict."""
    path = Path(path).expanduser()
    obj = read_torch(path)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise CheckpointError(f"{path}: not a state_dict (a mapping of parameter names to tensors)")
    return dict(obj)


def _translate(net: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    own = net.state_dict()
    if set(state) == set(own):
        return state
    for arch, detect, translate in KEY_FORMATS:
        if isinstance(net, arch) and detect(state):
            return translate(state)
    return state


def _listing(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_checkpoint(net: nn.Module, path: str | Path) -> nn.Module:
    """Load ``path`` into ``net`` (any supported key format); a mismatch is one line naming the keys."""
    return load_state(net, _translate(net, read_state_dict(path)), path)


def load_state(net: nn.Module, state: Mapping, path: str | Path) -> nn.Module:
    """``net.load_state_dict(state)`` after checking that it fits: a state_dict that does not is a
    :class:`CheckpointError` naming ``path`` and the missing, unexpected or wrong-shaped keys."""
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: not a state_dict (a mapping of parameter names to tensors)")
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys {_listing(unexpected)}")
        if shapes:
            k = shapes[0]
            parts.append(f"shape mismatch at {k}: file {tuple(state[k].shape)} vs network {tuple(own[k].shape)}"
                         + (f" (+{len(shapes) - 1} more)" if len(shapes) > 1 else ""))
        raise CheckpointError(f"{path}: does not fit the {type(net).__name__} it is loaded into: {'; '.join(parts)}")
    net.load_state_dict(state)
    return net
