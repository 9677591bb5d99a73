"""A driver never waits forever: nothing at --address fails in seconds, a Ray that does not answer
is bounded by --connect-timeout, and SIGTERM stops a driver that is still connecting; while it
lives, a second driver of its study is refused. These drivers join no Ray and start none (real
processes, a real listening socket, locally and on the S3 server)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from study.lease import LEASE_FILE

from .s3 import BUCKET, free_port


def _driver(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "study.cli", "run", "--storage", str(tmp_path / "studies"), "--name", "s", *args]


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections (the kernel's backlog) and never answers: a host that
    is up, with no Ray behind the port."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        yield f"127.0.0.1:{server.getsockname()[1]}"


def test_an_address_nobody_listens_on_fails_in_seconds_naming_it(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    done = subprocess.run(_driver(tmp_path, "--address", address), capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    seconds = time.monotonic() - t0
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"indistill-study: error: --address {address}: no Ray cluster there "
                                        "(Connection refused); start one with `ray start --head` on that machine, "
                                        "or check the host and port"]
    assert seconds < 20, seconds  # the process's imports and data checks included
    assert not (tmp_path / "studies" / "s").exists()  # nothing written


def test_an_address_that_does_not_answer_is_bounded_by_the_connect_timeout(tmp_path, silent_server):
    t0 = time.monotonic()
    done = subprocess.run(_driver(tmp_path, "--address", silent_server, "--connect-timeout", "3"),
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    seconds = time.monotonic() - t0
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"indistill-study: error: no Ray cluster answered at --address "
                                        f"{silent_server} within 3 s (--connect-timeout)"]
    assert seconds < 25, seconds
    assert not (tmp_path / "studies" / "s" / LEASE_FILE).exists()  # the lease went with the driver


@pytest.mark.parametrize("sig, storage", [(signal.SIGTERM, "local"), (signal.SIGINT, "local"), (signal.SIGTERM, "s3")])
def test_a_signal_stops_a_driver_that_is_still_connecting(request, tmp_path, silent_server, sig, storage):
    on_s3 = storage == "s3"
    s3 = request.getfixturevalue("s3") if on_s3 else None
    cmd = _driver(tmp_path, "--address", silent_server)
    if on_s3:  # a study directory in the bucket: its driver log is a local copy until it is uploaded
        cmd[cmd.index("--storage") + 1] = f"s3://{BUCKET}/studies"
    log = tmp_path / "studies" / "s" / "logs" / "driver.log"  # opened just before Ray is joined
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                              start_new_session=True, env={**os.environ, **(s3.env if on_s3 else {})})

    def leased() -> bool:
        return f"studies/s/{LEASE_FILE}" in s3.keys("studies/s/") if on_s3 else (tmp_path / "studies/s" / LEASE_FILE).exists()

    try:
        deadline = time.monotonic() + 60
        if on_s3:  # the lease is taken just before the driver log opens
            while not leased() and driver.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1)
        while not on_s3 and not log.exists() and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert leased()
        time.sleep(1)  # inside ray.init now
        if sig == signal.SIGTERM and not on_s3:  # (on S3: the S3 kill test, tests/test_study_resilience.py)
            # a second driver of the study while this one lives: exit 2 in one line naming it, before Ray
            second = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
            assert second.returncode == 2 and second.stdout == "", (second.stdout, second.stderr)
            (refused,) = second.stderr.splitlines()
            assert (f"the study has a live driver: pid {driver.pid} on host {socket.gethostname()}, driving it "
                    "since ") in refused, refused
        t0 = time.monotonic()
        os.kill(driver.pid, sig)
        out, err = driver.communicate(timeout=30)
        seconds = time.monotonic() - t0
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 128 + sig, (out, err)
    (line,) = err.splitlines()
    assert line.startswith(f"indistill-study: stopped by {sig.name} after ") and line.endswith(
        "the study is resumable: run the same command with --resume"), line
    assert seconds < 10, seconds
    assert not leased()
    if on_s3:  # the driver's log reached the bucket before the driver exited
        assert "studies/s/logs/driver.log" in s3.keys("studies/s/")
