"""Teachers: a pre-activation ResNet-18 for 32x32 inputs and a torchvision-style ResNet-18.

Intermediate taps are the four stage outputs (``block0..block3``), the embedding the pooled 512-d
feature. Teachers are never pruned by the method, but their taps still name the conv (and BN) that
produce the stage's channels, for completeness. In both ResNets a stage output is a residual sum
(plus a ReLU in the torchvision one), so restricting it to some channels is *not* the same as
structurally pruning that single conv.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from indistill.models.base import EMBEDDING, TapNet, TapSpec

STAGE_WIDTHS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 2, 2)


class PreActBlock(nn.Module):
    """The reference code's pre-activation block: ``a = relu(bn1(x))``;
    ``out = conv2(relu(bn2(conv1(a)))) + shortcut(a)``.

    The shortcut reads ``a``, not ``x``, also when it is the identity (as the InDistill and pkth
    code build it); a shape change uses a strided 1x1 conv without BN (``shortcut.0``).
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        projection = stride != 1 or c_in != c_out
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False)) if projection else nn.Sequential()

    def forward(self, x: Tensor) -> Tensor:
        a = F.relu(self.bn1(x))
        return self.conv2(F.relu(self.bn2(self.conv1(a)))) + self.shortcut(a)


class PreActResNet18(TapNet):
    """The reference code's 32px pre-activation ResNet-18, module for module (so its state_dicts load).

    Stem: 3x3 conv (64, no bias) -> BN -> ReLU; stages 64/128/256/512 of two blocks (strides
    1/2/2/2); no BN or ReLU after the last block; embedding = average pool of the last block's
    output (512-d, may be negative; ``avg_pool2d(., 4)`` at 32px); then ``linear``.
    """

    def __init__(self, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        c = 64
        for i, (w, s) in enumerate(zip(STAGE_WIDTHS, STAGE_STRIDES)):
            setattr(self, f"layer{i + 1}", nn.Sequential(PreActBlock(c, w, s), PreActBlock(w, w, 1)))
            c = w
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.linear = nn.Linear(512, num_classes)
        # a pre-activation stage output is a residual sum: no BN follows its last conv directly
        self.taps = tuple(
            TapSpec(f"block{i}", f"layer{i + 1}", w, conv=f"layer{i + 1}.1.conv2", bn=None)
            for i, w in enumerate(STAGE_WIDTHS)
        ) + (TapSpec(EMBEDDING, "pool", 512),)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(self.pool(x))


class ResNet18(TapNet):
    """torchvision's ResNet-18 modules with a tap-friendly head.

    ``stem="imagenet"``: 7x7 stride-2 conv + 3x3 max-pool (as torchvision); ``stem="small"``: 3x3
    stride-1 conv, no max-pool (for small images). ``pretrained=True`` loads torchvision's
    ImageNet weights (needs network access or a cached copy under ``$TORCH_HOME``); ``conv1`` is
    re-initialised when its shape differs from the pretrained one (small stem or in_channels != 3).

    Taps ``block0..3`` are ``layer1..layer4``; their conv/bn are the last block's ``conv2``/``bn2``,
    which are followed by the residual add and ReLU, so such a tap is not a pure channel restriction
    of one conv+BN.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, stem: str = "imagenet", pretrained: bool = False) -> None:
        super().__init__()
        if stem not in ("imagenet", "small"):
            raise ValueError(f"resnet18: unknown stem {stem!r}; choose from: imagenet, small")
        import torchvision  # here, not at import: it costs ~1.7 s in every Ray worker process

        net = torchvision.models.resnet18(weights=None)
        if pretrained:
            net.load_state_dict(_imagenet_weights())
        if stem == "small":
            net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.embed = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(512, num_classes)
        self.taps = tuple(
            TapSpec(f"block{i}", f"layer{i + 1}", w, conv=f"layer{i + 1}.1.conv2", bn=f"layer{i + 1}.1.bn2")
            for i, w in enumerate(STAGE_WIDTHS)
        ) + (TapSpec(EMBEDDING, "embed", 512),)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.head(self.embed(x))


def _imagenet_weights() -> dict:
    import torchvision

    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=False)
    except Exception as exc:  # noqa: BLE001 - offline failures come in many types (URLError, OSError, ...)
        raise RuntimeError(
            "resnet18 pretrained=True: could not load torchvision's ImageNet weights; they need network "
            f"access on first use (or a cached copy of {weights.url} under $TORCH_HOME/hub/checkpoints). "
            f"Cause: {type(exc).__name__}: {exc}"
        ) from exc

