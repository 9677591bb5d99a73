"""Speed benchmark of the two hot paths: student distillation steps and retrieval evaluation.

    python -m benchmarks.speed [distill|retrieval|all] [--quick] [--device auto|cpu|cuda]
                               [--batch-sizes 128,256,512,1024] [--compile] [--out FILE.json]

``distill`` times one InDistill student step (frozen auxiliary forward under ``no_grad`` with tap
hooks, pruned tap, student forward/backward, Adam step) on synthetic CIFAR-10-shaped uint8 data, in
two curriculum phases: MSE on the pruned ``block1`` tap and PKT on the embedding. Two input/step
pipelines are compared on the same networks and batch size:

* **reference-style**: what the public distillation scripts do. A ``VisionDataset`` of uint8 HWC
  numpy images returns PIL images through ``RandomCrop(32, padding=4) + RandomHorizontalFlip +
  ToTensor + Normalize``; a ``DataLoader(shuffle=True, num_workers=2)`` (the value of the PyTorch
  CIFAR-10 tutorial that those scripts copy); ``.to(device)`` per step; fp32; the networks return
  their intermediate features from an explicit forward; ``loss.item()`` every step.
* **fast path**: the project's own code. ``DeviceSplit`` (the split on the device, normalised once)
  with batched on-device crop + flip, ``TapReader`` hooks, ``PrunedTaps``, the ``indistill``
  method's loss, the loss accumulated on the device as ``Loop`` does (no per-step host sync);
  on CUDA bf16 autocast and channels_last, optionally ``torch.compile`` of the student.

Before timing, both pipelines compute the loss of the same un-augmented batch with the same weights
in fp32; they must agree to 1e-5 (``equivalence`` in the report).

``retrieval`` times ``evaluate_all`` (chunked torch, both metrics in one pass) against
``reference_evaluate`` (float64 numpy brute force, one call per metric) on class-clustered synthetic
embeddings of the CIFAR-10 protocol size (10,000 queries x 50,000 database x 64-d); every key must
agree to 1e-6.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import VisionDataset

from indistill.config import StudentConfig
from indistill.data import BenchmarkSpec, Split, get_spec
from indistill.losses import LOSSES
from indistill.models.base import EMBEDDING, TapNet, TapReader
from indistill.models.zoo import create_network
from indistill.pruning import PrunedTaps, select_channels
from indistill.retrieval import evaluate_all, reference_evaluate
from indistill.train.batches import DeviceSplit
from indistill.train.curriculum import Phase, curriculum_plan
from indistill.train.loop import build_optimizer, train_step
from indistill.train.methods import Method, StudentBatch, create_method
from indistill.train.runtime import autocast, resolve_device

BENCHMARK = "cifar10"
NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
REFERENCE_BATCH = 128
REFERENCE_WORKERS = 2  # the PyTorch CIFAR-10 tutorial's value, copied by most reference scripts
DEFAULT_BATCH_SIZES = (128, 256, 512, 1024)
EQUIVALENCE_TOL = 1e-5
RETRIEVAL_TOL = 1e-6
RETRIEVAL_KS = (10, 50, 100)


# ----------------------------------------------------------------------------- machine


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cuda_driver_version() -> str | None:
    """The driver's CUDA version (``cuDriverGetVersion``) and, if nvidia-smi answers, the driver build."""
    api = None
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        v = ctypes.c_int()
        if lib.cuDriverGetVersion(ctypes.byref(v)) == 0:
            api = f"{v.value // 1000}.{(v.value % 1000) // 10}"
    except OSError:
        pass
    build = None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        )
        build = out.stdout.strip().splitlines()[0] if out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        pass
    if api and build:
        return f"{build} (CUDA {api})"
    return build or (f"CUDA {api}" if api else None)


def machine_info(device: torch.device) -> dict:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    info = {
        "device": str(device),
        "device_name": _cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_capability=f"{props.major}.{props.minor}",
            cuda_runtime=torch.version.cuda,
            cuda_driver=_cuda_driver_version(),
            cudnn=torch.backends.cudnn.version(),
        )
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- synthetic data


