"""Screenshots for docs/: the progress display in a terminal (tmux) and TensorBoard (headless Chromium).

Usage: python scripts/screenshots.py OUT_DIR [--space FILE]

1. Runs a small digits study in a detached tmux session (a real terminal, so the live panel shows),
   captures the pane with its colours while the search runs, renders it as HTML and screenshots it.
2. Starts ``indistill-study tensorboard --start`` on that study and screenshots its HParams and
   Scalars pages with headless Chromium.
Needs tmux and chromium (Debian packages) and no other Ray on the machine.
"""
from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

SPACE = """\
benchmark: digits
budget: {trials: 4, epochs: 6, grace_period: 1, reduction_factor: 2, seed: 0, final_seeds: 1}
curriculum:
  epochs: [{low: 1, high: 2}, {low: 0, high: 1}, {low: 0, high: 1}]
  losses: [mse, pkt]
  weights: {mse: {low: 0.3, high: 3.0}, pkt: {low: 0.3, high: 3.0}}
  overlap: [false, true]
criteria: [l1, fpgm, random]
fixed:
  teacher: {epochs: 2}
  auxiliary: {ce: {epochs: 2}, pkt: {epochs: 1}}
  student: {curriculum: {epochs: [1, 1, 1]}, schedules: {ce: {epochs: 6}, mkt: {epochs: 6}}}
"""


def _chromium(url: str, out: Path, size: str = "1400,900", wait_ms: int = 15000) -> None:
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={size}", f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=120)


def capture_progress(study_root: Path, space: Path, out: Path) -> None:
    session = "indistill-shot"
    cmd = (f"{sys.executable} -m study.cli run --search-space {space} --storage {study_root} --name shot; "
           "sleep 600")
    subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "118", "-y", "22", cmd], check=True)
    best = ""
    deadline = time.monotonic() + 900
    try:
        while time.monotonic() < deadline:
            time.sleep(2)
            text = subprocess.run(["tmux", "capture-pane", "-p", "-e", "-t", session], capture_output=True, text=True).stdout
            if "search" in text and "done" in text:
                best = text  # mid-search: trials finishing, the panel below the events
            if "[study] done" in text or "results table" in text:
                break
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    if not best:
        raise SystemExit("the study never reached its search phase in tmux")
    from rich.console import Console
    from rich.text import Text

    console = Console(record=True, width=118, force_terminal=True, color_system="truecolor", file=io.StringIO())  # recorded, not shown
    console.print(Text.from_ansi(best.rstrip("\n")))
    html = out.with_suffix(".html")
    html.write_text(console.export_html(inline_styles=True))
    _chromium(html.as_uri(), out, size="1480,430", wait_ms=1000)
    html.unlink()
    (out.with_suffix(".txt")).write_text(Text.from_ansi(best).plain)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def capture_tensorboard(study: Path, out_dir: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "study.cli", "tensorboard", str(study), "--start", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(120):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(1)
        time.sleep(5)  # let it load the event files
        _chromium(url + "?darkMode=false#hparams", out_dir / "tensorboard-hparams.png", wait_ms=20000)
        _chromium(url + "?darkMode=false#timeseries", out_dir / "tensorboard-scalars.png", wait_ms=20000)
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--space", type=Path, help="search space of the study (default: a small digits one)")
    args = parser.parse_args()
    args.out_dir = args.out_dir.resolve()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="indistill-shots-"))
    space = args.space or work / "space.yaml"
    if not args.space:
        space.write_text(SPACE)
    capture_progress(work / "studies", space, args.out_dir / "progress.png")
    capture_tensorboard(work / "studies" / "shot", args.out_dir)
    print(f"screenshots in {args.out_dir}; the study in {work / 'studies' / 'shot'}")


if __name__ == "__main__":
    main()
