"""Trial summaries and the study's results table (CSV, Markdown, LaTeX)."""
from __future__ import annotations

import math

import pandas as pd

from indistill.table import to_markdown

from .storage import Storage

ROW_ORDER = ("teacher", "auxiliary", "student (ce)", "student (pkt)", "student (mkt)", "InDistill (paper defaults)", "InDistill (tuned)")
TABLE_FILES = ("results.csv", "results.md", "results.tex")


def _nested(params: dict) -> dict:
    """Tune's flattened ``a/b`` keys back into nested dicts (as the trial saw them)."""
    out: dict = {}
    for key, value in params.items():
        node = out
        parts = key.split("/")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def summarize_trials(grid, bp) -> dict:
    """Per-trial status, reason, epochs and best val mAP; the best trial by last reported val mAP."""
    max_epochs = bp.base.student.epochs
    trials, best = [], None
    for result in grid:
        metrics = result.metrics or {}
        epochs = int(metrics.get("epoch", 0))
        value = metrics.get("val_map")
        if result.error is not None:
            status, reason = "failed", f"{type(result.error).__name__}: {str(result.error).strip().splitlines()[-1][:300]}"
        elif epochs >= max_epochs:
            status, reason = "completed", ""
        else:
            status, reason = "stopped early", f"ASHA stopped it after {epochs} epochs"
        df = result.metrics_dataframe
        best_val = float(df["val_map"].max()) if df is not None and "val_map" in df else None
        params = _nested({k: v for k, v in (result.config or {}).items()})
        timing = None
        if "trial_wall_s" in metrics and "loop_time_s" in metrics:  # up to the trial's last report
            timing = {"wall_s": metrics["trial_wall_s"], "loop_s": metrics["loop_time_s"], "epochs": epochs,
                      "startup_s": metrics.get("startup_s"), "ray_startup_s": metrics.get("ray_startup_s"),
                      "report_s": metrics.get("report_time_s")}
        row = {"trial_id": metrics.get("trial_id") or _trial_id(result), "status": status, "reason": reason, "epochs": epochs,
               "val_map": value, "best_val_map": best_val, "params": params, "timing": timing}
        trials.append(row)
        if status != "failed" and value is not None and not math.isnan(value):
            if best is None or (row["epochs"], value) > (best["epochs"], best["val_map"]):
                best = row
    counts = {s: sum(t["status"] == s for t in trials) for s in ("completed", "stopped early", "failed")}
    return {"trials": trials, "best": best, "counts": counts}


def _trial_id(result) -> str:
    return result.path.rstrip("/").rsplit("/", 1)[-1] if result.path else "?"


def _key_values(params: dict) -> str:
    cur = params.get("curriculum", {})
    n = len([k for k in cur if k.startswith("epochs_")])
    layers = []
    for i in range(n):
        loss = cur.get(f"loss_{i}", "?")
        w = cur.get(f"weight_{i}_{loss}")
        layers.append(f"{cur.get(f'epochs_{i}')}ep {loss}" + (f" w={w:.3g}" if w is not None else ""))
    crit = params.get("prune", {}).get("criterion", "?")
    return f"{'; '.join(layers)}; overlap={cur.get('overlap')}; criterion={crit}"


def benchmark_rows(storage: Storage, benchmark: str) -> list[dict]:
    rows: list[dict] = []
    if storage.exists(f"{benchmark}/artifacts/baselines.json"):
        rows.extend(storage.read_json(f"{benchmark}/artifacts/baselines.json")["rows"])
    if storage.exists(f"{benchmark}/final/result.json"):
        rows.append(dict(storage.read_json(f"{benchmark}/final/result.json")["row"]))
    if storage.exists(f"{benchmark}/search/trials.json"):
        trials = storage.read_json(f"{benchmark}/search/trials.json")
        for row in rows:
            if row["network"] == "InDistill (tuned)":
                best = trials["best"]
                row["best val map"] = 100.0 * best["val_map"] if best else float("nan")
                row.update({f"trials {k}": v for k, v in trials["counts"].items()})
                row["best config"] = _key_values(best["params"]) if best else ""
    for row in rows:
        row["benchmark"] = benchmark
    return rows


def build_table(storage: Storage, benchmarks: list[str]) -> pd.DataFrame:
    rows = [r for b in benchmarks for r in benchmark_rows(storage, b)]
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    table["order"] = table["network"].map({n: i for i, n in enumerate(ROW_ORDER)})
    table = table.sort_values(["benchmark", "order"]).drop(columns="order").set_index(["benchmark", "network"])
    return table


def markdown(table: pd.DataFrame) -> str:
    """The table as Markdown (benchmark and network as plain columns), blank where a column does not apply."""
    shown = table.reset_index().set_index("benchmark")
    for col in [c for c in shown.columns if c.startswith("trials ")]:
        shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else str(int(v)))
    return to_markdown(shown).replace(" nan ", "     ")


def write_study_table(storage: Storage, table: pd.DataFrame) -> None:
    storage.write_text("results.csv", table.to_csv())
    storage.write_text("results.md", "# InDistill study: test split (values in %)\n\n" + markdown(table) + "\n")
    storage.write_text("results.tex", table.to_latex(float_format="%.2f", na_rep="--"))
