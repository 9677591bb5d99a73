"""The study's TensorBoard logs without Ray running: the HParams experiment and rows as TensorBoard's
own hparams plugin reads them, the run names, Tune's logger callbacks, the artifact curves and the
averaged 11-point PR curve as TensorBoard's PR-curve plugin reads it (the curve itself:
tests/test_retrieval.py)."""
import os
import re
import types
from pathlib import Path

import numpy as np
import pytest

from indistill.evaluation.retrieval import pr_curve
from study.params import apply_params, define_by_run, merge_hparams, study_hparams, trial_hparams
from study.search_space import base_config, default_space_path, load_space
from study.storage import Storage
from study.tblog import (
    AUTO_LOGGERS_ENV,
    EXPERIMENT_FILE,
    TensorBoardLogger,
    TrialNamer,
    artifact_run,
    final_run,
    trial_run,
    trial_run_name,
    tune_loggers,
    write_hparams_experiment,
)

from .test_retrieval import _two_query_case

OBJECTIVE = ("val_map", "val mAP")


def _plan(benchmark: str, space_file: str | None = None):
    space = load_space(default_space_path(space_file or benchmark), benchmark)
    return types.SimpleNamespace(benchmark=benchmark, space=space, base=base_config(space, benchmark))


def _dashboard(logdir: Path):
    """What the HParams dashboard receives: (experiment, session groups), computed by TensorBoard's
    hparams plugin backend over ``logdir`` (the handlers behind /experiment and /session_groups)."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    ctx = backend_context.Context(base_plugin.TBContext(logdir=str(logdir), multiplexer=mux, data_provider=provider))
    request_ctx = context.RequestContext()
    experiment = get_experiment.Handler(request_ctx, ctx, "", api_pb2.GetExperimentRequest()).run()
    statuses = [api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING]
    request = api_pb2.ListSessionGroupsRequest(allowed_statuses=statuses, start_index=0, slice_size=1000)
    groups = list_session_groups.Handler(request_ctx, ctx, "", request).run().session_groups
    return experiment, groups


def _in_domain(h, value) -> bool:
    """Whether ``value`` lies in the HParam's interval or among its discrete values."""
    return h.interval[0] <= value <= h.interval[1] if h.interval is not None else value in h.values


def _value(v):
    kind = v.WhichOneof("kind")
    return {"number_value": v.number_value, "string_value": v.string_value, "bool_value": v.bool_value}[kind]


# ----------------------------------------------------------------------------- HParams


def test_every_sampled_parameter_is_a_column_with_its_value_inside_the_domain():
    """Sample the real space with Optuna; each trial's logged hparams hold every sampled parameter
    under its stable name (a layer's weight under curriculum/weight_<k>, whatever loss was drawn)."""
    import optuna

    plan = _plan("digits")
    domains = {hp.name: hp for hp in study_hparams(plan.space, plan.base)}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    sample = define_by_run(plan.space)
    seen_losses = set()
    for _ in range(30):
        trial = study.ask()
        sample(trial)
        nested: dict = {}
        for name, value in trial.params.items():
            head, tail = name.split("/")
            nested.setdefault(head, {})[tail] = value
        values = trial_hparams(apply_params(plan.base, nested, plan.space), plan.space)
        assert list(values) == list(domains)  # the same names, in the same order, as the experiment's
        for name, value in trial.params.items():
            stable = re.sub(r"^(curriculum/weight_\d+)_\w+$", r"\1", name)
            assert values[stable] == pytest.approx(value) if isinstance(value, float) else values[stable] == value, name
        for name, value in values.items():
            assert _in_domain(domains[name], value), (name, value, domains[name])
        seen_losses.add(values["curriculum/loss_0"])
        study.tell(trial, 0.0)
    assert seen_losses == {"mse", "pkt", "cosine"}  # the conditional weights of every loss were covered


