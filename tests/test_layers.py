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
    pkg = tmp_path / "indistill" / "engine"
    pkg.mkdir(parents=True)
    probe = pkg / "probe.py"
    probe.write_text("from ..data import x\nfrom . import loop\ndef f():\n    import ray.tune\n    from ...study import cli\n")
    found = imports(probe, tmp_path)
    assert {"indistill.data", "indistill.engine.loop", "ray.tune", "study.cli"} <= found


#: indistill's layers, lowest first: a module imports only from its own layer and the layers this
#: table allows (the method and evaluation are siblings: neither imports the other)
LAYERS = {
    "common": (),
    "config": ("common",),
    "data": ("common", "config"),
    "models": ("common", "config", "data"),
    "method": ("common", "config", "data", "models"),
    "evaluation": ("common", "config", "data", "models"),
    "engine": ("common", "config", "data", "models", "method", "evaluation"),
}
#: the package's top: its public entry points only
TOP = ["__init__.py", "cli.py"]


def layer_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0]


def test_the_package_is_its_layers_and_its_entry_points() -> None:
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(LAYERS)
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == TOP


@pytest.mark.parametrize("path", [p for p in sources(PACKAGE) if p.parent != PACKAGE], ids=lambda p: str(p.relative_to(ROOT)))
def test_a_layer_imports_only_the_layers_below_it(path: Path) -> None:
    layer = layer_of(path)
    forbidden = tuple(f"indistill.{other}" for other in LAYERS if other != layer and other not in LAYERS[layer])
    assert offending(path, forbidden + ("indistill.cli",)) == []


def test_the_layer_check_sees_an_upward_import(tmp_path) -> None:
    probe = tmp_path / "indistill" / "method" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text("def f():\n    from indistill.engine.loop import train\n")
    found = imports(probe, tmp_path)
    assert "indistill.engine.loop" in found and any(under(n, "indistill.engine") for n in found)


@pytest.mark.parametrize("path", sources(PACKAGE), ids=lambda p: str(p.relative_to(ROOT)))
def test_indistill_never_imports_ray_or_study(path: Path) -> None:
    assert offending(path, ("ray", "study")) == []


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
