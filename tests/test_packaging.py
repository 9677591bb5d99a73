"""The wheel and the sdist carry everything the CLIs need (issue 22 item 1): the default configs
(package data of ``indistill``) and the top-level ``search_spaces/`` (installed as the package
``study.search_spaces``); a wheel installed outside the checkout runs both CLIs from an empty
directory, with the checkout nowhere on ``sys.path``.

Built offline (``--no-build-isolation``, the venv's setuptools) from a copy of the source tree, so
a stale ``build/`` of the checkout cannot leak into the wheel and nothing is written to it."""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from indistill.common.errors import ConfigError
from study import search_space
from study.search_space import default_space_path, packaged_spaces

REPO = Path(__file__).resolve().parent.parent
#: what a source tree holds that is not the project's: never copied into the build
NOT_SOURCE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache", "studies", "runs")


def _run(*cmd: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (cmd, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc


def _expected(prefix_configs: str, prefix_spaces: str) -> set[str]:
    """Every default config and every search space of the checkout, under the given prefixes."""
    configs = {f"{prefix_configs}{p.name}" for p in (REPO / "indistill" / "config" / "defaults").glob("*.yaml")}
    spaces = {f"{prefix_spaces}{p.name}" for p in (REPO / "search_spaces").glob("*.yaml")}
    assert len(configs) >= 6 and {f"{prefix_spaces}digits.yaml", f"{prefix_spaces}default.yaml"} <= spaces
    return configs | spaces


def test_a_benchmark_without_a_space_of_its_own_gets_the_packaged_default():
    assert default_space_path("digits") == packaged_spaces() / "digits.yaml"
    assert default_space_path("cifar10") == packaged_spaces() / "default.yaml"
    assert packaged_spaces().is_absolute()


def test_packaged_spaces_that_are_missing_are_a_one_line_error_naming_them(monkeypatch, tmp_path):
    monkeypatch.setattr(search_space, "SPACES_PACKAGE", "study.no_such_spaces")
    with pytest.raises(ConfigError) as exc:
        default_space_path("digits")
    assert str(exc.value) == ("--search-space: the packaged search spaces (package study.no_such_spaces) are not "
                              "installed; reinstall indistill-study (pip install -e . in a checkout) or give "
                              "--search-space FILE")
    assert search_space.packaged_spaces_text() == "not installed: reinstall indistill-study"
    monkeypatch.setattr(search_space, "packaged_spaces", lambda: tmp_path)
    with pytest.raises(ConfigError) as exc:
        default_space_path("cifar10")
    assert str(exc.value) == (f"--search-space: no cifar10.yaml nor default.yaml among the packaged search spaces in "
                              f"{tmp_path}; reinstall indistill-study or give --search-space FILE")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """The sdist and the wheel of a copy of the source tree, and that wheel installed into a target."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(*NOT_SOURCE), symlinks=True)
    sdist_dir, wheel_dir = tmp / "sdist", tmp / "wheel"
    _run(sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(sdist_dir)!r})", cwd=src)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir), ".", cwd=src)
    (sdist,), (wheel,) = sdist_dir.glob("*.tar.gz"), wheel_dir.glob("*.whl")
    _run(sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q", "--target", str(tmp / "site"),
         str(wheel), cwd=tmp)
    return {"tmp": tmp, "sdist": sdist, "wheel": wheel, "site": (tmp / "site").resolve()}


@pytest.mark.e2e
def test_the_wheel_holds_every_config_search_space_and_module(built):
    names = set(zipfile.ZipFile(built["wheel"]).namelist())
    missing = _expected("indistill/config/defaults/", "study/search_spaces/") - names
    assert not missing, missing
    assert "study/search_spaces/__init__.py" in names
    modules = {p.relative_to(REPO).as_posix() for pkg in ("indistill", "study") for p in (REPO / pkg).rglob("*.py")}
    assert modules and not modules - names, modules - names  # pyproject.toml's package list has every sub-package
    assert not [n for n in names if n.startswith("search_spaces/")]  # no stray top-level package


@pytest.mark.e2e
def test_the_sdist_holds_every_config_and_search_space_and_builds_the_same_wheel(built):
    with tarfile.open(built["sdist"]) as tar:
        names = set(tar.getnames())
    top = built["sdist"].name.removesuffix(".tar.gz")
    missing = _expected(f"{top}/indistill/config/defaults/", f"{top}/search_spaces/") - names
    assert not missing, missing
    assert {f"{top}/pyproject.toml", f"{top}/search_spaces/__init__.py"} <= names
    again = built["tmp"] / "from-sdist"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(again),
         str(built["sdist"]), cwd=built["tmp"])
    (wheel,) = again.glob("*.whl")
    assert set(zipfile.ZipFile(wheel).namelist()) == set(zipfile.ZipFile(built["wheel"]).namelist())


def _outside(built: dict[str, Path], *args: str) -> subprocess.CompletedProcess:
    """``python -S ARGS`` in an empty directory outside the checkout: the installed wheel first on
    the path, then the venv's site-packages for the dependencies; no site processing, so the
    checkout's editable install (a .pth finder) is not loaded."""
    empty = built["tmp"] / "empty"
    empty.mkdir(exist_ok=True)
    deps = [p for p in site.getsitepackages() if os.path.isdir(p)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS", "INDISTILL_DEBUG")}
    env.update(PYTHONPATH=os.pathsep.join([str(built["site"]), *deps]), INDISTILL_DATA=str(built["tmp"] / "data"))
    proc = _run(sys.executable, "-S", *args, cwd=empty, env=env)
    assert os.listdir(empty) == []  # nothing written where it ran
    return proc


@pytest.mark.e2e
def test_the_installed_wheel_is_what_runs(built):
    proc = _outside(built, "-c", "import sys, indistill, study.search_spaces as s; "
                    "print(indistill.__file__); print(s.__file__); print(*sys.path, sep='\\n')")
    first, second, *path = proc.stdout.splitlines()
    assert first == str(built["site"] / "indistill" / "__init__.py")
    assert second == str(built["site"] / "study" / "search_spaces" / "__init__.py")
    venv = Path(sys.prefix).resolve()
    assert all(not Path(p).resolve().is_relative_to(REPO) or Path(p).resolve().is_relative_to(venv)
               for p in path if p), path  # the checkout is not on sys.path (its venv's site-packages is)


@pytest.mark.e2e
def test_the_installed_wheel_runs_both_clis_from_an_empty_directory(built):
    proc = _outside(built, "-m", "indistill.cli", "config", "--benchmark", "digits")
    assert proc.stdout.startswith("benchmark: digits\n")
    proc = _outside(built, "-m", "study.cli", "run", "--dry-run")
    lines = proc.stdout.splitlines()
    assert f"  search space : {built['site'] / 'study' / 'search_spaces' / 'digits.yaml'}" in lines
    assert f"  config       : {built['site'] / 'indistill' / 'config' / 'defaults' / 'digits.yaml'}" in lines
    assert f"storage        : {built['tmp'] / 'empty' / 'studies' / 'default'}" in lines
    assert "  trials       : 8, " in "\n".join(lines)
    proc = _outside(built, "-m", "study.cli", "run", "--help")
    assert str(built["site"] / "study" / "search_spaces") in "".join(proc.stdout.split())  # --help wraps at hyphens
