"""Benchmark loaders on tiny fabricated datasets in the real on-disk formats, splits, caches, errors."""
from __future__ import annotations

import io
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import indistill.data as data
from indistill.data import BENCHMARKS, DatasetFormatError, DatasetNotFoundError, Split, carve_val, get_spec, load_benchmark
from indistill.data.archive import safe_extract
from indistill.data.base import VAL_SEED, LoadRequest
from indistill.data.splits import stratified_indices
from indistill.common.registry import UnknownNameError

from .data_fixtures import (
    COLOURS,
    WNIDS,
    tar_folder,
    write_cifar10,
    write_cifar100,
    write_cub,
    write_fashionmnist,
    write_imagenet,
)


def _request(root: Path, **options) -> LoadRequest:
    return LoadRequest(root=root, download=False, cache_dir=root / "cache", options=options)


def _check_carve(bench: data.BenchmarkData, raw_train: Split) -> None:
    """val is the stratified carve of the official train split; train keeps the rest in order."""
    kept, carved = stratified_indices(raw_train.labels, bench.spec.val_fraction, VAL_SEED)
    assert torch.equal(bench.train.images, raw_train.images[kept])
    assert torch.equal(bench.val.images, raw_train.images[carved])
    assert torch.equal(bench.val.labels, raw_train.labels[carved])
    assert set(kept.tolist()).isdisjoint(carved.tolist())
    assert len(kept) + len(carved) == len(raw_train)


# --- registry -------------------------------------------------------------------------------

def test_registered_names():
    # the five benchmarks of docs/benchmarks.md and the embedded default, in the order the CLIs list them
    assert BENCHMARKS.names() == ["digits", "cifar10", "cifar100", "fashionmnist", "cub200", "imagenet"]


def test_star_import_exports_the_public_api():
    namespace: dict = {}
    exec("from indistill.data import *", namespace)  # fails on a name __all__ lists but the package lacks
    assert {n for n in namespace if not n.startswith("__")} == {
        "BENCHMARKS", "load_benchmark", "get_spec", "default_data_root", "Split", "BenchmarkData", "BenchmarkSpec",
        "DatasetNotFoundError", "DatasetFormatError", "DatasetOptionsError", "validate_options", "carve_val",
        "augment_batch", "normalize"}


@pytest.mark.parametrize("name", BENCHMARKS.names())
def test_every_registered_spec_is_consistent(name):
    spec = BENCHMARKS.get(name)
    assert spec.name == name  # registered under its own name
    c, h, w = spec.input_shape
    assert c in (1, 3) and h == w  # networks are built for square images
    assert len(spec.mean) == len(spec.std) == c and all(s > 0 for s in spec.std)
    assert 0 < spec.val_fraction < 1 and spec.how_to_get and spec.description
    assert get_spec(name) is spec  # no data.options: the registered spec itself


def test_unknown_benchmark(tmp_path):
    with pytest.raises(UnknownNameError, match="choose from: digits, cifar10"):
        load_benchmark("mnist", tmp_path)


def test_default_data_root(monkeypatch, tmp_path):
    monkeypatch.setenv("INDISTILL_DATA", str(tmp_path / "d"))
    assert data.default_data_root() == tmp_path / "d"
    monkeypatch.delenv("INDISTILL_DATA")
    assert data.default_data_root() == Path.home() / ".cache" / "indistill" / "data"


# --- carve_val --------------------------------------------------------------------------------

def test_carve_val_stratified_deterministic_sorted():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)[torch.randperm(100, generator=torch.Generator().manual_seed(3))]
    split = Split(torch.arange(100, dtype=torch.uint8).reshape(100, 1, 1, 1), labels)
    train, val = carve_val(split, 0.1)
    assert len(val) == 10 and len(train) == 90
    assert torch.bincount(val.labels).tolist() == [5, 3, 2]
    ids_val, ids_train = val.images.flatten(), train.images.flatten()
    assert torch.all(ids_val[1:] > ids_val[:-1]) and torch.all(ids_train[1:] > ids_train[:-1])
    assert set(ids_val.tolist()).isdisjoint(ids_train.tolist())
    train2, val2 = carve_val(split, 0.1)
    assert torch.equal(val.images, val2.images) and torch.equal(train.images, train2.images)
    _, val3 = carve_val(split, 0.1, seed=VAL_SEED + 1)
    assert not torch.equal(val.images, val3.images)


