"""The generated tables of README.md and docs/: each is written from one results file in the repository.

    python scripts/doc_tables.py           # rewrite every generated table in place
    python scripts/doc_tables.py --check   # exit 1, naming each table whose page differs from its file

A page holds a generated table between two marker lines::

    <!-- generated: NAME (from FILE by scripts/doc_tables.py; edit FILE, not this table) -->
    ...
    <!-- end generated: NAME -->

``TABLES`` says, for each NAME, the results file it comes from and how it is written: the table and
a "Source" line with the file's date, machine, versions and the command that produced it. Where a
results file does not record one of these itself, the entry below says so and gives what is known.
Tests (``tests/test_docs.py``) run the check, so a page and its file cannot disagree.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent

#: the pages that may hold generated tables
PAGES = ("README.md", "docs/*.md")

BEGIN = re.compile(r"^<!-- generated: (?P<name>[a-z0-9-]+) \(from (?P<file>\S+) by scripts/doc_tables\.py; "
                   r"edit (?P=file), not this table\) -->$")
END = "<!-- end generated: {name} -->"


@dataclass(frozen=True)
class Table:
    name: str
    source: str  # the results file, relative to the repository root
    render: Callable[[Path, str], str]  # (the file's path, its name in the repository) -> the markdown between the markers


# ----------------------------------------------------------------------------- helpers


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _machine(m: dict) -> str:
    """What a benchmark JSON's ``machine`` records, in one phrase."""
    parts = [f"{m['cpu']} CPU, {m['cpu_usable']} usable cores, {m['torch_threads']} torch threads",
             f"python {m['python']}", f"torch {m['torch']}", f"torchvision {m['torchvision']}", f"numpy {m['numpy']}"]
    if m.get("sklearn"):
        parts.append(f"scikit-learn {m['sklearn']}")
    parts.append(m["platform"])
    return ", ".join(parts)


def _load(m: dict) -> str:
    return f"load average (1, 5, 15 min) {m['loadavg_start']} at the start, {m['loadavg_end']} at the end"


