"""The live camera against the training camera: one Camera class for every place intrinsics appear,
the field-of-view check the node reports, and the crop that gives the network the training view."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from posenet_ros.camera import (
    Camera,
    CameraError,
    camera_from_info,
    fov_check,
    view_window,
    window_edges,
    window_fov,
)
from posenet_ros.contract import Contract, ContractError
from posenet_ros.engine import Engine, EngineConfig
from posenet_ros.export import rewrite_contract
from posenet_ros.geometry import position_error
from posenet_train.scene_map import synth_intrinsics
from posenet_train.synth import Camera as RenderCamera
from posenet_train.synth import Renderer, SynthConfig, room_scene, smooth_trajectory

DEMO_MODEL = Path(__file__).resolve().parents[1] / "models" / "posenet_demo.pt"
TRAINED = synth_intrinsics(SynthConfig(width=256, height=192))  # the demo model's camera (65 deg)


def pinhole(width: int, height: int, hfov_deg: float) -> Camera:
    return synth_intrinsics(SynthConfig(width=width, height=height, hfov_deg=hfov_deg))


def test_window_fov_of_the_whole_image_is_the_camera_fov() -> None:
    cam = pinhole(256, 192, 65.0)
    assert window_fov(cam, 0, 0, 256, 192)[0] == pytest.approx(65.0, abs=1e-9)
    assert cam.hfov_deg == pytest.approx(65.0, abs=1e-9) and cam.vfov_deg < cam.hfov_deg


def test_view_window_maps_the_training_edges_through_the_focal_lengths() -> None:
    live = Camera(640, 480, 300.0, 300.0, 330.0, 250.0)  # off-centre principal point
    x0, y0, w, h = view_window(live, TRAINED)
    left, top = (TRAINED.cx + 0.5) / TRAINED.fx, (TRAINED.cy + 0.5) / TRAINED.fy
    assert x0 == round(live.cx + 0.5 - live.fx * left) and y0 == round(live.cy + 0.5 - live.fy * top)
    assert window_fov(live, x0, y0, w, h) == pytest.approx((TRAINED.hfov_deg, TRAINED.vfov_deg), abs=0.3)


def check(live: Camera, trained: Camera | None = TRAINED) -> object:
    return fov_check(live, trained, 128, 112, 112, 0.05)


def test_the_same_view_at_another_resolution_is_not_a_mismatch() -> None:
    result = check(pinhole(640, 480, 65.0))
    assert result.window is None and not result.warning and result.mismatch < 0.01
    assert "as in training" in result.message


def test_another_aspect_with_the_same_vertical_view_is_not_a_mismatch() -> None:
    """A 16:9 camera whose vertical view is the training one's: the network's centre crop sees the same."""
    vf = TRAINED.fy
    wide = Camera(342, 192, vf, vf, 170.5, TRAINED.cy)
    assert check(wide).mismatch < 0.01 and check(wide).window is None


def test_a_wider_view_is_cropped_to_the_training_view() -> None:
    result = check(pinhole(320, 240, 80.0))
    assert result.window is not None and not result.warning and result.mismatch < 0.01
    assert "wider" in result.message and "cropped to" in result.message and "\n" not in result.message


def test_a_narrower_view_is_a_warning_without_a_crop() -> None:
    result = check(pinhole(320, 240, 50.0))
    assert result.window is None and result.warning and result.mismatch > 0.2
    assert "narrower" in result.message and "biased" in result.message


def test_edge_angles_go_through_the_lens() -> None:
    """A barrel lens sees more than its matrix says: each edge angle, projected back through the
    lens (OpenCV's model), lands on that edge of the image."""
    import cv2

    lens = Camera(320, 240, 250.0, 250.0, 161.0, 118.0, (-0.3, 0.08, 0.001, -0.002))
    edges = window_edges(lens, 0, 0, 320, 240)
    assert lens.hfov_deg > lens.pinhole().hfov_deg + 5  # the barrel widens the view
    t = np.tan(np.radians(edges))
    rays = np.array([[-t[0], 0, 1], [t[1], 0, 1], [0, -t[2], 1], [0, t[3], 1]])
    uv = cv2.projectPoints(rays, np.zeros(3), np.zeros(3), lens.matrix(), np.asarray(lens.distortion))[0][:, 0]
    np.testing.assert_allclose([uv[0, 0], uv[1, 0], uv[2, 1], uv[3, 1]], [-0.5, 319.5, -0.5, 239.5], atol=1e-3)
    assert view_window(lens, lens) == (0, 0, 320, 240)


def test_a_barrel_lens_with_the_training_matrix_is_cropped_to_the_training_view() -> None:
    """The pinhole check said 'as in training' for a lens with the training camera's matrix; its
    distortion widens the view, so it is cropped back."""
    lens = Camera(TRAINED.width, TRAINED.height, TRAINED.fx, TRAINED.fy, TRAINED.cx, TRAINED.cy, (-0.35, 0.1))
    result = check(lens)
    assert result.window is not None and result.mismatch < 0.05, result.message
    assert check(lens.pinhole()).window is None


def test_an_off_centre_principal_point_is_caught_at_the_edge_it_moves() -> None:
    """The same field of view with the principal point 12% of the width off-centre: the totals
    agree, the edges do not; the crop re-centres the view on the training one."""
    shifted = Camera(TRAINED.width, TRAINED.height, TRAINED.fx, TRAINED.fy, TRAINED.cx + 30, TRAINED.cy)
    result = check(shifted)
    assert abs(result.live_fov[0] - check(TRAINED).live_fov[0]) < 1.0  # the totals alone pass
    assert result.window is not None and "reaches past" in result.message
    assert result.mismatch > 0.05 and result.warning  # the crop cannot widen the short side
    assert "still" in result.message and "biased" in result.message
    # A wider camera, off-centre as well: the crop restores the training view on every edge.
    wide = Camera(640, 480, TRAINED.fx, TRAINED.fy, 340.0, 230.0)
    fixed = check(wide)
    assert fixed.window is not None and not fixed.warning and fixed.mismatch < 0.05, fixed.message


def test_a_model_without_a_training_camera_crops_nothing() -> None:
    result = check(pinhole(320, 240, 80.0), None)
    assert result.window is None and not result.warning and "records no training camera" in result.message


def info(**fields: object) -> SimpleNamespace:
    """A CameraInfo as rclpy and rosbags give it (the fields camera_from_info reads)."""
    base = {"width": 640, "height": 480, "k": [500.0, 0, 319.5, 0, 501.0, 239.5, 0, 0, 1], "d": []}
    base |= {"distortion_model": "plumb_bob", "binning_x": 0, "binning_y": 0, "roi": SimpleNamespace(width=0, height=0)}
    return SimpleNamespace(**(base | fields))


def test_camera_info_becomes_a_camera_or_says_why_not() -> None:
    camera, why = camera_from_info(info(d=[0.1, -0.02, 0.001, 0.0, 0.003]))
    assert camera == Camera(640, 480, 500.0, 501.0, 319.5, 239.5, (0.1, -0.02, 0.001, 0.0, 0.003)) and why == ""
    for fields, words in [
        ({"k": [0.0] * 9}, "not calibrated"),
        ({"width": 0}, "not calibrated"),
        ({"d": [0.1, 0, 0, 0, 0, 0.2, 0, 0], "distortion_model": "rational_polynomial"}, "read: plumb_bob"),
        ({"d": [0.1, 0.2, 0.3, 0.4], "distortion_model": "equidistant"}, "equidistant"),
        ({"binning_x": 2}, "binning"),
        ({"d": [float("nan")] * 5}, "not finite"),
    ]:
        camera, why = camera_from_info(info(**fields))
        assert camera is None and words in why and "\n" not in why, (fields, why)


def test_a_rectified_topic_takes_the_rectified_camera_from_p() -> None:
    """image_rect shares the raw camera's CameraInfo: K and D describe the raw images, P (here a
    rectified focal of 480 at (322, 236)) the rectified ones, which have no distortion."""
    p = [480.0, 0, 322.0, 0, 0, 480.0, 236.0, 0, 0, 0, 1, 0]
    msg = info(d=[-0.3, 0.08, 0, 0, 0], p=p)
    assert camera_from_info(msg)[0] == Camera(640, 480, 500.0, 501.0, 319.5, 239.5, (-0.3, 0.08, 0, 0))
    assert camera_from_info(msg, rectified=True) == (Camera(640, 480, 480.0, 480.0, 322.0, 236.0), "")
    camera, why = camera_from_info(info(p=[0.0] * 12), rectified=True)
    assert camera is None and "rectified camera is not calibrated" in why


def test_scaled_keeps_the_view_and_refuses_another_aspect() -> None:
    cam = pinhole(256, 192, 65.0)
    assert cam.scaled(512, 384).hfov_deg == pytest.approx(cam.hfov_deg, abs=1e-9)
    with pytest.raises(CameraError, match="not the aspect"):
        cam.scaled(300, 300)


def test_the_contract_records_the_training_camera_and_validates_it(tmp_path: Path) -> None:
    contract = dataclasses.replace(Contract(), camera=TRAINED)
    data = json.loads(contract.to_json())
    assert data["camera"]["hfov_deg"] == pytest.approx(65.0, abs=1e-3)
    assert Contract.from_json(contract.to_json()) == contract
    assert "camera" not in Contract().to_dict()  # files without one are written as before
    data["camera"]["fx"] = -1.0
    with pytest.raises(ContractError, match=r"contract field 'camera'.*focal lengths must be positive"):
        Contract.from_dict(data)


@pytest.fixture(scope="module")
def model_with_camera(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled demo model with its training camera recorded (it predates the field)."""
    base = Engine(DEMO_MODEL, EngineConfig(device="cpu", warmup_iters=1)).contract
    out = tmp_path_factory.mktemp("fov") / "demo_with_camera.pt"
    return rewrite_contract(DEMO_MODEL, out, dataclasses.replace(base, camera=TRAINED))


def test_a_wider_live_camera_is_cropped_back_to_the_accuracy_of_the_training_camera(model_with_camera: Path) -> None:
    """The demo room seen through an 80-degree camera: uncropped, the network's poses are off by more
    than a metre (measured: 1.40 m median against 0.21 m with the training camera); cropped to the
    training view they are as good as with the training camera (0.20 m)."""
    scene = room_scene(0)
    wide = pinhole(320, 240, 80.0)
    trained_render = Renderer(scene, RenderCamera(256, 192, 65.0))
    wide_render = Renderer(scene, RenderCamera(320, 240, 80.0))
    engine = Engine(model_with_camera, EngineConfig(device="cpu", warmup_iters=1))
    errors: dict[str, list[float]] = {"trained": [], "uncropped": [], "cropped": []}
    for pose in smooth_trajectory(scene, 40, 12345, 50)[::4]:
        trained_image, wide_image = trained_render.render(pose)[0], wide_render.render(pose)[0]
        engine.set_camera(None)
        errors["trained"].append(position_error(engine.localize(trained_image).pose.position, pose.position))
        uncropped = engine.localize(wide_image)
        errors["uncropped"].append(position_error(uncropped.pose.position, pose.position))
        fov = engine.set_camera(wide)
        assert fov is not None and fov.window is not None and engine.fov is fov
        cropped = engine.localize(wide_image)
        errors["cropped"].append(position_error(cropped.pose.position, pose.position))
        x0, y0, w, h = fov.window
        engine.set_camera(None)
        by_hand = engine.localize(np.ascontiguousarray(wide_image[y0 : y0 + h, x0 : x0 + w]))
        assert np.array_equal(by_hand.pose.position, cropped.pose.position)  # the crop is all it does
    median = {k: float(np.median(v)) for k, v in errors.items()}
    assert median["cropped"] < 1.5 * median["trained"] + 0.05, median
    assert median["uncropped"] > 2.0 * median["cropped"], median


def test_undistort_pixels_inverts_opencvs_projection_to_the_pinhole_one() -> None:
    import cv2

    cam = Camera(640, 480, 500.0, 502.0, 321.0, 238.0, (-0.2, 0.05, 0.001, -0.0005, 0.01))
    rng = np.random.default_rng(0)
    points = np.column_stack([rng.uniform(-0.6, 0.6, (200, 2)), np.ones(200)])  # out to the corners
    zero = np.zeros(3)
    distorted = cv2.projectPoints(points, zero, zero, cam.matrix(), np.asarray(cam.distortion))[0].reshape(-1, 2)
    ideal = cv2.projectPoints(points, zero, zero, cam.matrix(), None)[0].reshape(-1, 2)
    assert np.abs(cam.undistort_pixels(distorted) - ideal).max() < 1e-6
    assert cam.pinhole().undistort_pixels(distorted) is distorted
