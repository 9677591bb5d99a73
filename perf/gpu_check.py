"""The GPU check for the day a GPU is lent: ``python -m perf.gpu_check [--out FILE.json]``.

On a machine with one usable CUDA GPU, in a few minutes (docs/gpu-check.md):

1. **student step**: the production step (``indistill.method.student_step``, built as
   ``perf/distill.py`` builds it from the CIFAR-10 config) on hand-seeded networks and one
   hand-seeded batch, at the first epoch of every curriculum phase, on CUDA and on the CPU:
   ``precision: fp32`` must agree to :data:`STEP_RTOL` (the loss, its parts and the whole gradient,
   normwise); ``precision: auto`` (bf16 autocast on CUDA) is reported, for information;
2. **retrieval**: ``indistill.evaluation.retrieval.evaluate_all`` on CUDA and on the CPU, on embeddings whose
   distances are exact in float32 (``perf.retrieval.synthetic_embeddings``): every key equal to
   :data:`RETRIEVAL_TOL`;
3. **packing**: a tiny digits study on a local Ray, four 0.25-GPU trials
   (``perf/gpu_packing.py``): all four completed, ran at once, and each on ``cuda``;
4. **figures**: the fast path's images/s (at batch 128 and the best of larger batches) and the
   retrieval time at CIFAR-10 size (10,000 queries x 50,000 database items, 64-d).

Everything goes to a JSON file (default ``perf/gpu-check.json``); the exit status is 1 when a
check fails. Without a CUDA GPU it prints one line and exits 0, writing nothing (1 where the driver
sees a GPU that this torch cannot use).
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import datetime
import json
import math
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from indistill.config.run import RunConfig
from indistill.engine.configure import build_config
from indistill.models.base import TapNet
from indistill.method.pruning import PrunedTaps, select_channels
from indistill.evaluation.retrieval import METRICS, evaluate, evaluate_all
from indistill.method.curriculum import curriculum_plan
from indistill.method.methods import create_method
from indistill.common.precision import stage_precision
from indistill.method.student_step import student_step

from .distill import BENCHMARK, IMAGE_SHAPE, NUM_CLASSES, DistillBench, _network, time_fast
from .machine import machine_info, timed
from .retrieval import KS, synthetic_embeddings

DEFAULT_OUT = Path(__file__).resolve().parent / "gpu-check.json"
#: fp32 on CUDA (TF32 off, as ``precision: fp32`` runs) against the CPU: both round every operation to
#: float32 (2**-24 relative) and differ only in summation order and algorithms (cuDNN's convolutions,
#: oneDNN's), expected to stay near 1e-6 relative through the step's forward, loss and backward; 1e-4 is
#: well above that and well below what TF32 (10 bits of mantissa, ~5e-4 per product) or bf16 (8 bits,
#: ~4e-3) leave, so a matmul or convolution that slipped into TF32 or bf16 fails it
STEP_RTOL = 1e-4
#: the retrieval keys are means of exact rank statistics once the ranking agrees (it must, distances
#: being exact in float32): they differ at most by float64 summation order
RETRIEVAL_TOL = 1e-6
STEP_BATCH = 128
CHECK_SIZE = (2_000, 20_000)  # the CUDA-vs-CPU retrieval check: several query chunks on either device
CIFAR10_SIZE = (10_000, 50_000)  # the timed retrieval: the CIFAR-10 protocol
EMBEDDING_DIM = 64
TIMED_BATCHES = (128, 256, 512, 1024)
BUDGET_S = 300.0  # what the whole check should take on one GPU

Log = Callable[[str], None]


# ----------------------------------------------------------------------------- is there a GPU


def _driver_gpus() -> int | None:
    """GPUs the NVIDIA driver itself sees (``cuInit`` + ``cuDeviceGetCount``), None without a driver."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    count = ctypes.c_int(0)
    if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def no_gpu_line() -> tuple[str, int] | None:
    """None when CUDA is usable here; else the one line to print and the exit status: 0 where there is
    no GPU at all (CI), 1 where the driver sees a GPU that this torch cannot use (a wrong wheel)."""
    if torch.cuda.is_available():
        return None
    build = torch.version.cuda or "none (a CPU-only build)"
    versions = f"torch {torch.__version__}, CUDA build {build}"
    gpus = _driver_gpus()
    if gpus:
        return (f"gpu_check: failed: the NVIDIA driver sees {gpus} GPU(s) but {versions} cannot use CUDA; "
                "install a torch build for this driver"), 1
    return f"gpu_check: no CUDA GPU here ({versions}); nothing to check", 0