def synthetic_cifar(n: int, seed: int = 0) -> Split:
    """``n`` random uint8 CIFAR-shaped images ``[n, 3, 32, 32]`` and balanced-ish labels of 10 classes."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *IMAGE_SHAPE), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g, dtype=torch.int64)
    return Split(images, labels)


class ReferenceCIFAR(VisionDataset):
    """``torchvision.datasets.CIFAR10`` in all that matters here: uint8 HWC numpy images, int targets,
    a PIL image per item through ``transform``."""

    def __init__(self, data: np.ndarray, targets: Sequence[int], transform: Callable | None = None) -> None:
        super().__init__(root="", transform=transform)
        self.data = data
        self.targets = list(targets)

    def __getitem__(self, index: int):
        img, target = self.data[index], self.targets[index]
        img = Image.fromarray(img)
        if self.transform is not None:
            img = self.transform(img)
        return img, target

    def __len__(self) -> int:
        return len(self.data)


def reference_transform(mean: Sequence[float], std: Sequence[float], augment: bool) -> transforms.Compose:
    ops = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
    return transforms.Compose([*ops, transforms.ToTensor(), transforms.Normalize(mean, std)])


# ----------------------------------------------------------------------------- the distillation setup


@dataclass(frozen=True)
class PhaseSpec:
    """A curriculum phase to time: ``epoch`` selects it in the ``indistill`` method."""

    name: str
    epoch: int
    tap: str
    loss: str


def benchmark_phases(cfg: StudentConfig, taps: tuple[str, ...]) -> list[PhaseSpec]:
    """The MSE phase on ``block1`` and the embedding (PKT) phase of the default curriculum."""
    plan: list[Phase] = curriculum_plan(cfg.curriculum, taps, cfg.epochs)
    found: dict[str, PhaseSpec] = {}
    for epoch, p in enumerate(plan):
        if not p.embedding and len(p.terms) == 1 and p.terms[0].tap == "block1":
            found.setdefault("block1", PhaseSpec(f"block1/{p.terms[0].loss}", epoch, "block1", p.terms[0].loss))
        if p.embedding and not p.terms:
            loss = cfg.curriculum.embedding_loss
            found.setdefault(EMBEDDING, PhaseSpec(f"embedding/{loss}", epoch, EMBEDDING, loss))
    if set(found) != {"block1", EMBEDDING}:
        raise RuntimeError(f"could not find the block1 and embedding phases in the curriculum plan: {plan}")
    return [found["block1"], found[EMBEDDING]]


def _network(role: str, device: torch.device, channels_last: bool) -> TapNet:
    c, h, _ = IMAGE_SHAPE
    net = create_network(BENCHMARK, role, num_classes=NUM_CLASSES, in_channels=c, image_size=h).to(device)
    return net.to(memory_format=torch.channels_last) if channels_last else net


@dataclass
class DistillBench:
    """The synthetic data, the frozen auxiliary's and the student's initial weights, the pruned taps.

    Every timed run builds its networks from these weights, so both pipelines start from the same
    state. Networks come in either memory format: the reference-style path always uses NCHW.
    """

    device: torch.device
    split: Split  # uint8 [N, C, H, W] on the CPU
    data_hwc: np.ndarray  # the same images as uint8 [N, H, W, C], for the reference dataset
    auxiliary_weights: dict[str, Tensor]
    student_init: dict[str, Tensor]
    pruned: PrunedTaps
    cfg: StudentConfig
    phases: list[PhaseSpec]
    _auxiliary: dict[bool, TapNet] = field(default_factory=dict, repr=False)
    _splits: dict[bool, DeviceSplit] = field(default_factory=dict, repr=False)

    @classmethod
    def create(cls, device: torch.device, images: int = 50_000, seed: int = 0) -> "DistillBench":
        torch.manual_seed(seed)
        split = synthetic_cifar(images, seed)
        aux = _network("auxiliary", device, False).eval()
        student = _network("student", device, False)
        widths = {t.name: t.channels for t in student.intermediate_taps}
        pruned = PrunedTaps(select_channels(aux, widths, "l1")).to(device)
        cfg = StudentConfig()
        return cls(
            device=device,
            split=split,
            data_hwc=split.images.permute(0, 2, 3, 1).contiguous().numpy(),
            auxiliary_weights={k: v.detach().clone() for k, v in aux.state_dict().items()},
            student_init={k: v.detach().clone() for k, v in student.state_dict().items()},
            pruned=pruned,
            cfg=cfg,
            phases=benchmark_phases(cfg, tuple(widths)),
        )

    @property
    def spec(self) -> BenchmarkSpec:
        return get_spec(BENCHMARK)

    @property
    def student_taps(self) -> tuple[str, ...]:
        return tuple(self.pruned.widths)

    def auxiliary(self, channels_last: bool) -> TapNet:
        """The frozen auxiliary (eval mode, no parameter gradients) in the given memory format."""
        if channels_last not in self._auxiliary:
            net = _network("auxiliary", self.device, channels_last)
            net.load_state_dict(self.auxiliary_weights)
            net.eval()
            for p in net.parameters():
                p.requires_grad_(False)
            self._auxiliary[channels_last] = net
        return self._auxiliary[channels_last]

    def new_student(self, channels_last: bool) -> TapNet:
        net = _network("student", self.device, channels_last)
        net.load_state_dict(self.student_init)
        return net.train()

    def device_split(self, channels_last: bool) -> DeviceSplit:
        if channels_last not in self._splits:
            self._splits[channels_last] = DeviceSplit.create(self.split, self.spec, self.device, channels_last)
        return self._splits[channels_last]

    def method(self) -> Method:
        return create_method("indistill", self.cfg, self.student_taps)


# ----------------------------------------------------------------------------- reference-style path


def reference_features(net: nn.Module, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """The reference scripts' model code: a forward returning the logits and every stage output."""
    feats: dict[str, Tensor] = {}
    h = x
    for i, block in enumerate(net.blocks):
        h = block(h)
        feats[f"block{i}"] = h
    emb = net.embed(net.pool(h))
    feats[EMBEDDING] = emb
    return net.head(emb), feats


