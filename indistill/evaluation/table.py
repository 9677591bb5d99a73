"""Results tables: one row per network/method, retrieval columns in percent, mean ± std over seeds."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from indistill.common.io import atomic_write_text
from indistill.evaluation.retrieval import METRICS
from indistill.evaluation.stats import mean_std, paired_difference

TABLE_KEYS = ("map", "map_legacy", "p@100")


def column(metric: str, key: str) -> str:
    """The table column of retrieval figure ``key`` under ``metric``, in percent: ``<metric> <key>``."""
    return f"{metric} {key}"


#: the column whose paired differences to the reference row the tables report
DIFF_COLUMN = column("cosine", "map")
#: columns that count things: integers in every file
COUNT_COLUMNS = ("params", "n", "seed")


def result_row(name: str, params: int, results: dict[str, dict[str, float]], keys=TABLE_KEYS) -> dict:
    """A flat row: ``network``, ``params`` and ``<metric> <key>`` in percent."""
    row: dict = {"network": name, "params": params}
    for metric, values in results.items():
        for key in keys:
            if key in values:
                row[column(metric, key)] = 100.0 * values[key]
    return row


def metric_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.split(" ")[0] in METRICS]


def diff_label(reference: str) -> str:
    return f"Δ {DIFF_COLUMN} vs {reference} (95% CI)"


def aggregate(per_seed: pd.DataFrame, reference: str | None = None, by: tuple[str, ...] = ("network",),
              compare: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per ``by`` group of ``per_seed`` (rows: one network and seed each; first-seen order):
    ``params``, ``n`` (seeds), each metric's mean and ``<metric> std``; with ``reference``, the paired
    difference of ``DIFF_COLUMN`` of each network in ``compare`` (default: all) to the reference
    (t-interval over the seeds both share, ``*`` when it excludes 0)."""
    compare = None if compare is None else set(compare)
    cols = metric_columns(per_seed)
    rows = []
    groups = per_seed.groupby(list(by), sort=False)
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        row: dict = dict(zip(by, key))
        row["params"] = int(group["params"].iloc[0])
        row["n"] = int(len(group))
        for c in cols:
            row[c], row[f"{c} std"] = mean_std(group[c].tolist())
        if reference is not None:
            ref = per_seed[(per_seed["network"] == reference) & _same(per_seed, row, by, skip="network")]
            wanted = compare is None or row["network"] in compare
            if wanted and row["network"] != reference and len(ref) and "seed" in per_seed:
                paired = group.merge(ref[["seed", DIFF_COLUMN]], on="seed", suffixes=("", " ref"))
                if len(paired):
                    d = paired_difference(paired[DIFF_COLUMN], paired[f"{DIFF_COLUMN} ref"])
                    row[diff_label(reference)] = str(d)
                    row["diff mean"], row["diff low"], row["diff high"] = d.mean, d.low, d.high
        rows.append(row)
    return pd.DataFrame(rows).set_index(list(by))


def _same(frame: pd.DataFrame, row: dict, by: tuple[str, ...], skip: str) -> pd.Series:
    mask = pd.Series(True, index=frame.index)
    for col in by:
        if col != skip:
            mask &= frame[col] == row[col]
    return mask


def display(table: pd.DataFrame, floatfmt: str = ".2f") -> pd.DataFrame:
    """Strings for people: ``mean ± std`` per metric (the mean alone for one seed), counts as integers."""
    out = pd.DataFrame(index=table.index)
    for c in table.columns:
        if c.endswith(" std") or c in ("diff mean", "diff low", "diff high"):
            continue
        if c in ("params", "n") or c.startswith("trials "):
            out[c] = table[c].map(lambda v: f"{int(v):,}" if pd.notna(v) else "")
        elif f"{c} std" in table:
            out[c] = [_pm(m, s, floatfmt) for m, s in zip(table[c], table[f"{c} std"])]
        elif pd.api.types.is_float_dtype(table[c]):
            out[c] = table[c].map(lambda v: format(v, floatfmt) if pd.notna(v) else "")
        else:
            out[c] = table[c].fillna("").astype(str)
    return out


def _pm(mean: float, std: float, fmt: str) -> str:
    if pd.isna(mean):
        return ""
    return format(mean, fmt) if pd.isna(std) else f"{format(mean, fmt)} ± {format(std, fmt)}"


def integer_counts(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its count columns (params, n, seed, ``trials <status>``) as integers, blank where
    missing, so a CSV says ``12345``, never ``12345.0``."""
    out = frame.copy()
    for c in out.columns:
        if c in COUNT_COLUMNS or str(c).startswith("trials "):
            values = pd.to_numeric(out[c], errors="coerce")
            if values.notna().any() and (values.dropna() % 1 == 0).all():
                out[c] = values.astype("Int64")
    return out


#: non-ASCII characters of the tables, as LaTeX writes them without extra packages
LATEX_SYMBOLS = {"±": r"$\pm$", "Δ": r"$\Delta$"}


def latex(table: pd.DataFrame) -> str:
    """The table for people (:func:`display`) as a LaTeX tabular with booktabs rules: index levels as
    columns, and the LaTeX specials of labels, headers and cells escaped."""
    text = display(table).reset_index().to_latex(index=False, escape=True, na_rep="--")
    for char, command in LATEX_SYMBOLS.items():
        text = text.replace(char, command)
    return "% a tabular: needs \\usepackage{booktabs}\n" + text


def to_markdown(table: pd.DataFrame, floatfmt: str = ".2f") -> str:
    return display(table, floatfmt).to_markdown()


def write_table(table: pd.DataFrame, stem: Path, title: str | None = None, tex: bool = False) -> list[Path]:
    """Write ``stem``.csv (numbers) and ``stem``.md (and ``.tex``: mean ± std) atomically."""
    stem = Path(stem)
    paths = [atomic_write_text(stem.with_suffix(".csv"), integer_counts(table).to_csv())]
    md = (f"# {title}\n\n" if title else "") + to_markdown(table) + "\n"
    paths.append(atomic_write_text(stem.with_suffix(".md"), md))
    if tex:
        paths.append(atomic_write_text(stem.with_suffix(".tex"), latex(table)))
    return paths
