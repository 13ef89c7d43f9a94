"""The replay report a user reads: sequences recorded and drawn as separate segments, the summary as
tables with what ran and how, every frame read in frames.csv, plots that show where the data is."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from posenet_ros import report
from posenet_ros.bagio import open_bag, read_messages
from posenet_ros.groundtruth import GroundTruthSource
from posenet_ros.replay import ReplayConfig, replay, write_report
from posenet_train.bags import ToBagConfig, dataset_to_bag, sequence_stamps
from posenet_train.synth import SynthConfig, render_dataset

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "posenet_demo.pt"
FRAMES = 5  # per sequence


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    cfg = SynthConfig(train_sequences=0, test_sequences=2, frames_per_sequence=FRAMES, width=96, height=72)
    render_dataset(cfg, root / "scene", progress=False)
    dataset_to_bag(ToBagConfig(root / "scene", root / "bag", storage="mcap", rate_hz=10.0))
    return root / "bag"


def test_to_bag_records_sequences_as_separate_time_spans(bag: Path) -> None:
    with open_bag(bag) as reader:
        stamps = [m.log_time_ns for m in read_messages(reader, ["/camera/image_raw"])]
    steps = np.diff(stamps) / 1e9
    assert len(stamps) == 2 * FRAMES
    assert np.allclose(np.delete(steps, FRAMES - 1), 0.1)  # 10 Hz within a sequence
    assert steps[FRAMES - 1] == pytest.approx(5.1)  # the default 5 s gap between them
    assert sequence_stamps(["a", "a", "b"], 0, 2.0, 0.0) == [0, 500_000_000, 1_000_000_000]


def test_segments_split_at_time_gaps_and_label_changes() -> None:
    t = np.array([0.0, 0.1, 0.2, 5.3, 5.4, 5.5]) * 1e9
    assert report.time_segments(t) == [(0, 3), (3, 6)]
    assert report.time_segments(np.array([0, 1e8, 3e8, 4e8])) == [(0, 4)]  # a skipped frame is no gap
    assert report.label_segments(["s1", "s1", "s2", "s2", "s2"]) == [(0, 2), (2, 5)]


def test_latency_and_cdf_axes_are_not_squashed_by_an_outlier() -> None:
    latency = np.r_[np.full(99, 5.0), 700.0]
    assert report.latency_axis_limit(latency) == pytest.approx(10.0)  # 2 x p95; the note counts the rest
    assert report.latency_axis_limit(np.linspace(4, 6, 100)) == pytest.approx(6.0)  # nothing clipped
    assert report.latency_axis_limit(latency, budget_ms=12.0) == pytest.approx(12.6)  # budget in view
    errors = np.r_[np.linspace(0.1, 0.3, 99), 40.0]
    limit, top = report.cdf_axis_limit([errors])
    assert top == 40.0 and limit < 1.0


def test_trajectory_is_drawn_per_segment_with_start_end_and_error_joins(tmp_path: Path, monkeypatch) -> None:
    figures = []
    monkeypatch.setattr(report, "save_figure", lambda plt, fig, path: figures.append(fig) or path)
    truth = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0], [9, 9, 0], [10, 9, 0]], dtype=float)
    est = truth + 0.1
    report.plot_trajectory_top(truth, {"PoseNet": est}, tmp_path / "t.png", "t", [(0, 3), (3, 5)])
    ax = figures[0].axes[0]
    paths = [line for line in ax.lines if line.get_linestyle() == "-"]
    # One line per sequence, none from the end of the first to the start of the second.
    assert sorted(len(line.get_xdata()) for line in paths) == [2, 3]
    labels = [line.get_label() for line in ax.lines]
    assert {"sequence 1", "sequence 2", "start", "end"} <= set(labels)
    assert len(ax.collections[0].get_segments()) == 5  # each estimate joined to its ground truth
    assert any(c.get_label() == "PoseNet (colour: error)" for c in ax.collections)

    figures.clear()
    t = np.array([0.0, 0.1, 0.2, 5.3, 5.4])
    report.plot_error_over_time(t, np.ones(5), np.ones(5), tmp_path / "e.png", "t", [(0, 3), (3, 5)])
    top = figures[0].axes[0]
    boundaries = [line for line in top.lines if line.get_linestyle() == "--"]
    assert len(boundaries) == 1 and boundaries[0].get_xdata()[0] == pytest.approx(5.3)


def test_index_page_frames_csv_and_summary(bag: Path, tmp_path: Path) -> None:
    truth = GroundTruthSource(frames=("map", "camera_optical"))
    fp32 = {"precision": "fp32"}  # what the page shows is checked below; auto's pick depends on the CPU
    result = replay(ReplayConfig(bag, MODEL, ground_truth=truth, device="cpu", progress=False, node_parameters=fp32))
    index = write_report(result, tmp_path / "r")
    page = index.read_text()
    assert "{'" not in page and "<pre>" not in page  # tables, not a printed Python dict
    assert page.count("<table>") == 4 and "Trajectory (top view)" in page
    for text in (
        str(MODEL),
        "<td>torchscript</td>",
        "<td>fp32</td>",
        "<td>cpu</td>",
        "within 0.25 m and 2 deg",
        "within 5.0 m and 10 deg",
        "overruns of the budget",
        'href="frames.csv"',
        'href="summary.json"',
        "segments (separated by time gaps)",
    ):
        assert text in page, text
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["segments"] == 2 and summary["backend"] == "torchscript" and summary["precision"] == "fp32"
    assert 0 <= summary["errors"]["within_0.5m_5deg"] <= 1 and summary["warnings"] == []
    for png in summary["plots"]:
        assert (tmp_path / "r" / png).is_file() and f'src="{png}"' in page
    assert re.search(r"within 0\.5 m and 5 deg</td><td[^>]*>\d+\.\d%</td>", page)


def test_frames_csv_has_a_row_for_every_frame_read_skipped_ones_too(bag: Path, tmp_path: Path) -> None:
    # 500x the recorded rate: frames arrive faster than inference, so the slot replaces some.
    result = replay(ReplayConfig(bag, MODEL, realtime=True, rate=500.0, device="cpu", progress=False))
    write_report(result, tmp_path / "r")
    with (tmp_path / "r" / "frames.csv").open() as f:
        rows = list(csv.DictReader(f))
    s = result.summary
    assert len(rows) == s["frames_read"] == 2 * FRAMES
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert len(skipped) == s["frames_skipped"] > 0
    assert all("replaced by a newer frame" in r["reason"] and r["x"] == "" for r in skipped)
    stamps = [int(r["stamp_ns"]) for r in rows]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
