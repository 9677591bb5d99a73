"""``indistill-study report``: figures of a study (PNG) and a ``report.md`` that embeds them.

Per benchmark, from the persisted Optuna study (``<benchmark>/search/optuna.db``) and the tables:

- ``<benchmark>-trials.png``: val mAP of every trial over its epochs; a dotted line where its
  curriculum ends (the embedding phase starts), a cross where ASHA stopped it, a dot where it ran
  its whole budget;
- ``<benchmark>-best-so-far.png``: the best val mAP after each trial (in the order Optuna created them);
- ``<benchmark>-importance.png``: Optuna's hyperparameter importance (its default evaluator,
  PED-ANOVA in Optuna 5, over the completed trials); with few trials it is noise, and the figure says so;
- ``results.png``: the results table's cosine mAP per row, mean ± std over the final seeds;
- ``timeline.png``: each benchmark's phases (artifacts, search, final) over wall-clock time, from
  ``<benchmark>/phases.json``, so what ran at once is visible (a table of the same in report.md).
"""
from __future__ import annotations

import io
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402

from indistill.evaluation.table import DIFF_COLUMN  # noqa: E402

from .optuna_record import OPTUNA_FILE, sqlite_url  # noqa: E402
from .outcome import COMPLETED, FAILED, STOPPED, best_key  # noqa: E402
from .storage import Storage  # noqa: E402

REPORT_DIR = "report"
FEW_TRIALS = 20  # below this, importance estimates are dominated by noise


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]


def _final_value(t: optuna.trial.FrozenTrial) -> float | None:
    if t.value is not None:
        return t.value
    return t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None


def _curriculum_length(t: optuna.trial.FrozenTrial) -> int:
    return sum(int(v) for k, v in t.params.items() if k.startswith("curriculum/epochs_"))


