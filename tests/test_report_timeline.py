"""The report's phase timeline, from hand-written phases.json files."""
import json

from PIL import Image

from study.report import phase_intervals, plot_timeline, timeline_table
from study.storage import Storage


def test_timeline_rows_are_seconds_from_the_first_start_in_start_order(tmp_path):
    (tmp_path / "digits").mkdir()
    (tmp_path / "cifar10").mkdir()
    (tmp_path / "digits/phases.json").write_text(json.dumps({"artifacts_s": 10, "intervals": {
        "artifacts": [{"start": 1000.0, "end": 1010.0}], "search": [{"start": 1010.0, "end": 1050.0}]}}))
    (tmp_path / "cifar10/phases.json").write_text(json.dumps({"intervals": {
        "artifacts": [{"start": 1001.0, "end": 1030.0}, {"start": 1100.0, "end": 1104.4}]}}))
    intervals = phase_intervals(Storage.create(tmp_path), ["digits", "cifar10", "fashionmnist"])
    assert len(intervals) == 4  # a benchmark without phases.json has none
    assert timeline_table(intervals)[2:] == [
        "| digits | artifacts | 0 | 10 | 10 |",
        "| cifar10 | artifacts | 1 | 30 | 29 |",
        "| digits | search | 10 | 50 | 40 |",
        "| cifar10 | artifacts | 100 | 104 | 4 |",
    ]
    plot_timeline(intervals, tmp_path / "t.png")
    with Image.open(tmp_path / "t.png") as im:
        assert im.size[0] > 500 and im.size[1] > 100
