"""Refinement of a coarse pose against a 3D map (issue 17): the map built from a rendered scene's
training frames with their exact poses and intrinsics, PnP on its test frames against the rendered
ground truth, and the ways it must refuse (far-off coarse pose, another scene's map, no features,
corrupt map files)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from posenet_ros import camera
from posenet_ros.geometry import Pose, position_error, quat_multiply, rotation_error_deg, rotation_vector_to_quat
from posenet_ros.refine import (
    FeatureConfig,
    MapError,
    check_map_scene,
    load_map,
    pose_covariance,
    refine_pose,
    reprojection_residuals,
    save_map,
)
from posenet_train.datasets import read_poses_csv, split_records
from posenet_train.scene_map import MapConfig, build_map, dataset_intrinsics, perturbed, synth_intrinsics
from posenet_train.synth import Camera, Renderer, SynthConfig, project, render_dataset, room_scene

SYNTH = SynthConfig(train_sequences=2, test_sequences=1, frames_per_sequence=40, width=320, height=240)
MAP_CFG = MapConfig(features=FeatureConfig(max_size=640, max_features=1000))


def rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("refine")
    data = root / "room"
    render_dataset(SYNTH, data, progress=False)
    build_map(data, root / "room.npz", MAP_CFG, intrinsics=synth_intrinsics(SYNTH))
    tests = split_records(read_poses_csv(data / "poses.csv"), "test")[::4]
    return {
        "root": root,
        "data": data,
        "map_path": root / "room.npz",
        "map": load_map(root / "room.npz"),
        "tests": tests,
    }


def test_synth_intrinsics_are_the_renderers_camera(scene: dict) -> None:
    k = synth_intrinsics(SYNTH)
    cam = Camera(SYNTH.width, SYNTH.height, SYNTH.hfov_deg)
    assert (k.width, k.height) == (320, 240)
    np.testing.assert_allclose(k.matrix(), cam.intrinsics(), rtol=0, atol=1e-12)
    assert k.hfov_deg == pytest.approx(SYNTH.hfov_deg)
    assert dataset_intrinsics(scene["data"]) == k  # what scene.json records
    # A pinhole projection with these numbers is the renderer's own.
    pose = scene["tests"][0].pose()
    pts = pose.transform_points(np.array([[0.3, -0.2, 2.0], [-1.0, 0.5, 4.0]]))
    uv, _ = project(pose, cam, pts)
    res = reprojection_residuals(pose, k.matrix(), pts, uv)
    assert np.abs(res).max() < 1e-9


def test_map_points_lie_on_the_rendered_surfaces(scene: dict) -> None:
    m = scene["map"]
    assert m.scene == "synthetic_room" and m.features.max_size == 640
    assert len(m.points) > 1000 and float(np.median(m.point_errors)) < 1.0
    header = m.header()
    assert header["version"] == 1 and header["feature_type"] == "sift" and header["image_size"] == [320, 240]
    renderer = Renderer(room_scene(SYNTH.scene_seed), Camera(SYNTH.width, SYNTH.height, SYNTH.hfov_deg))
    gaps = []
    for i in (0, len(m.image_names) // 2):
        pose = Pose(m.poses[i, :3], m.poses[i, 3:])
        _, depth = renderer.render(pose)
        s = m.image_slice(i)
        ids = m.point_ids[s]
        uv = np.rint(m.keypoints[s][ids >= 0]).astype(int)
        in_cam = pose.inverse().transform_points(m.points[ids[ids >= 0]])
        gaps.append(np.abs(in_cam[:, 2] - depth[uv[:, 1], uv[:, 0]]))
    assert float(np.median(np.concatenate(gaps))) < 0.01


def test_refined_pose_matches_the_rendered_ground_truth(scene: dict) -> None:
    rng = np.random.default_rng(17)
    intr = synth_intrinsics(SYNTH)
    good = 0
    for r in scene["tests"]:
        gt = r.pose()
        coarse = perturbed(gt, 0.3, 5.0, rng)
        res = refine_pose(rgb(scene["data"] / r.image), intr, coarse, scene["map"])
        assert res.refined, res.reason
        assert res.inliers >= 20 and 0 < res.rms_px < 1.5
        cov = res.covariance
        assert cov.shape == (6, 6) and np.allclose(cov, cov.T) and np.all(np.linalg.eigvalsh(cov) > 0)
        assert res.timings.total_ms >= res.timings.features_ms > 0
        good += position_error(res.pose.position, gt.position) <= 0.03 and (
            rotation_error_deg(res.pose.quaternion, gt.quaternion) <= 0.5
        )
    assert good >= 0.9 * len(scene["tests"])


def test_far_off_coarse_pose_and_featureless_image_are_not_refined(scene: dict) -> None:
    intr = synth_intrinsics(SYNTH)
    r = scene["tests"][1]
    gt = r.pose()
    # 2.5 m away and turned half round: other map images, and whatever PnP finds is refused.
    far = Pose(
        gt.position + np.array([2.5, 0.0, 0.0]), quat_multiply(rotation_vector_to_quat([0, 0, np.pi]), gt.quaternion)
    )
    res = refine_pose(rgb(scene["data"] / r.image), intr, far, scene["map"])
    assert not res.refined and res.reason and "\n" not in res.reason
    assert res.pose is far and res.covariance is None
    blank = refine_pose(np.zeros((240, 320, 3), np.uint8), intr, gt, scene["map"])
    assert not blank.refined and blank.reason.startswith("too few 2D-3D matches")
    with pytest.raises(ValueError, match="intrinsics are for 320x240"):
        refine_pose(np.zeros((120, 160, 3), np.uint8), intr, gt, scene["map"])


def test_the_shift_gate_follows_the_maps_scale(scene: dict) -> None:
    """A map in SfM units (here the room's map at 10x): the default gate is a fraction of the map's
    camera spread, so a coarse pose 3 units off (0.3 m at metric scale) is refined; a gate in
    metres would refuse it as too far."""
    from dataclasses import replace

    from posenet_ros.refine import RefineConfig

    metric = scene["map"]
    poses = metric.poses.copy()
    poses[:, :3] *= 10
    scaled = replace(metric, poses=poses, points=metric.points * 10)
    assert scaled.camera_spread == pytest.approx(10 * metric.camera_spread, rel=1e-12)
    assert 3.0 < metric.camera_spread < 8.0  # two walks in the demo room's walk box
    assert metric.scale == metric.camera_spread and scaled.scale == pytest.approx(10 * metric.scale)
    # A camera that only turns on the spot has no spread; its points' distance gives the scale.
    still = poses.copy()
    still[:, :3] = still[0, :3]
    turning = replace(scaled, poses=still)
    assert turning.camera_spread == 0.0 and turning.scale > 10.0
    r = scene["tests"][2]
    gt = r.pose()
    gt10 = Pose(10 * gt.position, gt.quaternion)
    coarse = perturbed(gt10, 3.0, 5.0, np.random.default_rng(3))
    image, intr = rgb(scene["data"] / r.image), synth_intrinsics(SYNTH)
    res = refine_pose(image, intr, coarse, scaled)
    assert res.refined, res.reason
    assert position_error(res.pose.position, gt10.position) <= 0.3  # 3 cm at metric scale
    absolute = refine_pose(image, intr, coarse, scaled, RefineConfig(max_shift_m=1.0))
    assert not absolute.refined and absolute.reason.startswith("refined pose is"), absolute.reason
    assert "limits 1 /" in absolute.reason
    tight = refine_pose(image, intr, coarse, scaled, RefineConfig(max_shift_frac=0.01))
    assert not tight.refined and "0.01 x the map's scale" in tight.reason, tight.reason


def test_map_of_another_scene_is_not_refined(scene: dict) -> None:
    other_cfg = SynthConfig(
        scene_seed=3, train_sequences=1, test_sequences=0, frames_per_sequence=20, width=320, height=240
    )
    other = scene["root"] / "other"
    render_dataset(other_cfg, other, progress=False)
    other_map = build_map(other, scene["root"] / "other.npz", MAP_CFG, scene="other_room")
    intr = synth_intrinsics(SYNTH)
    rng = np.random.default_rng(3)
    for r in scene["tests"][:5]:
        gt = r.pose()
        res = refine_pose(rgb(scene["data"] / r.image), intr, perturbed(gt, 0.3, 5.0, rng), other_map)
        assert not res.refined, (res.inliers, position_error(res.pose.position, gt.position))
    with pytest.raises(MapError, match="the map is of scene 'other_room', the model of 'synthetic_room'"):
        check_map_scene(load_map(scene["root"] / "other.npz"), "synthetic_room")


def test_corrupt_map_files_give_one_line_map_errors(scene: dict, tmp_path: Path) -> None:
    good = scene["map_path"]
    cases = {}
    cases["missing"] = tmp_path / "nope.npz"
    (p := tmp_path / "garbage.npz").write_bytes(b"not a zip at all\n" * 10)
    cases["garbage"] = p
    (p := tmp_path / "truncated.npz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases["truncated"] = p
    with np.load(good) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(str(arrays["header"]))

    def variant(name: str, **changes: np.ndarray) -> None:
        path = tmp_path / f"{name}.npz"
        with open(path, "wb") as f:
            np.savez(f, **{**arrays, **changes})
        cases[name] = path

    variant("version", header=np.array(json.dumps({**header, "version": 99})))
    variant("header_not_json", header=np.array("{oops"))
    variant("no_intrinsics", header=np.array(json.dumps({k: v for k, v in header.items() if k != "intrinsics"})))
    variant("point_ids", point_ids=arrays["point_ids"] + len(arrays["points"]) + 5)
    variant("descriptors", descriptors=arrays["descriptors"][:-1])
    variant("nan", points=np.full_like(arrays["points"], np.nan))
    path = tmp_path / "no_points.npz"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(path, "w") as zout:
        for item in zin.infolist():
            if item.filename != "points.npy":
                zout.writestr(item, zin.read(item.filename))
    cases["no_points_array"] = path
    for name, path in cases.items():
        with pytest.raises(MapError) as err:
            load_map(path)
        message = str(err.value)
        assert "\n" not in message and str(path) in message, (name, message)
    with pytest.raises(MapError, match="map format version 99, this code reads 1; rebuild the map"):
        load_map(cases["version"])


def test_map_save_is_atomic_and_round_trips(scene: dict, tmp_path: Path) -> None:
    m = scene["map"]
    out = tmp_path / "copy.npz"
    out.write_bytes(b"old")
    save_map(m, out)
    back = load_map(out)
    assert back.header() == m.header() and back.image_names == m.image_names
    for name in ("poses", "points", "keypoints", "descriptors", "point_ids", "kp_offsets"):
        np.testing.assert_array_equal(getattr(back, name), getattr(m, name))
    assert [p.name for p in tmp_path.iterdir()] == ["copy.npz"]  # no temporary file left


def test_covariance_is_the_gauss_newton_one_about_the_map_axes() -> None:
    rng = np.random.default_rng(0)
    intr = camera.Camera(320, 240, 250.0, 250.0, 159.5, 119.5)
    k = intr.matrix()
    pose = Pose(np.array([1.0, 2.0, 1.5]), rotation_vector_to_quat([0.3, -1.2, 0.4]))
    pts = pose.transform_points(
        np.column_stack([rng.uniform(-2, 2, 60), rng.uniform(-1.5, 1.5, 60), rng.uniform(2, 6, 60)])
    )
    pixels = reprojection_residuals(pose, k, pts, np.zeros((60, 2))) + rng.normal(0, 0.5, (60, 2))
    cov = pose_covariance(pose, k, pts, pixels)

    def residuals(delta: np.ndarray) -> np.ndarray:
        moved = Pose(pose.position + delta[:3], quat_multiply(rotation_vector_to_quat(delta[3:]), pose.quaternion))
        return reprojection_residuals(moved, k, pts, pixels).reshape(-1)

    h = 1e-6
    jac = np.stack([(residuals(h * e) - residuals(-h * e)) / (2 * h) for e in np.eye(6)], axis=1)
    r0 = residuals(np.zeros(6))
    expected = (r0 @ r0 / (2 * 60 - 6)) * np.linalg.inv(jac.T @ jac)
    np.testing.assert_allclose(cov, expected, rtol=1e-4, atol=1e-12)


def test_a_distorted_lens_is_mapped_and_refined_through_its_distortion(tmp_path: Path) -> None:
    """Frames rendered through a strong radial lens (k1 -0.15, k2 0.03: corners move ~10 px): the map
    undistorts its keypoints and the query's with the lens in cameras.json, and the refined pose is
    centimetre-accurate; the same query refined as if the lens were a pinhole is not."""
    from posenet_train import perturb
    from posenet_train.datasets import DatasetCameras, PoseRecord, write_cameras_json, write_poses_csv
    from posenet_train.synth import trajectory_curve

    scene = room_scene(0)
    render_cam = Camera(256, 192, 65.0)
    lens = perturb.Nuisance(k1=-0.15, k2=0.03)
    records, frames = [], 30
    for k, (split, seed) in enumerate([("train", 11), ("train", 12), ("test", 13)]):
        curve = trajectory_curve(scene, seed, 50.0)
        renderer = perturb.PerturbedRenderer(scene, render_cam, lens, seed, curve, frames)
        for j in range(frames):
            pose = curve(np.array([j / (frames - 1)]))[0]
            name = f"seq-{k}/frame-{j:03d}.png"
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(tmp_path / name), cv2.cvtColor(renderer.render(pose, j), cv2.COLOR_RGB2BGR))
            records.append(PoseRecord(name, split, pose.position, pose.quaternion))
    write_poses_csv(tmp_path / "poses.csv", records)
    camera = lens.lens(render_cam)
    assert camera.distortion_shift_px() > 8
    write_cameras_json(tmp_path, DatasetCameras({"lens": camera}, {}, "rendered"))
    scene_map = build_map(tmp_path, cfg=MapConfig())
    assert scene_map.intrinsics == camera
    errors = {"lens": [], "pinhole": []}
    for r in [r for r in records if r.split == "test"][::5]:
        image = cv2.cvtColor(cv2.imread(str(tmp_path / r.image)), cv2.COLOR_BGR2RGB)
        truth = r.pose()
        coarse = perturbed(truth, 0.2, 3.0, np.random.default_rng(1))
        for name, cam in (("lens", camera), ("pinhole", camera.pinhole())):
            result = refine_pose(image, cam, coarse, scene_map)
            errors[name].append(position_error(result.pose.position, truth.position) if result.refined else np.inf)
    assert np.median(errors["lens"]) < 0.02, errors
    assert np.median(errors["pinhole"]) > 2 * np.median(errors["lens"]), errors