def reference_loss(bench: DistillBench, student: nn.Module, phase: PhaseSpec, x: Tensor) -> Tensor:
    """The phase's loss written out: auxiliary features under no_grad, channels sliced by index."""
    with torch.no_grad():
        _, t = reference_features(bench.auxiliary(False), x)
    _, s = reference_features(student, x)
    target = t[phase.tap]
    if phase.tap != EMBEDDING:
        target = target[:, bench.pruned.indices[phase.tap]]
    return LOSSES.get(phase.loss)(target, s[phase.tap])


def reference_dataset(bench: DistillBench, augment: bool = True) -> ReferenceCIFAR:
    spec = bench.spec
    return ReferenceCIFAR(bench.data_hwc, bench.split.labels.tolist(), reference_transform(spec.mean, spec.std, augment))


def time_reference(
    bench: DistillBench,
    phase: PhaseSpec,
    batch_size: int,
    steps: int,
    warmup: int,
    num_workers: int = REFERENCE_WORKERS,
) -> dict:
    """images/s of the reference-style loop; warm-up steps come from the same loader iterator."""
    device = bench.device
    student = bench.new_student(False)
    optimizer = torch.optim.Adam(student.parameters(), lr=bench.cfg.optim.lr_at(0))
    loader = DataLoader(reference_dataset(bench), batch_size=batch_size, shuffle=True, num_workers=num_workers)

    def batches() -> Iterator:
        while True:  # a new epoch re-iterates the loader (restarting its workers), as the scripts do
            yield from loader

    it = batches()
    running_loss = 0.0
    images = 0
    t0 = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
            images = 0
        x, y = next(it)
        x, y = x.to(device), y.to(device)
        loss = reference_loss(bench, student, phase, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        images += x.shape[0]
    _sync(device)
    seconds = time.perf_counter() - t0
    it.close()  # shuts the workers down now rather than at garbage collection
    return _timing(images, steps, seconds, running_loss / (warmup + steps))


# ----------------------------------------------------------------------------- fast path


class FastStep:
    """The step of ``indistill.train.stages.student_stage`` (keep the two in step): the auxiliary
    through a ``TapReader`` under ``no_grad``, ``PrunedTaps.apply``, the student through a
    ``TapReader``, the ``indistill`` method's loss, all inside ``autocast(device, precision)``."""

    def __init__(
        self, bench: DistillBench, student: TapNet, channels_last: bool, precision: str = "auto", compile: bool = False
    ) -> None:
        self.bench = bench
        self.device = bench.device
        self.precision = precision
        self.method = bench.method()
        all_taps = tuple(t.name for t in student.taps)
        self.trainable = torch.compile(student) if compile else student
        self.s_reader = TapReader(self.trainable, all_taps)
        self.a_reader = TapReader(bench.auxiliary(channels_last), all_taps)

    def __call__(self, x: Tensor, y: Tensor, epoch: int) -> tuple[Tensor, dict[str, Tensor]]:
        with autocast(self.device, self.precision):
            with torch.no_grad():
                source = self.a_reader(x)[1]
            source = self.bench.pruned.apply(source)
            logits, feats = self.s_reader(x)
            return self.method.loss(StudentBatch(epoch, y, logits, feats, source))

    def close(self) -> None:
        self.s_reader.close()
        self.a_reader.close()


def _endless_batches(split: DeviceSplit, batch_size: int, padding: int, flip: bool) -> Iterator[tuple[Tensor, Tensor]]:
    epoch = 0
    while True:
        yield from split.batches(batch_size, seed=0, epoch=epoch, padding=padding, flip=flip)
        epoch += 1


def time_fast(
    bench: DistillBench,
    phase: PhaseSpec,
    batch_size: int,
    steps: int,
    warmup: int,
    channels_last: bool = True,
    compile: bool = False,
    precision: str = "auto",
    count_syncs: bool = False,
) -> dict:
    """images/s of the project's path. The loss and its parts are summed on the device as ``Loop``
    does and read once, at the end of the timed region."""
    device = bench.device
    student = bench.new_student(channels_last)
    step = FastStep(bench, student, channels_last, precision, compile)
    optimizer = build_optimizer([p for p in student.parameters() if p.requires_grad], bench.cfg.optim)
    spec = bench.spec
    it = _endless_batches(bench.device_split(channels_last), batch_size, spec.crop_padding, spec.flip)

    def run(n: int) -> tuple[int, float]:
        sums: dict[str, Tensor] = {}
        count = 0
        for _ in range(n):
            x, y = next(it)
            train_step(step, optimizer, x, y, phase.epoch, sums)  # Loop's own step
            count += x.shape[0]
        if not sums:
            return 0, float("nan")
        keys = sorted(sums)
        totals = torch.stack([sums[k] for k in keys]).tolist()  # the one host read (Loop: once per epoch)
        return count, totals[keys.index("loss")] / count

    syncs = None
    try:
        run(warmup)
        if count_syncs and device.type == "cuda":
            syncs = _count_host_syncs(lambda: run(2))
        _sync(device)
        t0 = time.perf_counter()
        images, mean_loss = run(steps)
        _sync(device)
        seconds = time.perf_counter() - t0
    finally:
        step.close()
    out = _timing(images, steps, seconds, mean_loss)
    if syncs is not None:
        out["host_syncs_in_2_steps"] = syncs  # includes the one read of the sums at the end
    return out


def _count_host_syncs(fn: Callable[[], object]) -> int:
    """How many synchronising CUDA calls ``fn`` makes (``torch.cuda.set_sync_debug_mode('warn')``)."""
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def _timing(images: int, steps: int, seconds: float, mean_loss: float) -> dict:
    return {
        "images_per_s": images / seconds if seconds > 0 else float("nan"),
        "seconds": seconds,
        "images": images,
        "steps": steps,
        "mean_loss": mean_loss,
    }


# ----------------------------------------------------------------------------- equivalence


@contextlib.contextmanager
def _full_fp32(device: torch.device):
    """No TF32 anywhere (cuDNN convolutions use it by default on CUDA)."""
    if device.type != "cuda":
        yield
        return
    conv, mm = torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision()
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = conv
        torch.set_float32_matmul_precision(mm)


def check_equivalence(bench: DistillBench, batch_size: int = REFERENCE_BATCH, layouts: Sequence[bool] = (False, True)) -> dict:
    """Loss of both pipelines on the same un-augmented batch (the first ``batch_size`` images) from the
    same weights, in fp32: reference dataset + transforms, explicit forward and channel slicing vs
    ``DeviceSplit`` batches, hooks, ``PrunedTaps`` and the ``indistill`` method, in each memory format
    of ``layouts`` (False = NCHW)."""
    device = bench.device
    dataset = reference_dataset(bench, augment=False)
    x_ref = torch.stack([dataset[i][0] for i in range(batch_size)]).to(device)
    out: dict = {"batch_size": batch_size, "checks": []}
    worst = input_worst = 0.0
    with _full_fp32(device), torch.no_grad():
        for phase in bench.phases:
            ref = float(reference_loss(bench, bench.new_student(False), phase, x_ref))
            for cl in layouts:
                x_fast, y = next(bench.device_split(cl).batches(batch_size, seed=0, epoch=0, shuffle=False))
                input_worst = max(input_worst, float((x_ref - x_fast).abs().max()))
                step = FastStep(bench, bench.new_student(cl), cl, precision="fp32")
                try:
                    fast = float(step(x_fast, y, phase.epoch)[0])
                finally:
                    step.close()
                diff = abs(ref - fast)
                worst = max(worst, diff)
                out["checks"].append({"phase": phase.name, "channels_last": cl, "reference_loss": ref,
                                      "fast_loss": fast, "abs_diff": diff})
    out.update(input_max_abs_diff=input_worst, max_abs_diff=worst, tolerance=EQUIVALENCE_TOL,
               ok=bool(worst <= EQUIVALENCE_TOL))
    return out


# ----------------------------------------------------------------------------- distill driver


@dataclass(frozen=True)
class RunSpec:
    """One timed configuration."""

    path: str  # "fast" | "reference"
    batch_size: int
    channels_last: bool = False
    num_workers: int = 0

    @property
    def label(self) -> str:
        if self.path == "fast":
            return "fast" + ("" if self.channels_last else " (NCHW)")
        return "reference" + ("" if self.num_workers == REFERENCE_WORKERS else f" (workers={self.num_workers})")


def _steps_for(batch_size: int, image_budget: int, min_steps: int) -> int:
    return max(min_steps, math.ceil(image_budget / batch_size))


def run_distill(
    device: torch.device,
    *,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    images: int = 50_000,
    ref_steps: int = 200,
    min_steps: int = 30,
    warmup: int = 15,
    repeats: int = 3,
    num_workers: int = REFERENCE_WORKERS,
    extra_reference_workers: Sequence[int] = (0,),
    channels_last: bool = True,
    compile: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Both pipelines, per phase. Every configuration is timed ``repeats`` times, the configurations
    interleaved so that background load hits all alike; the median counts.

    Timed: the fast path at every batch size (and at 128 in NCHW when ``channels_last``); the
    reference at 128 with ``num_workers`` and each of ``extra_reference_workers``, then at the fast
    path's best batch. A run covers ``ref_steps * 128`` images (at least ``min_steps`` steps); fast
    runs on CUDA ten times as many.
    """
    batch_sizes = sorted({int(b) for b in batch_sizes} | {REFERENCE_BATCH})
    budget = ref_steps * REFERENCE_BATCH
    fast_budget = budget * (10 if device.type == "cuda" else 1)
    bench = DistillBench.create(device, images=images)
    log(f"[distill] {images} synthetic images on {device}; checking equivalence ...")
    equivalence = check_equivalence(bench, layouts=sorted({False, channels_last}))
    log(f"[distill] equivalence: max |loss diff| = {equivalence['max_abs_diff']:.2e} (ok={equivalence['ok']})")

    def measure(spec: RunSpec, phase: PhaseSpec, first: bool) -> dict:
        if spec.path == "fast":
            steps = _steps_for(spec.batch_size, fast_budget, min_steps)
            return time_fast(bench, phase, spec.batch_size, steps, warmup * (3 if compile else 1), spec.channels_last,
                             compile=compile, count_syncs=first and spec.batch_size == REFERENCE_BATCH)
        steps = _steps_for(spec.batch_size, budget, min_steps)
        return time_reference(bench, phase, spec.batch_size, steps, warmup, spec.num_workers)

    phases: dict[str, dict] = {}
    for phase in bench.phases:
        specs = [RunSpec("fast", b, channels_last) for b in batch_sizes]
        if channels_last:
            specs.append(RunSpec("fast", REFERENCE_BATCH, False))
        specs += [RunSpec("reference", REFERENCE_BATCH, num_workers=w)
                  for w in dict.fromkeys([num_workers, *extra_reference_workers])]
        runs: dict[RunSpec, list[dict]] = {s: [] for s in specs}

        def sweep(todo: list[RunSpec]) -> None:
            for rep in range(repeats):
                for s in todo:
                    r = measure(s, phase, first=rep == 0)
                    runs.setdefault(s, []).append(r)
                    log(f"[distill] {phase.name:<14} {s.label:<22} batch {s.batch_size:5d} "
                        f"rep {rep + 1}/{repeats}: {r['images_per_s']:9.0f} img/s")

        sweep(specs)
        fast_specs = [s for s in specs if s.path == "fast" and s.channels_last == channels_last]
        best_spec = max(fast_specs, key=lambda s: _median(runs[s]))
        ref_best = RunSpec("reference", best_spec.batch_size, num_workers=num_workers)
        if ref_best not in runs:
            sweep([ref_best])
        rows = [_summarise(s, rs) for s, rs in runs.items()]
        fast128 = _median(runs[RunSpec("fast", REFERENCE_BATCH, channels_last)])
        ref128 = _median(runs[RunSpec("reference", REFERENCE_BATCH, num_workers=num_workers)])
        ref128_best = max(_median(rs) for s, rs in runs.items() if s.path == "reference" and s.batch_size == REFERENCE_BATCH)
        phases[phase.name] = {
            "epoch": phase.epoch,
            "rows": rows,
            "best_batch": best_spec.batch_size,
            "fast_images_per_s_at_128": fast128,
            "reference_images_per_s_at_128": ref128,
            "fast_images_per_s_at_best": _median(runs[best_spec]),
            "ratio_at_128": fast128 / ref128,
            "ratio_at_128_vs_fastest_reference": fast128 / ref128_best,
            "ratio_at_best_batch": _median(runs[best_spec]) / _median(runs[ref_best]),
            "ratio_best_vs_reference_128": _median(runs[best_spec]) / ref128,
        }
    return {
        "images": images,
        "reference_batch": REFERENCE_BATCH,
        "reference_num_workers": num_workers,
        "repeats": repeats,
        "fast_precision": "bf16 autocast" if device.type == "cuda" else "fp32",
        "fast_channels_last": channels_last,
        "compile": compile,
        "equivalence": equivalence,
        "phases": phases,
    }


def _median(runs: list[dict]) -> float:
    return float(np.median([r["images_per_s"] for r in runs]))


def _summarise(spec: RunSpec, runs: list[dict]) -> dict:
    row = {
        "path": spec.path,
        "label": spec.label,
        "batch_size": spec.batch_size,
        "channels_last": spec.channels_last,
        "images_per_s": _median(runs),
        "images_per_s_runs": [r["images_per_s"] for r in runs],
        "steps_per_run": runs[0]["steps"],
        "seconds_per_run": float(np.median([r["seconds"] for r in runs])),
        "mean_loss": runs[-1]["mean_loss"],
    }
    if spec.path == "reference":
        row["num_workers"] = spec.num_workers
    syncs = [r["host_syncs_in_2_steps"] for r in runs if "host_syncs_in_2_steps" in r]
    if syncs:
        row["host_syncs_in_2_steps"] = syncs[0]
    return row


# ----------------------------------------------------------------------------- retrieval


def synthetic_embeddings(
    n_query: int, n_database: int, dim: int = 64, classes: int = NUM_CLASSES, seed: int = 0, separation: float = 0.6
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Class-clustered Gaussian embeddings on an integer grid, every row's norm a power of two.

    ``dim - 8`` coordinates are ``separation * centre[label] + N(0, 1)``, scaled to a random norm of
    16, 32 or 64 and rounded; the last 8 absorb the rounding so that the squared norm is exactly 256,
    1024 or 4096 (greedy sums of squares, random signs). Then every distance both implementations
    compute is exact (integers below 2**24, or such integers over a power of two) in float32 and in
    float64, so the two rank identically, ties included (both break them by database index), and all
    keys agree to rounding in the final means. ``separation`` 0.6 gives an mAP of about 0.5
    (cosine) and 0.3 (euclidean).
    """
    if dim <= _SLACK_DIMS:
        raise ValueError(f"dim must exceed {_SLACK_DIMS}")
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim - _SLACK_DIMS))

    def draw(n: int) -> tuple[Tensor, Tensor]:
        labels = rng.integers(0, classes, n)
        target = (2 ** rng.integers(4, 7, n)).astype(np.int64) ** 2
        x = centres[labels] * separation + rng.normal(size=(n, dim - _SLACK_DIMS))
        x *= np.sqrt(0.85 * target / np.maximum((x**2).sum(1), 1e-12))[:, None]
        v = np.rint(x)
        while True:
            over = (v**2).sum(1) > target
            if not over.any():
                break
            v[over] = np.rint(v[over] * 0.97)
        rest = target - (v**2).sum(1).astype(np.int64)
        slack = np.zeros((n, _SLACK_DIMS))
        for j in range(_SLACK_DIMS):  # greedy squares: any rest <= 4096 needs at most 7
            a = np.floor(np.sqrt(rest)).astype(np.int64)
            a -= a * a > rest
            a += (a + 1) ** 2 <= rest
            slack[:, j] = a
            rest = rest - a * a
        if (rest != 0).any():
            raise AssertionError("greedy sum of squares did not close")
        slack *= rng.choice([-1.0, 1.0], size=slack.shape)
        out = np.concatenate([v, slack], axis=1)
        return torch.from_numpy(out.astype(np.float32)), torch.from_numpy(labels)

    q, ql = draw(n_query)
    db, dbl = draw(n_database)
    return q, ql, db, dbl