def test_study_hparams_domains_come_from_the_space():
    plan = _plan("digits")
    hps = {hp.name: hp for hp in study_hparams(plan.space, plan.base)}
    cur = plan.space.curriculum
    assert [n for n in hps if n.startswith("curriculum/epochs_")] == [f"curriculum/epochs_{k}" for k in range(len(cur.epochs))]
    assert hps["curriculum/epochs_2"].interval == (cur.epochs[2].low, cur.epochs[2].high) == (1.0, 4.0)
    assert hps["curriculum/loss_1"].values == tuple(cur.losses)
    assert hps["curriculum/weight_0"].interval == (0.1, 10.0)
    assert hps["curriculum/overlap"].values == (False, True)
    assert hps["prune/criterion"].values == tuple(plan.space.criteria)
    assert hps["prune/target"].values == (plan.base.prune.target,) and not hps["prune/target"].differs
    assert hps["curriculum/loss_1"].differs and not hps["benchmark"].differs


def test_merged_domains_of_two_benchmarks():
    digits, cub = _plan("digits"), _plan("cub200")
    merged = {hp.name: hp for hp in merge_hparams([study_hparams(digits.space, digits.base), study_hparams(cub.space, cub.base)])}
    assert "curriculum/epochs_3" in merged  # cub200's fourth curriculum layer
    assert merged["benchmark"].values == ("digits", "cub200") and merged["benchmark"].differs
    assert merged["curriculum/epochs_2"].interval == (1.0, 6.0)  # digits 1..4, cub200 1..6
    assert merged["curriculum/weight_0"].interval == (0.01, 100.0)


def test_tensorboard_shows_every_trial_with_the_searched_columns_and_val_map_first(tmp_path):
    digits, cub = _plan("digits"), _plan("cub200")
    storage = Storage.create(tmp_path)
    written = write_hparams_experiment(storage, [digits, cub], [OBJECTIVE])
    assert written == [f"digits/tensorboard/{EXPERIMENT_FILE}", f"cub200/tensorboard/{EXPERIMENT_FILE}"]
    assert all((tmp_path / rel).is_file() for rel in written)
    # three trials: two of digits, one of cub200, each with its own sampled config
    trials = [
        (digits, 0, "aaaa0000", {"curriculum": {"loss_0": "pkt", "weight_0_pkt": 2.5, "epochs_0": 3}, "prune": {"criterion": "fpgm"}}, [0.2, 0.6]),
        (digits, 1, "bbbb1111", {"curriculum": {"loss_0": "mse", "overlap": True}}, [0.3]),
        (cub, 0, "cccc2222", {"curriculum": {"epochs_3": 5}}, [0.1, 0.4, 0.5]),
    ]
    for plan, k, tid, params, maps in trials:
        cfg = apply_params(plan.base, params, plan.space)
        name = trial_run_name(k, tid, plan.space.budget.trials)
        tb = TensorBoardLogger(storage, trial_run(plan.benchmark, name))
        tb.hparams(trial_hparams(cfg, plan.space), group=f"{plan.benchmark}/{name}")
        for epoch, value in enumerate(maps):
            tb.log(epoch + 1, {"loss": 1.0 / (epoch + 1), "loss/block0": 0.5, "phase": 0, "val_map": value})
        tb.close()
    final = TensorBoardLogger(storage, "digits/tensorboard/final/student-ce/seed-0")  # not a trial: no row
    final.log(1, {"loss": 1.0, "test/cosine/map": 0.5})
    final.close()

    experiment, groups = _dashboard(tmp_path)
    assert [m.name.tag for m in experiment.metric_infos] == ["val_map"]  # the first and only metric shown
    names = [h.name for h in experiment.hparam_infos]
    searched = {hp.name for hp in merge_hparams([study_hparams(digits.space, digits.base),
                                                   study_hparams(cub.space, cub.base)]) if hp.differs}
    assert set(names[: len(searched)]) == searched  # the searched ones first; prune/target (fixed) after them
    assert names[len(searched):] == ["prune/target"]
    info = {h.name: h for h in experiment.hparam_infos}
    # hparams_config_pb lists a discrete domain sorted
    assert [_value(v) for v in info["prune/criterion"].domain_discrete.values] == sorted(digits.space.criteria)
    assert (info["curriculum/epochs_0"].domain_interval.min_value, info["curriculum/epochs_0"].domain_interval.max_value) == (1, 5)

    rows = {g.name: g for g in groups}
    assert set(rows) == {"digits/trial-000-aaaa0000", "digits/trial-001-bbbb1111", "cub200/trial-000-cccc2222"}
    first = rows["digits/trial-000-aaaa0000"]
    assert _value(first.hparams["curriculum/loss_0"]) == "pkt"
    assert _value(first.hparams["curriculum/weight_0"]) == pytest.approx(2.5)
    assert _value(first.hparams["curriculum/epochs_0"]) == 3
    assert _value(first.hparams["prune/criterion"]) == "fpgm"
    assert [(m.name.tag, m.value) for m in first.metric_values] == [("val_map", pytest.approx(0.6))]  # its last epoch
    assert _value(rows["digits/trial-001-bbbb1111"].hparams["curriculum/overlap"]) is True
    assert _value(rows["cub200/trial-000-cccc2222"].hparams["curriculum/epochs_3"]) == 5
    assert all(len(g.sessions) == 1 for g in groups)  # one run per trial


