"""`indistill run` end to end on digits (shortened), caching, resume and determinism."""
import math

import pytest
import torch

from indistill.cli import main
from indistill.engine.configure import build_config
from indistill.engine.pipeline import make_context
from indistill.engine.loop import FINAL, LAST
from indistill.engine.stages import student_stage, teacher_stage

SHORT = {
    "teacher": {"epochs": 2},
    "auxiliary": {"ce": {"epochs": 2}, "pkt": {"epochs": 1}},
    "student": {"epochs": 4, "curriculum": {"epochs": [1, 1, 1]}, "schedules": {"ce": {"epochs": 2}, "mkt": {"epochs": 4}}},
    "device": "cpu",
}


@pytest.mark.e2e
def test_indistill_run_digits_end_to_end(tmp_path, capsys):
    cfg_path = tmp_path / "short.yaml"
    import yaml

    cfg_path.write_text(yaml.safe_dump(SHORT))
    assert main(["run", "--benchmark", "digits", "--config", str(cfg_path), "--out", str(tmp_path / "runs"),
                 "--seeds", "0,1"]) == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "runs" / "digits-seed0"
    for name in ("results.csv", "results.md", "results_per_seed.csv", "config.yaml"):
        assert (run_dir / name).is_file()
    import pandas as pd

    table = pd.read_csv(run_dir / "results.csv", index_col=0)
    students = ["student (indistill)", "student (ce)", "student (pkt)", "student (mkt)"]
    assert list(table.index) == ["teacher", "auxiliary", *students]
    assert table["n"].tolist() == [1, 1, 2, 2, 2, 2]  # teacher and auxiliary shared, students per seed
    per_seed = pd.read_csv(run_dir / "results_per_seed.csv")
    for name in students:
        rows = per_seed[per_seed["network"] == name].sort_values("seed")
        assert rows["seed"].tolist() == [0, 1]
        assert table.loc[name, "cosine map"] == pytest.approx(rows["cosine map"].mean())
        assert table.loc[name, "cosine map std"] == pytest.approx(rows["cosine map"].std(ddof=1))
        assert rows["cosine map"].nunique() == 2  # the seeds really differ
    diff = per_seed.set_index(["network", "seed"])["cosine map"]
    expected = (diff["student (ce)"] - diff["student (indistill)"]).mean()
    assert table.loc["student (ce)", "diff mean"] == pytest.approx(expected)
    for metric in ("cosine", "euclidean"):
        for key in ("map", "map_legacy", "p@100"):
            col = table[f"{metric} {key}"]
            assert ((col > 10) & (col <= 100)).all(), col  # 10 classes: chance is ~10 %
    assert table.loc["teacher", "params"] > table.loc["auxiliary", "params"] > table.loc["student (ce)", "params"]
    assert "student (indistill)" in out and " ± " in out
    # a second run with the same config reuses every cached stage and reproduces the table
    stamp = {p: p.stat().st_mtime_ns for p in (run_dir / "stages").rglob(FINAL)}
    assert main(["run", "--config", str(run_dir / "config.yaml"), "--out", str(tmp_path / "runs"), "--seeds", "0,1"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "stages").rglob(FINAL)} == stamp
    again = pd.read_csv(run_dir / "results.csv", index_col=0)
    pd.testing.assert_frame_equal(table, again)


class Interrupt(Exception):
    pass


def _student(tmp_path, name, hooks=(), cache="shared"):
    cfg = build_config(SHORT, benchmark="digits")
    ctx = make_context(cfg, tmp_path / cache, log=lambda _m: None)
    teacher = teacher_stage(ctx).network  # the teacher as the distillation source keeps this test short
    return ctx, student_stage(ctx, "mkt", teacher, protocol="val", work_dir=tmp_path / name, hooks=list(hooks))


def test_cpu_runs_are_deterministic_and_a_cut_student_resumes_to_the_same_result(tmp_path):
    """Two stage caches: the uninterrupted run trains its own teacher, so equal results also show
    that teacher and student training on the CPU are deterministic."""
    _, full = _student(tmp_path, "full", cache="own")

    def stop_after_two(epoch, metrics, checkpoint):
        if epoch == 1:
            raise Interrupt()

    with pytest.raises(Interrupt):
        _student(tmp_path, "cut", hooks=[stop_after_two])
    assert (tmp_path / "cut" / LAST).exists() and not (tmp_path / "cut" / FINAL).exists()
    assert torch.load(tmp_path / "cut" / LAST, weights_only=False)["epoch"] == 2
    _, resumed = _student(tmp_path, "cut")
    assert len(resumed.history) == len(full.history) == 4
    for a, b in zip(full.history, resumed.history):
        assert math.isclose(a["loss"], b["loss"], rel_tol=0, abs_tol=0), (a, b)
    for (k, v), (_, w) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(v, w), k
