"""ILSVRC-2012 from train/ and val/ wnid folders, optionally a class subset, cached at 64x64.

Every selected class must have a non-empty folder in train/ and val/; every file with an image
extension in it is decoded (one that does not decode is named). The decoded cache is keyed by
the class subset and by what was read (each image's path, size and mtime), so a corrected
dataset is decoded again rather than shadowed by a stale cache.
"""
from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from indistill.data.base import BenchmarkSpec, DataOption, DatasetNotFoundError, LoadRequest, RawSplits
from indistill.data.cache import CacheWriter, decode_split, fingerprint, latest_path, load_cached, load_latest
from indistill.data.errors import bad_file, not_found
from indistill.data.images import IMG_EXTENSIONS, decode_center
from indistill.data.networks import AUXILIARY_DEEP, STUDENT_DEEP, trio
from indistill.data.options import WORKERS

SIZE = 64
SUBFOLDER = "imagenet"
_SHAPE = (3, SIZE, SIZE)
_FIX = "remove or replace it (every file with an image extension in a class folder is decoded)"


def _classes_problem(classes: Any) -> str | None:
    """Why ``classes`` is not a valid ``data.options.classes`` (None when it is)."""
    if classes is None:
        return None
    if isinstance(classes, int) and not isinstance(classes, bool):
        return None if classes >= 1 else f"must be >= 1, got {classes}"
    if isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) for c in classes):
        bad = [c for c in classes if not c or c in (".", "..") or "/" in c or "\\" in c]
        return f"{bad[0]!r} is not a wnid (a class folder name such as n01440764)" if bad else None
    return f"must be a positive integer (the first N wnids) or a list of wnids, got {classes!r}"


CLASSES = DataOption("classes", _classes_problem, "a class subset: the first N wnids in sorted order, or a list of wnids")


def _subset_tag(classes: int | list[str] | tuple[str, ...] | None) -> str:
    """The part of the cache key naming the class subset (known before touching the dataset)."""
    if classes is None:
        return "all"
    if isinstance(classes, int):
        return f"first{classes}"
    wnids = sorted(set(classes))
    return f"{len(wnids)}wnids-{hashlib.sha1(' '.join(wnids).encode()).hexdigest()[:12]}"


def base_key(options: dict) -> str:
    """The cache key of a class subset before the fingerprint of what was read."""
    return f"imagenet_{SIZE}px_{_subset_tag(options.get('classes'))}"


def spec_for_options(spec: BenchmarkSpec, options: dict) -> BenchmarkSpec:
    """``spec`` with ``num_classes`` matching the class subset in ``options`` (already checked)."""
    classes = options.get("classes")
    if classes is None:
        return spec
    n = classes if isinstance(classes, int) else len(set(classes))
    return replace(spec, num_classes=n)


def find_dataset(root: Path) -> Path | None:
    """The folder holding train/ and val/ wnid folders: ``<root>/imagenet`` or ``<root>``, or None."""
    for folder in (root / SUBFOLDER, root):
        if (folder / "train").is_dir() and (folder / "val").is_dir():
            return folder
    return None


