"""One driver per study: a live driver's lease stops a second driver before Ray starts (locally and
on the S3 server), a stale one is taken over; a study stopped by SIGINT or SIGTERM in any phase is
resumed to its full table (real driver processes; the S3 kill test: tests/test_study_resilience.py)."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from study.lease import LEASE_FILE

from .s3 import BUCKET
from .test_study import LEAN_CURRICULUM, LEAN_FIXED
from .test_study_resilience import _space, _wait_for_group_exit


def _lease(host: str, pid: int, renewed_ago: float) -> dict:
    now = time.time()
    return {"host": host, "pid": pid, "since": now - 3600, "renewed": now - renewed_ago, "token": "f" * 32}


@pytest.fixture(params=["local", "s3"])
def study_dir(request, tmp_path):
    """(--storage, write the lease of study 'leased') on local disk or on the S3 server."""
    if request.param == "local":
        storage = tmp_path / "studies"

        def put(lease: dict) -> None:
            (storage / "leased").mkdir(parents=True, exist_ok=True)
            (storage / "leased" / LEASE_FILE).write_text(json.dumps(lease))

        return str(storage), put
    s3 = request.getfixturevalue("s3")

    def put_s3(lease: dict) -> None:
        s3.client().put_object(Bucket=BUCKET, Key=f"studies/leased/{LEASE_FILE}", Body=json.dumps(lease).encode())

    return f"s3://{BUCKET}/studies", put_s3


def _dry_run(storage: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "study.cli", "run", "--dry-run", "--storage", storage, "--name", "leased"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env={**os.environ, **env})


def test_a_live_lease_stops_a_second_driver_and_a_stale_one_does_not(study_dir, tmp_path):
    storage, put = study_dir
    put(_lease("other-host", 4242, renewed_ago=5))  # a driver on another machine, renewed 5 s ago (of 60)
    refused = _dry_run(storage, tmp_path)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    (line,) = refused.stderr.splitlines()
    assert re.fullmatch(rf"indistill-study: error: {re.escape(storage)}/leased: the study has a live driver: pid 4242 on "
                        r"host other-host, driving it since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(lease renewed \d+ s ago\); "
                        r"one study has one driver: .* \$INDISTILL_LEASE_S\)", line), line
    # the same lease, expired: the driver on the other machine is gone
    assert _dry_run(storage, tmp_path, INDISTILL_LEASE_S="3").returncode == 0
    # a lease of this machine whose process has ended is stale at once
    gone = subprocess.Popen(["true"])
    gone.wait()
    put(_lease(socket.gethostname(), gone.pid, renewed_ago=0))
    assert _dry_run(storage, tmp_path).returncode == 0


@pytest.mark.e2e
@pytest.mark.ray
def test_one_driver_per_study_and_signals_stop_it_resumably_in_every_phase(tmp_path):
    """Driver A runs a local study; driver B on the same study exits 2 in one line naming A before
    Ray starts; SIGINT stops A in its search, SIGTERM stops the resumed C in its final runs, each
    within seconds and releasing the lease; D resumes to the full table."""
    space = _space(tmp_path, trials=1, epochs=2, final_seeds=1, fixed=LEAN_FIXED, curriculum=LEAN_CURRICULUM,
                   early_stopping=False)
    storage = tmp_path / "studies"
    cmd = [sys.executable, "-m", "study.cli", "run", "--search-space", str(space), "--storage", str(storage),
           "--name", "signals"]
    lease = storage / "signals" / LEASE_FILE
    env = {**os.environ, "INDISTILL_LEASE_S": "6"}  # renewed every 2 s

    def start(name: str, *extra: str) -> subprocess.Popen:
        with open(tmp_path / f"{name}.log", "w") as log:
            return subprocess.Popen([*cmd, *extra], env=env, stdout=log, stderr=subprocess.PIPE, text=True,
                                    cwd=tmp_path, start_new_session=True)

    def wait_for(name: str, driver: subprocess.Popen, text: str) -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and driver.poll() is None:
            if text in (tmp_path / f"{name}.log").read_text():
                return
            time.sleep(0.2)
        pytest.fail(f"{name} never printed {text!r}:\n" + (tmp_path / f"{name}.log").read_text()[-3000:])

    def stop(driver: subprocess.Popen, sig: signal.Signals) -> float:
        t0 = time.monotonic()
        driver.send_signal(sig)
        _out, err = driver.communicate(timeout=60)
        seconds = time.monotonic() - t0
        assert driver.returncode == 128 + sig, err
        (line,) = err.splitlines()
        assert line.startswith(f"indistill-study: stopped by {sig.name} after ") and "resumable" in line, line
        assert not lease.exists()
        # Ray's processes went with it (ray.shutdown in the stop): the next driver starts on a clean machine
        assert _wait_for_group_exit(driver.pid, 15), "Ray processes of the stopped driver still run"
        return seconds

    drivers: list[subprocess.Popen] = []
    try:
        a = start("a")
        drivers.append(a)
        wait_for("a", a, "[digits] artifacts:")
        holder = json.loads(lease.read_text())
        assert (holder["host"], holder["pid"]) == (socket.gethostname(), a.pid)
        t0 = time.monotonic()
        b = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        refused_s = time.monotonic() - t0
        assert b.returncode == 2, b.stdout + b.stderr
        (line,) = b.stderr.splitlines()
        assert f"the study has a live driver: pid {a.pid} on host {socket.gethostname()}, driving it since " in line, line
        assert b.stdout == "" and refused_s < 30, (b.stdout, refused_s)
        time.sleep(3)  # past a renewal: A's lease is still its own
        assert json.loads(lease.read_text())["token"] == holder["token"]
        assert json.loads(lease.read_text())["renewed"] > holder["renewed"]
        wait_for("a", a, "[digits] search:")
        stopped_search_s = stop(a, signal.SIGINT)

        c = start("c", "--resume")
        drivers.append(c)
        wait_for("c", c, "[digits] final:")
        stopped_final_s = stop(c, signal.SIGTERM)

        d = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert d.returncode == 0, d.stdout[-3000:] + d.stderr[-3000:]
    finally:
        for driver in drivers:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
    print(f"second driver refused in {refused_s:.1f} s; SIGINT in search stopped in {stopped_search_s:.1f} s; "
          f"SIGTERM in final stopped in {stopped_final_s:.1f} s")
    assert stopped_search_s < 15 and stopped_final_s < 15, (stopped_search_s, stopped_final_s)
    trials = json.loads((storage / "signals" / "digits" / "search" / "trials.json").read_text())["trials"]
    assert len(trials) == 1 and trials[0]["status"] == "completed", trials
    assert [p.name for p in (storage / "signals" / "digits" / "final").glob("seed-*.json")] == ["seed-0.json"]
    assert "InDistill (tuned)" in (storage / "signals" / "results.md").read_text()
    assert not lease.exists()
