"""Trial summaries and the study's results table (CSV, Markdown, LaTeX)."""
from __future__ import annotations

import textwrap

import pandas as pd

import yaml

from indistill.engine.configure import build_config
from indistill.common.errors import error_reason
from indistill.evaluation.retrieval import METRICS
from indistill.evaluation.table import aggregate, column, display, integer_counts, latex

from .params import describe
from .outcome import FAILED, STATUSES, STOPPED, best_key, count, trial_status
from .storage import Storage
from .names import (EMBEDDING_EPOCH, NETWORKS_FILE, OBJECTIVE, POINTS_FILE, ROW_ORDER, SIZE_OBJECTIVES, STUDENT_ROWS,
                    TRIALS_FILE, TUNED, WARM_START, WIDTH)
from .warm_start import strip as strip_origin, table_note as warm_start_note

TABLE_FILES = ("results.csv", "results.md", "results.tex", "results_per_seed.csv")
#: the tuned row's column on a warm-started search (:func:`study.warm_start.table_note`)
WARM_START_COLUMN = "warm start"


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
    trials, best, best_k = [], None, None
    for result in grid:
        metrics = result.metrics or {}
        epochs = int(metrics.get("epoch", 0))
        value = metrics.get(OBJECTIVE)
        status = trial_status(result.error is not None, epochs, max_epochs)
        reason = ""
        if status == FAILED:
            reason = error_reason(result.error)
        elif status == STOPPED:
            reason = f"ASHA stopped it after {epochs} epochs ({int(metrics.get(EMBEDDING_EPOCH, 0))} in the embedding phase)"
        df = result.metrics_dataframe
        best_val = float(df[OBJECTIVE].max()) if df is not None and OBJECTIVE in df else None
        params, origin = strip_origin(_nested({k: v for k, v in (result.config or {}).items()}))
        timing = None
        if "trial_wall_s" in metrics and "loop_time_s" in metrics:  # up to the trial's last report
            timing = {"wall_s": metrics["trial_wall_s"], "loop_s": metrics["loop_time_s"], "epochs": epochs,
                      "startup_s": metrics.get("startup_s"), "ray_startup_s": metrics.get("ray_startup_s"),
                      "report_s": metrics.get("report_time_s")}
        row = {"trial_id": metrics.get("trial_id") or _trial_id(result), "status": status, "reason": reason, "epochs": epochs,
               OBJECTIVE: value, f"best_{OBJECTIVE}": best_val, "params": params, "timing": timing}
        if origin:  # a warm-started trial: where its config comes from
            row[WARM_START] = origin
        if params.get("student", {}).get(WIDTH) is not None:  # a frontier trial: its width and size
            row[WIDTH] = params["student"][WIDTH]
            row.update((k, metrics[k]) for k in SIZE_OBJECTIVES.values() if k in metrics)
        trials.append(row)
        key = best_key(status, epochs, value)
        if key is not None and (best_k is None or key > best_k):
            best, best_k = row, key
    return {"trials": trials, "best": best, "counts": count(t["status"] for t in trials)}


def _trial_id(result) -> str:
    return result.path.rstrip("/").rsplit("/", 1)[-1] if result.path else "?"


def per_seed_rows(storage: Storage, benchmark: str) -> list[dict]:
    """Every measured row of a benchmark, one per network and seed (teacher, auxiliary: one seed)."""
    rows: list[dict] = []
    if storage.exists(f"{benchmark}/{NETWORKS_FILE}"):
        rows.extend(storage.read_json(f"{benchmark}/{NETWORKS_FILE}")["rows"])
    for name in storage.listdir(f"{benchmark}/final"):
        if name.startswith("seed-") and name.endswith(".json"):
            rows.extend(storage.read_json(f"{benchmark}/final/{name}")["rows"])
    for row in rows:
        row["benchmark"] = benchmark
    return rows


def _epochs(storage: Storage, benchmark: str) -> dict[str, str]:
    """Training epochs of each row, from the study's base config of the benchmark."""
    if not storage.exists(f"{benchmark}/base_config.yaml"):
        return {}
    cfg = build_config(yaml.safe_load(storage.read_text(f"{benchmark}/base_config.yaml")), benchmark=benchmark)
    s = cfg.student
    out = {"teacher": str(cfg.teacher.epochs),
           "auxiliary": "checkpoint" if cfg.auxiliary.checkpoint else f"{cfg.auxiliary.ce.epochs}+{cfg.auxiliary.pkt.epochs}"}
    for label, method, _tuned in STUDENT_ROWS:
        out[label] = str(s.schedule(method)[0]) + (" (MKT's recipe)" if method == "mkt" and s.schedules.mkt.epochs else "")
    return out


