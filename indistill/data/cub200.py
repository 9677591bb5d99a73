"""CUB-200-2011 (official layout and train/test split), decoded once to a cached 128x128 array.

The three list files are checked line by line (ids, classes in range, split flags, every image
id present in each list) and every listed image must exist; the decoded cache is keyed by what
was read (the lists' contents and each image's path, size and mtime, or the archive's identity),
so a corrected dataset is decoded again rather than shadowed by a stale cache.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Callable

from indistill.data.archive import safe_extract
from indistill.data.base import BenchmarkSpec, DatasetNotFoundError, LoadRequest, RawSplits
from indistill.data.cache import CacheWriter, archive_id, decode_split, fingerprint, latest_path, load_cached, load_latest, stat_many
from indistill.data.errors import bad_file, not_found
from indistill.data.images import decode_resize
from indistill.data.networks import AUXILIARY_DEEP, STUDENT_DEEP, trio
from indistill.data.options import WORKERS

SIZE = 128
FOLDER = "CUB_200_2011"
ARCHIVE = "CUB_200_2011.tgz"
NUM_CLASSES = 200
_LISTS = ("images.txt", "image_class_labels.txt", "train_test_split.txt")
BASE_KEY = f"cub200_{SIZE}px"
_SHAPE = (3, SIZE, SIZE)
_URL = "https://www.vision.caltech.edu/datasets/cub_200_2011/"
_FIX_FOLDER = f"extract it again from CUB_200_2011.tgz ({_URL})"
_FIX_ARCHIVE = f"download CUB_200_2011.tgz again from {_URL}"


def _read_pairs(path: Path, fix: str, shown: Callable[[Path], str]) -> dict[int, tuple[str, int]]:
    """``<id> <value>`` lines as ``{id: (value, line number)}``; a malformed line names the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise bad_file(shown(path), "not a text file", fix) from None
    except OSError as e:
        raise bad_file(shown(path), f"cannot be read ({e.strerror or e})", fix) from None
    pairs: dict[int, tuple[str, int]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise bad_file(shown(path), f"line {number}: expected '<image id> <value>', got {line.strip()[:80]!r}", fix)
        image_id = int(parts[0])
        if image_id in pairs:
            raise bad_file(shown(path), f"line {number}: image id {image_id} appears twice (also on line {pairs[image_id][1]})", fix)
        pairs[image_id] = (parts[1].strip(), number)
    if not pairs:
        raise bad_file(shown(path), "is empty", fix)
    return pairs


def _same_ids(images: dict, path: str, pairs: dict, fix: str) -> None:
    missing = sorted(set(images) - set(pairs))
    if missing:
        raise bad_file(path, f"has no line for image id {missing[0]} of images.txt ({len(missing)} of {len(images)} ids missing)", fix)
    extra = sorted(set(pairs) - set(images))
    if extra:
        raise bad_file(path, f"line {pairs[extra[0]][1]}: image id {extra[0]} is not in images.txt", fix)


@dataclass(frozen=True)
class _Plan:
    """What a CUB folder holds, checked: the images of each split, their labels, and the key parts."""

    files: dict[str, list[Path]]
    labels: dict[str, list[int]]
    parts: dict


def _plan(folder: Path, fix: str, shown: Callable[[Path], str] = str) -> _Plan:
    """Read and check the three lists of ``folder`` and stat every listed image; errors name a
    file as ``shown(path)``."""
    lists = {name: folder / name for name in _LISTS}
    named = {name: shown(path) for name, path in lists.items()}
    paths = _read_pairs(lists["images.txt"], fix, shown)
    classes = _read_pairs(lists["image_class_labels.txt"], fix, shown)
    is_train = _read_pairs(lists["train_test_split.txt"], fix, shown)
    _same_ids(paths, named["image_class_labels.txt"], classes, fix)
    _same_ids(paths, named["train_test_split.txt"], is_train, fix)
    ids = sorted(paths)
    files, labels = {"train": [], "test": []}, {"train": [], "test": []}
    rels = []
    for i in ids:
        rel, number = paths[i]
        pure = PurePosixPath(rel)
        if pure.is_absolute() or ".." in pure.parts or "\\" in rel:
            raise bad_file(named["images.txt"], f"line {number}: path {rel!r} leaves the images folder", fix)
        value, number = classes[i]
        if not value.isdigit() or not 1 <= int(value) <= NUM_CLASSES:
            raise bad_file(named["image_class_labels.txt"], f"line {number}: class {value!r} is not an integer in 1..{NUM_CLASSES}", fix)
        flag, number = is_train[i]
        if flag not in ("0", "1"):
            raise bad_file(named["train_test_split.txt"], f"line {number}: split flag {flag!r} is not 1 (train) or 0 (test)", fix)
        split = "train" if flag == "1" else "test"
        files[split].append(folder / "images" / pure)
        labels[split].append(int(value) - 1)
        rels.append(rel)
    for split, flag in (("train", 1), ("test", 0)):
        if not files[split]:
            raise bad_file(named["train_test_split.txt"], f"marks no image as {split} ({flag})", fix)
    all_files = [folder / "images" / PurePosixPath(r) for r in rels]
    stats = stat_many(all_files)
    for path, rel, st in zip(all_files, rels, stats):
        if st is None:
            number = next(n for v, n in paths.values() if v == rel)
            raise DatasetNotFoundError(f"{shown(path)}: missing (listed on line {number} of {named['images.txt']}); {fix}")
    digests = {name: hashlib.sha1(p.read_bytes()).hexdigest() for name, p in lists.items()}
    parts = {"lists": digests, "images": [[rel, *st] for rel, st in zip(rels, stats)]}
    return _Plan(files=files, labels=labels, parts=parts)


def _is_dataset(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _LISTS) and (folder / "images").is_dir()


def _keep_member(name: str) -> bool:
    rest = name.split("/", 1)[1] if "/" in name else ""
    return rest in _LISTS or rest == "classes.txt" or rest == "images" or rest.startswith("images/")


def find_folder(root: Path) -> Path | None:
    """The extracted CUB_200_2011 folder: ``<root>/CUB_200_2011`` or ``<root>`` itself, or None."""
    for folder in (root / FOLDER, root):
        if _is_dataset(folder):
            return folder
    return None


def _incomplete(folder: Path) -> list[Path]:
    """The missing pieces of a folder that looks like a CUB tree, i.e. holds one of the three
    lists (empty when it does not)."""
    lists = [folder / name for name in _LISTS]
    if not any(p.is_file() for p in lists):
        return []
    return [p for p in lists if not p.is_file()] + ([] if (folder / "images").is_dir() else [folder / "images"])


def _member_of(archive: Path, extracted: Path) -> Callable[[Path], str]:
    """Names a file of an extraction as a member of ``archive`` (the scratch path is gone later)."""

    def shown(path: Path) -> str:
        return f"{archive} (member {path.relative_to(extracted.parent).as_posix()})"

    return shown


def load_cub200(request: LoadRequest) -> RawSplits:
    """The official 5994 / 5794 split as uint8 [N, 3, 128, 128], labels 0..199."""
    cache_dir = request.cache_dir
    folder = find_folder(request.root)
    archive = request.root / ARCHIVE
    if folder is None and not archive.is_file():
        for candidate in (request.root / FOLDER, request.root):
            lacking = _incomplete(candidate)
            if lacking:  # a broken tree is an error, even when an older cache exists
                raise not_found("cub200", lacking, SPEC.how_to_get, request.root, f"{candidate} is incomplete")
        latest = load_latest(cache_dir, BASE_KEY, _SHAPE)
        if latest is not None:  # the source is gone: the last complete cache suffices
            return RawSplits(train=latest[1]["train"], test=latest[1]["test"])
        raise not_found("cub200", [request.root / FOLDER, request.root, archive], SPEC.how_to_get, request.root)
    with CacheWriter(cache_dir) as writer:
        if folder is not None:
            fix, shown = _FIX_FOLDER, str
            plan = _plan(folder, fix)
            key = f"{BASE_KEY}-{fingerprint(plan.parts)}"
            cached = load_cached(cache_dir, key, _SHAPE)
        else:  # the archive, keyed by its identity: a cache hit needs no extraction
            key = f"{BASE_KEY}-{fingerprint({'archive': archive_id(archive)})}"
            cached = load_cached(cache_dir, key, _SHAPE)
            if cached is None:  # extract to a scratch folder, removed once decoded (or on failure)
                fix = _FIX_ARCHIVE
                extracted = safe_extract(archive, writer.scratch_dir("cub200-extract"), FOLDER, _keep_member)
                if not _is_dataset(extracted):
                    lacking = ", ".join(p.name for p in _incomplete(extracted)) or ", ".join(_LISTS)
                    raise bad_file(archive, f"its {FOLDER} folder lacks {lacking}", fix)
                shown = _member_of(archive, extracted)
                plan = _plan(extracted, fix, shown)
        if cached is None:
            for split in ("train", "test"):
                decode_split(
                    writer, key, split,
                    files=plan.files[split],
                    labels=plan.labels[split],
                    decode=partial(decode_resize, size=SIZE),
                    shape=_SHAPE,
                    what=f"cub200 {split}",
                    workers=request.options.get("workers"),
                    hint=f"; {fix}",
                    shown=shown,
                )
        writer.write_text(latest_path(cache_dir, BASE_KEY), f"{key}\n")
    cached = load_cached(cache_dir, key, _SHAPE)
    assert cached is not None, f"cub200 cache {key} vanished after it was written"
    return RawSplits(train=cached["train"], test=cached["test"])


SPEC = BenchmarkSpec(
    name="cub200",
    loader=load_cub200,
    num_classes=NUM_CLASSES,
    input_shape=_SHAPE,
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    val_fraction=0.1,
    crop_padding=16,
    flip=True,
    description="CUB-200-2011 (official split, 5994 train / 5794 test), whole images resized to 128x128 RGB, "
    "decoded once to a cached uint8 array; options: workers (decode threads)",
    how_to_get=(
        "CUB-200-2011 cannot be downloaded automatically: download CUB_200_2011.tgz from "
        f"{_URL} and put the archive (or its extracted CUB_200_2011 folder) under <root>."
    ),
    networks=trio({"arch": "resnet18", "stem": "imagenet", "pretrained": False}, AUXILIARY_DEEP, STUDENT_DEEP),
    options=(WORKERS,),
)
