"""Properties of the batched crop + flip and of normalize."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from indistill.data import augment_batch, normalize

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _batch(b=32, c=3, h=8, w=10, dtype=torch.uint8, device="cpu"):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (b, c, h, w), generator=g, dtype=torch.uint8)  # >= 1: zero padding is visible
    return x.to(device=device, dtype=dtype)


def _windows(img: torch.Tensor, p: int, flip: bool) -> list[torch.Tensor]:
    """Every H x W window of the zero-padded image (and their mirror images if ``flip``)."""
    c, h, w = img.shape
    padded = F.pad(img, (p, p, p, p))
    out = [padded[:, dy : dy + h, dx : dx + w] for dy in range(2 * p + 1) for dx in range(2 * p + 1)]
    return out + [o.flip(-1) for o in out] if flip else out


def test_identity_without_padding_or_flip():
    x = _batch()
    assert augment_batch(x, 0, False) is x


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_crop_is_a_shifted_window(device, dtype):
    x = _batch(dtype=dtype, device=device)
    g = torch.Generator(device=device).manual_seed(1)
    y = augment_batch(x, 3, False, generator=g)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    offsets = set()
    for i in range(len(x)):
        matches = [k for k, win in enumerate(_windows(x[i], 3, False)) if torch.equal(y[i], win)]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 5  # offsets are drawn per image


@pytest.mark.parametrize("device", DEVICES)
def test_flip_is_an_exact_mirror(device):
    x = _batch(b=64, device=device)
    y = augment_batch(x, 0, True, generator=torch.Generator(device=device).manual_seed(2))
    flipped = torch.tensor([torch.equal(y[i], x[i].flip(-1)) for i in range(len(x))])
    same = torch.tensor([torch.equal(y[i], x[i]) for i in range(len(x))])
    assert torch.all(flipped ^ same)
    assert 16 < int(flipped.sum()) < 48  # p = 0.5 per image


def test_crop_and_flip_together():
    x = _batch(b=48, h=6, w=7, dtype=torch.float32)
    y = augment_batch(x, 2, True, generator=torch.Generator().manual_seed(3))
    n_mirrored = 0
    for i in range(len(x)):
        windows = _windows(x[i], 2, True)
        matches = [k for k, win in enumerate(windows) if torch.equal(y[i], win)]
        assert len(matches) == 1
        n_mirrored += matches[0] >= len(windows) // 2
    assert 0 < n_mirrored < len(x)


def test_same_seed_same_output():
    x = _batch()
    a = augment_batch(x, 4, True, generator=torch.Generator().manual_seed(7))
    b = augment_batch(x, 4, True, generator=torch.Generator().manual_seed(7))
    c = augment_batch(x, 4, True, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert augment_batch(x, 4, True).shape == x.shape  # default generator


def test_negative_padding_rejected():
    with pytest.raises(ValueError):
        augment_batch(_batch(), -1, False)


@pytest.mark.parametrize("device", DEVICES)
def test_normalize(device):
    x = _batch(c=3, device=device)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    y = normalize(x, mean, std)
    m = torch.tensor(mean, dtype=torch.float64, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float64, device=device).view(1, 3, 1, 1)
    ref = (x.double() / 255 - m) / s
    assert y.dtype == torch.float32 and y.device == x.device
    assert torch.allclose(y.double(), ref, atol=1e-5)
    assert torch.allclose(normalize(x, mean, std, dtype=torch.float64), ref, atol=1e-12)
    assert normalize(x, mean, std, dtype=torch.bfloat16).dtype == torch.bfloat16
    gray = normalize(x[:, :1], (0.5,), (0.25,))
    assert torch.allclose(gray, (x[:, :1].float() / 255 - 0.5) / 0.25, atol=1e-5)