# ----------------------------------------------------------------------------- comparisons


def relative_difference(got: Tensor | float, want: Tensor | float) -> float:
    """``||got - want|| / ||want||`` (L2 over all entries, in float64); 0 when both are zero, inf when
    only ``want`` is."""
    got_t = torch.as_tensor(got, dtype=torch.float64).cpu()
    want_t = torch.as_tensor(want, dtype=torch.float64).cpu()
    diff = float(torch.linalg.vector_norm(got_t - want_t))
    scale = float(torch.linalg.vector_norm(want_t))
    if scale == 0.0:
        return 0.0 if diff == 0.0 else math.inf
    return diff / scale


@dataclass
class StepValues:
    """One step's loss parts (``loss`` included) and the student's parameter gradients, on the CPU."""

    values: dict[str, float]
    grads: dict[str, Tensor]


def _flat(grads: dict[str, Tensor], names: list[str]) -> Tensor:
    return torch.cat([grads[n].reshape(-1).double() for n in names]) if names else torch.zeros(0, dtype=torch.float64)


def compare_steps(want: dict[int, StepValues], got: dict[int, StepValues], rtol: float) -> dict:
    """Per epoch: the worst relative difference of the loss parts, and the normwise relative difference
    of the whole gradient (every parameter's, as one vector), of ``got`` against ``want``; ``ok`` when
    every epoch, loss part and gradient is there in both and within ``rtol``.

    The gradient is compared whole, not parameter by parameter: a convolution's bias ahead of a
    train-mode BatchNorm has a zero gradient in exact arithmetic (the batch mean removes it), so what
    either device computes for it is rounding noise (here ~1e-6 of the whole gradient's norm), which no
    relative tolerance of its own could judge. The parameter with the largest share of the difference is
    reported, with its own relative difference, for information.
    """
    epochs: dict[str, dict] = {}
    ok = set(want) == set(got)
    for epoch in sorted(set(want) & set(got)):
        w, g = want[epoch], got[epoch]
        same_keys = set(w.values) == set(g.values) and set(w.grads) == set(g.grads) and bool(w.grads)
        loss_rel = {k: relative_difference(g.values[k], w.values[k]) for k in w.values if k in g.values}
        names = sorted(set(w.grads) & set(g.grads))
        whole = float(torch.linalg.vector_norm(_flat(w.grads, names)))
        share = {n: float(torch.linalg.vector_norm(g.grads[n].double() - w.grads[n].double())) / whole if whole else 0.0
                 for n in names}
        worst = max(share, key=share.get) if share else None
        row = {
            "loss": w.values.get("loss"),
            "loss_max_rel_diff": max(loss_rel.values(), default=math.inf),
            "grad_rel_diff": relative_difference(_flat(g.grads, names), _flat(w.grads, names)) if names else math.inf,
            "grad_norm": whole,
            "grad_worst_parameter": worst,
            "grad_worst_parameter_share": share.get(worst),  # its |diff| over the whole gradient's norm
            "grad_worst_parameter_rel_diff": relative_difference(g.grads[worst], w.grads[worst]) if worst else None,
            "parameters_with_grad": len(w.grads),
            "same_keys": same_keys,
        }
        row["ok"] = bool(same_keys and row["loss_max_rel_diff"] <= rtol and row["grad_rel_diff"] <= rtol)
        ok = ok and row["ok"]
        epochs[str(epoch)] = row
    worst_diff = [max(r["loss_max_rel_diff"], r["grad_rel_diff"]) for r in epochs.values()]
    return {"rtol": rtol, "max_rel_diff": max(worst_diff, default=math.inf), "epochs": epochs,
            "ok": bool(ok and epochs)}


def compare_retrieval(want: dict[str, dict[str, float]], got: dict[str, dict[str, float]], tol: float) -> dict:
    """Per metric, the largest absolute difference over every key; ``ok`` when metrics and keys are the
    same and every difference is within ``tol``."""
    metrics = {}
    for m in want:
        keys_equal = m in got and set(got[m]) == set(want[m])
        diff = max((abs(got[m][k] - want[m][k]) for k in want[m] if k in got.get(m, {})), default=math.inf)
        metrics[m] = {"max_abs_diff": diff if keys_equal else math.inf, "keys": len(want[m]), "same_keys": keys_equal}
    worst = max((r["max_abs_diff"] for r in metrics.values()), default=math.inf)
    return {"tolerance": tol, "max_abs_diff": worst, "metrics": metrics,
            "ok": bool(set(want) == set(got) and worst <= tol)}


