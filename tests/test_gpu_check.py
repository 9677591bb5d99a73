"""The GPU check (``perf.gpu_check``) without a GPU: the one line it prints here, and its comparisons
and its "four trials at once" verdict on known inputs (the CPU standing in for CUDA, hand-made study
records standing in for a study on a GPU; no Ray is started)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import indistill.evaluation.retrieval as retrieval
from perf import gpu_check, gpu_packing
from perf.gpu_check import (
    RETRIEVAL_TOL,
    STEP_RTOL,
    StepValues,
    check_retrieval,
    check_student_step,
    compare_retrieval,
    compare_steps,
    relative_difference,
    retrieval_values,
    step_case,
    step_values,
)
from perf.gpu_packing import (
    MIN_OVERLAP_S,
    SEARCH_SPACE,
    cpus_per_trial,
    most_at_once,
    packing_verdict,
    read_records,
    study_argv,
    worker_interval,
)

ROOT = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU: the check runs for real")
NO_GPU_LINE = (f"gpu_check: no CUDA GPU here (torch {torch.__version__}, CUDA build "
               f"{torch.version.cuda or 'none (a CPU-only build)'}); nothing to check")


# ----------------------------------------------------------------------------- no GPU: one line, exit 0


@NO_GPU
def test_without_a_gpu_main_prints_one_line_and_writes_nothing(tmp_path, capsys):
    default_existed = gpu_check.DEFAULT_OUT.exists()
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out == NO_GPU_LINE + "\n"
    assert captured.err == ""
    assert not out.exists()
    assert gpu_check.DEFAULT_OUT.exists() == default_existed


@NO_GPU
def test_without_a_gpu_the_command_prints_one_line_and_exits_0(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "-m", "perf.gpu_check", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert (proc.returncode, proc.stdout) == (0, NO_GPU_LINE + "\n"), proc.stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_gpu_the_driver_sees_but_torch_cannot_use_fails(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check, "_driver_gpus", lambda: 2)
    line, status = gpu_check.no_gpu_line()
    assert status == 1
    assert line.startswith("gpu_check: failed: the NVIDIA driver sees 2 GPU(s) but torch ")
    monkeypatch.setattr(gpu_check, "_driver_gpus", lambda: 0)  # a driver, no GPU
    assert gpu_check.no_gpu_line() == (NO_GPU_LINE, 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu_check.no_gpu_line() is None


# ----------------------------------------------------------------------------- the student step


def test_relative_difference_known_values():
    assert relative_difference(torch.tensor([3.0, 4.0004], dtype=torch.float64), torch.tensor([3.0, 4.0])) == pytest.approx(8e-5, rel=1e-6)
    assert relative_difference(2.0001, 2.0) == pytest.approx(5e-5, rel=1e-6)
    assert relative_difference(torch.zeros(3), torch.zeros(3)) == 0.0
    assert relative_difference(torch.tensor([1e-30]), torch.zeros(1)) == float("inf")


def _values(loss: float, grad: list[float], bias: list[float] = (0.0,)) -> dict[int, StepValues]:
    return {0: StepValues({"loss": loss, "loss/block0": loss}, {"w": torch.tensor(grad, dtype=torch.float64), "b": torch.tensor(bias, dtype=torch.float64)})}


def test_compare_steps_tolerance_logic_on_known_values():
    want = _values(2.0, [3.0, 4.0])  # the whole gradient's norm: 5
    ok = compare_steps(want, _values(2.0001, [3.0, 4.0004]), STEP_RTOL)  # 5e-5 and 8e-5 relative
    assert ok["ok"] and ok["epochs"]["0"]["ok"]
    assert ok["epochs"]["0"]["loss_max_rel_diff"] == pytest.approx(5e-5, rel=1e-6)
    assert ok["epochs"]["0"]["grad_rel_diff"] == pytest.approx(8e-5, rel=1e-6)
    assert ok["max_rel_diff"] == pytest.approx(8e-5, rel=1e-6)
    assert not compare_steps(want, _values(2.0, [3.0, 4.001]), STEP_RTOL)["ok"]  # gradient 2e-4 off
    assert not compare_steps(want, _values(2.0004, [3.0, 4.0]), STEP_RTOL)["ok"]  # loss 2e-4 off
    # a zero-in-exact-arithmetic gradient (a bias ahead of BatchNorm) is judged against the whole gradient:
    # rounding noise of 1e-6 of it passes, although it is infinitely far from the reference's 0
    noisy = compare_steps(want, _values(2.0, [3.0, 4.0], bias=[5e-6]), STEP_RTOL)
    assert noisy["ok"] and noisy["epochs"]["0"]["grad_worst_parameter"] == "b"
    assert noisy["epochs"]["0"]["grad_worst_parameter_share"] == pytest.approx(1e-6, rel=1e-6)
    assert noisy["epochs"]["0"]["grad_worst_parameter_rel_diff"] == float("inf")
    # something missing fails: an epoch, a gradient, a loss part
    assert not compare_steps(want, {}, STEP_RTOL)["ok"]
    assert not compare_steps(want, {0: StepValues(want[0].values, {"w": want[0].grads["w"]})}, STEP_RTOL)["ok"]
    assert not compare_steps(want, {0: StepValues({"loss": 2.0}, want[0].grads)}, STEP_RTOL)["ok"]


@pytest.fixture(scope="module")
def case():
    return step_case(batch_size=32)


@pytest.fixture(scope="module")
def fp32_on_cpu(case):
    return step_values(case, CPU, "fp32")


def test_the_step_case_covers_every_curriculum_phase(case, fp32_on_cpu):
    # the CIFAR-10 curriculum (3, 4, 5): block0 from epoch 0, block1 from 3, block2 from 7, the embedding from 12
    assert case.epochs == (0, 3, 7, 12)
    parts = {e: sorted(v.values) for e, v in fp32_on_cpu.items()}
    assert parts == {0: ["loss", "loss/block0", "phase"], 3: ["loss", "loss/block1", "phase"],
                     7: ["loss", "loss/block2", "phase"], 12: ["loss", "loss/embedding", "phase"]}
    # the student's parameters as far as the epoch's tap: one block's conv and BN (4 tensors) per block, then the embedding
    assert [len(v.grads) for v in fp32_on_cpu.values()] == [4, 8, 12, 14]


def test_cpu_against_cpu_agrees_exactly(case, fp32_on_cpu):
    again = compare_steps(fp32_on_cpu, step_values(case, CPU, "fp32"), STEP_RTOL)
    assert again["ok"] and again["max_rel_diff"] == 0.0
    record = check_student_step(CPU, CPU, batch_size=32)
    assert record["ok"] and record["fp32"]["max_rel_diff"] == 0.0
    assert record["auto_for_information"]["ok"] is None  # information, never the verdict
    assert record["epochs"] == [0, 3, 7, 12] and record["devices"] == ["cpu", "cpu"]


def test_a_perturbed_gradient_fails_the_check(fp32_on_cpu):
    epoch = 7
    whole = torch.linalg.vector_norm(torch.cat([g.reshape(-1).double() for g in fp32_on_cpu[epoch].grads.values()]))
    for factor, passes in ((2.0, False), (0.5, True)):
        grads = {n: g.clone() for n, g in fp32_on_cpu[epoch].grads.items()}
        grads["blocks.1.0.weight"][0, 0, 0, 0] += float(factor * STEP_RTOL * whole)
        got = {**fp32_on_cpu, epoch: StepValues(dict(fp32_on_cpu[epoch].values), grads)}
        result = compare_steps(fp32_on_cpu, got, STEP_RTOL)
        assert result["epochs"][str(epoch)]["grad_rel_diff"] == pytest.approx(factor * STEP_RTOL, rel=1e-3)
        assert result["epochs"][str(epoch)]["grad_worst_parameter"] == "blocks.1.0.weight"
        assert result["ok"] is passes
        assert [r["ok"] for r in result["epochs"].values()] == [True, True, passes, True]


def test_bf16_forwards_fail_the_fp32_tolerance(case, fp32_on_cpu):
    # what the check is for: bf16 autocast (as `auto` runs on CUDA) moves the step's gradient by far more than 1e-4
    bf16 = compare_steps(fp32_on_cpu, step_values(case, CPU, "bf16"), STEP_RTOL)
    assert not bf16["ok"]
    assert bf16["max_rel_diff"] > 10 * STEP_RTOL


# ----------------------------------------------------------------------------- retrieval


def test_compare_retrieval_known_values():
    want = {"cosine": {"map": 0.5, "p@10": 0.25}, "euclidean": {"map": 0.25, "p@10": 0.125}}
    close = {"cosine": {"map": 0.5000005, "p@10": 0.25}, "euclidean": {"map": 0.25, "p@10": 0.125}}
    result = compare_retrieval(want, close, RETRIEVAL_TOL)
    assert result["ok"] and result["max_abs_diff"] == pytest.approx(5e-7, rel=1e-6)
    assert result["metrics"]["euclidean"]["max_abs_diff"] == 0.0
    far = {**close, "cosine": {"map": 0.500002, "p@10": 0.25}}
    assert not compare_retrieval(want, far, RETRIEVAL_TOL)["ok"]
    assert not compare_retrieval(want, {**close, "cosine": {"map": 0.5}}, RETRIEVAL_TOL)["ok"]  # a key missing
    assert not compare_retrieval(want, {"cosine": close["cosine"]}, RETRIEVAL_TOL)["ok"]  # a metric missing


def test_retrieval_cpu_against_cpu_agrees():
    record = check_retrieval(CPU, CPU, size=(200, 2_000))
    assert record["ok"] and record["max_abs_diff"] == 0.0
    assert set(record["metrics"]) == set(retrieval.METRICS)
    assert all(m["keys"] == 2 + 2 * len(gpu_check.KS) + 1 for m in record["metrics"].values())


def test_retrieval_device_path_on_the_cpu_agrees_with_the_numpy_path(monkeypatch):
    # the torch code CUDA runs (stable torch.sort, keys in torch), taken on the CPU, against the CPU's numpy path
    want = retrieval_values(CPU, 300, 3_000)
    monkeypatch.setattr(retrieval, "_NUMPY_ON_CPU", False)
    got = retrieval_values(CPU, 300, 3_000)
    result = compare_retrieval(want, got, RETRIEVAL_TOL)
    assert result["ok"], result
    assert 0.2 < want["cosine"]["map"] < 0.8  # a ranking with something to get right


# ----------------------------------------------------------------------------- four trials at once

CUDA = [{"device": "cuda:0", "node_id": "n1", "hostname": "gpu"}]
FOUR_AT_ONCE = {"a": (0.0, 10.0), "b": (1.0, 11.0), "c": (2.0, 12.0), "d": (3.0, 13.0)}
DONE = dict.fromkeys(FOUR_AT_ONCE, "completed")


def _placements(**override: list[dict]) -> dict[str, list[dict]]:
    return {t: override.get(t, CUDA) for t in FOUR_AT_ONCE}


def test_most_at_once_known_overlaps():
    assert most_at_once(FOUR_AT_ONCE.values()) == 4
    assert most_at_once([(0, 10), (10, 20)], 0) == 1  # touching is one after the other
    assert most_at_once([(0, 10), (9, 20)], 0) == 2
    assert most_at_once([(0, 10), (9, 20)], 1.5) == 1  # 1 s in common: within the timestamps' error
    assert most_at_once([(0, 10), (8, 20)], 1.5) == 2
    assert most_at_once([(0, 1.0)], 1.5) == 0  # shorter than the stretch it would need
    assert most_at_once([]) == 0


def test_four_trials_at_once_on_cuda_pass():
    verdict = packing_verdict(FOUR_AT_ONCE, _placements(), DONE)
    assert verdict["ok"] and verdict["reason"] == ""
    assert verdict["most_at_once"] == 4 and verdict["devices"] == ["cuda:0"] and verdict["nodes"] == ["n1"]
    assert verdict["trial_ids"] == ["a", "b", "c", "d"]


def test_three_at_once_fails():
    later = {**FOUR_AT_ONCE, "d": (9.5, 20.0)}  # a, b, c share [2, 10]; d overlaps all three for 0.5 s only
    verdict = packing_verdict(later, _placements(), DONE)
    assert not verdict["ok"] and verdict["most_at_once"] == 3
    assert verdict["reason"] == f"at most 3 at once (overlapping by more than {MIN_OVERLAP_S:g} s)"


def test_a_trial_on_the_cpu_fails():
    verdict = packing_verdict(FOUR_AT_ONCE, _placements(c=[{**CUDA[0], "device": "cpu"}]), DONE)
    assert not verdict["ok"] and verdict["most_at_once"] == 4
    assert verdict["reason"] == "not every rank on cuda: c"
    assert verdict["devices"] == ["cpu", "cuda:0"]


def test_trials_on_two_nodes_fail():
    other = [{**CUDA[0], "node_id": "n2"}]
    verdict = packing_verdict(FOUR_AT_ONCE, _placements(b=other), DONE)
    assert not verdict["ok"] and verdict["nodes"] == ["n1", "n2"]
    assert verdict["reason"] == "on 2 nodes, not one"


def test_missing_failed_or_untimed_trials_fail():
    three = {t: FOUR_AT_ONCE[t] for t in "abc"}
    verdict = packing_verdict(three, {t: CUDA for t in "abc"}, {t: "completed" for t in "abc"})
    assert verdict["reason"] == "3 trials, not 4; at most 3 at once (overlapping by more than 1.5 s)"
    verdict = packing_verdict(FOUR_AT_ONCE, _placements(), {**DONE, "b": "failed"})
    assert verdict["reason"] == "not completed: b (failed)"
    verdict = packing_verdict(three, _placements(), DONE)
    assert verdict["reason"] == "no timing in Tune's results: d; at most 3 at once (overlapping by more than 1.5 s)"
    assert not packing_verdict(FOUR_AT_ONCE, _placements(d=[]), DONE)["ok"]  # no placement record


def _tune_row(trial_id: str, epoch: int, timestamp: int, wall: float, ray_startup: float) -> dict:
    """A result row as Tune writes it in result.json (the fields the check reads, and a few others)."""
    return {"epoch": epoch, "val_map": 0.5, "loop_time_s": 0.4 * epoch, "trial_wall_s": wall, "startup_s": 14.5,
            "ray_startup_s": ray_startup, "timestamp": timestamp, "trial_id": trial_id, "training_iteration": epoch,
            "time_total_s": wall + 0.2, "date": "2026-12-01_21-03-02"}


def test_worker_interval_from_tune_results():
    rows = [_tune_row("t1", 1, 1_796_158_982, 14.75, 10.25), _tune_row("t1", 2, 1_796_158_983, 15.5, 10.25)]
    assert worker_interval(rows) == (1_796_158_983 - 15.5 + 10.25, 1_796_158_983.0)  # the worker: from entry to last report
    assert worker_interval([{"epoch": 1, "timestamp": 5}]) is None
    assert worker_interval([]) is None


def test_read_records_from_a_study_directory(tmp_path):
    study = tmp_path / "gpu-check"
    (study / "digits/search/placement").mkdir(parents=True)
    for t, start in zip("abcd", (100, 101, 102, 103)):
        (study / "digits/search/placement" / f"{t}.json").write_text(json.dumps({"ranks": CUDA}))
        trial_dir = study / "ray/digits-search" / f"trial-00{'abcd'.index(t)}-{t}_1_epochs_0=1_2026-12-01"
        trial_dir.mkdir(parents=True)
        rows = [_tune_row(t, e, start + 10 + e, 8.0 + e, 3.0) for e in (1, 2)]
        (trial_dir / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (study / "digits/search/trials.json").write_text(json.dumps(
        {"trials": [{"trial_id": t, "status": "completed"} for t in "abcd"]}))
    intervals, placements, statuses = read_records(study)
    assert intervals == {t: (s + 12 - 10.0 + 3.0, s + 12.0) for t, s in zip("abcd", (100, 101, 102, 103))}
    assert placements == {t: CUDA for t in "abcd"} and statuses == DONE
    assert packing_verdict(intervals, placements, statuses)["ok"]  # [105, 112] .. [108, 115]: 4 s in common


def test_cpus_per_trial_fit_four_trials(monkeypatch):
    assert [cpus_per_trial(n) for n in (16, 6, 4, 2, 1)] == [4.0, 1.0, 1.0, 0.5, 0.25]
    import os

    import ray._private.utils as ray_utils

    monkeypatch.setattr(ray_utils, "get_num_cpus", lambda **_kw: 6.5)  # a cgroup quota of 6.5 CPUs
    assert gpu_packing.ray_cpus() == 6
    monkeypatch.setattr(ray_utils, "get_num_cpus", None)  # a Ray without it: the affinity mask
    assert gpu_packing.ray_cpus() == len(os.sched_getaffinity(0))


def test_the_tiny_study_is_a_valid_plan(tmp_path, monkeypatch):
    # what check_packing passes to study.cli.main, up to the checks before Ray (a GPU faked for them)
    from study.cli import build_parser
    from study.plan import check_before_ray, make_plan

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(SEARCH_SPACE))
    argv = study_argv(space, tmp_path / "studies", 4.0)
    assert argv[-2:] == ["--address", "local"]  # a Ray of its own, never a cluster this machine may belong to
    args = build_parser().parse_args(argv)
    plan = make_plan(args)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_before_ray(args, plan)
    assert (plan.trial_resources.gpus, plan.trial_resources.cpus, plan.trial_resources.workers) == (0.25, 4.0, 1)
    assert plan.trial_resources.max_concurrent({"CPU": 16, "GPU": 1}) == 4  # four at once on the lent machine
    (bp,) = plan.benchmarks
    budget = bp.space.budget
    assert (budget.trials, budget.epochs, budget.early_stopping, budget.final_seeds) == (4, gpu_packing.TRIAL_EPOCHS, False, 1)
    assert bp.base.student.epochs == gpu_packing.TRIAL_EPOCHS
    assert bp.base.methods == ("indistill",) and bp.base.teacher.epochs == 1
    assert not (tmp_path / "studies").exists()  # nothing written before Ray


def test_the_report_says_which_checks_failed():
    checks = {
        "student_step": {"ok": True, "fp32": {"max_rel_diff": 2e-6}, "auto_for_information": {"max_rel_diff": 1e-2}},
        "retrieval": {"ok": False, "max_abs_diff": 3e-3},
        "packing": {"ok": False, "most_at_once": 3, "trials": 4, "devices": ["cuda:0"], "reason": "at most 3 at once"},
    }
    figures = {"student_step": {"phases": {"embedding/pkt": {"images_per_s_at_128": 1000.0, "best_batch": 512,
                                                             "images_per_s_at_best": 4000.0}}},
               "retrieval": {"n_query": 10_000, "n_database": 50_000, "metrics": {"cosine": {"median_s": 0.25}}}}
    broken = {"student_step": {"ok": False, "error": "OutOfMemoryError: CUDA out of memory"}}
    assert gpu_check.summary_lines(checks, figures) == [
        "student step fp32, CUDA vs CPU: max rel diff 2.0e-06 (tolerance 0.0001) ok; auto (bf16 on CUDA): 1.0e-02, "
        "for information",
        "retrieval, CUDA vs CPU: max abs diff 3.0e-03 (tolerance 1e-06) FAILED",
        "packing: 3 of 4 trials at once, devices ['cuda:0'] FAILED: at most 3 at once",
        "fast path embedding/pkt: 1000 images/s at batch 128, 4000 at 512",
        "retrieval 10,000 x 50,000 cosine: 0.250 s",
    ]
    assert gpu_check.summary_lines(checks, broken)[3:] == ["student step timing: FAILED: OutOfMemoryError: CUDA out of memory"]


def test_main_writes_the_record_and_fails_on_a_failed_check(tmp_path, monkeypatch, capsys):
    # the command's own part on a (pretended) GPU machine: the parts replaced by a record with one failed check
    checks = {"student_step": {"ok": True, "fp32": {"max_rel_diff": 0.0}, "auto_for_information": {"max_rel_diff": 0.0}},
              "retrieval": {"ok": True, "max_abs_diff": 0.0},
              "packing": {"ok": False, "most_at_once": 2, "trials": 4, "devices": ["cuda"], "reason": "at most 2 at once"}}
    seen = []
    monkeypatch.setattr(gpu_check, "no_gpu_line", lambda: None)
    monkeypatch.setattr(gpu_check, "machine_info", lambda device: {"device": str(device)})
    monkeypatch.setattr(gpu_check, "run_checks", lambda device, work_dir: seen.append((device, work_dir.is_dir())) or
                        {"checks": checks, "figures": {}, "ok": False})
    out = tmp_path / "sub" / "gpu.json"
    assert gpu_check.main(["--out", str(out)]) == 1
    assert seen == [(torch.device("cuda"), True)]  # in a temporary directory, gone afterwards
    record = json.loads(out.read_text())
    assert record["command"].endswith(f"-m perf.gpu_check --out {out}")
    assert record["checks"] == checks and record["ok"] is False
    assert record["machine"] == {"device": "cuda"} and record["torch"] == torch.__version__
    assert record["cuda_build"] == torch.version.cuda and record["budget_seconds"] == 300.0
    assert {"date", "total_seconds", "cudnn", "figures"} <= set(record)
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "[gpu_check] packing: 2 of 4 trials at once, devices ['cuda'] FAILED: at most 2 at once"
    assert lines[-1].startswith("[gpu_check] FAILED in ") and lines[-1].endswith(f"wrote {out}")
