"""``indistill-study report STUDY --compare OTHER``: the searches of the benchmarks both studies have,
side by side (a cold and a warm-started study, two sampler seeds).

Per benchmark, from both Optuna records: the best val mAP after k trials (:func:`study.report.best_so_far`,
in the order Optuna created them) and the expected best of n trials
(:func:`study.report.expected_best`) of each study, drawn in ``<benchmark>-compare.png`` and written
to ``<benchmark>-compare.csv`` in the report directory, with a Markdown table in ``report.md``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd

from .names import WARM_START
from .report import best_so_far, expected_best, load_record
from .storage import Storage


@dataclass(frozen=True)
class Curves:
    """One study's search of a benchmark: its best val mAP after each trial, the expected best of n
    trials (n = 1..its completed trials) and which trials were warm-started."""

    label: str
    best: list[float | None]
    expected: list[float]
    warm: list[bool]

    @classmethod
    def of(cls, label: str, study: optuna.Study) -> "Curves":
        return cls(label, best_so_far(study)[1], expected_best(study), [WARM_START in t.user_attrs for t in study.trials])


def _at(values: list, k: int) -> float:
    """The k-th value (1-based) in %, NaN where there is none."""
    v = values[k - 1] if k <= len(values) else None
    return float("nan") if v is None else 100.0 * v


def compare_frame(curves: list[Curves]) -> pd.DataFrame:
    """One row per k = 1..the longest search: each study's best val mAP after k trials and expected
    best of k trials (in %, NaN past its end) and whether its trial k was warm-started."""
    rows = []
    for k in range(1, max(len(c.best) for c in curves) + 1):
        row: dict[str, object] = {"k": k}
        for c in curves:
            row[f"{c.label} best so far"] = _at(c.best, k)
            row[f"{c.label} expected best"] = _at(c.expected, k)
            row[f"{c.label} warm-started"] = k <= len(c.warm) and c.warm[k - 1]
        rows.append(row)
    return pd.DataFrame(rows)


def plot_compare(bench: str, curves: list[Curves], path: Path):
    """Each study's best-so-far step line (its warm-started trials marked) and its expected best of n
    trials (dashed), in one colour per study; returns the figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, c in enumerate(curves):
        k = list(range(1, len(c.best) + 1))
        best = [math.nan if b is None else 100 * b for b in c.best]
        ax.step(k, best, where="post", color=f"C{i}", label=f"{c.label}: best so far")
        warm = [(x, y) for x, y, w in zip(k, best, c.warm) if w]
        if warm:
            ax.plot(*zip(*warm), "o", mfc="none", color=f"C{i}", label=f"{c.label}: warm-started trials")
        if c.expected:
            ax.plot(range(1, len(c.expected) + 1), [100 * v for v in c.expected], "--", marker=".", color=f"C{i}",
                    label=f"{c.label}: expected best of n")
    ax.set_xlabel("trials (k, n)")
    ax.set_ylabel("val cosine mAP (%)")
    ax.set_title(f"{bench}: best so far and expected best of n trials, both studies", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig


def _markdown(frame: pd.DataFrame) -> list[str]:
    head = list(frame.columns)
    rows = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" for _ in head) + "|"]
    for r in frame.itertuples(index=False):
        rows.append("| " + " | ".join("" if isinstance(v, float) and math.isnan(v) else
                                      ("yes" if v else "") if isinstance(v, bool) else
                                      f"{v:.2f}" if isinstance(v, float) else str(v) for v in r) + " |")
    return rows


def labels(storage: Storage, other: Storage) -> tuple[str, str]:
    """The studies' names as the figure and the table call them (their directories when they are the same)."""
    a, b = (s.read_json("study.json").get("name") or s.uri for s in (storage, other))
    return (a, b) if a != b else (storage.uri, other.uri)


def compare_section(storage: Storage, other: Storage, out: Path, records: str) -> tuple[list[str], list[str]]:
    """The report's lines and files (in ``out``) comparing ``storage``'s searches with ``other``'s, for
    every benchmark both have with a search record (``records``: where the records are copied)."""
    mine, theirs = (s.read_json("study.json")["benchmarks"] for s in (storage, other))
    names = labels(storage, other)
    lines = [f"## Compared with {other.uri}", ""]
    files: list[str] = []
    for bench in (b for b in mine if b in theirs):
        studies = [load_record(s, bench, Path(records)) for s in (storage, other)]
        if any(s is None for s in studies):
            lines += [f"{bench}: no search record in {'both studies' if all(s is None for s in studies) else 'one of them'}.", ""]
            continue
        curves = [Curves.of(label, s) for label, s in zip(names, studies)]
        frame = compare_frame(curves)
        png, csv = f"{bench}-compare.png", f"{bench}-compare.csv"
        plot_compare(bench, curves, out / png)
        frame.to_csv(out / csv, index=False, float_format="%.4f")
        lines += [f"### {bench}", "", f"![{bench}: both studies' searches]({png})", "",
                  f"Val mAP (%) after k trials (best so far) and the expected best of k trials, each study's; "
                  f"also in `{csv}`.", "", *_markdown(frame), ""]
        files += [png, csv]
    if not files:
        lines += [f"The studies have no benchmark with a search record in common ({', '.join(mine)}; {', '.join(theirs)}).", ""]
    return lines, files