def _class_folders(folder: Path) -> list[str]:
    """The wnid folders of ``folder`` (hidden folders such as ``.ipynb_checkpoints`` are skipped)."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _select_classes(train: Path, classes: int | list[str] | tuple[str, ...] | None) -> list[str]:
    wnids = _class_folders(train)
    if not wnids:
        raise DatasetNotFoundError(f"{train}: no class folders (expected train/<wnid>/*.JPEG); {SPEC.how_to_get}")
    if classes is None:
        return wnids
    if isinstance(classes, int):
        if classes > len(wnids):
            raise DatasetNotFoundError(
                f"{train}: data.options.classes is {classes} but it holds only {len(wnids)} class folders"
            )
        return wnids[:classes]
    unknown = sorted(set(classes) - set(wnids))
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise DatasetNotFoundError(f"{train}: no class folder for wnid(s) {shown} of data.options.classes")
    return sorted(set(classes))


def _scan_class(class_dir: Path) -> list[tuple[str, int, int]]:
    """``(name, size, mtime_ns)`` of the image files of one class folder, sorted by name."""
    out, others = [], 0
    try:
        entries = list(os.scandir(class_dir))
    except FileNotFoundError:
        raise DatasetNotFoundError(
            f"{class_dir}: class folder missing (train/ has it); add it with the class's validation images"
        ) from None
    except NotADirectoryError:
        raise bad_file(class_dir, "is a file, expected a class folder", _FIX) from None
    for e in entries:
        if e.name.lower().endswith(IMG_EXTENSIONS) and e.is_file():
            st = e.stat()
            out.append((e.name, st.st_size, st.st_mtime_ns))
        else:
            others += 1
    if not out:
        held = f"it holds {others} other {'entry' if others == 1 else 'entries'}" if others else "it is empty"
        raise bad_file(
            class_dir, f"no images in this class folder ({held}; image extensions: {' '.join(IMG_EXTENSIONS)})",
            "add its images or remove the folder",
        )
    return sorted(out)


def _list_images(folder: Path, wnids: list[str], workers: int | None) -> tuple[list[Path], list[int], list]:
    """The images of every class folder of ``wnids`` under ``folder``: files, labels and key parts."""
    with ThreadPoolExecutor(max_workers=workers or min(16, (os.cpu_count() or 1) * 4)) as pool:
        scans = list(pool.map(lambda w: _scan_class(folder / w), wnids))
    files, labels, parts = [], [], []
    for label, (wnid, scan) in enumerate(zip(wnids, scans)):
        files += [folder / wnid / name for name, _, _ in scan]
        labels += [label] * len(scan)
        parts.append([wnid, [list(s) for s in scan]])
    return files, labels, parts


def load_imagenet(request: LoadRequest) -> RawSplits:
    """ILSVRC-2012 train and val (our test) as uint8 [N, 3, 64, 64]; labels index the sorted wnids."""
    classes = request.options.get("classes")
    base = base_key(request.options)
    cache_dir = request.cache_dir
    folder = find_dataset(request.root)
    if folder is None:
        latest = load_latest(cache_dir, base, _SHAPE)
        if latest is not None:  # the source is gone: the last complete cache suffices
            return RawSplits(train=latest[1]["train"], test=latest[1]["test"])
        candidates = [request.root / SUBFOLDER, request.root]
        raise not_found("imagenet", [c / d for c in candidates for d in ("train", "val")], SPEC.how_to_get, request.root)
    wnids = _select_classes(folder / "train", classes)
    if classes is None:  # the whole set: a val class without train images cannot be labelled
        extra = sorted(set(_class_folders(folder / "val")) - set(wnids))
        if extra:
            raise bad_file(
                folder / "val" / extra[0], f"class folder has no counterpart in {folder / 'train'}",
                "remove it or add the class's training images",
            )
    workers = request.options.get("workers")
    listed = {split: _list_images(folder / sub, wnids, workers) for split, sub in (("train", "train"), ("test", "val"))}
    key = f"{base}-{fingerprint({'wnids': wnids, 'train': listed['train'][2], 'val': listed['test'][2]})}"
    with CacheWriter(cache_dir) as writer:
        if load_cached(cache_dir, key, _SHAPE) is None:
            for split in ("train", "test"):
                files, labels, _ = listed[split]
                decode_split(
                    writer, key, split,
                    files=files,
                    labels=labels,
                    decode=partial(decode_center, size=SIZE),
                    shape=_SHAPE,
                    what=f"imagenet {split}",
                    workers=workers,
                    hint=f"; {_FIX}",
                )
        writer.write_text(cache_dir / f"{key}_classes.txt", "".join(f"{w}\n" for w in wnids))  # label i = line i
        writer.write_text(latest_path(cache_dir, base), f"{key}\n")
    cached = load_cached(cache_dir, key, _SHAPE)
    assert cached is not None, f"imagenet cache {key} vanished after it was written"
    return RawSplits(train=cached["train"], test=cached["test"])


SPEC = BenchmarkSpec(
    name="imagenet",
    loader=load_imagenet,
    num_classes=1000,
    input_shape=_SHAPE,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    val_fraction=0.02,  # ~26 images per class on the full train set (1.28M images)
    crop_padding=8,
    flip=True,
    description="ILSVRC-2012 (torchvision ImageNet / ImageFolder layout; official val = our test), "
    "shorter side resized to 64 and center-cropped to 64x64 RGB, decoded once to a cached uint8 array; "
    "options: classes=N (first N wnids in sorted order) or a list of wnids, workers (decode threads)",
    how_to_get=(
        "ImageNet cannot be downloaded automatically: get ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
        "(and the devkit) from https://image-net.org, then either let torchvision.datasets.ImageNet(root) "
        "prepare them or arrange them yourself as train/<wnid>/*.JPEG and val/<wnid>/*.JPEG, "
        "in <root>/imagenet (or <root>)."
    ),
    # 64px: the stride-1 3x3 stem of downsampled-ImageNet work keeps 64x64 maps in layer1
    networks=trio({"arch": "resnet18", "stem": "small", "pretrained": False}, AUXILIARY_DEEP, STUDENT_DEEP),
    options=(CLASSES, WORKERS),
    for_options=spec_for_options,
)
