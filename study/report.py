"""``indistill-study report``: figures of a study (PNG) and a ``report.md`` that embeds them.

Per benchmark, from the persisted Optuna study (``<benchmark>/search/optuna.db``) and the tables:

- ``<benchmark>-trials.png``: val mAP of every trial over its epochs; a dotted line where its
  curriculum ends (the embedding phase starts), a cross where ASHA stopped it, a dot where it ran
  its whole budget;
- ``<benchmark>-best-so-far.png``: the best val mAP after each trial (in the order Optuna created them),
  beside the expected best val mAP of n trials (:func:`indistill.evaluation.stats.expected_max` over
  the completed trials' val mAPs, n = 1..N);
- ``<benchmark>-importance.png``: Optuna's hyperparameter importance (its default evaluator,
  PED-ANOVA in Optuna 5, over the completed trials); with few trials it is noise, and the figure says so;
- ``<benchmark>-front.png``: a multi-objective search's trials, val mAP against the student's size,
  with its Pareto front (``<benchmark>/search/pareto.csv``) as a step line;
- ``results.png``: the results table's cosine mAP per row, mean ± std over the final seeds, as points
  with error bars on an axis spanning the values;
- ``frontier.png``: with student rows at several widths, test cosine mAP against the student's
  parameters, a line per student row and the teacher and the auxiliary as single points;
- ``timeline.png``: each benchmark's phases (artifacts, search, final) over wall-clock time, from
  ``<benchmark>/phases.json``, so what ran at once is visible (a table of the same in report.md);
- with ``--compare OTHER``: ``<benchmark>-compare.png`` and ``.csv``, this study's and the other's
  best-so-far and expected-best curves of the benchmarks both have (:mod:`study.compare`).

``report.md`` ends with the study's provenance: the versions, the sampler's and the scheduler's
settings from ``study.json`` and the device kinds that ran the trials (from each ``trials.json``).
"""
from __future__ import annotations

import io
import tempfile
import textwrap
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402

from indistill.common.io import stable_hash  # noqa: E402
from indistill.evaluation.stats import expected_max, mean_std  # noqa: E402
from indistill.evaluation.table import DIFF_COLUMN, column  # noqa: E402

from .names import OBJECTIVE, PARETO_FILE, SIZE_OBJECTIVES, STUDENT_ROWS, TRIALS_FILE, WIDTH  # noqa: E402
from .optuna_record import OPTUNA_FILE, sqlite_url  # noqa: E402
from .outcome import COMPLETED, FAILED, STOPPED, best_key, scored  # noqa: E402
from .provenance import device_kinds, versions_text  # noqa: E402
from .storage import Storage  # noqa: E402

REPORT_DIR = "report"
FEW_TRIALS = 20  # below this, importance estimates are dominated by noise


def load_record(storage: Storage, bench: str, tmp: Path) -> optuna.Study | None:
    """A benchmark's Optuna record (``<bench>/search/optuna.db``), loaded from a copy in ``tmp``
    (the study directory may be ``s3://``); None when the study has none yet."""
    rel = f"{bench}/search/{OPTUNA_FILE}"
    if not storage.exists(rel):
        return None
    db = Path(tmp) / f"{stable_hash(storage.uri)}-{bench}.db"
    db.write_bytes(storage.read_bytes(rel))
    return optuna.load_study(study_name=bench, storage=sqlite_url(db))


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]


def _final_value(t: optuna.trial.FrozenTrial) -> float | None:
    """A trial's val mAP: its (first) told value, else its last intermediate one (a PRUNED trial)."""
    if t.values:  # the first of a two-objective trial's values is its val mAP
        return t.values[0]
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


def completed_values(study: optuna.Study) -> list[float]:
    """The val mAP (the first objective) of every trial that ran its whole budget (COMPLETE): what
    the expected best of n trials is drawn from (a trial ASHA stopped has no comparable value)."""
    return [t.values[0] for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.values]


