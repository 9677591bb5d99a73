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

from .results import TABLE_FILES, per_seed_rows
from .names import TUNED
from .storage import Storage


def export_study(storage: Storage, out: Path) -> list[Path]:
    """Per benchmark: ``<bench>/best_config.yaml``, ``<bench>/student.pt``; plus the study tables."""
    out = Path(out)
    check_output_dir(out, "--out")
    written: list[Path] = []
    benchmarks = storage.check_study()["benchmarks"]
    configs = {}  # every best config is read and validated before anything is written
    for bench in benchmarks:
        rel = f"{bench}/search/best_config.yaml"
        if not storage.exists(rel):
            print(f"[export] {bench}: no best config yet (search not finished)")
            continue
        doc = parse_yaml(storage.read_text(rel), storage.join(rel), "best config")
        # what the tuned row is: the InDistill student on the test protocol, evaluated once at the end
        with doc.blame():
            cfg = build_config(deep_merge(doc.data, {"methods": ["indistill"], "student": {"eval_every": 0}}), benchmark=bench)
        # the study resolved its data root on its own machine; whoever reproduces resolves theirs
        cfg = cfg.replace(data=dataclasses.replace(cfg.data, root=None))
        check_output_dir(out / bench, "--out")
        configs[bench] = (cfg, [r for r in per_seed_rows(storage, bench) if r["network"] == TUNED])
    for bench, (cfg, tuned) in configs.items():
        target = out / bench
        target.mkdir(parents=True, exist_ok=True)
        seeds = ",".join(str(r["seed"]) for r in tuned) or str(cfg.student_seed)
        header = (f"# Best InDistill config of study {storage.uri} ({bench}).\n"
                  f"# Reproduce the tuned row per seed: indistill run --config {target / 'best_config.yaml'} --seeds {seeds}\n")
        atomic_write_text(target / "best_config.yaml", header + yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        written.append(target / "best_config.yaml")
        if storage.fetch(f"{bench}/final/run/final.pt", target / "student.pt"):
            written.append(target / "student.pt")
        if tuned:  # the tuned row per seed: `indistill run --config best_config.yaml --seeds ...` reproduces it
            atomic_write_text(target / "result.json", json.dumps({"seeds": [r["seed"] for r in tuned], "rows": tuned}, indent=2) + "\n")
            written.append(target / "result.json")
    for name in TABLE_FILES:
        if storage.exists(name):
            atomic_write_text(out / name, storage.read_text(name))
            written.append(out / name)
    return written
