"""Results tables: one row per network/method, retrieval columns in percent."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .io import atomic_write_text

ROW_LABELS = {
    "ce": "student (ce)",
    "pkt": "student (pkt)",
    "mkt": "student (mkt)",
    "indistill": "student (indistill)",
}
TABLE_KEYS = ("map", "map_legacy", "p@100")


def result_row(name: str, params: int, results: dict[str, dict[str, float]], keys=TABLE_KEYS) -> dict:
    """A flat row: ``network``, ``params`` and ``<metric> <key>`` in percent."""
    row: dict = {"network": name, "params": params}
    for metric, values in results.items():
        for key in keys:
            if key in values:
                row[f"{metric} {key}"] = 100.0 * values[key]
    return row


def to_markdown(table: pd.DataFrame, floatfmt: str = ".2f") -> str:
    shown = table.copy()
    if "params" in shown:
        shown["params"] = shown["params"].map(lambda n: f"{int(n):,}" if pd.notna(n) else "")
    return shown.to_markdown(floatfmt=floatfmt)


def write_table(table: pd.DataFrame, stem: Path, title: str | None = None, latex: bool = False) -> list[Path]:
    """Write ``stem``.csv and ``stem``.md (and ``.tex``) atomically."""
    stem = Path(stem)
    paths = [atomic_write_text(stem.with_suffix(".csv"), table.to_csv())]
    md = (f"# {title}\n\n" if title else "") + to_markdown(table) + "\n"
    paths.append(atomic_write_text(stem.with_suffix(".md"), md))
    if latex:
        paths.append(atomic_write_text(stem.with_suffix(".tex"), table.to_latex(float_format="%.2f")))
    return paths