def test_carve_val_rounding_and_zero():
    split = Split(torch.zeros(7, 1, 1, 1, dtype=torch.uint8), torch.tensor([0, 0, 0, 1, 1, 1, 2]))
    assert len(carve_val(split, 0.5)[1]) == 4  # round(3.5) = 4, shared by largest remainder
    train, val = carve_val(split, 0.0)
    assert len(val) == 0 and len(train) == 7


# --- digits ----------------------------------------------------------------------------------

def test_digits_real_data(tmp_path):
    a = load_benchmark("digits", tmp_path / "unused")
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert (len(a.test), len(a.val)) == (359, 144)
    for s in (a.train, a.val, a.test):
        assert s.images.shape[1:] == (1, 32, 32) and s.images.dtype == torch.uint8 and s.labels.dtype == torch.int64
    assert a.train.images.max() > 200 and a.train.images.min() == 0
    assert torch.bincount(a.test.labels).min() >= 35  # stratified (~36 per class)
    assert torch.bincount(a.val.labels).min() >= 14
    b = load_benchmark("digits")
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert torch.equal(a.val.images, b.val.images)
    assert not (tmp_path / "unused").exists()
    assert len(a.train_full()) == 1797 - 359


# --- CIFAR -----------------------------------------------------------------------------------

def test_cifar10_roundtrip(tmp_path):
    tx, ty, sx, sy = write_cifar10(tmp_path)
    raw = get_spec("cifar10").loader(_request(tmp_path))
    assert raw.train.images.shape == (100, 3, 32, 32) and raw.train.images.dtype == torch.uint8
    assert np.array_equal(raw.train.images.numpy(), tx) and np.array_equal(raw.train.labels.numpy(), ty)
    assert np.array_equal(raw.test.images.numpy(), sx) and np.array_equal(raw.test.labels.numpy(), sy)
    bench = load_benchmark("cifar10", tmp_path)
    assert (len(bench.train), len(bench.val), len(bench.test)) == (90, 10, 20)
    assert torch.bincount(bench.val.labels, minlength=10).tolist() == [1] * 10
    _check_carve(bench, raw.train)


def test_cifar100_roundtrip(tmp_path):
    tx, ty, sx, sy = write_cifar100(tmp_path)
    raw = get_spec("cifar100").loader(_request(tmp_path))
    assert np.array_equal(raw.train.images.numpy(), tx) and np.array_equal(raw.train.labels.numpy(), ty)
    assert np.array_equal(raw.test.images.numpy(), sx) and np.array_equal(raw.test.labels.numpy(), sy)
    bench = load_benchmark("cifar100", tmp_path)
    assert bench.num_classes == 100 and (len(bench.train), len(bench.val), len(bench.test)) == (270, 30, 100)
    _check_carve(bench, raw.train)


def test_cifar_batches_of_other_pickle_flavours_load(tmp_path):
    """The reader only accepts numpy globals, but every flavour of them: str keys (as the real
    Python-2 files give with latin1), numpy 1.x module paths (``numpy.core``) and protocol 5."""
    import pickle

    tx, ty, sx, sy = write_cifar10(tmp_path, per_batch=10, test=10)
    folder = tmp_path / "cifar-10-batches-py"
    d = pickle.loads((folder / "data_batch_1").read_bytes())
    old = pickle.dumps({k.decode(): v for k, v in d.items()}, protocol=2).replace(b"numpy._core", b"numpy.core")
    assert b"numpy.core.multiarray" in old
    (folder / "data_batch_1").write_bytes(old)
    (folder / "data_batch_2").write_bytes(pickle.dumps(pickle.loads((folder / "data_batch_2").read_bytes()), protocol=5))
    raw = get_spec("cifar10").loader(_request(tmp_path))
    assert np.array_equal(raw.train.images.numpy(), tx) and np.array_equal(raw.train.labels.numpy(), ty)