_SLACK_DIMS = 8


def run_retrieval(
    device: torch.device,
    *,
    n_query: int = 10_000,
    n_database: int = 50_000,
    dim: int = 64,
    ks: Sequence[int] = RETRIEVAL_KS,
    log: Callable[[str], None] = print,
) -> dict:
    """``evaluate_all`` (both metrics, one pass, inputs already on ``device``) vs ``reference_evaluate``
    (float64 numpy on the CPU, one call per metric), each timed once after a small warm-up."""
    q, ql, db, dbl = synthetic_embeddings(n_query, n_database, dim)
    metrics = ("cosine", "euclidean")
    qd, qld, dbd, dbld = (t.to(device) for t in (q, ql, db, dbl))
    w = min(n_database, 2048)
    evaluate_all(qd[:64], qld[:64], dbd[:w], dbld[:w], metrics, ks)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    fast = evaluate_all(qd, qld, dbd, dbld, metrics, ks)
    _sync(device)
    fast_s = time.perf_counter() - t0
    log(f"[retrieval] evaluate_all ({n_query} x {n_database} x {dim}, both metrics) on {device}: {fast_s:.2f} s")
    reference_evaluate(q[:8], ql[:8], db[:w], dbl[:w], "cosine", ks)  # warm-up
    ref: dict[str, dict[str, float]] = {}
    ref_s: dict[str, float] = {}
    for m in metrics:
        t0 = time.perf_counter()
        ref[m] = reference_evaluate(q, ql, db, dbl, m, ks)
        ref_s[m] = time.perf_counter() - t0
        log(f"[retrieval] reference_evaluate {m}: {ref_s[m]:.2f} s")
    same_keys = all(set(fast[m]) == set(ref[m]) for m in metrics)
    worst = max(abs(fast[m][k] - ref[m][k]) for m in metrics for k in ref[m] if k in fast[m])
    ref_total = sum(ref_s.values())
    return {
        "n_query": n_query,
        "n_database": n_database,
        "dim": dim,
        "ks": list(ks),
        "fast_seconds": fast_s,
        "reference_seconds": ref_s,
        "reference_seconds_total": ref_total,
        "ratio": ref_total / fast_s,
        "values": fast,
        "max_abs_diff": worst,
        "tolerance": RETRIEVAL_TOL,
        "ok": bool(same_keys and worst <= RETRIEVAL_TOL),
    }


