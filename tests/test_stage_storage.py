"""The stage cache on a real S3 endpoint (moto on 127.0.0.1): persisted as written, fetched as read."""
import io
from pathlib import Path

import pytest
import torch

from indistill.engine.configure import build_config
from indistill.engine.pipeline import load_artifacts, make_context, prepare, train_student
from indistill.engine.plan import artifact_files
from indistill.engine.stages import stage_dirname
from indistill.engine.loop import Loop
from study.storage import Storage
from study.workers import STAGES_DIR, stage_cache

from .s3 import BUCKET

CFG = {"device": "cpu", "threads": 1, "teacher": {"epochs": 1},
       "auxiliary": {"ce": {"epochs": 1}, "pkt": {"epochs": 3}},
       "student": {"epochs": 4, "curriculum": {"epochs": [1, 1, 1]}, "schedules": {"ce": {"epochs": 1}}}}


def _artifacts(storage: Storage, cfg) -> list[str]:
    """One artifact run (the search's stages) through the study's stage cache; returns its log."""
    log: list[str] = []
    with stage_cache(storage, cfg.benchmark) as (root, persist):
        prepare(make_context(cfg, root, log.append, persist), "val")
    return log


def test_a_failed_artifact_run_on_s3_keeps_what_finished_and_resumes_exactly(s3, tmp_path, monkeypatch):
    cfg = build_config(CFG, benchmark="digits")
    storage = Storage.create(f"s3://{BUCKET}/studies/one")
    epoch = Loop._epoch

    def node_lost_in_third_epoch(self, e, *args):
        if self.name == "auxiliary/pkt" and e == 2:
            raise RuntimeError("node lost")
        return epoch(self, e, *args)

    monkeypatch.setattr(Loop, "_epoch", node_lost_in_third_epoch)
    with pytest.raises(RuntimeError, match="node lost"):
        _artifacts(storage, cfg)
    prefix = f"studies/one/digits/{STAGES_DIR}"
    teacher, aux = stage_dirname("teacher", cfg, "val"), stage_dirname("auxiliary", cfg, "val")
    keys = s3.keys(prefix)
    assert f"{prefix}/{teacher}/final.pt" in keys  # the finished teacher survived the failure
    assert f"{prefix}/{aux}/last.pt" in keys and f"{prefix}/{aux}/final.pt" not in keys
    assert torch.load(io.BytesIO(s3.read(f"{prefix}/{aux}/last.pt")), weights_only=False)["epoch"] == 2

    monkeypatch.setattr(Loop, "_epoch", epoch)
    log = _artifacts(storage, cfg)  # the retry: a fresh scratch directory, fed from the bucket
    assert not [line for line in log if line.startswith(("[teacher] epoch", "[auxiliary/ce] epoch"))]
    assert any(line.startswith("[auxiliary/pkt] resuming after epoch 2") for line in log)
    assert [line.split()[2] for line in log if line.startswith("[auxiliary/pkt] epoch")] == ["3/3"]

    # the same weights as an uninterrupted run on local disk
    local = Storage.create(tmp_path / "local")
    _artifacts(local, cfg)
    resumed = torch.load(io.BytesIO(s3.read(f"{prefix}/{aux}/final.pt")), weights_only=False)["model"]
    straight = torch.load(local.local_path() / "digits" / STAGES_DIR / aux / "final.pt", weights_only=False)["model"]
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in resumed)


def test_a_trial_fetches_and_holds_only_what_it_reads(s3, tmp_path):
    cfg = build_config(CFG, benchmark="digits")
    storage = Storage.create(f"s3://{BUCKET}/studies/two")
    _artifacts(storage, cfg)
    wanted = artifact_files(cfg, "val")
    assert [Path(f).parent.name.split("-")[0] for f in wanted] == ["auxiliary", "prune"]
    with stage_cache(storage, cfg.benchmark, fetch=wanted) as (root, persist):
        assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == sorted(wanted)
        ctx = make_context(cfg, root, lambda _m: None, persist)
        artifacts = load_artifacts(ctx, "val", "indistill")
        assert artifacts.auxiliary is not None and artifacts.pruned is not None
        assert ctx._splits == {}  # loading trains nothing and puts no data on the device
        train_student(ctx, "indistill", artifacts, work_dir=tmp_path / "trial")
        assert {name for name, _layout in ctx._splits} == {"train", "val"}
    # a new criterion's indices are selected from the loaded auxiliary and persisted for the next trial
    other = cfg.replace(prune=cfg.prune.__class__(criterion="random"))
    with stage_cache(storage, cfg.benchmark, fetch=artifact_files(other, "val")) as (root, persist):
        load_artifacts(make_context(other, root, lambda _m: None, persist), "val", "indistill")
    assert any(k.endswith(f"{stage_dirname('prune', other, 'val')}/indices.pt") for k in s3.keys("studies/two/"))


def test_a_final_run_holds_the_full_train_split_and_test_only(tmp_path):
    cfg = build_config(CFG, benchmark="digits")
    ctx = make_context(cfg, tmp_path / "stages", lambda _m: None)
    train_student(ctx, "ce", load_artifacts(ctx, "test", "ce"))
    assert {name for name, _layout in ctx._splits} == {"train_full", "test"}


def test_logs_on_s3_leave_no_local_copies(s3, tmp_path, monkeypatch):
    """A run's log and TensorBoard files reach the bucket through local copies that go with them."""
    import gc
    import tempfile

    from study.runlog import RunLog
    from study.tblog import TensorBoardLogger

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where mkdtemp puts them
    storage = Storage.create(f"s3://{BUCKET}/studies/logs")
    log = RunLog(storage, "digits/logs/trials/t.log", stamp=False)
    log("epoch 1")
    log("epoch 2")
    tb = TensorBoardLogger(storage, "digits/tensorboard/trials/t")
    tb.log(1, {"loss": 0.5})
    assert len(list(tmp_path.iterdir())) == 2
    tb.close()
    del log
    gc.collect()
    assert list(tmp_path.iterdir()) == []
    assert s3.read("studies/logs/digits/logs/trials/t.log").decode() == "epoch 1\nepoch 2\n"
    assert any("tfevents" in k for k in s3.keys("studies/logs/digits/tensorboard/trials/t/"))
    # a retried run continues the log from the bucket
    RunLog(storage, "digits/logs/trials/t.log", stamp=False)("epoch 3")
    gc.collect()
    assert s3.read("studies/logs/digits/logs/trials/t.log").decode() == "epoch 1\nepoch 2\nepoch 3\n"
    assert list(tmp_path.iterdir()) == []


def test_the_driver_log_on_s3_is_continued_and_leaves_no_local_copy(s3, tmp_path, monkeypatch):
    """What Ray and Tune log in the driver reaches ``logs/driver.log`` in the bucket; a second
    session (``--resume``) appends to it."""
    import logging
    import tempfile

    from study.console import driver_log

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    storage = Storage.create(f"s3://{BUCKET}/studies/driver")
    for session in ("first", "second"):
        with driver_log(storage):
            logging.getLogger("ray").warning("%s session", session)
    text = s3.read("studies/driver/logs/driver.log").decode()
    assert text.index("first session") < text.index("second session")
    assert list(tmp_path.iterdir()) == []
