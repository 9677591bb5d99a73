"""Names shared across modules are defined once and derived: their golden values, and that the
derivations follow the registries (a new method gets its own row and label)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from indistill.engine.configure import build_config, with_data_root
from indistill.evaluation.embedding import CURVE_KEYS, SELECTION_KEY, curve_metrics, metric_key
from indistill.engine.stages import ARTIFACT_STAGES
from study.names import NETWORK_ROWS
from indistill.evaluation.retrieval import METRICS
from indistill.evaluation.table import DIFF_COLUMN, column, metric_columns, result_row
from indistill.method.methods import METHODS, method_label


def test_metric_keys_golden() -> None:
    assert metric_key("val", "cosine") == SELECTION_KEY == "val/cosine/map"
    assert metric_key("test", "euclidean", "map_legacy") == "test/euclidean/map_legacy"
    results = {"cosine": {"map": 0.5, "map_legacy": 0.4, "p@10": 0.9}, "euclidean": {"map": 0.3, "ap_full": 0.2}}
    # only the curve keys, every metric
    assert curve_metrics("val", results) == {"val/cosine/map": 0.5, "val/cosine/map_legacy": 0.4, "val/euclidean/map": 0.3}
    assert CURVE_KEYS == ("map", "map_legacy")


def test_table_columns_come_from_the_retrieval_metrics() -> None:
    assert DIFF_COLUMN == column("cosine", "map") == "cosine map"
    row = result_row("x", 7, {m: {"map": 0.25, "p@100": 0.5} for m in METRICS})
    import pandas as pd

    assert metric_columns(pd.DataFrame([row])) == [column(m, k) for m in METRICS for k in ("map", "p@100")]
    assert row[column("euclidean", "p@100")] == 50.0


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_has_its_row_label(name: str) -> None:
    assert method_label(name) == f"student ({name})"  # the tables' convention, golden below for the paper's four


def test_every_method_has_a_schedule_and_an_implementation() -> None:
    """The config's methods (one schedule field each, the lowest layer) and the method registry
    (the implementations, in ``train``) name the same methods."""
    from indistill.config.run import METHOD_NAMES

    assert sorted(METHODS.names()) == sorted(METHOD_NAMES)
    student = build_config(benchmark="digits").student
    for m in METHODS.names():  # each method's schedule resolves: its own epochs, else the student's
        epochs, _optim = student.schedule(m)
        assert epochs == (getattr(student.schedules, m).epochs or student.epochs)


def test_method_labels_golden() -> None:
    labels = [method_label(m) for m in METHODS.names()]
    assert len(set(labels)) == len(labels)  # one row per method
    assert [method_label(m) for m in ("ce", "pkt", "mkt", "indistill")] == [
        "student (ce)", "student (pkt)", "student (mkt)", "student (indistill)"]


def test_network_rows_are_artifact_stages() -> None:
    assert NETWORK_ROWS == ("teacher", "auxiliary") and set(NETWORK_ROWS) <= set(ARTIFACT_STAGES)


def test_study_rows_follow_the_method_registry() -> None:
    from study.names import BASELINES, ROW_ORDER, STUDENT_ROWS, TUNED

    assert BASELINES == ("ce", "pkt", "mkt")
    assert ROW_ORDER == ("teacher", "auxiliary", "student (ce)", "student (pkt)", "student (mkt)",
                         "InDistill (paper defaults)", "InDistill (tuned)")
    assert [tuned for _label, _method, tuned in STUDENT_ROWS].count(True) == 1 and STUDENT_ROWS[-1][0] == TUNED


# ----------------------------------------------------------------------------- state resolved once


def test_data_root_is_resolved_once_into_the_config(monkeypatch, tmp_path) -> None:
    cfg = build_config(benchmark="digits")
    assert cfg.data.root is None
    monkeypatch.setenv("INDISTILL_DATA", str(tmp_path / "env"))
    assert with_data_root(cfg).data.root == str(tmp_path / "env")  # the planning process's environment
    monkeypatch.chdir(tmp_path)
    given = with_data_root(cfg, "rel/data")  # relative to where the run is planned, not to a worker's cwd
    assert given.data.root == str(tmp_path / "rel" / "data") and Path(given.data.root).is_absolute()
    in_config = cfg.replace(data=cfg.data.__class__(root="~/d"))
    assert with_data_root(in_config).data.root == str(Path.home() / "d")  # the config's root beats the environment
    assert with_data_root(in_config, str(tmp_path)).data.root == str(tmp_path)  # --data-root beats both
    monkeypatch.delenv("INDISTILL_DATA")
    assert with_data_root(cfg).data.root == str(Path.home() / ".cache" / "indistill" / "data")


def test_study_plan_carries_the_resolved_root(monkeypatch, tmp_path) -> None:
    from study.cli import build_parser
    from study.plan import make_plan

    monkeypatch.setenv("INDISTILL_DATA", str(tmp_path / "data"))
    plan = make_plan(build_parser().parse_args(["run", "--storage", str(tmp_path / "s")]))
    assert [bp.base.data.root for bp in plan.benchmarks] == [str(tmp_path / "data")]


def test_ray_runtime_env_carries_the_report_poll_and_placement_timeout_once(monkeypatch) -> None:
    from study.resources import PLACEMENT_TIMEOUT_ENV, REPORT_POLL_ENV
    from study.ray_runs import runtime_env

    name, default = REPORT_POLL_ENV
    placement, waits = PLACEMENT_TIMEOUT_ENV
    monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(placement, raising=False)
    assert runtime_env() == {"env_vars": {name: default, placement: waits}}
    assert name not in os.environ and placement not in os.environ  # carried to Ray's processes, not set in this one
    monkeypatch.setenv(name, "1.5")  # the user's value travels to every Ray process
    assert runtime_env(worker_process_setup_hook="x.y") == {"env_vars": {name: "1.5", placement: waits},
                                                            "worker_process_setup_hook": "x.y"}


def test_the_study_sets_environment_variables_in_one_place() -> None:
    """Ray's variables travel once through ``runtime_env`` and the driver's once in ``init_ray``:
    no other line of the study or the package assigns the process environment."""
    root = Path(__file__).resolve().parent.parent
    pattern = re.compile(r"os\.environ(\[[^]]*\]\s*=[^=]|\.setdefault|\.update|\.pop)|os\.putenv")
    edits = [f"{p.relative_to(root)}:{line.strip()}" for folder in ("study", "indistill") for p in sorted((root / folder).rglob("*.py"))
             for line in p.read_text().splitlines() if pattern.search(line)]
    assert edits == ["study/ray_runs.py:os.environ.setdefault(*AUTO_LOGGERS_ENV)"]


#: what Ray's Tune shows for a Train worker's error: a wrapper whose message carries the tracebacks
RAY_WRAPPED = """\x1b[36mray::ImplicitFunc.train()\x1b[39m (pid=4466, ip=192.0.2.2, repr=trial)
  File "/venv/ray/train/v2/api/data_parallel_trainer.py", line 195, in fit
    raise result.error
ray.train.WorkerGroupError: Training failed due to worker errors:
[Rank 0,1 Error Snippet]:
  File "/venv/indistill/train/loop.py", line 98, in train_step
    loss.backward()
    ^^^^^^^^^^^^^^^
RuntimeError: Expected to have finished reduction in the prior iteration before starting a new one.
In addition, you can set the environment variable TORCH_DISTRIBUTED_DEBUG to either INFO or DETAIL"""


@pytest.mark.parametrize("exc, shown", [
    (RuntimeError(RAY_WRAPPED), "RuntimeError: Expected to have finished reduction in the prior iteration before "
                                "starting a new one."),  # the worker's own error, not the wrapper's last line
    (RuntimeError('Traceback (most recent call last):\n  File "x.py", line 3, in f\n    g()\n'
                  'indistill.engine.loop.DivergedError: [student] loss became nan\n'), "DivergedError: [student] loss became nan"),
    (ValueError("bad value\nsecond line"), "ValueError: bad value"),
    (RuntimeError(), "RuntimeError"),  # an empty message: its type, not an IndexError
    (ValueError("x" * 400), "ValueError: " + "x" * 288),
])
def test_an_error_is_shown_by_its_own_type_and_first_line(exc, shown) -> None:
    from indistill.common.errors import error_reason

    assert error_reason(exc) == shown
