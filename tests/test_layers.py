"""Imports only point down: read from the source (ast), so a lazy import inside a function counts too."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "indistill"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, root: Path = ROOT) -> set[str]:
    """Every module ``path`` (under ``root``) imports, anywhere in the file, as absolute dotted names."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            found.add(stem)
            found.update(f"{stem}.{alias.name}" for alias in node.names)  # ``from . import data``
    return found


def under(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def offending(path: Path, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(n for n in imports(path) if any(under(n, f) for f in forbidden))


def sources(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def test_the_import_reader_sees_relative_and_lazy_imports(tmp_path) -> None:
    pkg = tmp_path / "indistill" / "train"
    pkg.mkdir(parents=True)
    probe = pkg / "probe.py"
    probe.write_text("from ..data import x\nfrom . import loop\ndef f():\n    import ray.tune\n    from ...study import cli\n")
    found = imports(probe, tmp_path)
    assert {"indistill.data", "indistill.train.loop", "ray.tune", "study.cli"} <= found


#: the lowest layer: plain dataclasses and their parsing, below every registry
LOWEST = ("indistill/config.py", "indistill/schema.py")


@pytest.mark.parametrize("path", LOWEST)
def test_config_and_schema_import_no_registry_layer(path: str) -> None:
    forbidden = ("indistill.data", "indistill.models", "indistill.losses", "indistill.pruning", "indistill.train",
                 "indistill.configure", "indistill.evaluate", "indistill.pipeline")
    assert offending(ROOT / path, forbidden) == []


@pytest.mark.parametrize("path", sources(PACKAGE), ids=lambda p: str(p.relative_to(ROOT)))
def test_indistill_never_imports_ray_or_study(path: Path) -> None:
    assert offending(path, ("ray", "study")) == []


def test_evaluate_and_train_do_not_import_each_other_both_ways() -> None:
    assert offending(PACKAGE / "evaluate.py", ("indistill.train",)) == []
    # training evaluates (stages import evaluate); that is the one direction


@pytest.mark.parametrize("path", sources(PACKAGE / "data"), ids=lambda p: p.name)
def test_data_imports_no_layer_above_it(path: Path) -> None:
    forbidden = ("indistill.models", "indistill.losses", "indistill.pruning", "indistill.train", "indistill.configure",
                 "indistill.evaluate", "indistill.pipeline")
    assert offending(path, forbidden) == []


#: libraries only some paths need (the ResNet-18 teacher, a confidence interval, the report's
#: figures, the digits loader): imported where used, because every Ray worker process of a study
#: imports the package's modules, and at module level they cost seconds of each trial's start-up
OPTIONAL_HEAVY = ("torchvision", "scipy", "matplotlib", "sklearn")


def _import_time_imports(tree: ast.AST):
    """The import statements a module runs when it is imported: everything outside function bodies
    (module level, and inside module-level ``if``/``try``/``with`` and class bodies)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _import_time_imports(node)


def test_optional_heavy_libraries_are_imported_where_used() -> None:
    found = []
    for folder in ("indistill", "study"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in _import_time_imports(ast.parse(path.read_text(), str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                found += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in OPTIONAL_HEAVY]
    # the report's module: the driver imports it, once, after the study
    assert found == ["study/report.py: matplotlib", "study/report.py: matplotlib.pyplot"]


def test_planning_a_study_imports_no_ray(tmp_path) -> None:
    """Building and checking the default study's plan (what a bad flag and ``--dry-run`` go through
    before Ray) loads no Ray module: the study imports Ray only once the checks have passed."""
    import subprocess
    import sys

    code = ("import sys; from study.cli import build_parser; from study.plan import check_before_ray, make_plan; "
            f"args = build_parser().parse_args(['run', '--storage', {str(tmp_path / 'studies')!r}]); "
            "plan = make_plan(args); check_before_ray(args, plan); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert out.strip() == "[]"
