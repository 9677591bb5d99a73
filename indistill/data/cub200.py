"""CUB-200-2011 (official layout and train/test split), decoded once to a cached 128x128 array."""
from __future__ import annotations

from functools import partial
from pathlib import Path

from .archive import safe_extract
from .base import BenchmarkSpec, LoadRequest, RawSplits
from .cache import decode_to_cache, load_cached_split
from .errors import not_found
from .images import decode_resize

SIZE = 128
FOLDER = "CUB_200_2011"
ARCHIVE = "CUB_200_2011.tgz"
_LISTS = ("images.txt", "image_class_labels.txt", "train_test_split.txt")
CACHE_KEY = f"cub200_{SIZE}px"


def _read_pairs(path: Path) -> dict[int, str]:
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip():
            key, value = line.split(maxsplit=1)
            pairs[int(key)] = value.strip()
    return pairs


def _is_dataset(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _LISTS) and (folder / "images").is_dir()


def _keep_member(name: str) -> bool:
    rest = name.split("/", 1)[1] if "/" in name else ""
    return rest in _LISTS or rest == "classes.txt" or rest == "images" or rest.startswith("images/")


def find_dataset(request: LoadRequest) -> Path:
    """The extracted CUB_200_2011 folder; extracts the archive into the cache dir if needed."""
    candidates = [request.root / FOLDER, request.root, request.cache_dir / FOLDER]
    for folder in candidates:
        if _is_dataset(folder):
            return folder
    archive = request.root / ARCHIVE
    if archive.is_file():
        folder = safe_extract(archive, request.cache_dir, FOLDER, _keep_member)
        if _is_dataset(folder):
            return folder
        raise not_found("cub200", [archive], SPEC.how_to_get, request.root, f"{archive} lacks {', '.join(_LISTS)}")
    raise not_found("cub200", candidates[:2] + [archive], SPEC.how_to_get, request.root)


def load_cub200(request: LoadRequest) -> RawSplits:
    """The official 5994 / 5794 split as uint8 [N, 3, 128, 128], labels 0..199."""
    splits = {s: load_cached_split(request.cache_dir, CACHE_KEY, s) for s in ("train", "test")}
    if all(split is not None for split in splits.values()):
        return RawSplits(train=splits["train"], test=splits["test"])
    folder = find_dataset(request)
    paths = _read_pairs(folder / "images.txt")
    classes = _read_pairs(folder / "image_class_labels.txt")
    is_train = _read_pairs(folder / "train_test_split.txt")
    for split, flag in (("train", "1"), ("test", "0")):
        if splits[split] is not None:
            continue
        ids = sorted(i for i in paths if is_train[i] == flag)
        splits[split] = decode_to_cache(
            request.cache_dir,
            CACHE_KEY,
            split,
            files=[folder / "images" / paths[i] for i in ids],
            labels=[int(classes[i]) - 1 for i in ids],
            decode=partial(decode_resize, size=SIZE),
            shape=(3, SIZE, SIZE),
            what=f"cub200 {split}",
            workers=request.options.get("workers"),
        )
    return RawSplits(train=splits["train"], test=splits["test"])


SPEC = BenchmarkSpec(
    name="cub200",
    loader=load_cub200,
    num_classes=200,
    input_shape=(3, SIZE, SIZE),
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    val_fraction=0.1,
    crop_padding=16,
    flip=True,
    description="CUB-200-2011 (official split, 5994 train / 5794 test), whole images resized to 128x128 RGB, "
    "decoded once to a cached uint8 array",
    how_to_get=(
        "CUB-200-2011 cannot be downloaded automatically: download CUB_200_2011.tgz from "
        "https://www.vision.caltech.edu/datasets/cub_200_2011/ and put the archive (or its extracted "
        "CUB_200_2011 folder) under <root>."
    ),
)
