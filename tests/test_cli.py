"""Both CLIs' help (every argument explained, defaults shown once, the environment listed) and
``indistill-study tensorboard`` (this environment's TensorBoard, bound to 127.0.0.1, stopped cleanly)."""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from indistill.cli import build_parser as indistill_parser
from indistill.cli import main as indistill_main
from study import cli as study_cli
from study import tensorboard_server

from .s3 import free_port

REPO = Path(__file__).resolve().parents[1]
PARSERS = {"indistill": indistill_parser, "indistill-study": study_cli.build_parser}


MAINS = {"indistill": indistill_main, "indistill-study": study_cli.main}


@pytest.mark.parametrize("prog", PARSERS)
@pytest.mark.parametrize("argv", [[], ["--debug"]])
def test_no_sub_command_prints_the_help_and_succeeds(prog, argv, capsys) -> None:
    assert MAINS[prog](argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {prog} ") and all(name in out for name in _subparsers(PARSERS[prog]()).choices)


def _sub_commands() -> list[tuple[str, str]]:
    return [(prog, name) for prog, build in PARSERS.items() for name in _subparsers(build()).choices]


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _shown(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """``action``'s help as --help prints it, whitespace collapsed."""
    return " ".join(parser._get_formatter()._expand_help(action).split())


@pytest.mark.parametrize("prog, command", _sub_commands(), ids=lambda v: v)
def test_every_argument_is_explained_with_its_default(prog, command):
    parser = _subparsers(PARSERS[prog]()).choices[command]
    text = parser.format_help()
    flat = " ".join(text.split())
    assert "``" not in text
    assert text.split("\noptions:\n")[0].count(".") >= 1  # a description sentence under the usage
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        shown = _shown(parser, action)
        assert shown, f"{prog} {command}: {action.dest} has no help"
        assert shown in flat, (action.dest, shown)
        assert shown.count("(default") <= 1, shown  # said once, by us or by the formatter
        flag = action.nargs == 0
        if action.option_strings and not flag and not action.required:
            assert "(default: " in shown, f"{prog} {command}: {action.dest} does not say its default"
            if action.default is not None:
                assert f"(default: {action.default}" in shown, shown
        else:
            assert "(default" not in shown, shown


@pytest.mark.parametrize("prog", list(PARSERS))
def test_the_main_help_lists_every_command_without_markup(prog):
    parser = PARSERS[prog]()
    text = parser.format_help()
    assert "``" not in text
    for choice in _subparsers(parser)._choices_actions:
        assert choice.help and choice.dest in text


def test_epochs_says_what_it_changes():
    run = _subparsers(study_cli.build_parser()).choices["run"]
    shown = _shown(run, next(a for a in run._actions if a.dest == "epochs"))
    assert "student epochs of every trial and of every final student row" in shown and "budget.epochs" in shown


def _variables_read(package: str) -> set[str]:
    """The environment variables the package's source reads: os.environ.get("X"), os.environ["X"],
    getenv("X"), and constants named *_ENV."""
    names: set[str] = set()
    for path in (REPO / package).rglob("*.py"):
        text = path.read_text()
        names |= set(re.findall(r"""(?:environ(?:\.get|\.setdefault)?\(|environ\[|getenv\()\s*["']([A-Z][A-Z0-9_]*)""", text))
        names |= set(re.findall(r"""^\w*_ENV\s*=\s*\(?\s*["']([A-Z][A-Z0-9_]*)""", text, flags=re.M))
    return names


def test_the_epilogs_list_the_environment_the_code_reads():
    study_reads = _variables_read("study") | _variables_read("indistill")
    assert {"RAY_ADDRESS", "INDISTILL_DATA", "INDISTILL_DEBUG", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"} <= study_reads
    main = study_cli.build_parser()
    for text in (main.format_help(), _subparsers(main).choices["run"].format_help()):
        listed = text.split("environment variables:")[1]
        for name in study_reads | {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}:
            assert re.search(rf"^  {name}: ", listed, flags=re.M), name
        assert "pyarrow" in listed
    indistill_reads = _variables_read("indistill")
    main = indistill_parser()
    for text in (main.format_help(), _subparsers(main).choices["run"].format_help()):
        for name in indistill_reads:
            assert re.search(rf"^  {name}: ", text.split("environment variables:")[1], flags=re.M), name


@pytest.mark.parametrize("argv", [[], ["--debug"]])
def test_indistill_study_without_a_command_prints_its_help(argv, capsys, monkeypatch):
    monkeypatch.setitem(study_cli.COMMANDS, "run", lambda _a: pytest.fail("ran a study"))
    assert study_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: indistill-study") and "tensorboard" in out and "environment variables:" in out


@pytest.mark.parametrize("argv", [[], ["--debug"]])
def test_indistill_without_a_command_prints_its_help(argv, capsys, monkeypatch):
    import indistill.engine.pipeline

    monkeypatch.setattr(indistill.engine.pipeline, "run_pipeline", lambda *_a, **_k: pytest.fail("ran a pipeline"))
    assert indistill_main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: indistill") and "config" in out and "INDISTILL_DATA" in out


# ----------------------------------------------------------------------------- tensorboard


def make_study(root: Path) -> Path:
    """The least a study directory is (what Storage.check_study reads)."""
    root.mkdir(parents=True)
    (root / "study.json").write_text(json.dumps({"name": root.name, "benchmarks": ["digits"]}))
    return root


def test_tensorboard_prints_this_environments_command(tmp_path, capsys):
    study = make_study(tmp_path / "s")
    assert study_cli.main(["tensorboard", str(study), "--port", "6010", "--host", "0.0.0.0"]) == 0
    cmd = shlex.split(capsys.readouterr().out.splitlines()[0])
    assert cmd == [sys.executable, "-m", "tensorboard.main", "--logdir", str(study), "--host", "0.0.0.0", "--port", "6010"]
    assert study_cli.main(["tensorboard", str(study)]) == 0
    assert "--host 127.0.0.1 --port 6006" in capsys.readouterr().out


@pytest.mark.parametrize("host, url", [("127.0.0.1", "http://127.0.0.1:6006/"), ("::1", "http://[::1]:6006/"),
                                       ("0.0.0.0", f"http://{socket.gethostname()}:6006/")])
def test_tensorboard_url(host, url):
    assert tensorboard_server.tensorboard_url(host, 6006) == url


def test_tensorboard_on_a_busy_port_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(study_cli.os, "execv", lambda *_a: pytest.fail("started TensorBoard on a busy port"))
    study = make_study(tmp_path / "s")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert study_cli.main(["tensorboard", str(study), "--start", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"indistill-study: error: --port: cannot listen on 127.0.0.1:{port}: ") and "\n" not in err


def test_tensorboard_on_an_address_of_another_machine_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(study_cli.os, "execv", lambda *_a: pytest.fail("started TensorBoard on a foreign address"))
    study = make_study(tmp_path / "s")
    assert study_cli.main(["tensorboard", str(study), "--start", "--host", "192.0.2.1"]) == 2  # TEST-NET-1: never local
    err = capsys.readouterr().err.strip()
    assert err.startswith("indistill-study: error: --host: cannot listen on 192.0.2.1:6006: ") and "\n" not in err


@pytest.mark.parametrize("host", ["", "a b", "10.0.0.0/8"])
def test_tensorboard_host_must_be_an_address(host, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        study_cli.main(["tensorboard", str(make_study(tmp_path / "s")), "--host", host])
    assert exc.value.code == 2 and "argument --host: expected an address or host name" in capsys.readouterr().err


def _live_members(pgid: int) -> list[int]:
    """Processes of group ``pgid`` still running (zombies are dead, whoever reaps them)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        state, _ppid, group = text[text.rindex(")") + 2:].split()[:3]
        if int(group) == pgid and state != "Z":
            pids.append(int(stat.parent.name))
    return pids


def _get_when_up(url: str, proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"TensorBoard exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode(errors="replace")
        except (urllib.error.URLError, ConnectionError):
            if time.monotonic() > deadline:
                pytest.fail(f"TensorBoard did not answer at {url} within {timeout:.0f}s")
            time.sleep(0.5)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process table from /proc")
def test_tensorboard_start_serves_the_study_from_this_environment(tmp_path):
    study = make_study(tmp_path / "study")
    port = free_port()
    # PATH without the environment's bin/: only the interpreter's own TensorBoard can start
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(REPO), "LANG": "C.UTF-8"}
    proc = subprocess.Popen([sys.executable, "-m", "study.cli", "tensorboard", str(study), "--start", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path,
                            start_new_session=True)
    try:
        status, page = _get_when_up(f"http://127.0.0.1:{port}/", proc, timeout=120)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/logdir", timeout=10) as response:
            logdir = json.loads(response.read())["logdir"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            pytest.fail(f"TensorBoard did not stop on SIGTERM: {out}")
    assert status == 200 and "<title>TensorBoard</title>" in page
    assert logdir == str(study)
    assert f"at http://127.0.0.1:{port}/ (Ctrl-C stops it)" in out
    deadline = time.monotonic() + 15
    while _live_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _live_members(proc.pid) == [], "a TensorBoard process outlived its group's SIGTERM"