# ----------------------------------------------------------------------------- 1. the student step


@dataclass(frozen=True)
class StepCase:
    """Hand-seeded CPU networks, pruned taps and batch; each device gets copies of them."""

    cfg: RunConfig  # the CIFAR-10 config
    auxiliary: TapNet
    student: TapNet
    pruned: PrunedTaps
    x: Tensor
    y: Tensor
    epochs: tuple[int, ...]  # the first epoch of each curriculum phase


def hand_seeded(net: TapNet, seed: int) -> TapNet:
    """Every floating-point weight, bias and BN statistic drawn from a seeded CPU generator: the same
    numbers whatever torch's init or the device (the golden student-step tests seed with it too)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in sorted(net.state_dict().items()):
            if not t.is_floating_point():
                continue
            draw = torch.randn(t.shape, generator=g)
            if name.endswith("running_var"):
                t.copy_(0.5 + draw.abs())
            elif name.endswith("running_mean"):
                t.copy_(0.1 * draw)
            else:
                t.copy_(0.3 * draw)
    return net


def step_case(batch_size: int = STEP_BATCH, seed: int = 0) -> StepCase:
    """The CIFAR-10 config's networks (its memory format), pruned by its criterion, and a batch."""
    cfg = build_config(benchmark=BENCHMARK)
    cpu = torch.device("cpu")
    auxiliary = hand_seeded(_network("auxiliary", cpu, cfg.channels_last), seed + 1).eval()
    student = hand_seeded(_network("student", cpu, cfg.channels_last), seed + 2)
    widths = {t.name: t.channels for t in student.intermediate_taps}
    pruned = PrunedTaps(select_channels(auxiliary, widths, cfg.prune.criterion))
    g = torch.Generator().manual_seed(seed + 3)
    x = torch.randn(batch_size, *IMAGE_SHAPE, generator=g)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=g)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    plan = curriculum_plan(cfg.student.curriculum, tuple(widths), cfg.student.epochs)
    epochs = tuple(e for e, p in enumerate(plan) if e == 0 or p != plan[e - 1])
    return StepCase(cfg, auxiliary, student, pruned, x, y, epochs)


def step_values(case: StepCase, device: torch.device, precision: str) -> dict[int, StepValues]:
    """The production step's loss and gradients at each of ``case.epochs`` on ``device``, the step run
    (forward and backward) under the stage's precision as ``student_stage`` runs it."""
    cfg = case.cfg.replace(precision=precision)
    auxiliary = copy.deepcopy(case.auxiliary).to(device).eval()
    for p in auxiliary.parameters():
        p.requires_grad_(False)
    pruned = case.pruned.to(device)
    x, y = case.x.to(device), case.y.to(device)
    out: dict[int, StepValues] = {}
    for epoch in case.epochs:
        student = copy.deepcopy(case.student).to(device).train()
        method = create_method("indistill", cfg.student, tuple(pruned.widths))
        with stage_precision(precision), student_step(student, method, auxiliary, pruned, cfg, device) as step:
            loss, parts = step(x, y, epoch)
            loss.backward()
        values = {"loss": float(loss.detach()), **{k: float(v) for k, v in parts.items()}}
        grads = {n: p.grad.detach().float().cpu() for n, p in student.named_parameters() if p.grad is not None}
        out[epoch] = StepValues(values, grads)
    return out


def check_student_step(device: torch.device, reference: torch.device = torch.device("cpu"),
                       batch_size: int = STEP_BATCH) -> dict:
    """``precision: fp32`` on ``device`` against ``reference`` (the check), and ``auto`` (for information)."""
    case = step_case(batch_size)
    fp32 = compare_steps(step_values(case, reference, "fp32"), step_values(case, device, "fp32"), STEP_RTOL)
    auto = compare_steps(step_values(case, reference, "auto"), step_values(case, device, "auto"), STEP_RTOL)
    return {
        "devices": [str(device), str(reference)],
        "batch_size": batch_size,
        "method": "indistill",
        "prune_target": case.cfg.prune.target,
        "channels_last": case.cfg.channels_last,
        "epochs": list(case.epochs),
        "fp32": fp32,
        "auto_for_information": {**auto, "ok": None, "note": "auto is bf16 autocast on CUDA, float32 on the CPU"},
        "ok": fp32["ok"],
    }


