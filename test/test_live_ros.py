"""`posenet-ros live` on real ROS 2: a recording played over DDS with /clock into the node that the
command starts with `ros2 launch` (use_sim_time), its poses scored with replay's report and checked
against the offline replay of the same frames; and the mistakes it answers in one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from ros_harness import RosTestbed

from posenet_ros.bagio import open_bag
from posenet_ros.geometry import Pose, position_error, rotation_error_deg
from posenet_ros.groundtruth import GroundTruth, GroundTruthSource
from posenet_ros.relocalizer.frames import PUBLISHED
from posenet_ros.replay import ReplayConfig, replay
from posenet_train.bags import ToBagConfig, dataset_to_bag
from posenet_train.synth import SynthConfig, render_dataset

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "posenet_demo.pt"
FRAMES = 16


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo scene's test walk as a raw and a compressed MCAP recording, 10 Hz."""
    root = tmp_path_factory.mktemp("live")
    cfg = SynthConfig(
        train_sequences=0, test_sequences=1, frames_per_sequence=FRAMES, width=128, height=96, heading_spread_deg=50
    )
    render_dataset(cfg, root / "scene", progress=False)
    bags = {}
    for kind in ("raw", "compressed"):
        bags[kind] = root / f"bag_{kind}"
        dataset_to_bag(ToBagConfig(root / "scene", bags[kind], storage="mcap", compressed=kind == "compressed"))
    return bags


def run_live(bed: RosTestbed, *args: str, timeout: float = 180.0) -> tuple[int, str]:
    proc = bed.start(["posenet-ros", "live", *args], name="live")
    return proc.wait(timeout=timeout), proc.output


def camera_to_base(bag: Path) -> Pose:
    """The recording's static mount: base_link <- camera_optical."""
    with open_bag(bag) as reader:
        return GroundTruth(reader, GroundTruthSource(frames=("base_link", "camera_optical"), max_gap_s=1e9)).at(0)


@pytest.mark.parametrize("kind", ["raw", "compressed"])
def test_live_scores_the_launched_node_as_the_offline_replay_does(
    bed: RosTestbed, recording: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    bag, report = recording[kind], tmp_path / "report"
    status, output = run_live(
        bed,
        str(bag),
        "--model",
        str(MODEL),
        "--launch",
        "--launch-arg",
        "tf_mode:=map_to_base",
        "--launch-arg",
        "device:=cpu",
        "--launch-arg",
        "precision:=fp32",  # the same precision as the offline replay below, whatever auto would pick
        "--gt-frames",
        "map",
        "base_link",
        "--report",
        str(report),
        "--node-log",
        str(tmp_path / "node.log"),
    )
    assert status == 0, output
    assert "Traceback" not in output
    summary = json.loads((report / "summary.json").read_text())
    assert summary["mode"] == "live over DDS into a node started by ros2 launch"
    assert summary["node_exit_status"] == 0
    assert summary["frames_read"] == FRAMES
    assert summary["node_received"] == FRAMES  # every frame crossed DDS to the node
    assert summary["frames_processed"] >= FRAMES - 2  # a loaded machine may make the node skip one
    assert summary["device"] == "cpu" and summary["backend"] == "torchscript"
    assert summary["latency_ms"]["p50"] > 0
    node_log = (tmp_path / "node.log").read_text()
    assert "process has finished cleanly" in node_log, node_log[-2000:]
    with (report / "frames.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == FRAMES
    assert "<title>live run of " in (report / "index.html").read_text()

    # The same frames offline: the camera's pose, which the launched node (map_to_base) composes with
    # the recording's mount into the base's pose through its tf2 buffer.
    fp32 = {"precision": "fp32"}
    offline = replay(ReplayConfig(bag=bag, model=MODEL, device="cpu", progress=False, node_parameters=fp32)).records
    mount_inv = camera_to_base(bag).inverse()
    expected = {r.stamp_ns: r.pose.compose(mount_inv) for r in offline if r.status == PUBLISHED}
    live_rows = [r for r in rows if r["status"] == PUBLISHED]
    assert len(live_rows) == summary["frames_processed"]
    for r in live_rows:
        want = expected[int(r["stamp_ns"])]
        got = np.array([float(r[k]) for k in ("x", "y", "z")])
        q = np.array([float(r[k]) for k in ("qw", "qx", "qy", "qz")])
        assert position_error(got[None], want.position[None])[0] < 1e-5
        assert rotation_error_deg(q[None], want.quaternion[None])[0] < 1e-3
    # Ground truth was matched for every published frame and the error is the model's (0.23 m median
    # on the whole demo walk), not a frame mix-up.
    assert summary["ground_truth"]["frames_with_ground_truth"] == summary["frames_processed"]
    assert summary["errors"]["median_position_m"] < 1.0


def test_a_node_that_fails_to_start_is_one_line(bed: RosTestbed, recording: dict[str, Path]) -> None:
    status, output = run_live(
        bed, str(recording["raw"]), "--model", str(MODEL), "--launch", "--launch-arg", "tf_mode:=sideways"
    )
    lines = [ln for ln in output.splitlines() if ln.startswith("posenet-ros")]
    assert status == 2, output
    assert (
        len(lines) == 1
        and "the node stopped before the first frame (cannot start: invalid parameter: tf_mode" in lines[0]
    ), output
    assert "Traceback" not in output


def test_no_node_running_is_one_line(bed: RosTestbed, recording: dict[str, Path]) -> None:
    status, output = run_live(bed, str(recording["raw"]), "--model", str(MODEL), "--startup-timeout", "2")
    assert status == 2, output
    assert output.strip().splitlines()[-1].startswith("posenet-ros: error: no node subscribed to the camera topic")
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "0"], "--rate must be > 0"),
        (["--launch-arg", "tf_mode:=none"], "--launch-arg only applies with --launch"),
        (["--launch", "--launch-arg", "tf_mode"], "give name:=value"),
    ],
)
def test_mistakes_are_refused_before_anything_starts(
    bed: RosTestbed, recording: dict[str, Path], args: list[str], message: str
) -> None:
    status, output = run_live(bed, str(recording["raw"]), "--model", str(MODEL), *args, timeout=60)
    assert status == 2 and message in output and len(output.strip().splitlines()) == 1, output