def build_table(storage: Storage, benchmarks: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(aggregated table, per-seed rows). Students: mean ± std over the final seeds and the paired
    difference to the tuned InDistill; the tuned row adds the search's record. A frontier study's
    students are grouped by width (labels ``<row> @ <width>x``, with ``width`` and ``macs``
    columns), each difference taken within its width."""
    rows = [r for b in benchmarks for r in per_seed_rows(storage, b)]
    if not rows:
        return pd.DataFrame(), pd.DataFrame()
    per_seed = pd.DataFrame(rows)
    if WIDTH not in per_seed:
        per_seed[WIDTH] = float("nan")
    per_seed["order"] = per_seed["network"].map({n: i for i, n in enumerate(ROW_ORDER)})
    per_seed["size order"] = per_seed[WIDTH].fillna(-1.0)  # the networks without a width first
    per_seed = per_seed.sort_values(["benchmark", "size order", "order", "seed"], kind="stable")
    per_seed = per_seed.drop(columns=["order", "size order"])
    students = [label for label, _method, _tuned in STUDENT_ROWS]
    parts = []
    for bench in benchmarks:
        mine = per_seed[per_seed["benchmark"] == bench]
        unsized, sized = mine[mine[WIDTH].isna()], mine[mine[WIDTH].notna()]
        if len(unsized):
            parts.append(aggregate(unsized, reference=TUNED, by=("benchmark", "network"), compare=students))
        for width in sorted(sized[WIDTH].unique()):
            at = sized[sized[WIDTH] == width]
            part = aggregate(at, reference=TUNED, by=("benchmark", "network"), compare=students)
            part.index = pd.MultiIndex.from_tuples([(b, sized_label(n, width)) for b, n in part.index], names=part.index.names)
            part.insert(0, WIDTH, width)
            if "macs" in at:
                part["macs"] = at.groupby("network", sort=False)["macs"].first().to_numpy()
            parts.append(part)
    table = pd.concat(parts)
    if table[WIDTH].isna().all() if WIDTH in table else True:
        table = table.drop(columns=[WIDTH], errors="ignore")
        per_seed = per_seed.drop(columns=[WIDTH])
    table.insert(1 if WIDTH in table else 0, "epochs", "")
    table.insert(2 if WIDTH in table else 1, "tuned", "")
    for bench in benchmarks:
        points = _points(storage, bench)
        for label, epochs in _epochs(storage, bench).items():
            for (b, row) in table.index:
                if b == bench and (row == label or row.startswith(f"{label} @ ")):
                    table.loc[(b, row), "epochs"] = epochs
        if not storage.exists(f"{bench}/{TRIALS_FILE}"):
            continue
        trials = storage.read_json(f"{bench}/{TRIALS_FILE}")
        by_id = {t["trial_id"]: t for t in [*trials["trials"], *([trials["best"]] if trials["best"] else [])]}
        for width, trial_id in points or [(None, trials["best"]["trial_id"] if trials["best"] else None)]:
            key = (bench, sized_label(TUNED, width))
            best = by_id.get(trial_id)
            if key not in table.index:
                continue
            table.loc[key, "tuned"] = f"{sum(trials['counts'].values())} trials"
            table.loc[key, "best trial"] = best["trial_id"] if best else ""
            table.loc[key, "best val map"] = 100.0 * best[OBJECTIVE] if best else float("nan")
            for k, v in trials["counts"].items():
                table.loc[key, f"trials {k}"] = v
            table.loc[key, "best config"] = describe(best["params"]) if best else ""
            if note := warm_start_note(trials):
                table.loc[key, WARM_START_COLUMN] = note
    return integer_counts(table), per_seed.reset_index(drop=True)


def sized_label(label: str, width: float | None) -> str:
    """A row's label at a student width (``InDistill (tuned) @ 0.5x``); the label itself without one."""
    return label if width is None or pd.isna(width) else f"{label} @ {width:g}x"


def _points(storage: Storage, benchmark: str) -> list[tuple[float | None, str]]:
    """(width, trial id) of each point the final runs retrained (``search/points.json``), if written."""
    rel = f"{benchmark}/{POINTS_FILE}"
    return [(p[WIDTH], p["trial_id"]) for p in storage.read_json(rel)["points"]] if storage.exists(rel) else []


def markdown(table: pd.DataFrame) -> str:
    """The table as Markdown (benchmark and network as plain columns), blank where a column does not apply."""
    return display(table.reset_index().set_index("benchmark")).to_markdown().replace(" nan ", "     ")


#: the columns of the summary printed at the end of a study (the files hold every column)
SUMMARY_COLUMNS = (*(column(m, "map") for m in METRICS), "params")


def summary(table: pd.DataFrame, width: int = 100) -> list[str]:
    """The end-of-study summary in lines of at most ``width`` columns: benchmark, network, cosine and
    euclidean mAP and params per row (long labels wrapped), then each tuned row's best trial and config."""
    if not len(table):
        return ["(no rows yet)"]
    shown = display(table).reset_index()
    columns = ["benchmark", "network", *(c for c in SUMMARY_COLUMNS if c in shown)]
    lines = _fitted(shown[columns], width)
    for (bench, network), row in table.iterrows():
        if network == TUNED and isinstance(row.get("best trial"), str) and row["best trial"]:
            lines.append("")
            lines.extend(_tuned_notes(bench, row, width))
    return lines


def _fitted(frame: pd.DataFrame, width: int) -> list[str]:
    """``frame`` as a plain-text table whose label columns (the first two) wrap so that it fits ``width``."""
    from tabulate import tabulate

    rows = frame.astype(str).values.tolist()
    align = ["left", "left", *["right"] * (frame.shape[1] - 2)]
    label_widths = [max(len(str(v)) for v in [c, *frame[c]]) for c in frame.columns[:2]]
    while True:
        text = tabulate(rows, headers=list(frame.columns), tablefmt="simple", colalign=align, disable_numparse=True,
                        maxcolwidths=[*label_widths, *[None] * (frame.shape[1] - 2)])
        lines = text.splitlines()
        over = max(len(line) for line in lines) - width
        if over <= 0 or max(label_widths) <= 8:
            return lines
        widest = label_widths.index(max(label_widths))  # shrink the wider label column first
        label_widths[widest] = max(8, label_widths[widest] - over)


def _tuned_notes(bench: str, row: pd.Series, width: int) -> list[str]:
    """Which trial the tuned row of ``bench`` retrained, how it scored on val, and its key values, wrapped."""
    counts = ", ".join(f"{int(row[f'trials {k}'])} {k}" for k in STATUSES
                       if pd.notna(row.get(f"trials {k}")))
    head = f"{bench}, {TUNED}: best trial {row['best trial']}"
    if pd.notna(row.get("best val map")):
        head += f", val map {row['best val map']:.2f}"
    if counts:
        head += f" ({row['tuned']}: {counts})"
    wrap = dict(width=width, subsequent_indent="    ", break_on_hyphens=False)
    warm = row.get(WARM_START_COLUMN)
    warm_lines = textwrap.wrap(f"  {WARM_START_COLUMN}: {warm}", **wrap) if isinstance(warm, str) and warm else []
    return [*textwrap.wrap(head, **wrap), *textwrap.wrap(f"  config: {row.get('best config') or '?'}", **wrap),
            *warm_lines]


def write_study_table(storage: Storage, table: pd.DataFrame, per_seed: pd.DataFrame) -> None:
    """The table files (:data:`TABLE_FILES`); none when no row finished (every benchmark failed:
    the study then ends with the first failure, not with an error about an empty table)."""
    if table.empty:
        return
    storage.write_text("results.csv", integer_counts(table).to_csv())
    storage.write_text("results_per_seed.csv", integer_counts(per_seed).to_csv(index=False))
    title = ("# InDistill study: test split (values in %)\n\nStudents: mean ± std over the final seeds (teacher and "
             "auxiliary shared); Δ: paired difference to the tuned InDistill over the seeds, 95% t-interval, "
             "* when it excludes 0.\n\n")
    storage.write_text("results.md", title + markdown(table) + "\n")
    storage.write_text("results.tex", latex(table))
