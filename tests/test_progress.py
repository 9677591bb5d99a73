"""The study's progress display on hand-fed events: plain lines off a terminal, a live panel on one."""
import io
import json
from types import SimpleNamespace

import pytest

from study.names import ARTIFACT_PROGRESS
from study.progress import STUDY_LOG, BenchmarkStatus, Progress, TrialEvents, attach, format_duration
from study.storage import Storage


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("seconds,text", [(None, "?"), (-1, "?"), (0, "0s"), (42.4, "42s"), (185, "3m05s"), (3725, "1h02m")])
def test_durations(seconds, text):
    assert format_duration(seconds) == text


def _progress(tmp_path, out, live=False):
    clock = Clock()
    statuses = [BenchmarkStatus("digits", trials=4, seeds=2, concurrent=2, full_epochs=6),
                BenchmarkStatus("cifar10", trials=2, seeds=1, concurrent=2, full_epochs=6)]
    return Progress(Storage.create(tmp_path), statuses, out, live=live, clock=clock), clock


def test_plain_events_count_trials_and_estimate_what_is_left(tmp_path):
    out = io.StringIO()
    p, clock = _progress(tmp_path, out)
    p.phase("digits", "artifacts", "6 stages")
    p.stages("digits", 0, 6)
    clock.now += 30
    p.stages("digits", 2, 6, "auxiliary, val protocol")  # 15 s a stage, 4 left
    p.phase("digits", "search", "4 trials, 2 at a time")
    for k, tid in enumerate(("aaa", "bbb")):
        p.trial_started("digits", tid, f"trial-{k}-{tid}")
    clock.now += 10
    p.trial_finished("digits", "aaa", {"val_map": 0.8, "epoch": 3})  # fewer than 6 epochs: stopped by ASHA
    clock.now += 10
    p.trial_finished("digits", "bbb", {"val_map": 0.7, "epoch": 6})  # more epochs beat a higher mAP
    p.trial_started("digits", "ccc", "trial-2-ccc")
    p.trial_finished("digits", "ccc", None, error="DivergedError: loss became nan")
    assert out.getvalue().splitlines() == [
        "[digits] artifacts: 6 stages",
        "[digits] artifacts: stage 2/6 done (auxiliary, val protocol); ETA 1m00s",
        "[digits] search: 4 trials, 2 at a time",
        "[digits] search: trial-0-aaa stopped early after epoch 3, val mAP 80.00; best 80.00 (trial-0-aaa); "
        "1/4 done, 1 running; ETA 15s",
        "[digits] search: trial-1-bbb completed, val mAP 70.00; best 70.00 (trial-1-bbb); 2/4 done, 0 running; ETA 15s",
        "[digits] search: trial-2-ccc failed (DivergedError: loss became nan); best 70.00 (trial-1-bbb); "
        "3/4 done, 0 running; ETA 5s",
    ]
    st = p.status["digits"]
    assert st.counts == {"completed": 1, "stopped early": 1, "failed": 1}
    assert "\x1b" not in out.getvalue()
    # every event is in the study's log file too, and a resumed study's display continues it
    assert (tmp_path / STUDY_LOG).read_text().splitlines() == out.getvalue().splitlines()
    resumed, _ = _progress(tmp_path, io.StringIO())
    resumed("[study] resumed")
    assert (tmp_path / STUDY_LOG).read_text().splitlines() == [*out.getvalue().splitlines(), "[study] resumed"]
    line = st.line(clock.now)
    assert "search" in line and "trials 3/4 done, 0 running, 1 stopped, 1 failed" in line and "best val mAP 70.00" in line


def test_final_seeds_and_a_finished_search_record(tmp_path):
    out = io.StringIO()
    p, clock = _progress(tmp_path, out)
    p.searched("cifar10", {"counts": {"completed": 1, "stopped early": 0, "failed": 1},
                           "best": {"trial_id": "xyz", "val_map": 0.5}})
    p.phase("cifar10", "final", "seeds [0]")
    p.trial_started("cifar10", "f1")
    clock.now += 20
    p.trial_finished("cifar10", "f1", {"row": 5})
    assert out.getvalue().splitlines()[-1] == "[cifar10] final: seed run 1/1 done; ETA 0s"
    assert "best val mAP 50.00 (trial xyz)" in p.status["cifar10"].line(clock.now)


def test_artifact_progress_files_are_polled(tmp_path):
    out = io.StringIO()
    p, _ = _progress(tmp_path, out)
    p.phase("digits", "artifacts")
    (tmp_path / "digits/artifacts").mkdir(parents=True)
    (tmp_path / "digits" / ARTIFACT_PROGRESS).write_text(json.dumps({"done": 3, "total": 6, "stage": "prune, val protocol"}))
    p.poll_artifacts()
    p.poll_artifacts()  # unchanged: no second line
    assert [line for line in out.getvalue().splitlines() if "stage 3/6" in line] == [
        "[digits] artifacts: stage 3/6 done (prune, val protocol); ETA 0s"]


def test_live_panel_shows_one_row_per_benchmark(tmp_path):
    out = io.StringIO()
    p, _ = _progress(tmp_path, out, live=True)
    with p:
        p.phase("digits", "search", "4 trials")
        p.trial_started("digits", "aaa")
    text = out.getvalue()
    assert "[digits] search: 4 trials" in text
    assert "trials 0/4 done, 1 running" in text  # the digits row of the panel
    assert "cifar10" in text and "waiting" in text


def test_tune_callback_pickles_without_the_display_and_finds_it_again(tmp_path):
    import pickle

    out = io.StringIO()
    p, _ = _progress(tmp_path, out)
    callback = pickle.loads(pickle.dumps(TrialEvents("digits")))
    assert callback._progress() is None  # no display attached: events are dropped
    attach(p)
    try:
        assert callback._progress() is p
        assert TrialEvents("mnist")._progress() is None  # a benchmark the display does not show
        # Tune's trial events, as Tune passes them: a trial's name, last result and pickled error
        trial = SimpleNamespace(trial_id="aaa", custom_trial_name="trial-0-aaa", last_result={"val_map": 0.5, "epoch": 6})
        failed = SimpleNamespace(trial_id="bbb", custom_trial_name=None, last_result={},
                                 get_pickled_error=lambda: RuntimeError('Traceback (most recent call last):\n  File "loop.py", line 5, in run\n    step()\nDivergedError: loss became nan'))
        p.phase("digits", "search")
        callback.on_trial_start(0, [], trial)
        callback.on_trial_start(0, [], failed)
        callback.on_trial_complete(1, [], trial)
        callback.on_trial_error(2, [], failed)
    finally:
        attach(None)
    assert out.getvalue().splitlines() == [
        "[digits] search: trial-0-aaa completed, val mAP 50.00; best 50.00 (trial-0-aaa); 1/4 done, 1 running; ETA 0s",
        "[digits] search: trial bbb failed (DivergedError: loss became nan); best 50.00 (trial-0-aaa); 2/4 done, 0 running; ETA 0s",
    ]


def test_without_a_console_the_events_go_to_the_log_file_only(tmp_path, capsys):
    p = Progress(Storage.create(tmp_path), [BenchmarkStatus("digits", trials=1, seeds=1, concurrent=1)], None, live=True)
    with p:
        p.phase("digits", "search", "1 trial")
    assert not p.live and capsys.readouterr() == ("", "")
    assert (tmp_path / STUDY_LOG).read_text() == "[digits] search: 1 trial\n"
