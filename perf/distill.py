"""Distillation benchmark: the project's student step against the reference-style loop (``reference.py``).

One InDistill student step (frozen auxiliary forward under ``no_grad`` as far as the epoch's taps,
pruned target, student forward/backward, Adam step) on synthetic CIFAR-10-shaped uint8 data, in two
curriculum phases: MSE on the pruned ``block1`` tap and PKT on the embedding. The project's path
("fast"): ``DeviceSplit`` (the split on the device, normalised once) with batched on-device crop +
flip, then ``indistill.method.student_step`` (the step ``student_stage`` trains with, built the same
way from the CIFAR-10 config, so with its default ``prune.target``) stepped by ``Loop``'s own
``train_step`` (losses summed on the device, no per-step host sync); on CUDA bf16 autocast;
channels_last; optionally ``torch.compile`` of the student.

``tests/test_speed_benchmark.py`` checks that ``student_stage`` trains with that step and that it
computes the same loss as the reference-style explicit forward (the equivalence check).
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from indistill.config.run import RunConfig, StudentConfig
from indistill.engine.configure import build_config
from indistill.data import BenchmarkSpec, Split, get_spec
from indistill.models.base import EMBEDDING, TapNet
from indistill.models.zoo import create_network
from indistill.method.pruning import PrunedTaps, select_channels
from indistill.engine.batches import DeviceSplit
from indistill.method.curriculum import Phase, curriculum_plan
from indistill.engine.loop import build_optimizer, train_step
from indistill.method.methods import Method, create_method
from indistill.method.student_step import StudentStep, student_step

from .machine import sync, timing
from .reference import REFERENCE_BATCH, REFERENCE_WORKERS, time_reference

BENCHMARK = "cifar10"
NUM_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)
DEFAULT_BATCH_SIZES = (128, 256, 512, 1024)


def synthetic_cifar(n: int, seed: int = 0) -> Split:
    """``n`` random uint8 CIFAR-shaped images ``[n, 3, 32, 32]`` and balanced-ish labels of 10 classes."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *IMAGE_SHAPE), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=g, dtype=torch.int64)
    return Split(images, labels)


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
    """The synthetic data, the frozen auxiliary's and the student's initial weights, the pruned taps and
    the CIFAR-10 config (its student recipe and ``prune.target``, as a user's run has them).

    Every timed run builds its networks from these weights, so both pipelines start from the same
    state. Networks come in either memory format: the reference-style path always uses NCHW.
    """

    device: torch.device
    split: Split  # uint8 [N, C, H, W] on the CPU
    data_hwc: np.ndarray  # the same images as uint8 [N, H, W, C], for the reference dataset
    auxiliary_weights: dict[str, Tensor]
    student_init: dict[str, Tensor]
    pruned: PrunedTaps
    cfg: RunConfig
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
        cfg = build_config(benchmark=BENCHMARK)
        return cls(
            device=device,
            split=split,
            data_hwc=split.images.permute(0, 2, 3, 1).contiguous().numpy(),
            auxiliary_weights={k: v.detach().clone() for k, v in aux.state_dict().items()},
            student_init={k: v.detach().clone() for k, v in student.state_dict().items()},
            pruned=pruned,
            cfg=cfg,
            phases=benchmark_phases(cfg.student, tuple(widths)),
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

    @property
    def prune_target(self) -> str:
        return self.cfg.prune.target

    def method(self) -> Method:
        return create_method("indistill", self.cfg.student, self.student_taps)

    def step(self, student: TapNet, channels_last: bool, precision: str = "auto", compile: bool = False) -> StudentStep:
        """The project's student step for ``student``, built as ``student_stage`` builds it (``precision``
        in place of the config's: ``auto`` is bf16 autocast on CUDA); close it after use."""
        trainable = torch.compile(student) if compile else student
        cfg = self.cfg.replace(precision=precision)
        return student_step(trainable, self.method(), self.auxiliary(channels_last), self.pruned, cfg, self.device)


# ----------------------------------------------------------------------------- fast path


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
    step = bench.step(student, channels_last, precision, compile)
    optimizer = build_optimizer([p for p in student.parameters() if p.requires_grad], bench.cfg.student.optim)
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
        sync(device)
        t0 = time.perf_counter()
        images, mean_loss = run(steps)
        sync(device)
        seconds = time.perf_counter() - t0
    finally:
        step.close()
    out = timing(images, steps, seconds, mean_loss)
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
    log(f"[distill] {images} synthetic images on {device}")

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
        "prune_target": bench.prune_target,
        "fast_channels_last": channels_last,
        "compile": compile,
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