# ----------------------------------------------------------------------------- report


def format_report(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"device: {m['device']} ({m['device_name']})",
        f"torch {m['torch']}, torchvision {m['torchvision']}, numpy {m['numpy']}, python {m['python']}",
        f"CPU: {m['cpu']}, {m['cpu_usable']} usable cores, torch threads {m['torch_threads']}; "
        f"load average at start {m.get('loadavg_start')}",
    ]
    if m["device"].startswith("cuda"):
        lines.append(f"GPU: CUDA runtime {m.get('cuda_runtime')}, driver {m.get('cuda_driver')}, cuDNN {m.get('cudnn')}")
    d = report.get("distill")
    if d:
        eq = d["equivalence"]
        lines += [
            "",
            f"distillation: synthetic CIFAR-10, {d['images']} images; median of {d['repeats']} interleaved runs",
            f"  reference: PIL transforms, DataLoader num_workers={d['reference_num_workers']}, fp32, NCHW, .item() per step",
            f"  fast: DeviceSplit + on-device crop/flip, {d['fast_precision']}"
            f"{', channels_last' if d['fast_channels_last'] else ', NCHW'}{', torch.compile' if d['compile'] else ''}, no per-step sync",
            f"  equivalence (fp32, same batch and weights, no augmentation): max |loss diff| = {eq['max_abs_diff']:.2e}"
            f" (tol {eq['tolerance']:.0e}) -> {'OK' if eq['ok'] else 'FAIL'}; inputs max |diff| = {eq['input_max_abs_diff']:.1e}",
            "",
            f"  {'phase':<15}{'path':<24}{'batch':>6}{'steps':>7}{'img/s':>10}   {'runs':<26}",
        ]
        for name, p in d["phases"].items():
            rows = sorted(p["rows"], key=lambda r: (r["path"] != "reference", r["label"], r["batch_size"]))
            for r in rows:
                mark = " *" if r["label"] == "fast" and r["batch_size"] == p["best_batch"] else ""
                runs = ", ".join(f"{v:.0f}" for v in r["images_per_s_runs"])
                syncs = f"  syncs/2 steps: {r['host_syncs_in_2_steps']}" if "host_syncs_in_2_steps" in r else ""
                lines.append(f"  {name:<15}{r['label'] + mark:<24}{r['batch_size']:>6}{r['steps_per_run']:>7}"
                             f"{r['images_per_s']:>10.0f}   [{runs}]{syncs}")
            lines.append(
                f"  {name:<15}fast/reference: {p['ratio_at_128']:.2f}x at batch 128 "
                f"({p['ratio_at_128_vs_fastest_reference']:.2f}x vs the fastest reference setting), "
                f"{p['ratio_at_best_batch']:.2f}x at batch {p['best_batch']}; "
                f"fast@{p['best_batch']} / reference@128 = {p['ratio_best_vs_reference_128']:.2f}x"
            )
        lines.append("  (* = the fast path's best batch)")
    r = report.get("retrieval")
    if r:
        lines += [
            "",
            f"retrieval: {r['n_query']} queries x {r['n_database']} database x {r['dim']}-d, ks {r['ks']}",
            f"  evaluate_all, both metrics in one pass: {r['fast_seconds']:.2f} s",
            *(f"  reference_evaluate {k}: {v:.2f} s" for k, v in r["reference_seconds"].items()),
            f"  reference total {r['reference_seconds_total']:.2f} s -> ratio {r['ratio']:.1f}x; "
            f"max |diff| over all keys = {r['max_abs_diff']:.1e} (tol {r['tolerance']:.0e}) -> {'OK' if r['ok'] else 'FAIL'}",
            f"  mAP cosine {r['values']['cosine']['map']:.4f}, euclidean {r['values']['euclidean']['map']:.4f}",
        ]
    return "\n".join(lines)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _loadavg() -> str | None:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None