def test_the_experiment_is_replaced_not_added_on_resume(tmp_path):
    storage = Storage.create(tmp_path)
    write_hparams_experiment(storage, [_plan("digits")], [OBJECTIVE])
    write_hparams_experiment(storage, [_plan("digits")], [OBJECTIVE])
    assert [p.name for p in (tmp_path / "digits/tensorboard").iterdir() if "tfevents" in p.name] == [EXPERIMENT_FILE]


def test_a_trial_run_is_one_directory_with_no_hparams_subrun(tmp_path):
    storage = Storage.create(tmp_path)
    plan = _plan("digits")
    tb = TensorBoardLogger(storage, trial_run("digits", "trial-000-abc"))
    tb.hparams(trial_hparams(plan.base, plan.space), group="digits/trial-000-abc")
    tb.close()
    run = tmp_path / "digits/tensorboard/trials/trial-000-abc"
    assert [p for p in run.iterdir() if p.is_dir()] == []
    assert len(list(run.glob("*tfevents*"))) == 1


# ----------------------------------------------------------------------------- run names


def test_trial_names_are_readable_and_sort_in_creation_order():
    namer = TrialNamer(trials=12)
    # Tune's search generator tags its n-th trial "<n>_<params>" (n from 1)
    names = [namer(types.SimpleNamespace(experiment_tag=f"{n}_curriculum/epochs_0=2,prune/criterion=l1", trial_id=f"{n:08x}"))
             for n in range(1, 13)]
    assert names[0] == "trial-000-00000001" and names[11] == "trial-011-0000000c"
    assert sorted(names) == names
    assert TrialNamer(trials=1500)(types.SimpleNamespace(experiment_tag="7_x", trial_id="ab")) == "trial-0006-ab"
    assert TrialNamer()(types.SimpleNamespace(experiment_tag="", trial_id="ab")) == "trial-ab"
    assert trial_run("digits", names[3]) == "digits/tensorboard/trials/trial-003-00000004"


def test_tune_calls_the_namer_with_the_experiment_tag_set():
    from ray.tune.experiment import Trial

    from ray.tune.experiment.trial import _loads_with_cloudpickle

    trial = Trial("digits_trial", experiment_tag="3_curriculum/epochs_0=1", trial_id="deadbeef",
                  trial_name_creator=TrialNamer(8), stub=True)
    assert str(trial) == "trial-002-deadbeef"
    assert trial._generate_dirname().startswith("trial-002-deadbeef_3_")  # Tune's trial directory
    # Tune saves its trials as JSON in the experiment state (the namer cloudpickled): --resume reads it back
    state = _loads_with_cloudpickle(trial.get_json_state()[0])
    assert state["custom_trial_name"] == "trial-002-deadbeef" and state["trial_name_creator"] == TrialNamer(8)


def test_the_tensorboard_hint_names_the_runs_where_they_are_written():
    from study.tensorboard_server import TENSORBOARD_LOGS

    assert trial_run("<benchmark>", "trial-<k>-<id>") in TENSORBOARD_LOGS
    assert artifact_run("<benchmark>", "<stage>", "<protocol>") in TENSORBOARD_LOGS
    assert final_run("<benchmark>", "<row>", "<s>") in TENSORBOARD_LOGS
    assert max(len(line) for line in TENSORBOARD_LOGS.splitlines()) <= 100
    assert "ray/" not in TENSORBOARD_LOGS  # Tune writes no TensorBoard files any more


# ----------------------------------------------------------------------------- Tune's loggers


