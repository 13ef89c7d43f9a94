"""Camera intrinsics in the canonical data set (issue 17): ``cameras.json`` written and read back,
bad content refused in one line, and ``dataset_intrinsics`` (what ``posenet-train map`` uses) taking
``cameras.json``, else synth's ``scene.json``, else one line naming both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from posenet_ros.camera import Camera
from posenet_ros.refine import MapError
from posenet_train.datasets import (
    CAMERAS_FILE,
    DatasetCameras,
    DatasetError,
    read_cameras_json,
    read_poses_csv,
    write_cameras_json,
)
from posenet_train.scene_map import dataset_intrinsics

PINHOLE = Camera(640, 480, 585.0, 585.0, 320.0, 240.0)
DISTORTED = Camera(1920, 1080, 1670.5, 1671.25, 959.5, 539.5, (-0.1, 0.02, 0.001, -0.0005, 0.003))


def test_round_trip_one_camera_and_several(tmp_path: Path) -> None:
    one = DatasetCameras({"camera": PINHOLE}, {}, "test")
    write_cameras_json(tmp_path, one)
    assert read_cameras_json(tmp_path) == one
    several = DatasetCameras({"a": PINHOLE, "b": DISTORTED}, {"seq1/": "a", "seq2/x.png": "b"}, "two")
    write_cameras_json(tmp_path, several)
    back = read_cameras_json(tmp_path)
    assert back == several and back.single() is None
    assert back.camera_for("seq1/f.png") == PINHOLE and back.camera_for("seq2/x.png") == DISTORTED
    assert back.camera_for("seq2/y.png") is None
    doc = json.loads((tmp_path / CAMERAS_FILE).read_text())
    assert doc["cameras"]["b"]["distortion"] == {"k1": -0.1, "k2": 0.02, "p1": 0.001, "p2": -0.0005, "k3": 0.003}
    assert "distortion" not in doc["cameras"]["a"]  # none is no key


def test_per_image_cameras_group_by_folder() -> None:
    other = Camera(64, 48, 50.0, 50.0, 31.5, 23.5)
    cams = DatasetCameras.per_image({"s1/a.png": PINHOLE, "s1/b.png": PINHOLE, "s2/c.png": other, "d.png": other}, "x")
    assert cams.images == {"s1/": "camera1", "s2/": "camera2", "d.png": "camera2"}
    assert [cams.camera_for(i) for i in ("s1/b.png", "s2/c.png", "d.png")] == [PINHOLE, other, other]
    assert DatasetCameras.per_image({"a": PINHOLE, "b": PINHOLE}, "x") == DatasetCameras({"camera": PINHOLE}, {}, "x")
    assert DatasetCameras.per_image({}, "x") is None


def good_doc() -> dict:
    return {"format": "posenet_train.cameras", "version": 1, "cameras": {"camera": PINHOLE.to_dict()}}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: "{not json", "not JSON"),
        (lambda d: [], "not a cameras file"),
        (lambda d: {**d, "format": "other"}, "not a cameras file"),
        (lambda d: {**d, "version": 7}, "version 7 not supported"),
        (lambda d: {**d, "cameras": {}}, "non-empty object"),
        (lambda d: {**d, "cameras": {"c": [1, 2]}}, "must be an object"),
        (lambda d: {**d, "cameras": {"c": {"width": 640}}}, "camera lacks height, fx, fy, cx, cy"),
        (lambda d: {**d, "cameras": {"c": {**PINHOLE.to_dict(), "width": 0}}}, "positive integers"),
        (lambda d: {**d, "cameras": {"c": {**PINHOLE.to_dict(), "width": 6.5}}}, "positive integers"),
        (lambda d: {**d, "cameras": {"c": {**PINHOLE.to_dict(), "fx": "585"}}}, "must be finite numbers"),
        (lambda d: {**d, "cameras": {"c": {**PINHOLE.to_dict(), "fy": -1.0}}}, "focal lengths must be positive"),
        (lambda d: {**d, "cameras": {"c": {**PINHOLE.to_dict(), "distortion": {"k9": 1}}}}, "keys among k1"),
        (lambda d: {**d, "cameras": {"c": {**PINHOLE.to_dict(), "distortion": {"k1": None}}}}, "distortion must be"),
        (lambda d: {**d, "cameras": {"a": PINHOLE.to_dict(), "b": PINHOLE.to_dict()}}, "no 'images'"),
        (lambda d: {**d, "images": {"seq/": "nobody"}}, "cameras not in 'cameras': nobody"),
        (lambda d: {**d, "images": ["seq/"]}, "'images' must map"),
    ],
)
def test_bad_cameras_json_is_one_line(tmp_path: Path, edit, message: str) -> None:
    doc = edit(good_doc())
    (tmp_path / CAMERAS_FILE).write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(DatasetError, match=message) as err:
        read_cameras_json(tmp_path)
    assert str(tmp_path / CAMERAS_FILE) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(MapError) as map_err:  # posenet-train map says the same, in one line
        dataset_intrinsics(tmp_path)
    assert message.split("'")[0] in str(map_err.value) and "\n" not in str(map_err.value)


def test_data_set_without_cameras_still_loads(tmp_path: Path) -> None:
    (tmp_path / "poses.csv").write_text("image,split,x,y,z,qw,qx,qy,qz\na.png,train,0,0,0,1,0,0,0\n")
    assert read_cameras_json(tmp_path) is None
    assert len(read_poses_csv(tmp_path, check_images=False)) == 1
    with pytest.raises(MapError, match=r"no cameras\.json, no scene\.json") as err:
        dataset_intrinsics(tmp_path)
    assert "7-Scenes and COLMAP" in str(err.value) and "CameraInfo" in str(err.value)


def test_dataset_intrinsics_prefers_cameras_json_over_scene_json(tmp_path: Path) -> None:
    k = [[50, 0, 31.5], [0, 50, 23.5], [0, 0, 1]]
    scene = {"scene": "s", "camera": {"width": 64, "height": 48, "intrinsics": k}}
    (tmp_path / "scene.json").write_text(json.dumps(scene))
    assert dataset_intrinsics(tmp_path) == Camera(64, 48, 50.0, 50.0, 31.5, 23.5)
    write_cameras_json(tmp_path, DatasetCameras({"camera": PINHOLE}, {}, "t"))
    assert dataset_intrinsics(tmp_path) == Camera(640, 480, 585.0, 585.0, 320.0, 240.0)


def test_dataset_intrinsics_refuses_several_cameras_and_keeps_the_distortion(tmp_path: Path) -> None:
    write_cameras_json(tmp_path, DatasetCameras({"a": PINHOLE, "b": DISTORTED}, {"s1/": "a", "s2/": "b"}, "t"))
    with pytest.raises(MapError, match="2 different cameras; a map is built for one camera"):
        dataset_intrinsics(tmp_path)
    assert DISTORTED.distortion_shift_px() > 10
    write_cameras_json(tmp_path, DatasetCameras({"b": DISTORTED}, {}, "t"))
    assert dataset_intrinsics(tmp_path) == DISTORTED  # the map undistorts keypoints with it