# ----------------------------------------------------------------------------- 2. retrieval


def retrieval_values(device: torch.device, n_query: int, n_database: int,
                     dim: int = EMBEDDING_DIM) -> dict[str, dict[str, float]]:
    """Every key of both metrics for the synthetic embeddings, evaluated on ``device``."""
    q, ql, db, dbl = (t.to(device) for t in synthetic_embeddings(n_query, n_database, dim))
    return evaluate_all(q, ql, db, dbl, METRICS, KS)


def check_retrieval(device: torch.device, reference: torch.device = torch.device("cpu"),
                    size: tuple[int, int] = CHECK_SIZE) -> dict:
    """``evaluate_all`` on ``device`` against ``reference``: every key to :data:`RETRIEVAL_TOL`."""
    want = retrieval_values(reference, *size)
    got = retrieval_values(device, *size)
    return {"devices": [str(device), str(reference)], "n_query": size[0], "n_database": size[1],
            "dim": EMBEDDING_DIM, **compare_retrieval(want, got, RETRIEVAL_TOL)}


# ----------------------------------------------------------------------------- 4. the figures


def time_student_step(device: torch.device, batch_sizes: Sequence[int] = TIMED_BATCHES, repeats: int = 3,
                      image_budget: int = 25_600, min_steps: int = 30, warmup: int = 15, log: Log = print) -> dict:
    """The fast path's images/s (``perf.distill.time_fast``: bf16 autocast, channels_last) per
    timed phase and batch size, the median of ``repeats`` runs of ``image_budget`` images each."""
    bench = DistillBench.create(device, images=10_240)
    phases = {}
    for phase in bench.phases:
        rates: dict[int, float] = {}
        for b in batch_sizes:
            steps = max(min_steps, math.ceil(image_budget / b))
            runs = [time_fast(bench, phase, b, steps, warmup)["images_per_s"] for _ in range(repeats)]
            rates[b] = statistics.median(runs)
            log(f"[gpu_check] fast path {phase.name:<14} batch {b:5d}: {rates[b]:9.0f} images/s")
        best = max(rates, key=rates.get)
        phases[phase.name] = {"epoch": phase.epoch, "images_per_s": {str(b): r for b, r in rates.items()},
                              "images_per_s_at_128": rates.get(128), "best_batch": best, "images_per_s_at_best": rates[best]}
    precision = "auto (bf16 autocast)" if device.type == "cuda" else "auto (float32 on the CPU)"
    return {"precision": precision, "channels_last": True, "repeats": repeats,
            "images_per_run": image_budget, "prune_target": bench.prune_target, "phases": phases}


def time_retrieval(device: torch.device, size: tuple[int, int] = CIFAR10_SIZE, repeats: int = 3,
                   log: Log = print) -> dict:
    """Seconds of ``evaluate`` per metric (median and min of ``repeats``) and of ``evaluate_all`` (both
    metrics in one pass) at ``size``, float32 embeddings on ``device``."""
    q, ql, db, dbl = (t.to(device) for t in synthetic_embeddings(*size, EMBEDDING_DIM))
    evaluate_all(q[:64], ql[:64], db[:2048], dbl[:2048], METRICS, KS)  # warm-up: kernels, allocator
    metrics = {}
    for m in METRICS:
        seconds = [timed(lambda: evaluate(q, ql, db, dbl, m, KS), device)[0] for _ in range(repeats)]
        metrics[m] = {"median_s": statistics.median(seconds), "min_s": min(seconds), "runs_s": seconds}
        log(f"[gpu_check] retrieval {size[0]} x {size[1]} {m:<9}: {metrics[m]['median_s']:.3f} s")
    both_s, _ = timed(lambda: evaluate_all(q, ql, db, dbl, METRICS, KS), device)
    return {"n_query": size[0], "n_database": size[1], "dim": EMBEDDING_DIM, "ks": list(KS), "repeats": repeats,
            "metrics": metrics, "both_metrics_s": both_s}


# ----------------------------------------------------------------------------- the command


def _run_part(name: str, fn: Callable[[], dict], log: Log) -> dict:
    """``fn()``'s record with its seconds; an exception becomes a failed record with its traceback."""
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # a part that breaks is a failed check, the others still run
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        log(f"[gpu_check] {name}: {out['error']}")
    out["seconds"] = time.perf_counter() - t0
    return out


