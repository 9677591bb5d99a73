"""The documentation: the README is a guide, the mkdocs site builds with --strict, every generated table
agrees with its results file, and every ``indistill`` / ``indistill-study`` command line in the docs parses."""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import doc_tables  # noqa: E402  (scripts/doc_tables.py)

README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
DOCS = [README, *PAGES]


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# ----------------------------------------------------------------------------- the README


def test_the_readme_is_a_guide_with_the_two_commands() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    assert "bash scripts/study.sh" in text and "bash .ci/run" in text
    # .ci/run runs exactly the README's test command
    assert "`bash .ci/run` is `bash scripts/setup.sh && .venv/bin/python -m pytest`" in text
    ci = (ROOT / ".ci/run").read_text().splitlines()
    assert "bash scripts/setup.sh" in ci and any(line.startswith("exec .venv/bin/python -m pytest") for line in ci)
    # the test command sets everything up, the docs extra included
    assert 'pip install -e ".[test,docs]"' in (ROOT / "scripts/setup.sh").read_text()
    # the one picture, and a link to every page of the site
    assert "![" in text and "(docs/progress.png)" in text
    for page in PAGES:
        if page.name != "index.md":
            assert f"(docs/{page.name})" in text, page.name


def _slug(heading: str) -> str:
    """The anchor GitHub and mkdocs' toc give a heading like ours (words, spaces, a few signs)."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return re.sub(r"[ ]+", "-", text)


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_the_readmes_links_resolve() -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", README.read_text())
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert len(local) >= 10
    for link in local:
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.exists(), link
        if anchor:
            assert anchor in _anchors(target), link


def test_the_slug_is_the_anchor_mkdocs_gives() -> None:
    assert _slug("Fidelity: the reference recipe") == "fidelity-the-reference-recipe"
    assert _slug("The study: `indistill-study`") == "the-study-indistill-study"
    assert "how-many-trials-run-at-once" in _anchors(ROOT / "docs/cluster.md")


# ----------------------------------------------------------------------------- what the pages say


def test_no_page_cites_a_design_document_the_repository_lacks() -> None:
    name = "DESIGN" + ".md"  # spelt so that this file does not cite it either
    if (ROOT / name).exists():
        pytest.skip(f"{name} is in the repository")
    files = [*DOCS, ROOT / "CHANGELOG.md", ROOT / "mkdocs.yml"]
    for folder in ("indistill", "study", "benchmarks", "scripts", "tests"):
        files += sorted((ROOT / folder).rglob("*.py"))
    cited = [rel(f) for f in files if name in f.read_text()]
    assert cited == []


#: how a diary reads: reviews, issues, sessions, re-runs
HISTORY = re.compile(r"\breview|\bre-?run (after|from)|\bre-measured|\bissue (#?\d|that)|\b(this|the|a) session (that|of)\b"
                     r"|\bmeasured (before|after)\b", re.I)


def test_the_docs_hold_no_work_history() -> None:
    found = [f"{rel(p)}: {m.group(0)}" for p in DOCS for m in HISTORY.finditer(p.read_text())]
    assert found == []
    assert HISTORY.search("re-run from a fresh clone after the review") and HISTORY.search("the issue that introduced it")


# ----------------------------------------------------------------------------- the site


def mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess:
    try:
        import mkdocs as _mkdocs  # noqa: F401
        import material as _material  # noqa: F401
    except ImportError:
        pytest.fail('mkdocs-material is not installed: pip install -e ".[docs]" (scripts/setup.sh does)')
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_the_site_builds_with_strict(tmp_path) -> None:
    proc = mkdocs(ROOT / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    nav = re.findall(r":\s+(\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), flags=re.M)
    assert sorted(nav) == sorted(p.name for p in PAGES)  # every page in the nav, and only pages
    for page in nav:
        built = tmp_path / "site" / ("index.html" if page == "index.md" else f"{page[:-3]}/index.html")
        assert built.is_file(), page
    method = (tmp_path / "site/method/index.html").read_text()
    assert "a new Adam at the start of every student epoch" in method  # the generated fidelity table


def _site_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "docs", copy / "docs")
    shutil.copy(ROOT / "mkdocs.yml", copy / "mkdocs.yml")
    return copy


@pytest.mark.parametrize("broken, says", [
    ("[Manual downloads](benchmarks.md#manual-downloads)", "does not contain an anchor '#no-such-section'"),
    ("[Devices](devices.md)", "not found among documentation files"),
])
def test_the_strict_build_fails_on_a_broken_link_or_anchor(tmp_path, broken, says) -> None:
    copy = _site_copy(tmp_path)
    page = copy / "docs/troubleshooting.md"
    text = page.read_text()
    assert broken in text
    page.write_text(text.replace(broken, broken.replace("#manual-downloads", "#no-such-section")
                                 .replace("(devices.md)", "(no-such-page.md)"), 1))
    proc = mkdocs(copy / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode != 0 and says in proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- generated tables


def test_every_generated_table_agrees_with_its_results_file() -> None:
    assert doc_tables.check() == []


def test_the_tables_hold_their_files_values() -> None:
    distill = doc_tables.distill(ROOT / "perf/cpu-distill.json", "perf/cpu-distill.json")
    assert "| block1 / MSE | fast | 128 | **7,789** |" in distill and "| embedding / PKT | **2.82x** |" in distill
    assert "python -m perf.speed distill --device cpu --out perf/cpu-distill.json" in distill
    retrieval = doc_tables.retrieval(ROOT / "perf/cpu-retrieval.json", "perf/cpu-retrieval.json")
    assert "| 10,000 x 50,000 x 64 | cosine | 85.54 [85.52] | 5.87 [5.23] | **14.6x** [16.3x] |" in retrieval
    phases = doc_tables.study_phases(ROOT / "perf/ray-overhead-digits.json", "perf/ray-overhead-digits.json")
    assert "| artifacts (teacher, auxiliary, pruning; twice) | 100 |" in phases and "| the three phases | 390 |" in phases
    assert "started 2026-12-02 04:30 UTC" in phases
    # what produced it, as the file records it: the study's versions and commit, the machine
    assert "2 usable cores, 2 trials at a time; indistill-study 0.1.0, Python 3.11.7, torch 2.14.1, Ray 2.60.0" in phases
    assert phases.rstrip().endswith("; git 0f525b6ea49c.")
    overhead = doc_tables.ray_overhead(ROOT / "perf/ray-overhead-digits.json", "perf/ray-overhead-digits.json")
    assert "| trial wall time (Tune function start to last report) | 30.6 s |" in overhead
    run = doc_tables.digits_run(ROOT / "docs/results/digits-run/results.csv", "docs/results/digits-run/results.csv")
    assert "| student (ce) | 14,906 | 3 | 95.41 ± 0.53 | 94.65 ± 0.31 | 95.40 ± 0.52 | 97.02 ± 0.41 | +2.74 [+0.88, +4.59] * |" in run
    assert "| teacher | 620,234 | 1 | 97.44 | 96.70 | 97.44 | 98.50 |  |" in run
    assert "`indistill run --benchmark digits --seeds 0,1,2 --device cpu --out /tmp/digits3` at commit 5f2ab06" in run
    study = doc_tables.default_study(ROOT / "docs/results/default-study/results.csv", "docs/results/default-study/results.csv")
    assert "| InDistill (tuned) | 14,906 | 20 | 3 | 90.53 ± 0.25 | 89.55 ± 0.21 |  |" in study
    assert "| student (mkt) | 14,906 | 20 (MKT's recipe) | 3 | 94.01 ± 0.15 | 94.12 ± 0.10 | +3.48 [+2.84, +4.12] * |" in study
    assert "val mAP 88.53): 1ep pkt w=0.262; 2ep pkt w=0.856; 3ep mse w=2.05; overlap=True; criterion=activation." in study
    from indistill.config.fidelity import fidelity_markdown

    assert fidelity_markdown() in (ROOT / "docs/method.md").read_text()


def _tables_copy(tmp_path: Path) -> Path:
    """The pages and the results files of every table, in a tree of their own."""
    root = tmp_path / "repo"
    for path in [README, *PAGES, *(ROOT / t.source for t in doc_tables.TABLES)]:
        (root / rel(path)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / rel(path))
    for beside in [*(ROOT / "docs/results").glob("*/meta.txt"), *(ROOT / "docs/results").glob("*/pareto.csv")]:
        shutil.copy(beside, root / rel(beside))  # what a run's table reads beside its results file
    return root


def test_the_check_fails_when_a_page_and_its_file_disagree(tmp_path) -> None:
    root = _tables_copy(tmp_path)
    assert doc_tables.check(root) == []
    page = root / "docs/performance.md"
    text = page.read_text()
    # an edited figure on the page
    page.write_text(text.replace("**7,789**", "**7,798**", 1))
    assert doc_tables.check(root) == ["docs/performance.md: table 'speed-distill' differs from perf/cpu-distill.json"]
    page.write_text(text)
    # a new measurement in the file, the page not regenerated
    data = json.loads((root / "perf/cpu-retrieval.json").read_text())
    data["retrieval"]["sizes"][1]["metrics"]["cosine"]["ratio"] = 20.0
    (root / "perf/cpu-retrieval.json").write_text(json.dumps(data))
    assert doc_tables.check(root) == ["docs/performance.md: table 'speed-retrieval' differs from perf/cpu-retrieval.json"]
    # regenerating writes the file's figures
    new, changed = doc_tables.regenerate(text, "docs/performance.md", root)
    assert changed == ["speed-retrieval"] and "**20.0x**" in new
    # a table on no page, and a malformed marker
    start = text.index("<!-- generated: ray-overhead")
    end = text.index("<!-- end generated: ray-overhead -->") + len("<!-- end generated: ray-overhead -->")
    page.write_text(text[:start] + text[end:])
    assert "table 'ray-overhead' (perf/ray-overhead-digits.json) is on no page" in doc_tables.check(root)
    page.write_text(text.replace("<!-- end generated: ray-overhead -->", "", 1))
    assert any("has no end marker" in p for p in doc_tables.check(root))


# ----------------------------------------------------------------------------- commands in the docs

FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
#: code blocks whose lines are commands (unlabelled ones too); text, yaml, json... are output or data
SHELL = {"", "bash", "sh", "shell", "console"}
CLIS = {"indistill", "indistill-study"}
OPERATORS = {"|", "||", "&&", ";", "&", ">", ">>", "2>&1", "<"}
#: inline code that is a command line: it starts with a CLI, and is not one of their error lines
COMMAND_SPAN = re.compile(r"(\.venv/bin/)?indistill(-study)?( |$)(?!.*\b(error|failed): )")
#: placeholders the docs use where a value of a type is needed
PLACEHOLDERS = {"<benchmark>": "digits", "<s>": "0"}


def snippets(text: str) -> list[tuple[int, str, bool]]:
    """(line number, text, in a code block) of every shell line of the fenced code blocks (backslash
    continuations joined) and of every inline code span outside them."""
    out: list[tuple[int, str, bool]] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence:
            lang, start = fence.group(2).lower(), i + 1
            i += 1
            block: list[tuple[int, str]] = []
            while i < len(lines) and not FENCE.match(lines[i]):
                block.append((i + 1, lines[i]))
                i += 1
            if lang in SHELL:
                pending, first = "", start
                for number, line in block:
                    if not pending:
                        first = number
                    if line.rstrip().endswith("\\"):
                        pending += line.rstrip()[:-1] + " "
                        continue
                    out.append((first, pending + line, True))
                    pending = ""
        else:
            out += [(i + 1, m.group(1), False) for m in re.finditer(r"(?<!`)`([^`\n]+)`(?!`)", lines[i])]
        i += 1
    return out


def commands_in(tokens: list[str]) -> list[tuple[str, list[str]]]:
    """The (CLI, arguments) of every indistill / indistill-study command in a shell line's tokens,
    also inside a quoted argument (``ray exec cluster.yaml "indistill-study run ..."``)."""
    found = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        cli = os.path.basename(tok) if os.path.basename(tok) in CLIS else None
        if tok == "scripts/study.sh" and i > 0 and tokens[i - 1] == "bash":
            cli = "scripts/study.sh"
        if cli:
            j = i + 1
            while j < len(tokens) and tokens[j] not in OPERATORS and not tokens[j].startswith(">"):
                j += 1
            args = [PLACEHOLDERS.get(t, t) for t in tokens[i + 1:j]]
            if cli == "scripts/study.sh":  # it runs indistill-study with its arguments, `run` without
                cli, args = "indistill-study", args or ["run"]
            found.append((cli, args))
            i = j
            continue
        if " " in tok and any(name in tok for name in CLIS):
            with contextlib.suppress(ValueError):
                found += commands_in(shlex.split(tok, comments=True))
        i += 1
    return found


def doc_commands() -> list[tuple[str, str, list[str]]]:
    """(where, CLI, arguments) of every command line in README.md and docs/*.md."""
    out = []
    for page in DOCS:
        for number, snippet, in_block in snippets(page.read_text()):
            if not in_block and not COMMAND_SPAN.match(snippet):
                continue  # inline code that is not a command line
            try:
                tokens = shlex.split(snippet, comments=True)
            except ValueError as exc:
                raise AssertionError(f"{rel(page)}:{number}: not a shell line ({exc}): {snippet}") from None
            out += [(f"{rel(page)}:{number}", cli, args) for cli, args in commands_in(tokens)]
    return out


def strict_parser(cli: str) -> argparse.ArgumentParser:
    """The CLI's own parser, with abbreviated options refused (``--epoch`` is not ``--epochs``)."""
    from indistill.cli import build_parser as indistill_parser
    from study.cli import build_parser as study_parser

    parser = (indistill_parser if cli == "indistill" else study_parser)()
    todo = [parser]
    while todo:
        p = todo.pop()
        p.allow_abbrev = False
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += list(action.choices.values())
    return parser


def parse_error(cli: str, args: list[str]) -> str | None:
    """None when ``cli args`` parses (``--help`` included), else what argparse said."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            strict_parser(cli).parse_args(args)
    except SystemExit as exc:
        if exc.code not in (0, None):
            return err.getvalue().strip().splitlines()[-1]
    return None


def test_every_command_line_in_the_docs_parses() -> None:
    commands = doc_commands()
    bad = [f"{where}: {cli} {shlex.join(args)}: {error}" for where, cli, args in commands
           if (error := parse_error(cli, args))]
    assert bad == []
    # they are found in code blocks, inline code, quoted arguments (ray exec) and through scripts/study.sh
    lines = {f"{cli} {shlex.join(args)}" for _where, cli, args in commands}
    assert len(commands) >= 40
    assert "indistill-study table studies/default" in lines  # bash scripts/study.sh table studies/default
    assert "indistill-study run" in lines  # bash scripts/study.sh
    assert any(line.startswith("indistill-study run --address auto --benchmarks cifar10,cifar100 --storage "
                               "s3://YOUR-BUCKET/indistill-studies --name cifar-study") for line in lines)
    assert "indistill run --benchmark digits --seeds 0,1,2" in lines
    assert "indistill config --benchmark cifar10" in lines
    assert {where.split(":")[0] for where, *_ in commands} >= {"README.md", "docs/getting-started.md", "docs/study.md",
                                                               "docs/cluster.md", "docs/benchmarks.md"}


@pytest.mark.parametrize("cli, line, says", [
    ("indistill-study", "run --no-such-flag", "unrecognized arguments: --no-such-flag"),
    ("indistill-study", "runn --trials 4", "invalid choice: 'runn'"),
    ("indistill-study", "run --epoch 12", "unrecognized arguments: --epoch"),  # no abbreviations
    ("indistill-study", "run --trials four", "invalid int value: 'four'"),
    ("indistill-study", "export studies/default", "the following arguments are required: --out"),
    ("indistill", "run --seeds 0,x", "--seeds"),
    ("indistill", "config --benchmarks digits", "unrecognized arguments: --benchmarks"),
])
def test_a_command_that_does_not_parse_is_caught(cli, line, says) -> None:
    error = parse_error(cli, shlex.split(line))
    assert error is not None and says in error


def test_commands_are_found_in_blocks_inline_code_and_quoted_arguments() -> None:
    text = "\n".join([
        "Run `indistill-study run --trials 2`; `indistill: error: x` and `indistill-study table: error: y` are not commands:",
        "```bash",
        'ray exec cluster.yaml --tmux "indistill-study run --address auto \\',
        '  --name c --resume"   # a comment',
        ".venv/bin/indistill run --benchmark <benchmark> 2>&1 | tee log",
        "bash scripts/study.sh",
        "```",
        "```text",
        "tensorboard     : indistill-study tensorboard studies/default --start",
        "```",
    ])
    found = []
    for _number, snippet, in_block in snippets(text):
        if in_block or COMMAND_SPAN.match(snippet):
            found += commands_in(shlex.split(snippet, comments=True))
    assert found == [("indistill-study", ["run", "--trials", "2"]),
                     ("indistill-study", ["run", "--address", "auto", "--name", "c", "--resume"]),
                     ("indistill", ["run", "--benchmark", "digits"]),
                     ("indistill-study", ["run"])]