@pytest.mark.parametrize("name, folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_cifar_missing(tmp_path, name, folder):
    with pytest.raises(DatasetNotFoundError) as err:
        load_benchmark(name, tmp_path)
    msg = str(err.value)
    assert str(tmp_path / folder) in msg and "--download" in msg and "\n" not in msg


def test_cifar10_missing_batch_is_named(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match="data_batch_3"):
        load_benchmark("cifar10", tmp_path)


def test_cifar10_download_uses_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            calls.append((root, download))
            write_cifar10(Path(root))

    monkeypatch.setattr(tvd, "CIFAR10", FakeCIFAR10)
    bench = load_benchmark("cifar10", tmp_path, download=True)
    assert calls == [(str(tmp_path), True)] and len(bench.test) == 20

    class Offline:
        def __init__(self, **kwargs):
            raise RuntimeError("no network")

    monkeypatch.setattr(tvd, "CIFAR100", Offline)
    with pytest.raises(DatasetNotFoundError, match="download failed: no network"):
        load_benchmark("cifar100", tmp_path, download=True)


# --- FashionMNIST ----------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_fashionmnist_roundtrip(tmp_path, gz):
    tx, ty, sx, sy = write_fashionmnist(tmp_path, gz=gz)
    raw = get_spec("fashionmnist").loader(_request(tmp_path))
    assert raw.train.images.shape == (50, 1, 32, 32) and raw.test.images.shape == (20, 1, 32, 32)
    assert np.array_equal(raw.train.images[:, 0, 2:30, 2:30].numpy(), tx)
    assert np.array_equal(raw.test.images[:, 0, 2:30, 2:30].numpy(), sx)
    border = raw.train.images.clone()
    border[:, :, 2:30, 2:30] = 0
    assert border.sum() == 0
    assert np.array_equal(raw.train.labels.numpy(), ty) and raw.train.labels.dtype == torch.int64
    bench = load_benchmark("fashionmnist", tmp_path)
    assert (len(bench.train), len(bench.val), len(bench.test)) == (45, 5, 20)
    _check_carve(bench, raw.train)


def test_fashionmnist_bad_magic_and_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_benchmark("fashionmnist", tmp_path)
    assert str(tmp_path / "FashionMNIST" / "raw") in str(err.value) and "--download" in str(err.value)
    write_fashionmnist(tmp_path, gz=False)
    labels = tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte"
    labels.write_bytes(b"\x00\x00\x08\x03" + labels.read_bytes()[4:])
    with pytest.raises(ValueError, match="magic"):
        load_benchmark("fashionmnist", tmp_path)
    labels.unlink()
    with pytest.raises(DatasetNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_benchmark("fashionmnist", tmp_path)


# --- CUB-200 ---------------------------------------------------------------------------------

def _check_cub(bench: data.BenchmarkData, expected: dict[str, list[int]]) -> None:
    full = bench.train_full()
    assert full.images.shape == (len(expected["train"]), 3, 128, 128) and full.images.dtype == torch.uint8
    assert sorted(full.labels.tolist()) == sorted(expected["train"])
    assert bench.test.labels.tolist() == expected["test"]
    for split in (full, bench.test):
        mean_colour = split.images.float().mean(dim=(2, 3))
        target = torch.tensor(COLOURS, dtype=torch.float32)[split.labels]
        assert (mean_colour - target).abs().max() < 6  # JPEG is lossy; the class colour survives


def test_cub_folder_and_cache_reuse(tmp_path):
    expected = write_cub(tmp_path)
    bench = load_benchmark("cub200", tmp_path)
    assert len(bench.test) == 6 and len(bench.train) + len(bench.val) == 6
    _check_cub(bench, expected)
    cache = tmp_path / "cache"
    key = (cache / "cub200_128px_latest.txt").read_text().strip()
    assert re.fullmatch(r"cub200_128px-[0-9a-f]{16}", key)
    names = sorted(p.name for p in cache.iterdir())
    assert names == sorted([f"{key}_{s}_{k}.npy" for s in ("test", "train") for k in ("images", "labels")]
                           + ["cub200_128px_latest.txt"])
    stamp = {p: p.stat().st_mtime_ns for p in cache.iterdir()}
    load_benchmark("cub200", tmp_path)  # a cache hit rewrites nothing
    assert {p: p.stat().st_mtime_ns for p in cache.iterdir()} == stamp
    shutil.rmtree(tmp_path / "CUB_200_2011")  # the cache alone must suffice now
    again = load_benchmark("cub200", tmp_path)
    assert torch.equal(again.test.images, bench.test.images) and torch.equal(again.train.images, bench.train.images)


def test_cub_root_is_the_folder(tmp_path):
    expected = write_cub(tmp_path)
    bench = load_benchmark("cub200", tmp_path / "CUB_200_2011", cache_dir=tmp_path / "c")
    _check_cub(bench, expected)


def test_cub_archive(tmp_path, capsys):
    src = tmp_path / "src"
    expected = write_cub(src)
    root = tmp_path / "root"
    root.mkdir()
    tar_folder(src / "CUB_200_2011", root / "CUB_200_2011.tgz")
    bench = load_benchmark("cub200", root)
    _check_cub(bench, expected)
    # the extraction is scratch: only the decoded arrays and the pointer to them stay
    assert sorted(p.suffix for p in (root / "cache").iterdir()) == [".npy"] * 4 + [".txt"]
    assert "cub200 train: 6/6 (100%)" in capsys.readouterr().err
    again = load_benchmark("cub200", root)  # keyed by the archive: no second extraction
    assert torch.equal(again.test.images, bench.test.images)
    assert "decoding" not in capsys.readouterr().err


def test_cub_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_benchmark("cub200", tmp_path, download=True)
    msg = str(err.value)
    for p in (tmp_path / "CUB_200_2011", tmp_path / "CUB_200_2011.tgz"):
        assert str(p) in msg
    assert "CUB_200_2011.tgz" in msg and "caltech" in msg.lower()


def test_safe_extract_rejects_escaping_members(tmp_path):
    for name, kind in (("CUB_200_2011/../../evil.txt", tarfile.REGTYPE), ("/abs/evil.txt", tarfile.REGTYPE),
                       ("CUB_200_2011/link", tarfile.SYMTYPE)):
        archive = tmp_path / "bad.tgz"
        with tarfile.open(archive, "w:gz") as tar:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE:
                info.linkname = "../../../etc/passwd"
                tar.addfile(info)
            else:
                info.size = 4
                tar.addfile(info, io.BytesIO(b"evil"))
        with pytest.raises(ValueError, match="outside"):
            safe_extract(archive, tmp_path / "out", "CUB_200_2011")
        assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "CUB_200_2011").exists()


# --- ImageNet --------------------------------------------------------------------------------

def test_imagenet_labels_crop_and_cache(tmp_path):
    write_imagenet(tmp_path / "imagenet")
    bench = load_benchmark("imagenet", tmp_path, options={"classes": 3})
    assert bench.num_classes == 3
    assert bench.test.images.shape == (6, 3, 64, 64)
    assert len(bench.train) + len(bench.val) == 18
    assert bench.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    full = bench.train_full()
    colours = torch.tensor(COLOURS, dtype=torch.uint8)
    png = bench.test.images[1::2]  # j = 1 in each val class is a PNG: the centre crop is exact
    assert torch.equal(png, colours[bench.test.labels[1::2]][:, :, None, None].expand_as(png))
    assert torch.equal(full.images, colours[full.labels][:, :, None, None].expand_as(full.images))
    jpeg = bench.test.images[0::2].float().mean(dim=(2, 3))
    assert (jpeg - colours[bench.test.labels[0::2]].float()).abs().max() < 6
    (classes_file,) = (tmp_path / "cache").glob("imagenet_64px_first3-*_classes.txt")
    assert classes_file.read_text().split() == WNIDS
    shutil.rmtree(tmp_path / "imagenet")
    again = load_benchmark("imagenet", tmp_path, options={"classes": 3})
    assert torch.equal(again.test.images, bench.test.images) and torch.equal(again.val.labels, bench.val.labels)


def test_imagenet_class_subsets(tmp_path):
    write_imagenet(tmp_path)  # train/ and val/ directly under root
    first2 = load_benchmark("imagenet", tmp_path, options={"classes": 2})
    assert first2.num_classes == 2 and first2.test.labels.tolist() == [0, 0, 1, 1]
    picked = load_benchmark("imagenet", tmp_path, options={"classes": [WNIDS[2], WNIDS[0]]})
    assert picked.num_classes == 2
    # label = index in the sorted wnid list: WNIDS[0] -> 0, WNIDS[2] -> 1 (its colour is blue)
    assert picked.test.labels.tolist() == [0, 0, 1, 1]
    assert picked.test.images[3, 2].float().mean() > 200
    cached = sorted(p.name for p in (tmp_path / "cache").glob("*_test_images.npy"))
    assert len(cached) == 2 and cached[0].startswith("imagenet_64px_2wnids-")
    with pytest.raises(DatasetNotFoundError, match="no class folder for wnid"):
        load_benchmark("imagenet", tmp_path, options={"classes": ["n99999999"]})
    with pytest.raises(DatasetNotFoundError, match="only 3 class folders"):
        load_benchmark("imagenet", tmp_path, options={"classes": 5})
    assert get_spec("imagenet").num_classes == 1000


def test_imagenet_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_benchmark("imagenet", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "imagenet" / "train") in msg and str(tmp_path / "val") in msg and "image-net.org" in msg


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    """A decode that fails half-way leaves no cache file behind (and no temp file)."""
    write_imagenet(tmp_path)
    bad = tmp_path / "train" / WNIDS[1] / f"{WNIDS[1]}_3.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DatasetFormatError, match="not a readable image"):
        load_benchmark("imagenet", tmp_path, options={"classes": 3, "workers": 1})
    assert not (tmp_path / "cache").exists()


# --- device batches: the layout the config asks for -----------------------------------------


def _device_split(name: str, channels_last: bool, n: int = 10):
    from indistill.engine.batches import DeviceSplit

    spec = get_spec(name)
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (n, *spec.input_shape), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, spec.num_classes, (n,), generator=g)
    return spec, DeviceSplit.create(Split(images, labels), spec, torch.device("cpu"), channels_last=channels_last)


