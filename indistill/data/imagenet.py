"""ILSVRC-2012 from train/ and val/ wnid folders, optionally a class subset, cached at 64x64."""
from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from functools import partial
from pathlib import Path

from .base import BenchmarkSpec, LoadRequest, RawSplits
from .cache import atomic_path, decode_to_cache, load_cached_split
from .errors import not_found
from .images import IMG_EXTENSIONS, decode_center

SIZE = 64
SUBFOLDER = "imagenet"


def _subset_tag(classes: int | list[str] | tuple[str, ...] | None) -> str:
    """The part of the cache key naming the class subset (known before touching the dataset)."""
    if classes is None:
        return "all"
    if isinstance(classes, int) and not isinstance(classes, bool):
        if classes < 1:
            raise ValueError(f"imagenet option 'classes' must be >= 1, got {classes}")
        return f"first{classes}"
    if isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) for c in classes):
        wnids = sorted(set(classes))
        return f"{len(wnids)}wnids-{hashlib.sha1(' '.join(wnids).encode()).hexdigest()[:12]}"
    raise ValueError(f"imagenet option 'classes' must be a positive int or a list of wnids, got {classes!r}")


def cache_key(options: dict) -> str:
    return f"imagenet_{SIZE}px_{_subset_tag(options.get('classes'))}"


def spec_for_options(spec: BenchmarkSpec, options: dict) -> BenchmarkSpec:
    """``spec`` with ``num_classes`` matching the class subset in ``options``."""
    classes = options.get("classes")
    _subset_tag(classes)  # validates
    if classes is None:
        return spec
    n = classes if isinstance(classes, int) else len(set(classes))
    return replace(spec, num_classes=n)


def find_dataset(root: Path) -> Path:
    """The folder holding train/ and val/ wnid folders: ``<root>/imagenet`` or ``<root>``."""
    candidates = [root / SUBFOLDER, root]
    for folder in candidates:
        if (folder / "train").is_dir() and (folder / "val").is_dir():
            return folder
    raise not_found("imagenet", [c / d for c in candidates for d in ("train", "val")], SPEC.how_to_get, root)


def _select_classes(train: Path, classes: int | list[str] | tuple[str, ...] | None) -> list[str]:
    wnids = sorted(e.name for e in os.scandir(train) if e.is_dir())
    if classes is None:
        return wnids
    if isinstance(classes, int):
        if classes > len(wnids):
            raise ValueError(f"imagenet option 'classes'={classes} but {train} has only {len(wnids)} classes")
        return wnids[:classes]
    unknown = sorted(set(classes) - set(wnids))
    if unknown:
        raise ValueError(f"imagenet: wnids not in {train}: {', '.join(unknown[:10])}")
    return sorted(set(classes))


def _list_images(folder: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
    files, labels = [], []
    for label, wnid in enumerate(wnids):
        class_dir = folder / wnid
        if not class_dir.is_dir():
            continue
        names = sorted(e.name for e in os.scandir(class_dir) if e.name.lower().endswith(IMG_EXTENSIONS))
        files += [class_dir / n for n in names]
        labels += [label] * len(names)
    return files, labels


def load_imagenet(request: LoadRequest) -> RawSplits:
    """ILSVRC-2012 train and val (our test) as uint8 [N, 3, 64, 64]; labels index the sorted wnids."""
    key = cache_key(request.options)
    splits = {s: load_cached_split(request.cache_dir, key, s) for s in ("train", "test")}
    if all(split is not None for split in splits.values()):
        return RawSplits(train=splits["train"], test=splits["test"])
    folder = find_dataset(request.root)
    wnids = _select_classes(folder / "train", request.options.get("classes"))
    for split, sub in (("train", "train"), ("test", "val")):
        if splits[split] is not None:
            continue
        files, labels = _list_images(folder / sub, wnids)
        if not files:
            raise not_found("imagenet", [folder / sub], SPEC.how_to_get, request.root, "no images in the wnid folders")
        splits[split] = decode_to_cache(
            request.cache_dir,
            key,
            split,
            files=files,
            labels=labels,
            decode=partial(decode_center, size=SIZE),
            shape=(3, SIZE, SIZE),
            what=f"imagenet {split}",
            workers=request.options.get("workers"),
        )
    with atomic_path(request.cache_dir / f"{key}_classes.txt") as tmp:
        tmp.write_text("".join(f"{w}\n" for w in wnids))  # label i = line i
    return RawSplits(train=splits["train"], test=splits["test"])


SPEC = BenchmarkSpec(
    name="imagenet",
    loader=load_imagenet,
    num_classes=1000,
    input_shape=(3, SIZE, SIZE),
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    val_fraction=0.02,  # ~26 images per class on the full train set (1.28M images)
    crop_padding=8,
    flip=True,
    description="ILSVRC-2012 (torchvision ImageNet / ImageFolder layout; official val = our test), "
    "shorter side resized to 64 and center-cropped to 64x64 RGB, decoded once to a cached uint8 array; "
    "options: classes=N (first N wnids in sorted order) or a list of wnids",
    how_to_get=(
        "ImageNet cannot be downloaded automatically: get ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
        "(and the devkit) from https://image-net.org, then either let torchvision.datasets.ImageNet(root) "
        "prepare them or arrange them yourself as train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, "
        "in <root>/imagenet (or <root>)."
    ),
)
