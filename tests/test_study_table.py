"""The study's table without Ray: a fabricated study directory (what the runner writes) through
build_table, the end-of-study summary, and the files (CSV, LaTeX)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from indistill.evaluation.table import latex, result_row
from study.results import TABLE_FILES, build_table, summary, write_study_table
from study.storage import Storage
from study.names import NETWORKS_FILE, TUNED

SPECIALS = r"w_0 & 50% #1 {a} ~b ^c \d"  # every LaTeX special in one label
LONG = "student (pkt, a label much longer than any row of a real study has, to be wrapped)"
BEST = {"trial_id": "search_fn_a1b2c3d4_00005_5_curriculum_epochs_0=1,curriculum_epochs_1=2", "val_map": 0.8896,
        "epochs": 20, "params": {"curriculum": {"epochs_0": 1, "loss_0": "mse", "weight_0_mse": 0.34,
                                                "epochs_1": 2, "loss_1": "pkt", "weight_1_pkt": 0.11,
                                                "epochs_2": 1, "loss_2": "mse", "weight_2_mse": 7.7, "overlap": False},
                                 "prune": {"criterion": "l2"}}}
COUNTS = {"completed": 6, "stopped early": 2, "failed": 1}


def _row(label: str, params: int, seed: int, base: float) -> dict:
    metrics = {m: {"map": base - d, "map_legacy": base - d - 0.001, "p@100": base + 0.01}
               for m, d in (("cosine", 0.0), ("euclidean", 0.02))}
    return {"seed": seed, **result_row(label, params, metrics)}


def fabricate_study(root: Path, benchmarks: tuple[str, ...] = ("digits", "fashionmnist"),
                    students: tuple[str, ...] = ("student (ce)", LONG, SPECIALS, TUNED)) -> Storage:
    """A finished study directory as the runner leaves it (no base config: the epochs stay blank)."""
    storage = Storage.create(root)
    storage.write_json("study.json", {"name": root.name, "benchmarks": list(benchmarks)})
    for b, bench in enumerate(benchmarks):
        storage.write_json(f"{bench}/{NETWORKS_FILE}", {"rows": [_row("teacher", 11_173_962, 0, 0.97),
                                                                 _row("auxiliary", 57_706, 0, 0.95)]})
        for seed in (0, 1, 2):
            rows = [_row(label, 14_906, seed, 0.90 - 0.01 * i - 0.003 * seed - 0.02 * b) for i, label in enumerate(students)]
            storage.write_json(f"{bench}/final/seed-{seed}.json", {"rows": rows})
        storage.write_json(f"{bench}/search/trials.json", {"trials": [], "best": BEST, "counts": COUNTS})
    return storage


@pytest.fixture
def study(tmp_path) -> tuple[Storage, pd.DataFrame, pd.DataFrame]:
    storage = fabricate_study(tmp_path / "a-study-directory-with-a-long-name")
    table, per_seed = build_table(storage, ["digits", "fashionmnist"])
    return storage, table, per_seed


def test_the_summary_fits_100_columns_and_names_the_tuned_trial(study):
    _, table, _ = study
    lines = summary(table)
    assert max(len(line) for line in lines) <= 100, "\n".join(lines)
    header = lines[0].split()
    assert header == ["benchmark", "network", "cosine", "map", "euclidean", "map", "params"]
    text = "\n".join(lines)
    assert "11,173,962" in text and "88.96" in text  # the teacher's params, the best val mAP (in %)
    assert "86.70 ± 0.30" in text  # the tuned row's mean ± std over its three seeds (digits)
    assert all(word in text for word in LONG.split()) and not any(LONG in line for line in lines)  # wrapped, not cut
    flat = " ".join(text.split())  # notes wrap at the width: compare their words
    assert flat.count(f"InDistill (tuned): best trial {BEST['trial_id']}, val map 88.96") == 2  # once per benchmark
    assert flat.count("config: 1ep mse w=0.34; 2ep pkt w=0.11; 1ep mse w=7.7; overlap=False; criterion=l2") == 2
    assert "(9 trials: 6 completed, 2 stopped early, 1 failed)" in flat
    assert "cosine map_legacy" not in text and "Δ" not in text  # those stay in the files


def test_a_narrow_summary_still_fits(study):
    _, table, _ = study
    lines = summary(table, width=72)
    assert max(len(line) for line in lines) <= 72, "\n".join(lines)


def test_the_csv_files_hold_counts_as_integers(study):
    storage, table, per_seed = study
    write_study_table(storage, table, per_seed)
    root = Path(storage.uri)
    results = (root / "results.csv").read_text()
    assert "11173962," in results
    csv = pd.read_csv(root / "results.csv")
    for col in ("params", "n", "trials completed", "trials stopped early", "trials failed"):
        assert (csv[col].dropna() % 1 == 0).all() and not re.search(r"\b\d+\.0\b", _column(results, col))
    tuned = csv[(csv["network"] == TUNED) & (csv["benchmark"] == "digits")].iloc[0]
    assert (tuned["trials completed"], tuned["trials failed"], tuned["best trial"]) == (6, 1, BEST["trial_id"])
    per_seed_text = (root / "results_per_seed.csv").read_text()
    assert not re.search(r"\b\d+\.0\b", _column(per_seed_text, "seed") + _column(per_seed_text, "params"))


def _column(csv_text: str, name: str) -> str:
    """The raw text of one column of a CSV (no quoted commas in these files' numbers)."""
    frame = pd.read_csv(pd.io.common.StringIO(csv_text), dtype=str, keep_default_na=False)
    return " ".join(frame[name])


def _tabular(tex: str):
    """The tabular environment node of ``tex``, parsed by pylatexenc."""
    from pylatexenc.latexwalker import LatexEnvironmentNode, LatexWalker

    nodes, _, _ = LatexWalker(tex).get_latex_nodes()
    envs = [n for n in nodes if isinstance(n, LatexEnvironmentNode) and n.environmentname == "tabular"]
    assert len(envs) == 1, tex
    return envs[0]


def test_the_latex_table_escapes_labels_and_parses(study):
    from pylatexenc.latex2text import LatexNodes2Text

    storage, table, per_seed = study
    write_study_table(storage, table, per_seed)
    tex = (Path(storage.uri) / "results.tex").read_text()
    env = _tabular(tex)
    spec = env.nodeargd.argnlist[-1].latex_verbatim().strip("{}")
    shown = table.reset_index()
    assert len(spec) == shown.shape[1] - sum(c.endswith(" std") or c.startswith("diff ") for c in shown.columns)
    body = env.latex_verbatim()
    rows = [r for r in body.split("\\\\") if "&" in r]
    assert len(rows) == 1 + len(table)  # the header and one row per network
    for r in rows:  # every row has the column spec's cells (no unescaped & inside a label)
        assert len(re.findall(r"(?<!\\)&", r)) == len(spec) - 1, r
    text = LatexNodes2Text().latex_to_text(tex).replace("\u02c6", "^")  # pylatexenc's text for \textasciicircum
    for label in (SPECIALS, LONG, TUNED, "cosine map_legacy", "best val map"):
        assert label in text, label
    assert "± " in text and "Δ cosine map vs InDistill (tuned) (95% CI)" in text
    assert not re.search(r"(?<!\\)[_#%]", tex.split("\n", 1)[1]), tex  # none left raw (after the comment line)


def test_the_run_table_writer_escapes_too():
    frame = pd.DataFrame([{"network": SPECIALS, "params": 10, "n": 1, "cosine map": 90.0}]).set_index("network")
    tex = latex(frame)
    assert r"w\_0 \& 50\% \#1 \{a\}" in tex
    assert len(_tabular(tex).nodeargd.argnlist[-1].latex_verbatim().strip("{}")) == 4


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no pdflatex on this machine")
def test_the_latex_table_compiles(study, tmp_path):
    storage, table, per_seed = study
    write_study_table(storage, table, per_seed)
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
                   + (Path(storage.uri) / "results.tex").read_text() + "\\end{document}\n")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_the_tuned_row_records_its_trial(study):
    _, table, _ = study
    row = table.loc[("fashionmnist", TUNED)]
    assert row["best trial"] == BEST["trial_id"] and row["tuned"] == "9 trials"
    assert row["best val map"] == pytest.approx(88.96)
    assert row["trials stopped early"] == 2 and str(table["trials stopped early"].dtype) == "Int64"


def test_a_study_where_nothing_finished_writes_no_table(tmp_path):
    """Every benchmark failed: no rows, no table files (the study ends with the first failure)."""
    storage = Storage(str(tmp_path / "empty"))
    table, per_seed = build_table(storage, ["digits"])
    assert table.empty and per_seed.empty
    write_study_table(storage, table, per_seed)
    assert not any(storage.exists(name) for name in TABLE_FILES)
