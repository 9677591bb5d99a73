"""Malformed datasets in their real on-disk formats: one line naming the file, nothing on disk changes.

Every case fabricates a small dataset with the fixtures of ``data_fixtures``, breaks one thing
in it, and checks that ``load_benchmark`` raises a ``UserError`` subclass whose one-line message
names the bad file, and that the tree under the data root (cache folder included) is exactly as
it was before: same files, same bytes, no new folders.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from indistill.data import (
    DatasetFormatError,
    DatasetNotFoundError,
    DatasetOptionsError,
    load_benchmark,
    validate_options,
)
from indistill.common.errors import UserError
from indistill.common.errors import ConfigError

from .data_fixtures import (
    COLOURS,
    WNIDS,
    idx_bytes,
    read_cifar_batch,
    tar_folder,
    write_cifar10,
    write_cifar100,
    write_cifar_batch,
    write_cub,
    write_fashionmnist,
    write_imagenet,
)


def snapshot(root: Path) -> dict[str, str]:
    """Every file (by SHA-256) and folder under ``root``."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root)] = "<dir>"
        for f in filenames:
            path = os.path.join(dirpath, f)
            out[os.path.relpath(path, root)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return out


@dataclass
class Case:
    benchmark: str
    bad: Path  # the file (or folder) the message must name
    error: type = DatasetFormatError
    options: dict | None = None
    words: str = ""  # a further phrase the message must hold


CASES: dict[str, Callable[[Path], Case]] = {}


def case(fn: Callable[[Path], Case]) -> Callable[[Path], Case]:
    CASES[fn.__name__] = fn
    return fn


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# --- CIFAR-10 / CIFAR-100 (pickled python batches) -------------------------------------------

C10 = "cifar-10-batches-py"
C100 = "cifar-100-python"


@case
def cifar10_truncated_batch(root):
    write_cifar10(root, per_batch=10, test=10)
    truncate(root / C10 / "data_batch_2")
    return Case("cifar10", root / C10 / "data_batch_2", words="not a CIFAR python batch")


@case
def cifar10_html_instead_of_pickle(root):
    write_cifar10(root, per_batch=10, test=10)
    (root / C10 / "test_batch").write_text("<!DOCTYPE html>\n<html><body>Access denied</body></html>\n")
    return Case("cifar10", root / C10 / "test_batch", words="HTML")


@case
def cifar10_empty_batch_file(root):
    write_cifar10(root, per_batch=10, test=10)
    (root / C10 / "data_batch_5").write_bytes(b"")
    return Case("cifar10", root / C10 / "data_batch_5")


@case
def cifar10_wrong_data_shape(root):
    write_cifar10(root, per_batch=10, test=10)
    path = root / C10 / "data_batch_1"
    d = read_cifar_batch(path)
    d[b"data"] = d[b"data"][:, :3071]
    write_cifar_batch(path, d)
    return Case("cifar10", path, words="[10, 3071]")


@case
def cifar10_label_count_mismatch(root):
    write_cifar10(root, per_batch=10, test=10)
    path = root / C10 / "data_batch_4"
    d = read_cifar_batch(path)
    d[b"labels"] = d[b"labels"][:-1]
    write_cifar_batch(path, d)
    return Case("cifar10", path, words="9 'labels' for 10 images")


@case
def cifar10_label_out_of_range(root):
    write_cifar10(root, per_batch=10, test=10)
    path = root / C10 / "test_batch"
    d = read_cifar_batch(path)
    d[b"labels"][3] = 10
    write_cifar_batch(path, d)
    return Case("cifar10", path, words="label 10")


@case
def cifar10_negative_label(root):
    write_cifar10(root, per_batch=10, test=10)
    path = root / C10 / "data_batch_3"
    d = read_cifar_batch(path)
    d[b"labels"][0] = -1
    write_cifar_batch(path, d)
    return Case("cifar10", path, words="label -1")


@case
def cifar10_batch_without_labels(root):
    write_cifar10(root, per_batch=10, test=10)
    path = root / C10 / "data_batch_2"
    d = read_cifar_batch(path)
    del d[b"labels"]
    write_cifar_batch(path, d)
    return Case("cifar10", path, words="no 'labels' entry")


@case
def cifar10_not_a_dict(root):
    write_cifar10(root, per_batch=10, test=10)
    path = root / C10 / "data_batch_1"
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    return Case("cifar10", path, words="holds a list")


class _Planted:
    """Unpickling this creates a file: a CIFAR reader must refuse it without running it."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@case
def cifar10_pickle_runs_code(root):
    write_cifar10(root, per_batch=10, test=10)
    path = root / C10 / "data_batch_1"
    d = read_cifar_batch(path)
    d[b"batch_label"] = _Planted(str(root / "planted.txt"))
    path.write_bytes(pickle.dumps(d, protocol=2))
    return Case("cifar10", path, words="io.open")  # and snapshot() shows planted.txt was not made


@case
def cifar100_fine_label_out_of_range(root):
    write_cifar100(root, train=100, test=100)
    path = root / C100 / "train"
    d = read_cifar_batch(path)
    d[b"fine_labels"][7] = 100
    write_cifar_batch(path, d)
    return Case("cifar100", path, words="out of range 0..99")


@case
def cifar100_float_pixels(root):
    write_cifar100(root, train=100, test=100)
    path = root / C100 / "test"
    d = read_cifar_batch(path)
    d[b"data"] = d[b"data"].astype(np.float32) / 255
    write_cifar_batch(path, d)
    return Case("cifar100", path, words="float32")


# --- FashionMNIST (idx files, raw or gzipped) ---------------------------------------------------

RAW = Path("FashionMNIST") / "raw"


@case
def fmnist_wrong_magic(root):
    write_fashionmnist(root, train=20, test=10, gz=False)
    path = root / RAW / "train-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[3] = 0x01
    path.write_bytes(bytes(data))
    return Case("fashionmnist", path, words="magic number")


@case
def fmnist_labels_file_in_place_of_images(root):
    write_fashionmnist(root, train=20, test=10, gz=True)
    raw = root / RAW
    shutil.copyfile(raw / "t10k-labels-idx1-ubyte.gz", raw / "t10k-images-idx3-ubyte.gz")
    return Case("fashionmnist", raw / "t10k-images-idx3-ubyte.gz", words="0x00000801")


@case
def fmnist_truncated_raw(root):
    write_fashionmnist(root, train=20, test=10, gz=False)
    path = root / RAW / "train-images-idx3-ubyte"
    truncate(path, 0.7)
    return Case("fashionmnist", path, words="truncated")


@case
def fmnist_truncated_header(root):
    write_fashionmnist(root, train=20, test=10, gz=False)
    path = root / RAW / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes()[:6])
    return Case("fashionmnist", path, words="truncated")


@case
def fmnist_truncated_gzip(root):
    write_fashionmnist(root, train=20, test=10, gz=True)
    path = root / RAW / "train-labels-idx1-ubyte.gz"
    truncate(path, 0.6)
    return Case("fashionmnist", path, words="gzip")


@case
def fmnist_gz_name_but_not_gzip(root):
    write_fashionmnist(root, train=20, test=10, gz=True)
    path = root / RAW / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.decompress(path.read_bytes()))
    return Case("fashionmnist", path, words="gzip")


@case
def fmnist_label_count_mismatch(root):
    write_fashionmnist(root, train=20, test=10, gz=False)
    path = root / RAW / "train-labels-idx1-ubyte"
    path.write_bytes(idx_bytes((np.arange(19) % 10).astype(np.uint8), 0x801))
    return Case("fashionmnist", path, words="19 labels")


@case
def fmnist_label_out_of_range(root):
    write_fashionmnist(root, train=20, test=10, gz=True)
    path = root / RAW / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.full(10, 12, dtype=np.uint8), 0x801)))
    return Case("fashionmnist", path, words="label 12")


@case
def fmnist_wrong_image_size(root):
    write_fashionmnist(root, train=20, test=10, gz=False)
    path = root / RAW / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((20, 28, 27), dtype=np.uint8), 0x803))
    return Case("fashionmnist", path, words="28x27")


# --- CUB-200-2011 (folder tree or .tgz) -----------------------------------------------------------

CUB = "CUB_200_2011"


def _cub_image(root: Path, line: int = 0) -> Path:
    rel = (root / CUB / "images.txt").read_text().splitlines()[line].split()[1]
    return root / CUB / "images" / rel


@case
def cub_missing_jpeg(root):
    write_cub(root, classes=3, per_class=2)
    path = _cub_image(root, 4)
    path.unlink()
    return Case("cub200", path, DatasetNotFoundError, words="line 5")


@case
def cub_corrupt_jpeg(root):
    write_cub(root, classes=3, per_class=2)
    path = _cub_image(root, 1)
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" * 3)
    return Case("cub200", path, words="not a readable image")


@case
def cub_truncated_jpeg(root):
    write_cub(root, classes=3, per_class=2)
    path = _cub_image(root, 3)  # a test image: the train split decodes fine first
    truncate(path, 0.6)
    return Case("cub200", path, words="not a readable image")


@case
def cub_incomplete_split_list(root):
    write_cub(root, classes=3, per_class=2)
    path = root / CUB / "train_test_split.txt"
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()[:-2]))
    return Case("cub200", path, words="no line for image id 5")


@case
def cub_malformed_label_line(root):
    write_cub(root, classes=3, per_class=2)
    path = root / CUB / "image_class_labels.txt"
    lines = path.read_text().splitlines()
    lines[2] = "3"
    path.write_text("\n".join(lines) + "\n")
    return Case("cub200", path, words="line 3")


@case
def cub_class_out_of_range(root):
    write_cub(root, classes=3, per_class=2)
    path = root / CUB / "image_class_labels.txt"
    lines = path.read_text().splitlines()
    lines[0] = "1 201"
    path.write_text("\n".join(lines) + "\n")
    return Case("cub200", path, words="1..200")


@case
def cub_duplicate_image_id(root):
    write_cub(root, classes=3, per_class=2)
    path = root / CUB / "images.txt"
    lines = path.read_text().splitlines()
    lines[1] = "1 " + lines[1].split()[1]
    path.write_text("\n".join(lines) + "\n")
    return Case("cub200", path, words="appears twice")


@case
def cub_image_path_escapes(root):
    write_cub(root, classes=3, per_class=2)
    path = root / CUB / "images.txt"
    lines = path.read_text().splitlines()
    lines[0] = "1 ../../outside.jpg"
    path.write_text("\n".join(lines) + "\n")
    return Case("cub200", path, words="leaves the images folder")


@case
def cub_missing_split_list(root):
    write_cub(root, classes=3, per_class=2)
    path = root / CUB / "train_test_split.txt"
    path.unlink()
    return Case("cub200", path, DatasetNotFoundError, words="incomplete")


def _cub_archive(root: Path, edit: Callable[[Path], None] | None = None) -> Path:
    src = root.parent / "src"
    write_cub(src, classes=3, per_class=2)
    if edit:
        edit(src / CUB)
    root.mkdir(exist_ok=True)
    archive = root / "CUB_200_2011.tgz"
    tar_folder(src / CUB, archive)
    shutil.rmtree(src)
    return archive


@case
def cub_truncated_tgz(root):
    archive = _cub_archive(root)
    truncate(archive, 0.5)
    return Case("cub200", archive, words="not a complete tar.gz")


@case
def cub_html_instead_of_tgz(root):
    root.mkdir()
    archive = root / "CUB_200_2011.tgz"
    archive.write_text("<html><head><title>404 Not Found</title></head></html>\n")
    return Case("cub200", archive, words="not a complete tar.gz")


@case
def cub_tgz_without_split_list(root):
    archive = _cub_archive(root, lambda folder: (folder / "train_test_split.txt").unlink())
    return Case("cub200", archive, words="train_test_split.txt")


@case
def cub_corrupt_jpeg_inside_tgz(root):
    def corrupt(folder: Path) -> None:
        rel = (folder / "images.txt").read_text().splitlines()[2].split()[1]
        (folder / "images" / rel).write_bytes(b"GIF89a garbage")

    archive = _cub_archive(root, corrupt)
    return Case("cub200", archive, words="(member CUB_200_2011/images/003.Bird_2/Bird_2_0002.jpg): not a readable image")


# --- ImageNet (train/<wnid>/, val/<wnid>/) ----------------------------------------------------------


@case
def imagenet_html_as_jpeg(root):
    write_imagenet(root / "imagenet", train_per_class=2, val_per_class=1)
    path = root / "imagenet" / "train" / WNIDS[1] / "n01443537_1.JPEG"
    path.write_text("<html>rate limited</html>")
    return Case("imagenet", path, options={"classes": 3}, words="not a readable image")


@case
def imagenet_truncated_png(root):
    write_imagenet(root / "imagenet", train_per_class=2, val_per_class=1)
    path = root / "imagenet" / "train" / WNIDS[2] / f"{WNIDS[2]}_1.png"
    truncate(path, 0.5)
    return Case("imagenet", path, options={"classes": 3}, words="not a readable image")


@case
def imagenet_truncated_val_jpeg(root):
    write_imagenet(root / "imagenet", train_per_class=2, val_per_class=1)
    path = root / "imagenet" / "val" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG"
    truncate(path, 0.5)
    return Case("imagenet", path, words="not a readable image")


@case
def imagenet_class_folder_without_images(root):
    write_imagenet(root / "imagenet", train_per_class=2, val_per_class=1)
    folder = root / "imagenet" / "train" / WNIDS[1]
    for p in folder.glob("*.png"):
        p.unlink()  # notes.txt stays: a folder of non-images
    return Case("imagenet", folder, options={"classes": 3}, words="no images in this class folder")


@case
def imagenet_empty_val_class_folder(root):
    write_imagenet(root / "imagenet", train_per_class=2, val_per_class=1)
    folder = root / "imagenet" / "val" / WNIDS[2]
    shutil.rmtree(folder)
    folder.mkdir()
    return Case("imagenet", folder, words="it is empty")


@case
def imagenet_missing_val_class_folder(root):
    write_imagenet(root / "imagenet", train_per_class=2, val_per_class=1)
    folder = root / "imagenet" / "val" / WNIDS[0]
    shutil.rmtree(folder)
    return Case("imagenet", folder, DatasetNotFoundError, options={"classes": 2}, words="class folder missing")


@case
def imagenet_more_classes_than_present(root):
    write_imagenet(root / "imagenet", train_per_class=2, val_per_class=1)
    return Case("imagenet", root / "imagenet" / "train", DatasetNotFoundError, options={"classes": 5},
                words="data.options.classes is 5 but it holds only 3 class folders")


@case
def imagenet_unknown_wnid(root):
    write_imagenet(root, train_per_class=2, val_per_class=1)
    return Case("imagenet", root / "train", DatasetNotFoundError, options={"classes": [WNIDS[0], "n09999999"]},
                words="n09999999")


@case
def imagenet_val_class_not_in_train(root):
    write_imagenet(root, train_per_class=2, val_per_class=1)
    extra = root / "val" / "n09999999"
    shutil.copytree(root / "val" / WNIDS[0], extra)
    return Case("imagenet", extra, words="no counterpart")


def test_at_least_twenty_cases():
    assert len(CASES) >= 20
    assert {c.split("_")[0] for c in CASES} == {"cifar10", "cifar100", "fmnist", "cub", "imagenet"}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_dataset_is_one_line_naming_the_file(tmp_path, name):
    root = tmp_path / "root"
    c = CASES[name](root)
    before = snapshot(tmp_path)
    with pytest.raises(UserError) as err:
        load_benchmark(c.benchmark, root, options=c.options)
    msg = str(err.value)
    assert isinstance(err.value, c.error), f"{type(err.value).__name__}: {msg}"
    assert "\n" not in msg and str(c.bad) in msg, msg
    assert c.words in msg, msg
    assert snapshot(tmp_path) == before  # nothing written, nothing created (no cache folder either)


# --- errors, options -------------------------------------------------------------------------------


def test_error_types():
    assert issubclass(DatasetNotFoundError, UserError) and issubclass(DatasetNotFoundError, FileNotFoundError)
    assert issubclass(DatasetFormatError, UserError) and issubclass(DatasetOptionsError, ConfigError)
    assert str(DatasetFormatError("a\n  b")) == "a b"


@pytest.mark.parametrize("benchmark, options, words", [
    ("imagenet", {"clases": 100}, "data.options.clases: unknown option for benchmark imagenet; allowed: classes, workers"),
    ("cub200", {"classes": 3}, "data.options.classes: unknown option for benchmark cub200; allowed: workers"),
    ("cifar10", {"workers": 2}, "data.options.workers: unknown option for benchmark cifar10; cifar10 takes no data options"),
    ("imagenet", {"classes": 0}, "data.options.classes: must be >= 1"),
    ("imagenet", {"classes": "100"}, "data.options.classes: must be a positive integer"),
    ("imagenet", {"classes": ["n01440764", "../train"]}, "data.options.classes: '../train' is not a wnid"),
    ("imagenet", {"classes": True}, "data.options.classes: must be a positive integer"),
    ("cub200", {"workers": 0}, "data.options.workers: must be a positive integer"),
    ("digits", [1, 2], "data.options: expected a mapping"),
])
def test_bad_options(tmp_path, benchmark, options, words):
    with pytest.raises(DatasetOptionsError) as err:
        validate_options(benchmark, options)
    assert words in str(err.value)
    write_imagenet(tmp_path)  # load_benchmark checks the options before it reads (or decodes) anything
    before = snapshot(tmp_path)
    with pytest.raises(DatasetOptionsError, match="data.options"):
        load_benchmark(benchmark, tmp_path, options=options)
    assert snapshot(tmp_path) == before


def test_good_options_pass():
    assert validate_options("imagenet", {"classes": 10, "workers": 4}) == {"classes": 10, "workers": 4}
    assert validate_options("imagenet", {"classes": ["n01440764"], "workers": None}) == {"classes": ["n01440764"], "workers": None}
    assert validate_options("cub200", None) == {} and validate_options("digits", {}) == {}


# --- a corrected dataset is not shadowed by the cache ------------------------------------------------


def _recolour(path: Path, colour: tuple[int, int, int]) -> None:
    with Image.open(path) as img:
        size, fmt = img.size, img.format
    Image.new("RGB", size, colour).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def test_corrected_cub_image_is_decoded_again(tmp_path):
    write_cub(tmp_path, classes=3, per_class=2)
    first = load_benchmark("cub200", tmp_path)
    assert (first.test.images.float().mean(dim=(2, 3))[0] - torch.tensor(COLOURS[0], dtype=torch.float32)).abs().max() < 6
    # the user replaces test image id 4 (class 0) with a corrected one of another colour
    _recolour(_cub_image(tmp_path, 3), COLOURS[3])
    second = load_benchmark("cub200", tmp_path)
    assert (second.test.images.float().mean(dim=(2, 3))[0] - torch.tensor(COLOURS[3], dtype=torch.float32)).abs().max() < 6
    assert torch.equal(second.test.images[1:], first.test.images[1:])
    assert len(list((tmp_path / "cache").glob("*_test_images.npy"))) == 2  # the old cache is not reused


def test_corrected_cub_archive_is_extracted_again(tmp_path):
    root = tmp_path / "root"

    def bad_split(folder: Path) -> None:
        lines = (folder / "train_test_split.txt").read_text().splitlines()
        (folder / "train_test_split.txt").write_text("\n".join(lines[:-1]) + "\n")

    archive = _cub_archive(root, bad_split)
    with pytest.raises(DatasetFormatError, match="train_test_split.txt"):
        load_benchmark("cub200", root)
    archive.unlink()
    _cub_archive(root)  # the corrected archive
    bench = load_benchmark("cub200", root)
    assert len(bench.test) == 3 and len(bench.train) + len(bench.val) == 3


def test_corrected_imagenet_class_is_not_shadowed(tmp_path):
    """The issue's case: an empty class folder must not be cached under a name a corrected run reuses."""
    write_imagenet(tmp_path, train_per_class=2, val_per_class=1)
    images = sorted((tmp_path / "train" / WNIDS[2]).glob("*.png"))
    stash = tmp_path.parent / f"{tmp_path.name}-stash"
    stash.mkdir()
    for p in images:
        shutil.move(p, stash / p.name)
    with pytest.raises(DatasetFormatError, match="no images in this class folder"):
        load_benchmark("imagenet", tmp_path, options={"classes": 3})
    assert not (tmp_path / "cache").exists()
    for p in images:
        shutil.move(stash / p.name, p)
    bench = load_benchmark("imagenet", tmp_path, options={"classes": 3})
    assert sorted(bench.train_full().labels.tolist()) == [0, 0, 1, 1, 2, 2]
    # a later edit (one train image recoloured) gives a new cache key: the new pixels are used
    _recolour(images[0], (255, 255, 255))
    again = load_benchmark("imagenet", tmp_path, options={"classes": 3})
    full = again.train_full()
    assert (full.images == 255).all(dim=(1, 2, 3)).sum() == 1
    assert len(list((tmp_path / "cache").glob("imagenet_64px_first3-*_train_images.npy"))) == 2


def test_cache_alone_serves_the_last_complete_load(tmp_path):
    write_imagenet(tmp_path, train_per_class=2, val_per_class=1)
    a = load_benchmark("imagenet", tmp_path, options={"classes": 2})
    _recolour(tmp_path / "val" / WNIDS[0] / f"{WNIDS[0]}_0.JPEG", (255, 255, 255))
    b = load_benchmark("imagenet", tmp_path, options={"classes": 2})
    assert not torch.equal(a.test.images, b.test.images)
    shutil.rmtree(tmp_path / "train")
    shutil.rmtree(tmp_path / "val")
    c = load_benchmark("imagenet", tmp_path, options={"classes": 2})  # the source is gone
    assert torch.equal(c.test.images, b.test.images)
    with pytest.raises(DatasetNotFoundError):
        load_benchmark("imagenet", tmp_path, options={"classes": 3})  # never cached


def test_archive_without_cub_folder_leaves_no_scratch(tmp_path):
    """A valid .tgz without the CUB folder: the message names the archive (not the scratch
    extraction folder) and the scratch folder and the cache folder are gone afterwards."""
    root = tmp_path / "root"
    root.mkdir()
    archive = root / "CUB_200_2011.tgz"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("README")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    archive.write_bytes(buf.getvalue())
    with pytest.raises(DatasetFormatError) as err:
        load_benchmark("cub200", root)
    assert str(err.value).startswith(f"{archive}: has no folder 'CUB_200_2011'")
    assert ".tmp" not in str(err.value) and not (root / "cache").exists()
