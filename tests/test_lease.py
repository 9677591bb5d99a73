"""One driver per study: a live driver's lease stops a second driver before Ray starts (locally and
on the S3 server), a stale one is taken over. Two real drivers: tests/test_stopping.py (locally)
and the S3 kill test, tests/test_study_resilience.py, which also stops drivers by SIGINT and
SIGTERM mid-study and resumes them to the full table."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from indistill.common.errors import UserError
from study.lease import LEASE_FILE, check_no_live_driver
from study.storage import Storage

from .s3 import BUCKET


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


def test_a_live_lease_stops_a_second_driver_and_a_stale_one_does_not(study_dir, tmp_path, monkeypatch):
    storage, put = study_dir
    put(_lease("other-host", 4242, renewed_ago=5))  # a driver on another machine, renewed 5 s ago (of 60)
    refused = _dry_run(storage, tmp_path)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    (line,) = refused.stderr.splitlines()
    assert re.fullmatch(rf"indistill-study: error: {re.escape(storage)}/leased: the study has a live driver: pid 4242 on "
                        r"host other-host, driving it since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(lease renewed \d+ s ago\); "
                        r"one study has one driver: .* \$INDISTILL_LEASE_S\)", line), line
    study = Storage.create(storage).sub("leased")
    with pytest.raises(UserError):  # the check the command made, in this process
        check_no_live_driver(study)
    # the same lease, expired: the driver on the other machine is gone
    monkeypatch.setenv("INDISTILL_LEASE_S", "3")
    check_no_live_driver(study)
    monkeypatch.delenv("INDISTILL_LEASE_S")
    # a lease of this machine whose process has ended is stale at once
    gone = subprocess.Popen(["true"])
    gone.wait()
    put(_lease(socket.gethostname(), gone.pid, renewed_ago=0))
    check_no_live_driver(study)


def test_a_released_lease_stays_released_when_a_renewal_was_in_flight(tmp_path, monkeypatch):
    """Release while the renewal thread is writing (a slow store): the renewal does not write the
    lease back after it is removed."""
    import threading
    from dataclasses import dataclass

    from study.lease import Lease

    @dataclass(frozen=True)
    class SlowStorage(Storage):  # a real local study directory whose writes take 0.3 s
        def write_json(self, rel: str, obj) -> None:
            if threading.current_thread().name == "study-lease":
                time.sleep(0.3)
            super().write_json(rel, obj)

    monkeypatch.setenv("INDISTILL_LEASE_S", "0.3")  # renewed every 0.1 s
    storage = SlowStorage.create(tmp_path / "study")
    lease = Lease(storage).acquire()
    time.sleep(0.25)  # a renewal is writing now
    lease.release()
    assert not (tmp_path / "study" / LEASE_FILE).exists()
    time.sleep(0.5)  # longer than a write: nothing comes back
    assert not (tmp_path / "study" / LEASE_FILE).exists()