def _verdict(record: dict) -> str:
    return "ok" if record.get("ok") else "FAILED"


def summary_lines(checks: dict[str, dict], figures: dict[str, dict]) -> list[str]:
    """The short report: one line per check, then the figures."""
    lines = []
    step = checks["student_step"]
    if "fp32" in step:
        lines.append(f"student step fp32, CUDA vs CPU: max rel diff {step['fp32']['max_rel_diff']:.1e} "
                     f"(tolerance {STEP_RTOL:g}) {_verdict(step)}; auto (bf16 on CUDA): "
                     f"{step['auto_for_information']['max_rel_diff']:.1e}, for information")
    else:
        lines.append(f"student step: {step.get('error')} FAILED")
    ret = checks["retrieval"]
    lines.append(f"retrieval, CUDA vs CPU: max abs diff {ret.get('max_abs_diff', math.inf):.1e} "
                 f"(tolerance {RETRIEVAL_TOL:g}) {_verdict(ret)}" + ("" if "error" not in ret else f": {ret['error']}"))
    pack = checks["packing"]
    lines.append(f"packing: {pack.get('most_at_once', 0)} of {pack.get('trials', '?')} trials at once, devices "
                 f"{pack.get('devices', [])} {_verdict(pack)}" + (f": {pack['reason']}" if pack.get("reason") else "")
                 + (f": {pack['error']}" if "error" in pack else ""))
    for part, figure in figures.items():
        if "error" in figure:
            lines.append(f"{part.replace('_', ' ')} timing: FAILED: {figure['error']}")
    for name, phase in figures.get("student_step", {}).get("phases", {}).items():
        lines.append(f"fast path {name}: {phase['images_per_s_at_128']:.0f} images/s at batch 128, "
                     f"{phase['images_per_s_at_best']:.0f} at {phase['best_batch']}")
    timed_retrieval = figures.get("retrieval", {})
    for m, r in timed_retrieval.get("metrics", {}).items():
        lines.append(f"retrieval {timed_retrieval['n_query']:,} x {timed_retrieval['n_database']:,} {m}: "
                     f"{r['median_s']:.3f} s")
    return lines


def run_checks(device: torch.device, work_dir: Path, log: Log = print) -> dict:
    """Every part on ``device``; the record the JSON file holds (without the command's own fields).

    The study runs first, while this process holds no CUDA memory (its trials share the GPU with
    nothing else), and the timings last, after its Ray processes are gone.
    """
    from .gpu_packing import check_packing

    packing = _run_part("packing", lambda: check_packing(work_dir, log=log), log)
    checks = {
        "student_step": _run_part("student step", lambda: check_student_step(device), log),
        "retrieval": _run_part("retrieval", lambda: check_retrieval(device), log),
        "packing": packing,
    }
    figures = {
        "student_step": _run_part("fast path timing", lambda: time_student_step(device, log=log), log),
        "retrieval": _run_part("retrieval timing", lambda: time_retrieval(device, log=log), log),
    }
    return {"checks": checks, "figures": figures, "ok": all(c.get("ok") for c in checks.values())
            and all("error" not in f for f in figures.values())}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m perf.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the JSON file to write (default: {DEFAULT_OUT.name} "
                   "next to this script)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The command: 0 when every check passes (or there is no GPU to check), 1 otherwise."""
    args = build_parser().parse_args(argv)
    absent = no_gpu_line()
    if absent is not None:
        line, status = absent
        print(line, file=sys.stderr if status else sys.stdout)
        return status
    device = torch.device("cuda")
    t0 = time.perf_counter()
    started = datetime.datetime.now(datetime.timezone.utc)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        record = run_checks(device, Path(tmp))
    total = time.perf_counter() - t0
    record = {
        "command": shlex.join([Path(sys.executable).name, "-m", "perf.gpu_check", *(argv if argv is not None else sys.argv[1:])]),
        "date": started.isoformat(timespec="seconds"),
        "total_seconds": total,
        "budget_seconds": BUDGET_S,
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "machine": machine_info(device),
        **record,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    for line in summary_lines(record["checks"], record["figures"]):
        print(f"[gpu_check] {line}")
    over = f"; over the {BUDGET_S:.0f} s budget" if total > BUDGET_S else ""
    print(f"[gpu_check] {'all checks passed' if record['ok'] else 'FAILED'} in {total:.0f} s{over}; wrote {args.out}")
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