def _layout_ok(x: torch.Tensor, channels_last: bool) -> bool:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("prenormalized", [True, False], ids=["float-split", "uint8-split"])
@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_batches_reach_the_network_in_the_configs_layout_with_the_same_values(name, prenormalized, monkeypatch):
    # before: index_select (training) returned NCHW copies of a channels_last split, and the crop's gather
    # NCHW again, so every batch was re-laid out by the network's first convolution
    import indistill.engine.batches as batches

    if not prenormalized:  # the ImageNet path: uint8 on the device, normalised per batch
        monkeypatch.setattr(batches, "PRENORMALIZE_BYTES", 0)
    spec, nhwc = _device_split(name, channels_last=True)
    _, nchw = _device_split(name, channels_last=False)
    assert nhwc.normalized is prenormalized
    for augment in ({"padding": spec.crop_padding, "flip": spec.flip}, {"padding": 2, "flip": True}, {}):
        got = list(nhwc.batches(4, seed=3, epoch=1, **augment))
        want = list(nchw.batches(4, seed=3, epoch=1, **augment))  # the NCHW path: the values of the old one
        assert len(got) == len(want) == 3  # 4 + 4 + 2 samples
        for (x, y), (x_ref, y_ref) in zip(got, want):
            assert _layout_ok(x, True) and _layout_ok(x_ref, False), augment
            assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    for x, x_ref in zip(nhwc.eval_batches(4), nchw.eval_batches(4)):
        assert _layout_ok(x, True) and _layout_ok(x_ref, False)
        assert torch.equal(x, x_ref)