def plot_trials(study: optuna.Study, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, t in enumerate(study.trials):
        if not t.intermediate_values:
            continue
        steps = sorted(t.intermediate_values)
        values = [100 * t.intermediate_values[s] for s in steps]
        color = f"C{i % 10}"
        ax.plot(steps, values, color=color, lw=1.2, label=f"trial {t.number}")
        end = _curriculum_length(t)
        if end:
            ax.axvline(end + 0.5, color=color, ls=":", lw=0.8)
        marker = "x" if t.state == optuna.trial.TrialState.PRUNED else "o"
        ax.plot(steps[-1], values[-1], marker=marker, color=color, ms=8, mew=2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val cosine mAP (%)")
    ax.set_title(f"{study.study_name}: trials (dotted: curriculum ends; x: stopped by ASHA; o: full budget)", fontsize=9)
    if len(study.trials) <= 12:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: Optuna's record of how a trial ended (study.optuna_record), as the search record says it
_STATUS = {optuna.trial.TrialState.COMPLETE: COMPLETED, optuna.trial.TrialState.PRUNED: STOPPED}


def best_so_far(study: optuna.Study) -> tuple[list[float | None], list[float | None]]:
    """Each trial's last val mAP and the best one after it, by the search record's rule
    (:func:`study.outcome.best_key`: the most epochs, then the highest last val mAP), so the line
    ends at the table's best val mAP; None where there is none (failed trials)."""
    values, best = [], []
    top = top_key = None
    for t in study.trials:
        status = _STATUS.get(t.state, FAILED)
        v = _final_value(t) if status != FAILED else None
        key = best_key(status, max(t.intermediate_values, default=0), v)
        if key is not None and (top_key is None or key > top_key):
            top, top_key = v, key
        values.append(v)
        best.append(top)
    return values, best


def plot_best_so_far(study: optuna.Study, path: Path) -> None:
    numbers = [t.number for t in study.trials]
    values, best = ([None if v is None else 100 * v for v in vs] for vs in best_so_far(study))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter(numbers, [v if v is not None else float("nan") for v in values], s=18, label="trial (last val mAP)")
    ax.step(numbers, [b if b is not None else float("nan") for b in best], where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("val cosine mAP (%)")
    ax.set_title(f"{study.study_name}: best so far", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_importance(study: optuna.Study, path: Path) -> str:
    """Draws the importances; returns a one-line note for the report."""
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    note = ""
    try:
        importance = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as exc:
        importance = {}
        note = f"not computable: {exc}"
    if importance:
        names = list(importance)[::-1]
        ax.barh(names, [importance[n] for n in names])
        ax.set_xlabel("importance (Optuna's default evaluator: PED-ANOVA; normalised to sum 1)")
        if len(finished) < FEW_TRIALS:
            note = f"only {len(finished)} completed trials: these importances are mostly noise"
    else:
        ax.text(0.5, 0.5, note or "no importance", ha="center", va="center", wrap=True, fontsize=8)
        ax.set_axis_off()
    ax.set_title(f"{study.study_name}: hyperparameter importance", fontsize=9)
    fig.tight_layout(rect=(0, 0.06 if note else 0, 1, 1))
    if note:
        fig.text(0.5, 0.01, note, ha="center", va="bottom", fontsize=8, color="C3", wrap=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return note


def plot_results(table: pd.DataFrame, path: Path, column: str = DIFF_COLUMN) -> None:
    table = table.reset_index()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(table) + 1.2))
    labels = [f"{b} / {n}" for b, n in zip(table["benchmark"], table["network"])]
    std = table.get(f"{column} std", pd.Series([0.0] * len(table))).fillna(0.0)
    ax.barh(labels[::-1], table[column][::-1], xerr=std[::-1], capsize=3, color="C0")
    ax.set_xlabel(f"test {column} (%), mean ± std over the final seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PHASES = ("artifacts", "search", "final")


def phase_intervals(storage: Storage, benchmarks: list[str]) -> list[tuple[str, str, float, float]]:
    """(benchmark, phase, start, end) of every recorded phase attempt, in epoch seconds."""
    out = []
    for bench in benchmarks:
        rel = f"{bench}/phases.json"
        recorded = storage.read_json(rel).get("intervals", {}) if storage.exists(rel) else {}
        out += [(bench, phase, span["start"], span["end"]) for phase in PHASES for span in recorded.get(phase, [])]
    return out


def timeline_table(intervals: list[tuple[str, str, float, float]]) -> list[str]:
    """Markdown rows of the phase timeline: seconds from the study's first start."""
    t0 = min(start for _b, _p, start, _e in intervals)
    rows = ["| benchmark | phase | start (s) | end (s) | wall (s) |", "|---|---|---:|---:|---:|"]
    for bench, phase, start, end in sorted(intervals, key=lambda i: (i[2], i[0])):
        rows.append(f"| {bench} | {phase} | {start - t0:.0f} | {end - t0:.0f} | {end - start:.0f} |")
    return rows


def plot_timeline(intervals: list[tuple[str, str, float, float]], path: Path) -> None:
    t0 = min(start for _b, _p, start, _e in intervals)
    benchmarks = list(dict.fromkeys(b for b, *_ in intervals))
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(benchmarks) + 1.4))
    for bench, phase, start, end in intervals:
        y = len(benchmarks) - 1 - benchmarks.index(bench)
        ax.barh(y, end - start, left=start - t0, color=f"C{PHASES.index(phase)}", edgecolor="white",
                label=phase)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(unique),
              fontsize=8, frameon=False)  # above the bars, never over them
    ax.set_yticks(range(len(benchmarks)), benchmarks[::-1])
    ax.set_xlabel("seconds since the study started")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(storage: Storage) -> list[str]:
    """Figures and ``report.md`` under ``<study>/report/``; returns the files written (relative)."""
    benchmarks = storage.read_json("study.json")["benchmarks"]
    lines = [f"# Study report: {storage.uri}", ""]
    written = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for bench in benchmarks:
            rel = f"{bench}/search/{OPTUNA_FILE}"
            if not storage.exists(rel):
                lines += [f"## {bench}", "", "No search record yet.", ""]
                continue
            db = out / f"{bench}.db"
            db.write_bytes(storage.read_bytes(rel))
            study = optuna.load_study(study_name=bench, storage=sqlite_url(db))
            db_files = [f"{bench}-trials.png", f"{bench}-best-so-far.png", f"{bench}-importance.png"]
            plot_trials(study, out / db_files[0])
            plot_best_so_far(study, out / db_files[1])
            note = plot_importance(study, out / db_files[2])
            db.unlink()
            states = pd.Series([t.state.name for t in study.trials]).value_counts().to_dict()
            lines += [f"## {bench}", "", f"Trials: {len(study.trials)} ({', '.join(f'{v} {k.lower()}' for k, v in states.items())}).", "",
                      f"![val mAP per trial]({db_files[0]})", "", f"![best so far]({db_files[1]})", "",
                      f"![importance]({db_files[2]})", ""]
            if note:
                lines += [f"Importance: {note}.", ""]
            written += db_files
        if storage.exists("results.csv"):
            table = pd.read_csv(io.StringIO(storage.read_text("results.csv")), index_col=[0, 1])
            plot_results(table, out / "results.png")
            lines += ["## Results (test split)", "", "![results](results.png)", "", storage.read_text("results.md"), ""]
            written.append("results.png")
        intervals = phase_intervals(storage, benchmarks)
        if intervals:
            plot_timeline(intervals, out / "timeline.png")
            lines += ["## Timeline", "", "![phases over time](timeline.png)", "", *timeline_table(intervals), ""]
            written.append("timeline.png")
        (out / "report.md").write_text("\n".join(lines) + "\n")
        written.append("report.md")
        storage.upload(out, REPORT_DIR)
    return [f"{REPORT_DIR}/{name}" for name in written]
