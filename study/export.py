"""Export the best configs: a complete YAML per benchmark that ``indistill run --config`` accepts."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml

from indistill.config.run import config_to_dict, deep_merge
from indistill.engine.configure import build_config
from indistill.common.io import atomic_write_text, check_output_dir
from indistill.config.yamlio import parse_yaml
from indistill.evaluation.stats import mean_std
from indistill.evaluation.table import DIFF_COLUMN

from .results import TABLE_FILES, per_seed_rows
from .names import OBJECTIVE, POINTS_FILE, TRIALS_FILE, TUNED, WIDTH
from .provenance import versions_text
from .storage import Storage


def _tuned_config(storage: Storage, rel: str, bench: str):
    """The tuned row's config from the study's ``rel``: the InDistill student on the test protocol,
    evaluated once at the end, with no data root (whoever reproduces resolves theirs)."""
    doc = parse_yaml(storage.read_text(rel), storage.join(rel), "best config")
    with doc.blame():
        cfg = build_config(deep_merge(doc.data, {"methods": ["indistill"], "student": {"eval_every": 0}}), benchmark=bench)
    return cfg.replace(data=dataclasses.replace(cfg.data, root=None))


def provenance_header(state: dict, trial: dict | None, rows: list[dict]) -> list[str]:
    """The comment lines of an exported config that say where it came from: the study, the search
    trial and its val mAP, the test row it produced (mean ± std of the cosine mAP over n seeds) and
    the versions ``study.json`` recorded."""
    trial = trial or {}
    val = trial.get(OBJECTIVE)
    lines = [f"# Study {state.get('name', '?')}; trial {trial.get('trial_id', '?')}, val mAP "
             f"{'?' if val is None else f'{100 * val:.2f}'}"]
    values = [r[DIFF_COLUMN] for r in rows if r.get(DIFF_COLUMN) is not None]
    if values:
        mean, std = mean_std(values)
        spread = "" if std != std else f" ± {std:.2f}"  # NaN: one seed
        lines.append(f"# Test row ({TUNED}): {DIFF_COLUMN} {mean:.2f}{spread} (n={len(values)})")
    else:
        lines.append(f"# Test row ({TUNED}): not measured yet")
    prov = state.get("provenance")
    lines.append(f"# Made with {versions_text(prov)}" if prov else "# Versions: not recorded in study.json")
    return [line + "\n" for line in lines]


def _trial(trials: dict, trial_id: str | None) -> dict | None:
    """The search record of ``trial_id`` (None: the best trial) from ``trials.json``."""
    best = trials.get("best") or {}
    if trial_id is None or best.get("trial_id") == trial_id:
        return best or None
    return next((t for t in trials.get("trials", []) if t.get("trial_id") == trial_id), {"trial_id": trial_id})


def _write_point(storage: Storage, bench: str, cfg, rows: list[dict], target: Path, what: str,
                 checkpoint: str, provenance: list[str] = ()) -> list[Path]:
    """One exported config (``config.yaml`` with the command that reproduces its rows and the
    ``provenance`` header lines), its student checkpoint and its rows per seed."""
    target.mkdir(parents=True, exist_ok=True)
    seeds = ",".join(str(r["seed"]) for r in rows) or str(cfg.student_seed)
    name = "best_config.yaml" if what == "best" else "config.yaml"
    header = (f"# {'Best InDistill config' if what == 'best' else f'InDistill config at {what}'} of study {storage.uri} ({bench}).\n"
              f"# Reproduce the tuned row per seed: indistill run --config {target / name} --seeds {seeds}\n"
              + "".join(provenance))
    atomic_write_text(target / name, header + yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    written = [target / name]
    if storage.fetch(checkpoint, target / "student.pt"):
        written.append(target / "student.pt")
    if rows:  # the tuned row per seed: `indistill run --config ... --seeds ...` reproduces it
        atomic_write_text(target / "result.json", json.dumps({"seeds": [r["seed"] for r in rows], "rows": rows}, indent=2) + "\n")
        written.append(target / "result.json")
    return written


def export_study(storage: Storage, out: Path) -> list[Path]:
    """Per benchmark: ``<bench>/best_config.yaml``, ``<bench>/student.pt``; a frontier study also
    ``<bench>/frontier/width-<w>/`` per retrained Pareto point; plus the study tables."""
    out = Path(out)
    check_output_dir(out, "--out")
    written: list[Path] = []
    state = storage.check_study()
    benchmarks = state["benchmarks"]
    configs = {}  # every config is read and validated before anything is written
    for bench in benchmarks:
        rel = f"{bench}/search/best_config.yaml"
        if not storage.exists(rel):
            print(f"[export] {bench}: no best config yet (search not finished)")
            continue
        check_output_dir(out / bench, "--out")
        rows = per_seed_rows(storage, bench)
        points = storage.read_json(f"{bench}/{POINTS_FILE}")["points"] if storage.exists(f"{bench}/{POINTS_FILE}") else []
        unsized = [r for r in rows if r["network"] == TUNED and r.get(WIDTH) is None]
        trials_rel = f"{bench}/{TRIALS_FILE}"
        trials = storage.read_json(trials_rel) if storage.exists(trials_rel) else {}
        configs[bench] = [(_tuned_config(storage, rel, bench), unsized, out / bench, "best", f"{bench}/final/run/final.pt",
                           provenance_header(state, _trial(trials, None), unsized))]
        for p in points:
            at = [r for r in rows if r["network"] == TUNED and r.get(WIDTH) == p[WIDTH]]
            configs[bench].append((_tuned_config(storage, f"{bench}/search/points/{p['tag']}.yaml", bench), at,
                                   out / bench / "frontier" / p["tag"], f"width {p[WIDTH]:g}",
                                   f"{bench}/final/run/{p['tag']}/final.pt",
                                   provenance_header(state, _trial(trials, p.get("trial_id")), at)))
    for bench, entries in configs.items():
        for cfg, rows, target, what, checkpoint, header in entries:
            written += _write_point(storage, bench, cfg, rows, target, what, checkpoint, header)
    for name in TABLE_FILES:
        if storage.exists(name):
            atomic_write_text(out / name, storage.read_text(name))
            written.append(out / name)
    return written
