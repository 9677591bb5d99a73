"""A study's provenance without Ray: the versions and the checkout in study.json, the sampler's and
the scheduler's settings as the search builds them, the splits' fingerprint, the warning of a
resume with other versions, the export's header and the device kinds of the trials."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import platform
import shutil
import subprocess
from pathlib import Path

import optuna
import pytest
import yaml

from indistill.config.run import config_to_dict
from indistill.engine.configure import build_config
from study.export import export_study
from study.provenance import (PACKAGE, data_fingerprint, device_kinds, git_state, library_versions, provenance,
                              sampler_settings, scheduler_settings, splits_fingerprint, study_sampler)
from study.resume import STATE, check_new_or_resume, write_study_state
from study.search_space import load_space
from study.storage import Storage

from .test_resume_inputs import _plan
from .test_study import TINY_SPACE
from .test_study_table import BEST, fabricate_study

REPO = Path(__file__).resolve().parent.parent
LIBRARIES = {PACKAGE: PACKAGE, "torch": "torch", "ray": "ray", "optuna": "optuna", "numpy": "numpy"}


def test_provenance_names_the_installed_versions_and_every_benchmarks_settings(tmp_path):
    prov = provenance(_plan(tmp_path, TINY_SPACE))
    assert set(prov) == {"versions", "git", "benchmarks"}
    versions = prov["versions"]
    assert set(versions) == {PACKAGE, "python", "torch", "ray", "optuna", "numpy"}
    for key, dist in LIBRARIES.items():
        assert versions[key] == importlib.metadata.version(dist)
    assert versions["python"] == platform.python_version()
    assert versions["optuna"] == optuna.__version__
    assert set(prov["benchmarks"]) == {"digits"}
    assert set(prov["benchmarks"]["digits"]) == {"sampler", "scheduler", "splits"}
    json.dumps(prov)  # study.json can hold it


def test_the_git_commit_is_the_checkouts_head():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    state = git_state()
    assert state is not None and state["commit"] == head and isinstance(state["dirty"], bool)


def test_a_directory_that_is_not_the_top_of_a_checkout_has_no_commit(tmp_path):
    assert git_state(tmp_path) is None
    assert git_state(REPO / "study") is None  # inside a checkout, but not its top: an installed copy's case


def _optuna_study(sampler, count: int) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(directions=["maximize", *["minimize"] * (count - 1)], sampler=sampler)


def test_the_sampler_settings_are_an_actual_tpe_samplers():
    space = load_space(REPO / "search_spaces/digits.yaml", "digits")
    settings = sampler_settings(space)
    sampler = optuna.samplers.TPESampler(seed=space.budget.seed)  # as the runner builds it
    assert settings["class"] == type(study_sampler(space)).__name__ == "TPESampler" and settings["algorithm"] == "TPE"
    assert settings["seed"] == space.budget.seed
    assert settings["n_startup_trials"] == sampler._n_startup_trials
    assert settings["constant_liar"] == sampler._constant_liar
    assert settings["n_ei_candidates"] == sampler._n_ei_candidates
    assert settings["multivariate"] == sampler._is_multivariate(_optuna_study(sampler, 1))
    # Optuna 5's defaults: multivariate TPE with the constant liar, 10 random start-up trials
    assert (settings["multivariate"], settings["constant_liar"], settings["n_startup_trials"]) == (True, True, 10)


def test_a_two_objective_space_is_motpe_with_the_samplers_own_multivariate_choice():
    space = load_space(REPO / "search_spaces/digits-frontier.yaml", "digits")
    settings = sampler_settings(space)
    sampler = study_sampler(space)
    assert settings["algorithm"] == "MOTPE" and settings["directions"] == ["maximize", "minimize"]
    assert settings["multivariate"] == sampler._is_multivariate(_optuna_study(sampler, 2))


def _asha_settings(asha) -> dict:
    return {"time_attr": asha._time_attr, "metric": asha._metric, "mode": asha._mode, "max_t": asha._max_t,
            "grace_period": min(milestone for milestone, _ in asha._brackets[0]._rungs),
            "reduction_factor": asha._reduction_factor}


def test_the_scheduler_settings_are_the_schedulers_the_search_builds(tmp_path):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler  # the classes only: no Ray is started

    from study.early_stopping import PerGroupScheduler, scheduler_for

    bp = _plan(tmp_path, TINY_SPACE).benchmarks[0]
    settings = scheduler_settings(bp)
    built = scheduler_for(bp)
    assert isinstance(built, ASHAScheduler) and settings["class"] == "ASHAScheduler"
    assert {k: settings[k] for k in _asha_settings(built)} == _asha_settings(built)

    fifo = dataclasses.replace(bp, space=dataclasses.replace(
        bp.space, budget=dataclasses.replace(bp.space.budget, early_stopping=False)))
    assert type(scheduler_for(fifo)) is FIFOScheduler and scheduler_settings(fifo) == {"class": "FIFOScheduler"}

    path = tmp_path / "frontier.yaml"
    path.write_text((REPO / "search_spaces/digits-frontier.yaml").read_text())
    wide = _plan(tmp_path, yaml.safe_load(path.read_text())).benchmarks[0]
    per_width = scheduler_for(wide)
    assert isinstance(per_width, PerGroupScheduler)
    settings = scheduler_settings(wide)
    assert settings["one_per"] == "student.width" and settings["widths"] == [0.5, 1.0, 2.0]
    assert {k: settings[k] for k in _asha_settings(per_width._make())} == _asha_settings(per_width._make())


def test_the_splits_fingerprint_is_the_declaration_and_the_data_one_hashes_the_labels(tmp_path):
    from indistill.data import load_benchmark
    from indistill.data.base import BenchmarkData, Split

    bp = _plan(tmp_path, TINY_SPACE).benchmarks[0]
    fp = splits_fingerprint(bp)
    assert fp["from"] == "declaration" and fp["val_fraction"] == 0.1 and fp["val_seed"] == 0
    assert splits_fingerprint(bp) == fp and len(fp["hash"]) == 12
    data = load_benchmark("digits")
    assert data_fingerprint(data) == data_fingerprint(load_benchmark("digits"))
    swapped = BenchmarkData(data.spec, data.val, data.train, data.test)  # another carve: other fingerprint
    assert data_fingerprint(swapped) != data_fingerprint(data)
    relabelled = BenchmarkData(data.spec, data.train, data.val, Split(data.test.images, data.test.labels.flip(0)))
    assert data_fingerprint(relabelled) != data_fingerprint(data)


def test_study_json_records_the_provenance(tmp_path):
    write_study_state(_plan(tmp_path, TINY_SPACE))
    state = json.loads((tmp_path / "studies/s" / STATE).read_text())
    assert state["provenance"]["versions"] == library_versions()
    assert state["provenance"]["benchmarks"]["digits"]["sampler"]["class"] == "TPESampler"


def _started_with(tmp_path, **versions) -> None:
    write_study_state(_plan(tmp_path, TINY_SPACE))
    path = tmp_path / "studies/s" / STATE
    state = json.loads(path.read_text())
    state["provenance"]["versions"].update(versions)
    path.write_text(json.dumps(state))


def test_a_resume_with_other_library_versions_warns_in_one_line(tmp_path, capsys):
    _started_with(tmp_path, torch="2.0.0", ray="2.50.0")
    capsys.readouterr()
    check_new_or_resume(_plan(tmp_path, TINY_SPACE, resume=True))
    err = capsys.readouterr().err
    now = library_versions()
    assert err == (f"indistill-study: warning: resuming a study made with torch 2.0.0, now {now['torch']}; "
                   f"Ray 2.50.0, now {now['ray']}\n")


def test_a_resume_with_the_same_versions_or_none_recorded_says_nothing(tmp_path, capsys):
    _started_with(tmp_path)
    capsys.readouterr()
    check_new_or_resume(_plan(tmp_path, TINY_SPACE, resume=True))
    assert capsys.readouterr().err == ""
    path = tmp_path / "studies/s" / STATE
    state = json.loads(path.read_text())
    del state["provenance"]
    path.write_text(json.dumps(state))
    check_new_or_resume(_plan(tmp_path, TINY_SPACE, resume=True))
    assert capsys.readouterr().err == ""


def test_an_exported_config_carries_the_study_the_trial_its_test_row_and_the_versions(tmp_path):
    from study.names import TUNED

    storage = fabricate_study(tmp_path / "done", benchmarks=("digits",), students=("student (ce)", TUNED))
    storage.write_text("digits/search/best_config.yaml",
                       yaml.safe_dump(config_to_dict(build_config({}, benchmark="digits")), sort_keys=False))
    prov = {"versions": library_versions(), "git": {"commit": "0123456789abcdef", "dirty": True}}
    storage.write_json("study.json", {**storage.read_json("study.json"), "provenance": prov})
    export_study(storage, tmp_path / "out")
    text = (tmp_path / "out/digits/best_config.yaml").read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert header[2] == f"# Study done; trial {BEST['trial_id']}, val mAP 88.96"
    assert header[3] == f"# Test row ({TUNED}): cosine map 88.70 ± 0.30 (n=3)"  # its seeds: 89.0, 88.7, 88.4
    v = library_versions()
    assert header[4] == (f"# Made with indistill-study {v[PACKAGE]}, Python {v['python']}, torch {v['torch']}, "
                         f"Ray {v['ray']}, Optuna {v['optuna']}, numpy {v['numpy']}; git 0123456789ab (dirty)")
    assert yaml.safe_load(text)["benchmark"] == "digits"  # still the config


def test_device_kinds_count_the_trials_per_kind_from_their_placements(tmp_path):
    storage = Storage.create(tmp_path)
    storage.write_json("digits/search/trials.json", {"trials": [
        {"trial_id": "a", "placement": [{"device": "cuda:0"}, {"device": "cuda:1"}]},
        {"trial_id": "b", "placement": [{"device": "cuda:0"}]},
        {"trial_id": "c", "placement": [{"device": "cpu"}]},
        {"trial_id": "d", "placement": []},
    ]})
    assert device_kinds(storage, ["digits", "cifar10"]) == {"digits": {"cuda": 2, "cpu": 1}}