def expected_best(study: optuna.Study) -> list[float]:
    """The expected best val mAP of n = 1..N trials drawn from the N completed ones (Dodge et al.
    2019: :func:`indistill.evaluation.stats.expected_max`); empty without a completed trial."""
    values = completed_values(study)
    return [expected_max(values, n) for n in range(1, len(values) + 1)]


#: the estimator behind the expected-best line, in one sentence of the report
EXPECTED_MAX_TEXT = ("Expected best val mAP of n trials: the expected maximum of n draws with replacement from the "
                     "N completed trials' val mAPs, E[max_n] = sum_i v_(i) ((i/N)^n - ((i-1)/N)^n) over the sorted "
                     "values (the empirical-CDF estimator of Dodge et al. 2019, \"Show Your Work\")")


def plot_best_so_far(study: optuna.Study, path: Path) -> plt.Figure:
    """The best val mAP after each trial (x: trials run, in creation order) and, beside it, the
    expected best of n trials (:func:`expected_best`, x = n) as a second line."""
    runs = [i + 1 for i in range(len(study.trials))]
    values, best = ([None if v is None else 100 * v for v in vs] for vs in best_so_far(study))
    expected = [100 * v for v in expected_best(study)]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter(runs, [v if v is not None else float("nan") for v in values], s=18, label="trial (last val mAP)")
    ax.step(runs, [b if b is not None else float("nan") for b in best], where="post", color="C3", label="best so far")
    if expected:
        ax.plot(range(1, len(expected) + 1), expected, "--", marker=".", color="C2",
                label=f"expected best of n (from the {len(expected)} completed)")
    ax.set_xlabel("trials (n)")
    ax.set_ylabel("val cosine mAP (%)")
    ax.set_title(f"{study.study_name}: best so far and expected best of n trials", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig


def expected_best_line(study: optuna.Study) -> str:
    """The report's line under the figure: the estimator, and its value at n = 1, N/2 and N."""
    expected = expected_best(study)
    if not expected:
        return f"{EXPECTED_MAX_TEXT}: no completed trial yet."
    shown = sorted({1, max(1, len(expected) // 2), len(expected)})
    return f"{EXPECTED_MAX_TEXT}: " + ", ".join(f"n={n}: {100 * expected[n - 1]:.2f}" for n in shown) + "."


def plot_importance(study: optuna.Study, path: Path) -> str:
    """Draws the importances; returns a one-line note for the report."""
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    note = ""
    try:
        # of val mAP: the first objective of a two-objective study
        # (Optuna ranks the importances for a low target, and says so whenever a target is given:
        # the val mAP's negative)
        target = (lambda t: -t.values[0]) if len(study.directions) > 1 else None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes the importances")
            importance = optuna.importance.get_param_importances(study, target=target)
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


#: characters of a row label per line in the results figure (longer labels wrap)
LABEL_WIDTH = 40


def _margin(lo: float, hi: float, share: float = 0.08) -> tuple[float, float]:
    """``lo``..``hi`` widened by ``share`` of its span on each side (by 1 when it has none)."""
    pad = share * (hi - lo) if hi > lo else 1.0
    return lo - pad, hi + pad


def plot_results(table: pd.DataFrame, path: Path, column: str = DIFF_COLUMN) -> plt.Figure:
    """Each row of the aggregated table as a point at its mean ``column`` with its std over the final
    seeds as an error bar, on an axis spanning the points and their bars (not from 0, so close
    values stay apart); rows top to bottom in the table's order."""
    table = table.reset_index()
    keys = [c for c in table.columns if c in ("benchmark", "network", WIDTH)]
    labels = [textwrap.fill(" / ".join(part for key, v in zip(keys, row) if (part := _label_part(key, v))), LABEL_WIDTH)
              for row in table[keys].itertuples(index=False)]
    mean = pd.to_numeric(table[column], errors="coerce")
    std = pd.to_numeric(table.get(f"{column} std", pd.Series([0.0] * len(table))), errors="coerce").fillna(0.0)
    y = list(range(len(table)))[::-1]
    lines = sum(label.count("\n") + 1 for label in labels)
    fig, ax = plt.subplots(figsize=(8, 0.3 * lines + 0.15 * len(table) + 1.2))
    ax.errorbar(mean, y, xerr=std, fmt="o", capsize=3, color="C0")
    ax.set_yticks(y, labels)
    shown = mean.notna()
    if shown.any():
        ax.set_xlim(*_margin(float((mean - std)[shown].min()), float((mean + std)[shown].max())))
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(f"test {column} (%), mean ± std over the final seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig


def _label_part(key: str, value: object) -> str:
    """A row label's part for one index column; none for a missing width (teacher, auxiliary)."""
    if value is None or value == "" or (not isinstance(value, str) and pd.isna(value)):
        return ""
    return f"{WIDTH} {float(value):g}" if key == WIDTH else str(value)


#: the map column of the frontier: test cosine mAP, in percent
FRONTIER_COLUMN = column("cosine", "map")
#: the marker of each artifact network on the frontier
NETWORK_MARKERS = {"teacher": "*", "auxiliary": "D"}


def frontier_points(per_seed: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per row label, one row per width (``params``, ``mean``, ``std`` of the test cosine mAP over its
    seeds), by parameters ascending; a label whose rows have no width (teacher, auxiliary) has one."""
    widths = pd.to_numeric(per_seed.get(WIDTH, pd.Series(float("nan"), index=per_seed.index)), errors="coerce")
    frame = per_seed.assign(_width=widths.fillna(-1.0))  # groupby drops NaN keys
    out = {}
    for label, rows in frame.groupby("network", sort=False):
        points = []
        for width, group in rows.groupby("_width", sort=False):
            m, s = mean_std(pd.to_numeric(group[FRONTIER_COLUMN]).tolist())
            points.append({WIDTH: None if width < 0 else float(width), "params": int(group["params"].iloc[0]),
                           "mean": m, "std": 0.0 if pd.isna(s) else s})
        out[str(label)] = pd.DataFrame(points).sort_values("params", kind="stable").reset_index(drop=True)
    return out


def plot_frontier(per_seed: pd.DataFrame, path: Path) -> plt.Figure:
    """Test cosine mAP (mean ± std over the seeds) against the student's parameters (log scale): a line
    per student row through its widths; the teacher and the auxiliary as marked single points. One
    panel per benchmark."""
    benchmarks = list(dict.fromkeys(per_seed["benchmark"])) if "benchmark" in per_seed else [None]
    fig, axes = plt.subplots(1, len(benchmarks), figsize=(7 * len(benchmarks), 4.5), squeeze=False)
    students = [label for label, _method, _tuned in STUDENT_ROWS]
    for ax, bench in zip(axes[0], benchmarks):
        rows = per_seed if bench is None else per_seed[per_seed["benchmark"] == bench]
        points = frontier_points(rows)
        order = [*(n for n in points if n not in students), *(n for n in students if n in points)]
        for i, label in enumerate(order):
            p = points[label]
            if len(p) > 1 or p[WIDTH].notna().any():
                ax.errorbar(p["params"], p["mean"], yerr=p["std"], fmt="-o", ms=4, capsize=3, color=f"C{i % 10}",
                            label=label)
            else:
                ax.errorbar(p["params"], p["mean"], yerr=p["std"], fmt=NETWORK_MARKERS.get(label, "s"), ms=10,
                            capsize=3, color=f"C{i % 10}", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("parameters (log scale)")
        ax.set_ylabel(f"test {FRONTIER_COLUMN} (%)")
        ax.grid(alpha=0.3, which="both")
        ax.set_title(f"{bench}: compression frontier" if bench else "compression frontier", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig


def has_widths(per_seed: pd.DataFrame) -> bool:
    """Whether the student rows of ``per_seed`` come at more than one width (a frontier study)."""
    if WIDTH not in per_seed or "network" not in per_seed:
        return False
    students = per_seed["network"].isin([label for label, _method, _tuned in STUDENT_ROWS])
    return pd.to_numeric(per_seed.loc[students, WIDTH], errors="coerce").dropna().nunique() > 1


#: the axis label of each size a trial reports
SIZE_LABELS = {"student_params": "student parameters", "student_macs": "student multiply-accumulates per image"}


def plot_search_front(trials: list[dict], pareto_ids: set[str], size_key: str, path: Path) -> plt.Figure:
    """Every scored trial's last val mAP against its student's size ``trial[size_key]`` (log scale):
    completed trials filled, those ASHA stopped early hollow; the Pareto set (``trial_id`` in
    ``pareto_ids``) as a step line by size ascending. Failed trials and trials without a val mAP or a
    size are left out."""
    shown = [t for t in trials if t.get("status") != FAILED and scored(t.get(OBJECTIVE)) and scored(t.get(size_key))
             and t[size_key] > 0]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for done, style in ((True, {"facecolors": "C0", "label": COMPLETED}),
                        (False, {"facecolors": "none", "label": STOPPED})):
        group = [t for t in shown if (t.get("status") == COMPLETED) == done]
        if group:
            ax.scatter([t[size_key] for t in group], [100 * t[OBJECTIVE] for t in group], s=30, edgecolors="C0",
                       linewidths=1.2, **style)
    front = sorted((t for t in shown if str(t.get("trial_id")) in pareto_ids), key=lambda t: t[size_key])
    if front:
        ax.step([t[size_key] for t in front], [100 * t[OBJECTIVE] for t in front], where="post", color="C3",
                lw=1.5, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel(f"{SIZE_LABELS.get(size_key, size_key)} (log scale)")
    ax.set_ylabel("val cosine mAP (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fig


def front_size_key(pareto: pd.DataFrame, trials: list[dict]) -> str:
    """The size objective of a search's front: the first of :data:`study.names.SIZE_OBJECTIVES` that
    ``pareto.csv`` has as a column, else that its trials report, else the parameter count."""
    keys = list(SIZE_OBJECTIVES.values())
    for key in keys:
        if key in pareto.columns:
            return key
    return next((k for k in keys if any(k in t for t in trials)), SIZE_OBJECTIVES["params"])


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


#: every seed's row of the results table
PER_SEED_FILE = "results_per_seed.csv"


def search_front_section(storage: Storage, bench: str, out: Path) -> tuple[list[str], list[str]]:
    """The lines and the figure (``<bench>-front.png`` in ``out``) of a multi-objective search's front,
    from ``<bench>/search/pareto.csv`` and its ``trials.json``; none for a search without a Pareto file."""
    pareto_rel, trials_rel = f"{bench}/{PARETO_FILE}", f"{bench}/{TRIALS_FILE}"
    if not storage.exists(pareto_rel) or not storage.exists(trials_rel):
        return [], []
    pareto = pd.read_csv(io.StringIO(storage.read_text(pareto_rel)), dtype={"trial_id": str})
    trials = storage.read_json(trials_rel).get("trials", [])
    size_key = front_size_key(pareto, trials)
    name = f"{bench}-front.png"
    plot_search_front(trials, set(pareto["trial_id"].dropna()), size_key, out / name)
    return [f"Pareto front ({len(pareto)} trials): val mAP against {SIZE_LABELS.get(size_key, size_key)}.", "",
            f"![search front]({name})", ""], [name]


def _settings(settings: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in settings.items() if k != "class")


def provenance_section(state: dict, devices: dict[str, dict[str, int]]) -> list[str]:
    """The report's "Provenance" lines: the versions and the git commit, each benchmark's sampler,
    scheduler and splits fingerprint from ``study.json`` (``state``), and the device kinds that ran
    its trials (``devices``: :func:`study.provenance.device_kinds`)."""
    prov = state.get("provenance") or {}
    lines = ["## Provenance", ""]
    lines += [f"Versions: {versions_text(prov)}.", ""] if prov else ["Versions: not recorded in study.json.", ""]
    for bench in state.get("benchmarks", []):
        recorded = (prov.get("benchmarks") or {}).get(bench, {})
        kinds = devices.get(bench)
        ran = ", ".join(f"{kind} ({n} trial{'s' if n != 1 else ''})" for kind, n in kinds.items()) if kinds else "none recorded"
        lines.append(f"- {bench}:")
        if "sampler" in recorded:
            lines.append(f"  - sampler: {recorded['sampler'].get('class')} ({_settings(recorded['sampler'])})")
        if "scheduler" in recorded:
            sched = recorded["scheduler"]
            lines.append(f"  - scheduler: {sched.get('class')}" + (f" ({_settings(sched)})" if len(sched) > 1 else ""))
        if "splits" in recorded:
            lines.append(f"  - splits: fingerprint {recorded['splits'].get('hash')} (from the {recorded['splits'].get('from')})")
        lines.append(f"  - trials ran on: {ran}")
    return [*lines, ""]


def write_report(storage: Storage, compare: Storage | None = None) -> list[str]:
    """Figures and ``report.md`` under ``<study>/report/``; returns the files written (relative).
    ``compare``: another study whose searches of the same benchmarks are set beside this one's
    (:mod:`study.compare`)."""
    state = storage.read_json("study.json")
    benchmarks = state["benchmarks"]
    lines = [f"# Study report: {storage.uri}", ""]
    written = []
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as records:
        out = Path(tmp)
        for bench in benchmarks:
            study = load_record(storage, bench, records)
            if study is None:
                lines += [f"## {bench}", "", "No search record yet.", ""]
                front_lines, front_files = search_front_section(storage, bench, out)
                lines += front_lines
                written += front_files
                continue
            # a two-objective study holds no per-epoch values (Optuna takes none there): its front instead
            per_epoch = len(study.directions) == 1
            db_files = [*([f"{bench}-trials.png"] if per_epoch else []), f"{bench}-best-so-far.png", f"{bench}-importance.png"]
            if per_epoch:
                plot_trials(study, out / db_files[0])
            plot_best_so_far(study, out / db_files[-2])
            note = plot_importance(study, out / db_files[-1])
            states = pd.Series([t.state.name for t in study.trials]).value_counts().to_dict()
            lines += [f"## {bench}", "", f"Trials: {len(study.trials)} ({', '.join(f'{v} {k.lower()}' for k, v in states.items())}).", "",
                      *([f"![val mAP per trial]({db_files[0]})", ""] if per_epoch else []),
                      f"![best so far]({db_files[-2]})", "", expected_best_line(study), "",
                      f"![importance]({db_files[-1]})", ""]
            if note:
                lines += [f"Importance: {note}.", ""]
            written += db_files
            front_lines, front_files = search_front_section(storage, bench, out)
            lines += front_lines
            written += front_files
        if compare is not None:
            from .compare import compare_section

            compare_lines, compare_files = compare_section(storage, compare, out, records)
            lines += compare_lines
            written += compare_files
        if storage.exists("results.csv"):
            table = pd.read_csv(io.StringIO(storage.read_text("results.csv")), index_col=[0, 1])
            plot_results(table, out / "results.png")
            lines += ["## Results (test split)", "", "![results](results.png)", "", storage.read_text("results.md"), ""]
            written.append("results.png")
        if storage.exists(PER_SEED_FILE):
            per_seed = pd.read_csv(io.StringIO(storage.read_text(PER_SEED_FILE)))
            if has_widths(per_seed):
                plot_frontier(per_seed, out / "frontier.png")
                lines += ["## Compression frontier", "", "Test cosine mAP against the student's parameters, "
                          "mean ± std over the final seeds: a line per student row through its widths.", "",
                          "![compression frontier](frontier.png)", ""]
                written.append("frontier.png")
        intervals = phase_intervals(storage, benchmarks)
        if intervals:
            plot_timeline(intervals, out / "timeline.png")
            lines += ["## Timeline", "", "![phases over time](timeline.png)", "", *timeline_table(intervals), ""]
            written.append("timeline.png")
        lines += provenance_section(state, device_kinds(storage, benchmarks))
        (out / "report.md").write_text("\n".join(lines) + "\n")
        written.append("report.md")
        storage.upload(out, REPORT_DIR)
    return [f"{REPORT_DIR}/{name}" for name in written]