def _grid(header: list[str], align: list[str], rows: list[list[str]]) -> str:
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _n(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


# ----------------------------------------------------------------------------- the tables


def fidelity(_path: Path, _name: str) -> str:
    sys.path.insert(0, str(ROOT))
    from indistill.config.fidelity import fidelity_markdown

    return fidelity_markdown()


#: when the speed files were committed (they record no date of their own)
SPEED_COMMITTED = "2026-11-25"


def distill(path: Path, name: str) -> str:
    d = _json(path)
    dist = d["distill"]
    names = {"block1/mse": "block1 / MSE", "embedding/pkt": "embedding / PKT"}
    rows = []
    for phase, p in dist["phases"].items():
        order = sorted(p["rows"], key=lambda r: (r["path"] != "reference", r["label"], r["batch_size"]))
        for r in order:
            label = r["label"]
            if r["path"] == "reference" and "num_workers" in r and "workers=" not in label:
                label = f"{label} ({r['num_workers']} DataLoader workers)"
            best = r["path"] == "fast" and r["label"] == "fast" and r["batch_size"] == p["best_batch"]
            rate = _n(r["images_per_s"])
            rows.append([names.get(phase, phase), label + (" (best batch)" if best else ""), str(r["batch_size"]),
                         f"**{rate}**" if r["batch_size"] == 128 and r["label"] in ("fast", "reference") else rate,
                         ", ".join(_n(v) for v in r["images_per_s_runs"])])
    table = _grid(["phase", "pipeline", "batch", "img/s (median)", "runs"], ["l", "l", "r", "r", "l"], rows)
    ratios = _grid(
        ["phase", "fast / reference at batch 128", "against the reference without DataLoader workers",
         "at the fast path's best batch"], ["l", "r", "r", "r"],
        [[names.get(ph, ph), f"**{p['ratio_at_128']:.2f}x**", f"{p['ratio_at_128_vs_fastest_reference']:.2f}x",
          f"{p['ratio_at_best_batch']:.2f}x (batch {p['best_batch']})"] for ph, p in dist["phases"].items()])
    m = d["machine"]
    source = (f"Source: `{name}` (committed {SPEED_COMMITTED}): `{d['command']}`, "
              f"{dist['images']:,} synthetic images, median of {dist['repeats']} interleaved runs, "
              f"{dist['fast_precision']}, {'channels_last' if dist['fast_channels_last'] else 'NCHW'} on the fast path; "
              f"{_machine(m)}; {_load(m)}; {d['total_seconds']:.0f} s in all.")
    return f"{table}\n\n{ratios}\n\n{source}"


def retrieval(path: Path, name: str) -> str:
    d = _json(path)
    r = d["retrieval"]
    rows = []
    for s in r["sizes"]:
        size = f"{s['n_query']:,} x {s['n_database']:,} x {s['dim']}"
        for metric, v in s["metrics"].items():
            ref, ours = v["reference_seconds"], v["seconds"]
            rows.append([size, metric, f"{ref['median']:.2f} [{ref['min']:.2f}]", f"{ours['median']:.2f} [{ours['min']:.2f}]",
                         f"**{v['ratio']:.1f}x** [{v['ratio_min']:.1f}x]", f"{v['float64_max_abs_diff']:.1e}"])
    table = _grid(["queries x database x dim", "metric", "reference-style (s)", "`evaluate` (s)", "ratio",
                   "largest difference to float64"], ["l", "l", "r", "r", "r", "r"], rows)
    m = d["machine"]
    source = (f"Source: `{name}` (committed {SPEED_COMMITTED}): "
              f"`python -m perf.speed retrieval --device cpu` (the file records `{d['command']}`; the result was "
              f"copied to this path), {r['sizes'][0]['repeats']} interleaved repetitions per size, median [min]; "
              f"{_machine(m)}; {_load(m)}; {d['total_seconds']:.0f} s in all.")
    return f"{table}\n\n{source}"


def _overhead(path: Path) -> dict:
    """The digits study's figures, with what produced them (``measured``)."""
    data = _json(path)
    return {**data["benchmarks"]["digits"], "measured": data["measured"]}


def _when(d: dict) -> str:
    starts = [iv["start"] for ivs in d["phases"]["intervals"].values() for iv in ivs]
    stamp = datetime.datetime.fromtimestamp(min(starts), tz=datetime.timezone.utc)
    return stamp.strftime("%Y-%m-%d %H:%M UTC")


def _study_source(name: str, d: dict) -> str:
    from study.provenance import versions_text

    m = d["measured"]
    return (f"Source: `{name}`: `bash scripts/study.sh` (the default study, started {_when(d)}), then "
            f"`{m['command']}`; {m['machine']['cpu']} CPU, {m['machine']['cpu_usable']} usable cores, "
            f"{d['search']['concurrent']} trials at a time; {versions_text(m['provenance'] or {})}.")


def study_phases(path: Path, name: str) -> str:
    d = _overhead(path)
    ph = d["phases"]
    total = sum(ph[f"{p}_s"] for p in ("artifacts", "search", "final"))
    rows = [["artifacts (teacher, auxiliary, pruning; twice)", f"{ph['artifacts_s']:.0f}"],
            [f"search ({d['summary']['trials']} trials)", f"{ph['search_s']:.0f}"],
            ["final runs (every student row, 3 seeds)", f"{ph['final_s']:.0f}"],
            ["the three phases", f"{total:.0f}"]]
    return f"{_grid(['phase', 'wall time (s)'], ['l', 'r'], rows)}\n\n{_study_source(name, d)}"


def ray_overhead(path: Path, name: str) -> str:
    d = _overhead(path)
    s = d["summary"]
    rows = [["trial wall time (Tune function start to last report)", f"{s['median_wall_s']:.1f} s"],
            ["time in the training and evaluation loop", f"{s['median_loop_s']:.1f} s"],
            ["overhead (wall minus loop)", f"{s['median_overhead_s']:.1f} s = {100 * s['median_overhead_frac']:.0f} % of "
             f"the trial ({100 * s['total_overhead_frac']:.0f} % over all timed trials)"],
            ["of which start-up (trial start to first epoch)", f"{s['median_startup_s']:.1f} s, of which Ray's "
             f"(Train controller and worker group) {s['median_ray_startup_s']:.1f} s"],
            ["of which reporting (TensorBoard, checkpoint, `ray.train.report`)",
             f"{s['median_report_s_per_epoch']:.2f} s per epoch"]]
    table = _grid([f"median over {s['trials']} search trials", ""], ["l", "r"], rows)
    return f"{table}\n\n{_study_source(name, d)}"


def _csv(path: Path) -> list[dict[str, str]]:
    """A CSV file's rows, by column name."""
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _meta(path: Path) -> dict[str, str]:
    """``key: value`` lines of a run's ``meta.txt`` (how the results beside it were produced)."""
    out = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(": ")
        if sep and not line.startswith("#"):
            out[key.strip()] = value.strip()
    return out


def _mean_std(row: dict[str, str], column: str) -> str:
    """``mean ± std`` of a results.csv column, two decimals (the mean alone for one run)."""
    mean, std = row[column], row.get(f"{column} std", "")
    return f"{float(mean):.2f} ± {float(std):.2f}" if std else f"{float(mean):.2f}"


def digits_run(path: Path, name: str) -> str:
    """An ``indistill run`` results.csv: its key columns, and meta.txt beside it as the source line."""
    rows = _csv(path)
    delta = next(c for c in rows[0] if c.startswith("Δ cosine map"))
    metrics = ["cosine map", "euclidean map", "cosine map_legacy", "cosine p@100"]
    body = [[r["network"], f"{int(r['params']):,}", r["n"], *(_mean_std(r, m) for m in metrics), r[delta]] for r in rows]
    table = _grid(["network", "params", "n", *metrics, delta], ["l", "r", "r", "r", "r", "r", "r", "l"], body)
    m = _meta(path.parent / "meta.txt")
    source = (f"Source: `{name}` (beside it: `results.md` with every column, `results_per_seed.csv`, "
              f"the complete `config.yaml` and `meta.txt`): `{m['command']}` at commit {m['commit']}, "
              f"{m['date']}, {m['wall']}; {m['machine']}; {m['versions']}; {m['load']}.")
    return f"{table}\n\n{source}"


def default_study(path: Path, name: str) -> str:
    """A study's results.csv (``indistill-study run``): every row's key columns, and meta.txt beside
    it as the source line."""
    rows = _csv(path)
    delta = next(c for c in rows[0] if c.startswith("Δ cosine map"))
    metrics = ["cosine map", "euclidean map"]
    body = [[r["network"], f"{int(r['params']):,}", r["epochs"], r["n"], *(_mean_std(r, m) for m in metrics), r[delta]]
            for r in rows]
    table = _grid(["network", "params", "epochs", "n", *metrics, delta], ["l", "r", "l", "r", "r", "r", "l"], body)
    tuned = next((r for r in rows if r.get("best config")), None)
    best = (f"The tuned row's config (best of {tuned['trials completed']} completed, {tuned['trials stopped early']} "
            f"stopped early and {tuned['trials failed']} failed trials, val mAP {float(tuned['best val map']):.2f}): "
            f"{tuned['best config']}.\n\n") if tuned else ""
    m = _meta(path.parent / "meta.txt")
    source = (f"Source: `{name}` (beside it: `results.md` with every column and `results_per_seed.csv`): "
              f"`{m['command']}` at commit {m['commit']}, {m['date']}, {m['wall']}; {m['machine']}; {m['versions']}.")
    return f"{table}\n\n{best}{source}"


def frontier_study(path: Path, name: str) -> str:
    """A frontier study's results.csv: the rows grouped by width (width, params, MACs), the Pareto
    front of its search (``pareto.csv`` beside it), and meta.txt beside it as the source line."""
    rows = _csv(path)
    delta = next(c for c in rows[0] if c.startswith("Δ cosine map"))
    body = [[r["network"], f"{float(r['width']):g}" if r.get("width") else "", f"{int(r['params']):,}",
             f"{int(float(r['macs'])):,}" if r.get("macs") else "", r["n"], _mean_std(r, "cosine map"), r[delta]]
            for r in rows]
    table = _grid(["network", "width", "params", "MACs", "n", "cosine map", delta], ["l", "r", "r", "r", "r", "r", "l"], body)
    front = _csv(path.parent / "pareto.csv")
    points = "; ".join(f"width {float(p['width']):g} ({int(float(p['params'])):,} params): val mAP "
                       f"{100 * float(p['val_map']):.2f}" for p in front)
    m = _meta(path.parent / "meta.txt")
    source = (f"Source: `{name}` (beside it: `results.md` with every column, `results_per_seed.csv`, `pareto.csv`, "
              f"`trials.json` and `frontier.png`): `{m['command']}` at commit {m['commit']}, {m['date']}, {m['wall']}; "
              f"{m['machine']}; {m['versions']}.")
    return f"{table}\n\nThe search's Pareto front ({len(front)} trials): {points}.\n\n{source}"


def frontier_early_stopping(path: Path, name: str) -> str:
    """The frontier space's search with and without early stopping: its time, its trials and the
    front it reached."""
    d = _json(path)
    body = []
    for run in d["runs"]:
        counts = ", ".join(f"{v} {k}" for k, v in run["counts"].items() if v)
        front = "; ".join(f"{p['width']:g}: {100 * p['val_map']:.2f}" for p in run["front"])
        body.append([run["early_stopping"], f"{run['search_s']:.0f}", counts, front])
    table = _grid(["early stopping", "search (s)", "trials", "front (width: val mAP)"], ["l", "r", "l", "l"], body)
    source = (f"Source: `{name}`: {d['runs'][0]['command']}; {d['runs'][1]['command']}. {d['date']}, "
              f"{d['machine']}; {d['versions']}. Note: {d['note']}.")
    return f"{table}\n\n{source}"


def warm_start(path: Path, name: str) -> str:
    """A cold and a warm-started search of the same space and sampler seed (``report --compare``'s
    CSV): the best val mAP after k trials and the expected best of k trials of each; meta.txt beside
    it names the two studies (its ``cold`` and ``warm`` keys: their names, the CSV's column prefixes)."""
    rows = _csv(path)
    m = _meta(path.parent / "meta.txt")
    cold, warm = m["cold"], m["warm"]

    def pct(row: dict[str, str], column: str) -> str:
        return f"{float(row[column]):.2f}" if row.get(column) else ""

    body = [[r["k"], pct(r, f"{cold} best so far"), pct(r, f"{warm} best so far"),
             "yes" if r[f"{warm} warm-started"] == "True" else "", pct(r, f"{cold} expected best"),
             pct(r, f"{warm} expected best")] for r in rows]
    table = _grid(["k", "best so far, cold", "best so far, warm", "trial k warm-started",
                   "expected best of k, cold", "expected best of k, warm"], ["r", "r", "r", "l", "r", "r"], body)
    source = (f"Source: `{name}` (beside it: `meta.txt`, the search space `{m['space']}` and each study's "
              f"`trials.json`): {m['commands']}. {m['date']}; {m['machine']}; {m['versions']}. {m['note']}")
    return f"{table}\n\n{source}"


TABLES: tuple[Table, ...] = (
    Table("fidelity", "indistill/config/fidelity.py", fidelity),
    Table("speed-distill", "perf/cpu-distill.json", distill),
    Table("speed-retrieval", "perf/cpu-retrieval.json", retrieval),
    Table("default-study-phases", "perf/ray-overhead-digits.json", study_phases),
    Table("ray-overhead", "perf/ray-overhead-digits.json", ray_overhead),
    Table("digits-run", "docs/results/digits-run/results.csv", digits_run),
    Table("default-study", "docs/results/default-study/results.csv", default_study),
    Table("frontier-study", "docs/results/digits-frontier/results.csv", frontier_study),
    Table("frontier-early-stopping", "docs/results/digits-frontier/early-stopping.json", frontier_early_stopping),
    Table("warm-start", "docs/results/digits-warm-start/digits-compare.csv", warm_start),
)
BY_NAME = {t.name: t for t in TABLES}


# ----------------------------------------------------------------------------- pages


def pages(root: Path = ROOT) -> list[Path]:
    found: list[Path] = []
    for pattern in PAGES:
        found.extend(sorted(root.glob(pattern)))
    return found


class PageError(ValueError):
    """A page's markers are malformed or name an unknown table."""


def blocks(text: str, page: str) -> list[tuple[str, str, int, int]]:
    """Each generated block of ``text``: (name, source file, index of its first line, index of its end marker)."""
    lines = text.split("\n")
    found = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("<!-- generated:"):
            m = BEGIN.match(line)
            if not m:
                raise PageError(f"{page}:{i + 1}: malformed marker: {line}")
            name, source = m["name"], m["file"]
            if name not in BY_NAME:
                raise PageError(f"{page}:{i + 1}: unknown table {name!r} (the tables: {', '.join(BY_NAME)})")
            if BY_NAME[name].source != source:
                raise PageError(f"{page}:{i + 1}: table {name!r} comes from {BY_NAME[name].source}, not {source}")
            end = END.format(name=name)
            try:
                j = lines.index(end, i + 1)
            except ValueError:
                raise PageError(f"{page}:{i + 1}: table {name!r} has no end marker ({end})") from None
            found.append((name, source, i, j))
            i = j
        elif line.startswith("<!-- end generated:"):
            raise PageError(f"{page}:{i + 1}: an end marker without its start")
        i += 1
    return found


def marker(table: Table) -> str:
    return f"<!-- generated: {table.name} (from {table.source} by scripts/doc_tables.py; edit {table.source}, not this table) -->"


def regenerate(text: str, page: str, root: Path = ROOT) -> tuple[str, list[str]]:
    """``text`` with every generated block rewritten from its file, and the names of those that changed."""
    lines = text.split("\n")
    changed = []
    for name, _source, i, j in reversed(blocks(text, page)):
        table = BY_NAME[name]
        body = ["", *table.render(root / table.source, table.source).split("\n"), ""]
        if lines[i + 1:j] != body:
            changed.append(name)
        lines[i + 1:j] = body
    return "\n".join(lines), sorted(changed)


def check(root: Path = ROOT) -> list[str]:
    """What disagrees: one line per table whose page differs from its file, or that no page holds."""
    problems = []
    shown = set()
    for page in pages(root):
        rel = str(page.relative_to(root))
        text = page.read_text()
        try:
            _new, changed = regenerate(text, rel, root)
            shown.update(name for name, *_ in blocks(text, rel))
        except (PageError, OSError, KeyError, ValueError) as exc:
            problems.append(f"{rel}: {exc}")
            continue
        problems += [f"{rel}: table {name!r} differs from {BY_NAME[name].source}" for name in changed]
    problems += [f"table {t.name!r} ({t.source}) is on no page" for t in TABLES if t.name not in shown]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a table differs from its file")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for p in problems:
            print(p)
        if problems:
            print("run: python scripts/doc_tables.py", file=sys.stderr)
        return 1 if problems else 0
    for page in pages():
        rel = str(page.relative_to(ROOT))
        new, changed = regenerate(page.read_text(), rel)
        if changed:
            page.write_text(new)
            print(f"{rel}: {', '.join(changed)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