def test_a_channels_last_batch_is_not_also_nchw():
    # the check above means something: a 3-channel channels_last batch is not NCHW-contiguous
    _, nhwc = _device_split("cifar10", channels_last=True)
    x, _ = next(nhwc.batches(4, seed=0, epoch=0, padding=4, flip=True))
    assert x.shape[1] == 3 and not x.is_contiguous()


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize(("padding", "flip"), [(0, True), (1, False), (4, True), (40, True)])
@pytest.mark.parametrize("fill", [0.0, (1.0, 2.0, 3.0)], ids=["scalar-fill", "per-channel-fill"])
def test_augmenting_a_channels_last_batch_keeps_its_layout_values_and_draws(dtype, padding, flip, fill):
    from indistill.data import augment_batch

    x = torch.randint(0, 200, (6, 3, 7, 5), generator=torch.Generator().manual_seed(2)).to(dtype)
    ref = augment_batch(x, padding, flip, generator=torch.Generator().manual_seed(9), fill=fill)
    got = augment_batch(x.contiguous(memory_format=torch.channels_last), padding, flip,
                        generator=torch.Generator().manual_seed(9), fill=fill)
    assert ref.is_contiguous() and got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    assert got.dtype == dtype and torch.equal(got, ref)
    if padding >= 7:  # a crop wholly outside some image: all fill
        assert (ref == torch.as_tensor(fill, dtype=dtype).reshape(1, -1, 1, 1)).all(dim=(1, 2, 3)).any()