def test_live_with_a_map_reports_the_nodes_refinement_and_refined_accuracy(bed: RosTestbed, tmp_path: Path) -> None:
    """make demo's live run with map:=...: the launched node refines against the map, the summary
    carries its own count of refined frames, and the published poses are the refined ones."""
    from posenet_ros.refine import FeatureConfig
    from posenet_train.scene_map import MapConfig, build_map

    cfg = SynthConfig(
        train_sequences=2, test_sequences=1, frames_per_sequence=24, width=256, height=192, heading_spread_deg=50
    )
    render_dataset(cfg, tmp_path / "room", progress=False)
    build_map(
        tmp_path / "room",
        tmp_path / "room_map.npz",
        MapConfig(FeatureConfig(max_size=256, max_features=1000)),
        scene="synthetic_room",
    )
    dataset_to_bag(ToBagConfig(tmp_path / "room", tmp_path / "bag", storage="mcap", split="test", rate_hz=4.0))
    report = tmp_path / "report"
    status, output = run_live(
        bed,
        str(tmp_path / "bag"),
        "--model",
        str(MODEL),
        "--launch",
        "--launch-arg",
        "device:=cpu",
        "--launch-arg",
        f"map:={tmp_path / 'room_map.npz'}",
        "--launch-arg",
        "precision:=fp32",  # auto's start-up measurement is not what this test is about
        "--gt-frames",
        "map",
        "camera_optical",
        "--report",
        str(report),
    )
    assert status == 0, output
    summary = json.loads((report / "summary.json").read_text())
    refinement = summary["node_refinement"]
    # A loaded machine makes the node skip frames (refinement takes 0.1-0.4 s here); each it
    # published it tried to refine.
    assert refinement["attempts"] >= summary["frames_processed"] >= 12
    assert refinement["refined"] >= 0.75 * refinement["attempts"]
    assert f"refined {refinement['refined']} of {refinement['attempts']} frames" in output
    assert refinement["inliers_median"] >= 20 and refinement["latency_p95_ms"] >= refinement["latency_p50_ms"] > 0
    assert summary["errors"]["median_position_m"] < 0.05  # PoseNet alone: about 0.23 m
