"""The speed benchmark's report: plain-text tables and the JSON form."""
from __future__ import annotations

import math


def format_machine(m: dict) -> list[str]:
    lines = [
        f"device: {m['device']} ({m['device_name']})",
        f"torch {m['torch']}, torchvision {m['torchvision']}, numpy {m['numpy']}, scikit-learn {m.get('sklearn')}, "
        f"python {m['python']}",
        f"CPU: {m['cpu']}, {m['cpu_usable']} usable cores, torch threads {m['torch_threads']}; "
        f"load average at start {m.get('loadavg_start')}",
    ]
    if m["device"].startswith("cuda"):
        lines.append(f"GPU: CUDA runtime {m.get('cuda_runtime')}, driver {m.get('cuda_driver')}, cuDNN {m.get('cudnn')}")
    return lines


def format_distill(d: dict) -> list[str]:
    lines = [
        "",
        f"distillation: synthetic CIFAR-10, {d['images']} images; median of {d['repeats']} interleaved runs",
        f"  pruned target: prune.target {d.get('prune_target', 'running_stats')} (the CIFAR-10 config's), in both paths",
        f"  reference: PIL transforms, DataLoader num_workers={d['reference_num_workers']}, fp32, NCHW, .item() per step",
        f"  fast: DeviceSplit + on-device crop/flip, student_stage's step (indistill.method.student_step), "
        f"{d['fast_precision']}{', channels_last' if d['fast_channels_last'] else ', NCHW'}"
        f"{', torch.compile' if d['compile'] else ''}, no per-step sync",
        "  (both compute the same loss: tests/test_speed_benchmark.py)",
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
    return lines


def format_retrieval(r: dict) -> list[str]:
    lines = [
        "",
        f"retrieval on {r['device']} ({r['threads']} torch threads): indistill.evaluation.retrieval.evaluate (all keys) vs the "
        "reference-style pipeline",
        "  (scikit-learn brute-force NearestNeighbors over the whole database, batches of 128 queries, its metrics;",
        "  float32 inputs). Seconds: median [min] of the interleaved runs; ratio of the medians [of the minima].",
    ]
    for s in r["sizes"]:
        head = f"{s['n_query']:,} x {s['n_database']:,} x {s['dim']}-d, {s['classes']} classes, ks {s['ks']}"
        lines += ["", f"  {head}, {s['repeats']} runs each"]
        lines.append(f"    {'metric':<10}{'reference-style s':>20}{'evaluate s':>16}{'ratio':>16}  target "
                     f">= {s['target_ratio']}x")
        for name, m in s["metrics"].items():
            ref, ours = m["reference_seconds"], m["seconds"]
            met = "met" if m["ratio"] >= s["target_ratio"] else "NOT met"
            lines.append(
                f"    {name:<10}{ref['median']:>10.2f} [{ref['min']:6.2f}]{ours['median']:>8.2f} [{ours['min']:5.2f}]"
                f"{m['ratio']:>8.2f}x [{m['ratio_min']:4.2f}x]  {met}"
            )
        lines.append(f"    evaluate_all, both metrics in one pass: {s['both_metrics_seconds']:.2f} s")
        if "ok" in s:
            per = ", ".join(f"{n} {m['float64_max_abs_diff']:.1e}" for n, m in s["metrics"].items())
            lines.append(f"    every key vs the float64 reference: max |diff| {per} (tol {s['tolerance']:.0e}) -> "
                         f"{'OK' if s['ok'] else 'FAIL'}")
        per = ", ".join(f"{n} {m['reference_style_max_abs_diff']:.1e}" for n, m in s["metrics"].items())
        lines.append(f"    map_legacy / p@k_legacy vs the reference-style pipeline's own: max |diff| {per} "
                     "(its tie order is scikit-learn's)")
        lines.append("    mAP " + ", ".join(f"{n} {m['values']['map']:.4f}" for n, m in s["metrics"].items()))
    return lines


def format_report(report: dict) -> str:
    lines = format_machine(report["machine"])
    if report.get("distill"):
        lines += format_distill(report["distill"])
    if report.get("retrieval"):
        lines += format_retrieval(report["retrieval"])
    return "\n".join(lines)


def jsonable(x):
    """``x`` with tuple keys and values made JSON-friendly and non-finite floats as ``null``."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
