"""The synthetic renderer is our ground truth, so it is checked against projection done here by hand:
a marked 3D point must appear exactly where the camera pose says it projects."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from posenet_ros.geometry import Pose, matrix_to_quat, quat_to_matrix
from posenet_train.datasets import convert, read_poses_csv
from posenet_train.synth import (
    TEXTURE_SIZE,
    Camera,
    Face,
    Renderer,
    Scene,
    SynthConfig,
    body_rotation,
    render_dataset,
    room_scene,
    smooth_trajectory,
)

# A wall at x = 5 spanning y and z in [-W, W]; white with a black dot at (5, 1, 0.5).
W = 12.0
DOT = np.array([5.0, 1.0, 0.5])


def dot_scene() -> Scene:
    tex = np.full((1, TEXTURE_SIZE, TEXTURE_SIZE, 3), 255.0, np.float32)
    # Face coordinates: u along y, v along z (upwards); texture rows run top-down.
    u = (DOT[1] + W) / (2 * W) * (TEXTURE_SIZE - 1)
    v = (1 - (DOT[2] + W) / (2 * W)) * (TEXTURE_SIZE - 1)
    yy, xx = np.mgrid[0:TEXTURE_SIZE, 0:TEXTURE_SIZE]
    tex[0][(xx - u) ** 2 + (yy - v) ** 2 <= 1.5**2] = 0.0
    face = Face(axis=0, coord=5.0, lo=(-W, -W), hi=(W, W), texture=0)
    return Scene("dot", [face], tex, ((5.0, -W, -W), (5.0, W, W)), (0, 0, 0), (1, 1, 1))


def hand_projection(pose: Pose, camera: Camera, point: np.ndarray) -> tuple[np.ndarray, float]:
    """Pinhole projection written out: camera-to-world R, C -> X_cam = R^T (X - C)."""
    r = quat_to_matrix(pose.quaternion)
    x_cam = r.T @ (point - pose.position)
    f = 0.5 * camera.width / np.tan(np.radians(camera.hfov_deg) / 2)
    u = f * x_cam[0] / x_cam[2] + (camera.width - 1) / 2
    v = f * x_cam[1] / x_cam[2] + (camera.height - 1) / 2
    return np.array([u, v]), float(x_cam[2])


@pytest.mark.parametrize(
    ("position", "yaw", "pitch", "roll"),
    [((0.0, 0.0, 0.0), 0.0, 0.0, 0.0), ((1.0, 0.5, 0.2), 0.15, 0.1, 0.05), ((-2.0, 2.0, -0.5), -0.3, -0.12, -0.2)],
)
def test_rendered_dot_is_where_the_pose_projects_it(position, yaw, pitch, roll) -> None:
    camera = Camera(160, 120, 60.0)
    pose = Pose(np.array(position), matrix_to_quat(body_rotation(yaw, pitch, roll)))
    image, depth = Renderer(dot_scene(), camera).render(pose)
    assert np.all(np.isfinite(depth)), "the wall must fill the view (black would read as the dot)"
    dark = image[..., 0] < 128
    assert dark.sum() > 0, "the dot is not in the image"
    vs, us = np.nonzero(dark)
    weights = 255.0 - image[vs, us, 0]
    found = np.array([np.average(us, weights=weights), np.average(vs, weights=weights)])
    expected, z = hand_projection(pose, camera, DOT)
    np.testing.assert_allclose(found, expected, atol=0.35)
    # The depth map is the optical z of what each pixel sees.
    iu, iv = np.round(expected).astype(int)
    assert depth[iv, iu] == pytest.approx(z, rel=0.02)


def test_camera_convention_up_is_image_top_and_left_is_image_left() -> None:
    """Level camera looking along +x: world +z (up) appears above the centre, world +y (left) to the left."""
    camera = Camera(160, 120, 60.0)
    pose = Pose(np.zeros(3), matrix_to_quat(body_rotation(0.0, 0.0, 0.0)))
    (u, v), _ = hand_projection(pose, camera, DOT)
    assert u < camera.width / 2 and v < camera.height / 2
    np.testing.assert_allclose(quat_to_matrix(pose.quaternion)[:, 2], [1, 0, 0], atol=1e-12)  # optical z = +x
    looking_up = Pose(np.zeros(3), matrix_to_quat(body_rotation(0.0, 0.3, 0.0)))
    assert quat_to_matrix(looking_up.quaternion)[2, 2] > 0  # positive pitch tilts the optical axis up


def test_room_trajectories_stay_inside_and_are_deterministic() -> None:
    scene = room_scene(0)
    a = smooth_trajectory(scene, 300, seed=3)
    b = smooth_trajectory(scene, 300, seed=3)
    c = smooth_trajectory(scene, 300, seed=4)
    assert all(np.array_equal(p.position, q.position) for p, q in zip(a, b, strict=True))
    lo, hi = np.array(scene.walk_lo), np.array(scene.walk_hi)
    assert all(np.all(p.position >= lo - 1e-9) and np.all(p.position <= hi + 1e-9) for p in a + c)
    assert min(np.linalg.norm(p.position - q.position) for p in a for q in c) > 0
    # Smooth: consecutive frames are close, as in a hand-held sequence.
    steps = [np.linalg.norm(p.position - q.position) for p, q in itertools.pairwise(a)]
    assert max(steps) < 0.2
    turns = [
        np.degrees(np.arccos(np.clip(abs(np.dot(p.quaternion, q.quaternion)), 0, 1))) * 2
        for p, q in itertools.pairwise(a)
    ]
    assert max(turns) < 10.0


def test_room_renders_everything_it_sees() -> None:
    scene = room_scene(0)
    camera = Camera(64, 48)
    renderer = Renderer(scene, camera)
    for pose in smooth_trajectory(scene, 5, seed=1):
        image, depth = renderer.render(pose)
        assert np.all(np.isfinite(depth)), "a closed room leaves no pixel without a surface"
        assert image.std() > 10


def test_render_dataset_writes_canonical_and_seven_scenes(tmp_path: Path) -> None:
    cfg = SynthConfig(
        train_sequences=2, test_sequences=1, frames_per_sequence=3, width=48, height=36, seven_scenes=True
    )
    written = render_dataset(cfg, tmp_path / "synth", progress=False)
    records = read_poses_csv(tmp_path / "synth")
    assert [r.split for r in records] == ["train"] * 6 + ["test"] * 3
    for a, b in zip(records, written, strict=True):
        assert a.image == b.image and np.array_equal(a.position, b.position)
    # The optional 7-Scenes copy converts back to the same poses.
    again = read_poses_csv(convert(tmp_path / "synth", "7scenes", tmp_path / "conv"))
    for a, b in zip(again, records, strict=True):
        np.testing.assert_allclose(a.position, b.position, atol=1e-9)
        np.testing.assert_allclose(a.quaternion, b.quaternion, atol=1e-9)
    # Same seed, same pixels.
    render_dataset(cfg, tmp_path / "again", progress=False)
    first = (tmp_path / "synth" / records[4].image).read_bytes()
    assert first == (tmp_path / "again" / records[4].image).read_bytes()


def test_val_sequences_come_after_test_and_change_no_other_frame(tmp_path: Path, capsys) -> None:
    """``synth --val-sequences N`` adds N trajectories in the val split after the test ones: the
    train and test rows (and pixels) are those of the same command without val, bit for bit."""
    from posenet_train.cli import main as train_main

    common = ["--train-sequences", "1", "--test-sequences", "1", "--frames", "3", "--width", "32", "--height", "24"]
    assert train_main(["synth", "--out", str(tmp_path / "v"), *common, "--val-sequences", "2"]) == 0
    assert "(3 train, 6 val, 3 test)" in capsys.readouterr().out
    assert train_main(["synth", "--out", str(tmp_path / "n"), *common, "--val-sequences", "0"]) == 0
    with_val = (tmp_path / "v" / "poses.csv").read_text().splitlines()
    without = (tmp_path / "n" / "poses.csv").read_text().splitlines()
    assert with_val[: len(without)] == without
    vals = read_poses_csv(tmp_path / "v")[len(without) - 1 :]
    assert [r.split for r in vals] == ["val"] * 6 and {Path(r.image).parent.name for r in vals} == {"seq-03", "seq-04"}
    for name in ("seq-01/frame-000002.color.png", "seq-02/frame-000001.color.png"):
        assert (tmp_path / "v" / name).read_bytes() == (tmp_path / "n" / name).read_bytes()
    # Their own trajectories: no val pose is a train or test pose.
    others = read_poses_csv(tmp_path / "n")
    assert all(min(np.linalg.norm(v.position - o.position) for o in others) > 1e-3 for v in vals)
    # The CLI renders one val trajectory unless told otherwise, so calibrate has frames to fit on.
    assert train_main(["synth", "--out", str(tmp_path / "d"), *common]) == 0
    assert sum(r.split == "val" for r in read_poses_csv(tmp_path / "d")) == 3