def _on_off_auto(value: str) -> bool | None:
    v = value.lower()
    if v not in ("auto", "on", "off"):
        raise argparse.ArgumentTypeError("expected auto, on or off")
    return None if v == "auto" else v == "on"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", default="all", choices=("distill", "retrieval", "all"))
    parser.add_argument("--quick", action="store_true", help="small sizes, few steps, one run each (~1-2 min on 2 CPU cores)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default: auto)")
    parser.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)),
                        help="fast-path batch sizes to try; 128 is always included (default: %(default)s)")
    parser.add_argument("--images", type=int, default=None, help="synthetic training images (default 50000; quick 10000)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved runs per configuration (default 3; quick 1)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps of a batch-128 run; other batches time as many images (default 200; quick 30)")
    parser.add_argument("--num-workers", type=int, default=REFERENCE_WORKERS,
                        help="reference DataLoader workers (default %(default)s); 0 workers is timed at batch 128 too")
    parser.add_argument("--channels-last", type=_on_off_auto, default=None, metavar="auto|on|off",
                        help="fast-path memory format (auto = on: faster on CPU and GPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the student on the fast path (meant for CUDA)")
    parser.add_argument("--out", type=Path, default=None, help="also write the report as JSON here")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    info = machine_info(device)
    info["loadavg_start"] = _loadavg()
    info["malloc_env"] = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    report: dict = {"command": " ".join(["python -m benchmarks.speed", *argv]), "quick": args.quick, "machine": info}
    t_start = time.perf_counter()
    if args.what in ("distill", "all"):
        report["distill"] = run_distill(
            device,
            batch_sizes=[int(b) for b in args.batch_sizes.split(",") if b.strip()],
            images=args.images or (10_000 if args.quick else 50_000),
            ref_steps=args.steps or (30 if args.quick else 200),
            min_steps=10 if args.quick else 30,
            warmup=5 if args.quick else 15,
            repeats=args.repeats or (1 if args.quick else 3),
            num_workers=args.num_workers,
            channels_last=True if args.channels_last is None else args.channels_last,
            compile=args.compile,
        )
    if args.what in ("retrieval", "all"):
        n_query, n_database = (1_000, 5_000) if args.quick else (10_000, 50_000)
        report["retrieval"] = run_retrieval(device, n_query=n_query, n_database=n_database)
    report["total_seconds"] = time.perf_counter() - t_start
    info["loadavg_end"] = _loadavg()
    print()
    print(format_report(report))
    print(f"\ntotal benchmark time: {report['total_seconds']:.0f} s; load average at the end {info['loadavg_end']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(_jsonable(report), indent=2) + "\n")
        print(f"wrote {args.out}")
    ok = True
    if "distill" in report:
        ok = ok and report["distill"]["equivalence"]["ok"]
    if "retrieval" in report:
        ok = ok and report["retrieval"]["ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
