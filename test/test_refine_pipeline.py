"""Refinement wired into the engine and the offline replay (issue 17): the demo model's poses of a
rendered room refined against a map built from that room's training frames, checked against the
rendered ground truth; the coarse pose kept when refinement fails; maps of another scene, bad
intrinsics and sizes refused in one line; replay's summary, frames.csv and report with --map, and
replay without --map as before."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_refine import MAP_CFG

from posenet_ros.cli import main as ros_main
from posenet_ros.engine import Engine, EngineConfig, EngineError, ImageError
from posenet_ros.geometry import position_error, rotation_error_deg
from posenet_ros.groundtruth import GroundTruthSource
from posenet_ros.refine import load_map, reason_kind, save_map
from posenet_ros.replay import (
    FRAMES_CSV_COLUMNS,
    REFINE_CSV_COLUMNS,
    ReplayConfig,
    format_summary,
    replay,
    write_report,
)
from posenet_train.bags import ToBagConfig, dataset_to_bag
from posenet_train.datasets import read_poses_csv, split_records
from posenet_train.scene_map import build_map, synth_intrinsics
from posenet_train.synth import SynthConfig, render_dataset

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "posenet_demo.pt"
# The demo model's room and camera (256x192, headings within 50 deg of +x), small.
SYNTH = SynthConfig(
    train_sequences=2, test_sequences=1, frames_per_sequence=40, width=256, height=192, heading_spread_deg=50
)
CPU = EngineConfig(device="cpu", warmup_iters=1)
TF_TRUTH = GroundTruthSource(frames=("map", "camera_optical"))
FP32 = {"precision": "fp32"}


def within(pose, truth, metres: float = 0.03, degrees: float = 0.5) -> bool:
    return bool(
        position_error(pose.position, truth.position) <= metres
        and rotation_error_deg(pose.quaternion, truth.quaternion) <= degrees
    )


@pytest.fixture(scope="module")
def room(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("refine_pipeline")
    data = root / "room"
    render_dataset(SYNTH, data, progress=False)
    build_map(data, root / "room.npz", MAP_CFG)  # intrinsics from scene.json
    tests = sorted(split_records(read_poses_csv(data / "poses.csv"), "test"), key=lambda r: r.image)
    engine = Engine(MODEL, dataclasses.replace(CPU, map_path=root / "room.npz"))
    return {"root": root, "data": data, "map_path": root / "room.npz", "tests": tests, "engine": engine}


def bgr(room: dict, record) -> np.ndarray:
    return cv2.imread(str(room["data"] / record.image), cv2.IMREAD_COLOR)


def test_engine_refines_the_networks_pose_to_the_ground_truth(room: dict) -> None:
    engine = room["engine"]
    assert engine.refining and engine.intrinsics == synth_intrinsics(SYNTH)  # the map's camera
    before = dataclasses.replace(engine.stats)
    records = room["tests"][::2]
    good = coarse_good = 0
    for r in records:
        truth = r.pose()
        loc = engine.localize(bgr(room, r), "bgr8")
        assert loc.refine_attempted and loc.refine_ms > 0
        assert loc.latency.total_ms >= loc.latency.refine_ms == loc.refine_ms
        assert loc.latency.total_ms > loc.latency.preprocess_ms + loc.latency.inference_ms
        if loc.refined:
            assert loc.refine_reason == "" and loc.inliers >= 20 and loc.pose is not loc.coarse_pose
            cov = loc.covariance
            assert cov.shape == (6, 6) and np.all(np.linalg.eigvalsh(cov) > 0)
            assert loc.position_std < 0.05  # PnP's, not the network's (one crop: none)
        else:
            assert loc.refine_reason and "\n" not in loc.refine_reason and loc.pose is loc.coarse_pose
        good += within(loc.pose, truth)
        coarse_good += within(loc.coarse_pose, truth)
    assert good >= 0.8 * len(records), (good, len(records))
    assert coarse_good <= 0.2 * len(records)  # the network alone is not this close
    assert engine.stats.refine_attempts - before.refine_attempts == len(records)
    assert engine.stats.refined - before.refined >= good

    # refine off: the same network pose, nothing refined; the coarse pose above is exactly this one.
    r = records[0]
    loc = engine.localize(bgr(room, r), "bgr8")
    engine.set_refine("off")
    try:
        off = engine.localize(bgr(room, r), "bgr8")
    finally:
        engine.set_refine("always")
    assert not off.refined and not off.refine_attempted and off.refine_ms == 0 and off.refine_reason == ""
    assert off.coarse_pose is off.pose
    np.testing.assert_allclose(off.pose.position, loc.coarse_pose.position, atol=1e-9)
    with pytest.raises(EngineError, match="unknown refine mode 'sometimes'"):
        engine.set_refine("sometimes")


def test_coarse_pose_is_kept_when_refinement_fails(room: dict) -> None:
    engine = room["engine"]
    blank = np.full((192, 256, 3), 128, np.uint8)
    loc = engine.localize(blank, "rgb8", crops=4)
    assert loc.refine_attempted and not loc.refined and loc.refine_reason.startswith("too few 2D-3D matches")
    assert loc.pose is loc.coarse_pose and loc.covariance is not None  # the crops' spread, as without a map
    assert loc.inliers == 0


def test_intrinsics_scale_with_the_image_and_other_aspects_are_refused(room: dict) -> None:
    k = synth_intrinsics(SYNTH)
    double = k.scaled(512, 384)
    assert double == synth_intrinsics(dataclasses.replace(SYNTH, width=512, height=384))  # the renderer's
    engine = room["engine"]
    r = room["tests"][10]
    image = bgr(room, r)
    loc = engine.localize(cv2.resize(image, (512, 384), interpolation=cv2.INTER_CUBIC), "bgr8")
    assert loc.refined and within(loc.pose, r.pose()), loc.refine_reason
    assert engine.intrinsics_for(512, 384) == double
    with pytest.raises(ImageError) as err:
        engine.localize(cv2.resize(image, (300, 300)), "bgr8")
    assert "refinement: image is 300x300, not the aspect of the intrinsics (256x192)" in str(err.value)
    assert "\n" not in str(err.value)
    # Intrinsics given for another size of the same camera: scaled down to the frames.
    given = (double.fx, double.fy, double.cx, double.cy, 512, 384)
    other = Engine(MODEL, dataclasses.replace(CPU, map_path=room["map_path"], intrinsics=given))
    scaled = other.intrinsics_for(256, 192).to_dict()
    assert scaled == pytest.approx(k.to_dict(), abs=1e-9)
    loc = other.localize(image, "bgr8")
    assert loc.refined and within(loc.pose, r.pose()), loc.refine_reason
    # A lens given with its distortion keeps it (replay --intrinsics with coefficients).
    lens = Engine(MODEL, dataclasses.replace(CPU, map_path=room["map_path"], intrinsics=(*given, -0.05, 0.01)))
    assert lens.intrinsics_for(256, 192).distortion == (-0.05, 0.01, 0.0, 0.0)


def test_map_of_another_scene_and_bad_settings_are_refused_in_one_line(room: dict, tmp_path: Path) -> None:
    other = tmp_path / "other.npz"
    save_map(dataclasses.replace(load_map(room["map_path"]), scene="other_room"), other)
    cases = {
        "the map is of scene 'other_room', the model of 'synthetic_room'": dict(map_path=other),
        "no such map file": dict(map_path=tmp_path / "missing.npz"),
        "intrinsics are for refinement, which needs a map": dict(intrinsics=(200, 200, 127.5, 95.5, 256, 192)),
        "intrinsics must be fx, fy, cx, cy, width, height": dict(map_path=room["map_path"], intrinsics=(1, 2)),
        "focal lengths must be positive": dict(map_path=room["map_path"], intrinsics=(0, 200, 127.5, 95.5, 256, 192)),
        "unknown refine mode 'never'": dict(map_path=room["map_path"], refine="never"),
    }
    for message, change in cases.items():
        with pytest.raises(EngineError) as err:
            Engine(MODEL, dataclasses.replace(CPU, **change))
        assert message in str(err.value) and "\n" not in str(err.value), (message, str(err.value))
    plain = Engine(MODEL, CPU)
    assert not plain.refining and plain.localize(np.zeros((192, 256, 3), np.uint8)).refine_attempted is False
    with pytest.raises(EngineError, match="refine always needs a map; start the engine with map_path"):
        plain.set_refine("always")


@pytest.fixture(scope="module")
def replays(room: dict) -> dict:
    root = room["root"]
    bag = root / "bag"
    dataset_to_bag(ToBagConfig(room["data"], bag, storage="mcap"))
    # One precision for both runs, whatever precision auto would pick: their poses are compared.
    base = ReplayConfig(bag, MODEL, ground_truth=TF_TRUTH, device="cpu", progress=False, node_parameters=FP32)
    report = root / "report"
    args = ["--gt-frames", "map", "camera_optical", "--map", str(room["map_path"]), "--report", str(report)]
    args += ["--precision", "fp32"]
    code = ros_main(["replay", str(bag), "--model", str(MODEL), "--device", "cpu", "--no-progress", *args])
    assert code == 0
    with (report / "frames.csv").open() as f:
        rows = list(csv.reader(f))
    summary = json.loads((report / "summary.json").read_text())
    return {"bag": bag, "report": report, "plain": replay(base), "summary": summary, "rows": rows}


def test_replay_with_a_map_reports_refinement_and_coarse_beside_refined(replays: dict, room: dict) -> None:
    s = replays["summary"]
    frames = len(room["tests"])
    ref = s["refinement"]
    assert s["frames_processed"] == frames and ref["attempts"] == frames
    assert ref["refined"] >= 0.8 * frames and ref["rate"] == pytest.approx(ref["refined"] / frames)
    assert ref["inliers_median"] >= 20 and 0 < ref["latency_ms"]["p50"] <= ref["latency_ms"]["p95"]
    assert sum(ref["not_refined"].values()) == frames - ref["refined"]
    # to-bag records the camera's CameraInfo beside the images; replay hands it to the engine as the node does.
    assert ref["intrinsics_source"] == "CameraInfo on /camera/camera_info" and ref["intrinsics"]["width"] == 256
    assert (
        s["camera"]["source"] == ref["intrinsics_source"]
        and "as in training" in s["camera"]["field_of_view"]  # the demo model records its 256x192 camera
    )
    coarse, refined = ref["errors"]["coarse"], ref["errors"]["refined"]
    assert refined == s["errors"]  # the published poses are the refined ones
    assert refined["median_position_m"] < 0.03 and refined["median_rotation_deg"] < 0.5
    assert coarse["median_position_m"] > 3 * refined["median_position_m"]
    assert "refinement" in s["latency_measured"]
    lines = format_summary(s)
    assert any(line.startswith("refinement (") for line in lines)
    assert any(line.startswith("PoseNet (coarse): median") for line in lines)


def test_replay_report_with_a_map_has_the_refinement_columns_and_both_series(replays: dict, room: dict) -> None:
    report, summary, rows = replays["report"], replays["summary"], replays["rows"]
    assert rows[0] == FRAMES_CSV_COLUMNS + REFINE_CSV_COLUMNS
    col = {name: i for i, name in enumerate(rows[0])}
    body = rows[1:]
    assert len(body) == len(room["tests"])
    assert sum(int(r[col["refined"]]) for r in body) == summary["refinement"]["refined"]
    for r in body:
        assert float(r[col["refine_ms"]]) > 0 and int(r[col["inliers"]]) >= 0
        assert (r[col["refined"]] == "1") == (r[col["refine_reason"]] == "")
        coarse = np.array([float(r[col[f"coarse_{a}"]]) for a in ("x", "y", "z")])
        published = np.array([float(r[col[a]]) for a in ("x", "y", "z")])
        assert (r[col["refined"]] == "1") != np.allclose(coarse, published, atol=0)
    # The coarse poses are exactly the network's poses of a replay without a map.
    plain = [r for r in replays["plain"].records if r.pose is not None]
    assert len(plain) == len(body)
    for a, r in zip(plain, body, strict=True):
        coarse = [float(r[col[f"coarse_{n}"]]) for n in ("x", "y", "z", "qw", "qx", "qy", "qz")]
        np.testing.assert_allclose(coarse, [*a.pose.position, *a.pose.quaternion], atol=1e-9)
    page = (report / "index.html").read_text()
    assert "Refinement" in page and "PoseNet (coarse)" in page and "refinement latency median / p95" in page
    assert "error_cdf.png" in summary["plots"]


def test_replay_without_a_map_is_unchanged(replays: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    s = replays["plain"].summary
    assert "refinement" not in s and s["latency_measured"] == " (engine: preprocessing and network, per frame)"
    assert all(not r.refine_attempted and r.coarse_pose is None for r in replays["plain"].records)
    write_report(replays["plain"], tmp_path / "report")
    with (tmp_path / "report" / "frames.csv").open() as f:
        assert next(csv.reader(f)) == FRAMES_CSV_COLUMNS
    assert "Refinement" not in (tmp_path / "report" / "index.html").read_text()
    # --intrinsics without --map, and malformed: one line, exit 2, before anything loads.
    bag = str(replays["bag"])
    for extra, message in (
        (["--intrinsics", "200,200,127.5,95.5,256,192"], "--intrinsics are refinement's camera and need --map"),
        (["--map", str(tmp_path / "none.npz")], "no such map file"),
        (["--map", str(replays["report"] / "summary.json"), "--intrinsics", "1,2,3"], "6 to 11 numbers"),
        (["--map", str(replays["report"] / "summary.json"), "--intrinsics", ",".join(["1"] * 12)], "6 to 11 numbers"),
    ):
        code = ros_main(["replay", bag, "--model", str(MODEL), "--device", "cpu", "--no-progress", *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_reasons_are_counted_by_kind() -> None:
    assert reason_kind("too few PnP inliers (12, need 20)") == "too few PnP inliers"
    assert reason_kind("refined pose is 1.08 m / 3.5 deg from the coarse one (limits 1.0 m / 15.0 deg)") == (
        "too far from the coarse pose"
    )
    assert reason_kind("too few 2D-3D matches (3, need 20)") == "too few 2D-3D matches"
    assert reason_kind("PnP RANSAC found no pose") == "PnP RANSAC found no pose"


def test_eval_with_a_map_reports_posenet_and_refined_side_by_side(room: dict, tmp_path: Path, capsys) -> None:
    """posenet-train eval --map: the same frames, PoseNet's errors and the refined ones (within the
    refinement targets), the refinement rate and latency; the engine's refinement, not another."""
    from posenet_train.cli import main as train_main

    out = tmp_path / "eval"
    code = train_main(
        ["eval", str(MODEL), str(room["data"]), "--map", str(room["map_path"]), "--out", str(out), "--no-baseline"]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    coarse, refined = summary["posenet"], summary["refined"]
    assert refined["frames"] == coarse["frames"] == len(room["tests"])
    assert refined["median_position_m"] < 0.03 and refined["median_rotation_deg"] < 0.5
    assert coarse["median_position_m"] > 3 * refined["median_position_m"]
    assert refined["refined_frames"] >= 0.8 * len(room["tests"]) and refined["latency_ms"]["p50"] > 0
    printed = capsys.readouterr().out
    assert "PoseNet + map" in printed and "frames refined" in printed
    code = train_main(["eval", str(MODEL), str(room["data"]), "--map", str(tmp_path / "none.npz"), "--no-baseline"])
    assert code == 2 and len([ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]) == 1


def test_refine_budget_refines_only_where_the_budget_leaves_room_and_probes_again(room: dict) -> None:
    """refine "budget": with a budget the network alone overruns, refinement waits; every 30th
    skipped frame refines anyway (its cost is measured again); with room to spare, every frame."""
    from posenet_ros.engine import REFINE_PROBE_EVERY

    def attempted(budget_ms: float, frames: int) -> list[int]:
        config = dataclasses.replace(
            CPU, map_path=room["map_path"], refine="budget", latency_budget_ms=budget_ms, max_crops=2
        )
        engine = Engine(MODEL, config)
        records = (room["tests"] * 2)[:frames]
        return [i for i, r in enumerate(records) if engine.localize(bgr(room, r), "bgr8").refine_attempted]

    assert attempted(0.5, REFINE_PROBE_EVERY + 5) == [REFINE_PROBE_EVERY]
    assert attempted(60_000.0, 4) == [0, 1, 2, 3]


def test_refine_rate_hz_refines_at_most_that_often_by_image_time(room: dict) -> None:
    """The node's refine_rate_hz (localize_frame with a RefineGate, as the node and replay run it):
    10 Hz images at 4 Hz refine every third frame; the frames between get PoseNet's pose."""
    from posenet_ros.image_codec import decode, encode_image
    from posenet_ros.relocalizer.diagnostics import NodeStats
    from posenet_ros.relocalizer.frames import PUBLISHED, Frame, RefineGate, localize_frame
    from posenet_ros.relocalizer.params import NodeSettings

    settings = NodeSettings()
    assert settings.update({"refine_rate_hz": 4.0, "max_frame_age_ms": 0.0}) is None
    gate, stats, tried = RefineGate(), NodeStats(), []
    for k, r in enumerate(room["tests"][:7]):
        rgb = cv2.cvtColor(bgr(room, r), cv2.COLOR_BGR2RGB)
        stamp = 1_000_000_000 + k * 100_000_000
        outcome = localize_frame(
            room["engine"], settings, decode, Frame(encode_image(rgb, "rgb8"), stamp, "c"), 0, stats, gate
        )
        assert outcome.status == PUBLISHED
        tried.append(outcome.loc.refine_attempted)
    assert tried == [True, False, False, True, False, False, True]
    assert gate.due(0, 4.0)  # time running backwards (a bag looping) refines at once
    assert all(RefineGate().due(s, 0.0) for s in (0, 1, 2))  # 0: every frame


def test_a_camera_info_of_another_aspect_is_set_aside_not_a_reason_to_drop_frames(room: dict) -> None:
    """A driver whose calibration is for another resolution's aspect (1920x1080 for 256x192 frames):
    its CameraInfo describes some other image, so the engine keeps the map's camera for refinement,
    crops nothing and says why; every frame still gets a pose (found in review)."""
    from posenet_ros.camera import Camera

    engine = Engine(MODEL, dataclasses.replace(CPU, map_path=room["map_path"]))
    engine.set_camera(Camera(1920, 1080, 1400.0, 1400.0, 959.5, 539.5))
    r = room["tests"][0]
    loc = engine.localize(bgr(room, r), "bgr8")
    assert loc.refine_attempted and loc.refined and within(loc.pose, r.pose()), loc.refine_reason
    assert "1920x1080, the images 256x192 (another aspect): not used" in engine.camera_mismatch
    assert engine.intrinsics_for(256, 192) == synth_intrinsics(SYNTH)


def test_refine_rate_hz_keeps_the_rate_asked_of_a_real_cameras_stamps() -> None:
    """A 30 Hz camera's stamps are 33,333,333 ns apart: three of them fall just short of 100 ms.
    refine_rate_hz 10 still refines every third frame (10 Hz, not 7.5 Hz), 15 every second; never
    more often than asked by more than the slack. refine budget without a budget is refused."""
    from posenet_ros.relocalizer.frames import RefineGate
    from posenet_ros.relocalizer.params import NodeSettings

    def refined(rate_hz: float, frames: int = 300) -> int:
        gate, count = RefineGate(), 0
        for k in range(frames):
            stamp = 1_000_000_000 + k * 33_333_333
            if gate.due(stamp, rate_hz):
                gate.ran(stamp)
                count += 1
        return count

    assert refined(10.0) == 100 and refined(15.0) == 150 and refined(30.0) == 300 and refined(0.0) == 300
    assert refined(12.0) == 100  # 12 Hz cannot be kept at 30 Hz: every third frame, not more often
    assert "refine budget needs latency_budget_ms > 0" in NodeSettings().update({"refine": "budget"})
    assert NodeSettings().update({"refine": "budget", "latency_budget_ms": 80.0}) is None