def test_tune_gets_json_and_csv_loggers_and_no_tensorboard_logger(monkeypatch):
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback
    from ray.tune.utils.callback import _create_default_callbacks

    name = AUTO_LOGGERS_ENV[0]
    monkeypatch.setenv(name, "0")  # the variable is restored (unset) after the test
    # passing JSON and CSV alone does not keep Tune from adding its TensorBoard logger
    added = _create_default_callbacks([JsonLoggerCallback(), CSVLoggerCallback()], metric="val_map", mode="max")
    assert any(isinstance(c, TBXLoggerCallback) for c in added)

    import ray

    from study.ray_runs import init_ray, runtime_env

    started = []
    monkeypatch.setattr(ray, "init", lambda **kw: started.append(kw))
    init_ray()
    assert os.environ[name] == "0"  # the user's own setting stays
    monkeypatch.delenv(name)
    init_ray()  # the study's one place for environment variables: Tune's, in the driver
    assert os.environ[name] == "1" and [kw["runtime_env"] for kw in started] == [runtime_env()] * 2
    callbacks = tune_loggers()
    kinds = [type(c) for c in _create_default_callbacks(callbacks, metric="val_map", mode="max")]
    assert not any(issubclass(k, TBXLoggerCallback) for k in kinds)
    assert kinds.count(JsonLoggerCallback) == 1 and kinds.count(CSVLoggerCallback) == 1


# ----------------------------------------------------------------------------- artifact curves


def test_artifact_curves_are_written_once_per_stage_and_protocol(tmp_path):
    """The real artifact stages on digits (shortened): teacher, the auxiliary's CE start and its PKT
    phase each get a run with their per-epoch losses; the pruning stage (no training) none."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from indistill.engine.configure import build_config
    from indistill.engine.pipeline import make_context, prepare
    from study import workers

    cfg = build_config({"teacher": {"epochs": 1}, "auxiliary": {"ce": {"epochs": 2}, "pkt": {"epochs": 1}}, "device": "cpu"},
                       benchmark="digits")
    ctx = make_context(cfg, tmp_path / "cache", log=lambda _m: None)
    artifacts = prepare(ctx, "val")
    results = artifacts.results
    assert set(results) == {"teacher", "auxiliary", "prune"}
    storage = Storage.create(tmp_path / "study")
    workers._log_artifacts(storage, "digits", artifacts)
    root = tmp_path / "study/digits/tensorboard/artifacts"
    assert sorted(p.name for p in root.iterdir()) == ["auxiliary", "auxiliary-ce", "teacher"]

    def curve(stage, tag):
        acc = EventAccumulator(str(root / stage / "val"))
        acc.Reload()
        assert "samples" not in acc.Tags()["scalars"] and "epoch" not in acc.Tags()["scalars"]
        return [(e.step, e.value) for e in acc.Scalars(tag)]

    assert [step for step, _ in curve("teacher", "loss")] == [1]
    assert [step for step, _ in curve("auxiliary-ce", "loss")] == [1, 2]  # its cross-entropy start
    assert [(step, pytest.approx(v, rel=1e-6)) for step, v in curve("auxiliary", "loss/embedding")] == \
        [(1, results["auxiliary"].history[0]["loss/embedding"])]
    files = sorted(root.rglob("*tfevents*"))
    # a retried artifact run reloads the finished stages (same histories): nothing is written twice
    workers._log_artifacts(storage, "digits", prepare(ctx, "val"))
    assert sorted(root.rglob("*tfevents*")) == files


# ----------------------------------------------------------------------------- the PR curve


def test_pr_curve_reaches_tensorboard_with_all_eleven_points(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.pr_curve.pr_curves_plugin import PrCurvesPlugin
    from tensorboard.util import tensor_util

    tb = TensorBoardLogger(Storage.create(tmp_path), "run")
    tb.pr_curve("final/pr_euclidean", pr_curve(*_two_query_case(), metric="euclidean"))
    tb.close()
    acc = EventAccumulator(str(tmp_path / "run"), size_guidance={"tensors": 0})
    acc.Reload()
    event = acc.Tensors("final/pr_euclidean")[0]
    # the plugin's own conversion (which drops trailing points with TP + FP = 0)
    entry = PrCurvesPlugin._make_pr_entry(None, event.step, event.wall_time, tensor_util.make_ndarray(event.tensor_proto))
    assert entry["recall"] == pytest.approx([j / 10 for j in range(11)])
    assert np.mean(entry["precision"]) == pytest.approx(107 / 132, abs=1e-6)
