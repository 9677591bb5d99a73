"""scikit-learn's bundled 8x8 digits, upsampled to 32x32: the offline default benchmark."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from indistill.data.base import BenchmarkSpec, LoadRequest, RawSplits, Split
from indistill.data.networks import trio
from indistill.data.splits import stratified_indices

SIZE = 32
TEST_FRACTION = 0.2
#: Seed of the train/test carve (the data has no official split). Part of the protocol.
TEST_SEED = 2012


def load_digits_splits(request: LoadRequest) -> RawSplits:
    """All 1797 digits as uint8 [N, 1, 32, 32]; a fixed stratified 20 % is the test split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) * (255.0 / 16.0)).unsqueeze(1)
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=True)
    images = x.round_().clamp_(0, 255).to(torch.uint8)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = stratified_indices(labels, TEST_FRACTION, TEST_SEED)
    full = Split(images, labels)
    return RawSplits(train=full.subset(train_idx), test=full.subset(test_idx))


SPEC = BenchmarkSpec(
    name="digits",
    loader=load_digits_splits,
    num_classes=10,
    input_shape=(1, SIZE, SIZE),
    mean=(0.3049,),  # of the 32x32 train split
    std=(0.3234,),
    val_fraction=0.1,
    crop_padding=2,
    flip=False,  # digits are not mirror-invariant
    description="scikit-learn load_digits (1797 real 8x8 scans) resized to 32x32 gray; "
    "stratified 20 % test split with a fixed seed",
    how_to_get="Nothing to get: the data ships with scikit-learn (pip install scikit-learn).",
    # a small wide CNN teacher, so the embedded CPU default stays short
    networks=trio({"arch": "cnn", "widths": [32, 64, 128], "embedding_dim": 256, "padding": 1}),
)
