"""Training data from recordings: ``to-bag`` / ``from-bag`` round trips and SfM labelling with pycolmap
on a synthetic sequence whose poses are known exactly."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from posenet_ros.geometry import position_error, rotation_error_deg
from posenet_ros.groundtruth import GroundTruthSource
from posenet_train.bags import (
    FromBagConfig,
    ToBagConfig,
    bag_to_dataset,
    dataset_to_bag,
    sharpness,
    time_block_splits,
)
from posenet_train.cli import main as train_main
from posenet_train.datasets import read_poses_csv, split_records
from posenet_train.sfm import SfmConfig, align, label_sfm
from posenet_train.synth import SynthConfig, render_dataset

FRAMES = 24


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("recording")
    cfg = SynthConfig(train_sequences=0, test_sequences=1, frames_per_sequence=FRAMES, width=96, height=72)
    render_dataset(cfg, root / "data", progress=False)
    dataset_to_bag(ToBagConfig(root / "data", root / "bag", rate_hz=4.0, storage="mcap"))
    return root / "data", root / "bag"


def ordered_truth(data: Path) -> list:
    return sorted(split_records(read_poses_csv(data), "test"), key=lambda r: r.image)


@pytest.mark.parametrize(
    "truth", [GroundTruthSource(frames=("map", "camera_optical")), GroundTruthSource("/ground_truth/camera_pose")]
)
def test_from_bag_recovers_images_and_poses(
    recording: tuple[Path, Path], tmp_path: Path, truth: GroundTruthSource
) -> None:
    data, bag = recording
    _, stats = bag_to_dataset(FromBagConfig(bag, tmp_path, truth, block_seconds=1.0), progress=False)
    assert stats.kept == stats.images == FRAMES
    back = read_poses_csv(tmp_path)  # written, images present, valid
    for rec, gt in zip(back, ordered_truth(data), strict=True):
        assert position_error(rec.position, gt.position) < 1e-9
        assert rotation_error_deg(rec.quaternion, gt.quaternion) < 1e-6
        original = cv2.imread(str(data / gt.image))
        assert np.array_equal(cv2.imread(str(tmp_path / rec.image)), original)  # lossless, colour order kept
    splits = [r.split for r in back]
    assert "test" in splits and "train" in splits
    # Whole 1 s blocks (4 frames at 4 Hz) share a split.
    assert all(len(set(splits[i : i + 4])) == 1 for i in range(0, FRAMES, 4))


def test_from_bag_selects_frames_by_stride_motion_and_sharpness(recording: tuple[Path, Path], tmp_path: Path) -> None:
    _, bag = recording
    truth = GroundTruthSource(frames=("map", "camera_optical"))
    _, every = bag_to_dataset(FromBagConfig(bag, tmp_path / "a", truth, every=3), progress=False)
    assert (every.kept, every.not_every_nth) == (FRAMES // 3, FRAMES - FRAMES // 3)
    recs, moved = bag_to_dataset(FromBagConfig(bag, tmp_path / "b", truth, min_translation=0.5), progress=False)
    assert 1 < moved.kept < FRAMES and moved.too_little_motion == FRAMES - moved.kept
    steps = [position_error(a.position, b.position) for a, b in itertools.pairwise(recs)]
    assert min(steps) >= 0.5
    # Blur: a threshold at the median sharpness keeps the sharper half, and blurring lowers sharpness.
    data, _ = recording
    images = [cv2.imread(str(data / r.image)) for r in ordered_truth(data)]
    scores = [sharpness(im) for im in images]
    threshold = float(np.median(scores))
    recs, sharp = bag_to_dataset(FromBagConfig(bag, tmp_path / "c", truth, blur_threshold=threshold), progress=False)
    assert sharp.blurred == sum(v < threshold for v in scores) and sharp.kept == FRAMES - sharp.blurred
    assert all(sharpness(cv2.imread(str(tmp_path / "c" / r.image))) >= threshold for r in recs)
    assert sharpness(cv2.GaussianBlur(images[0], (9, 9), 3.0)) < 0.3 * scores[0]


def test_from_bag_with_no_usable_frame_is_a_one_line_error(
    recording: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    _, bag = recording
    code = train_main(
        [
            "from-bag",
            str(bag),
            "--out",
            str(tmp_path),
            "--gt-frames",
            "map",
            "camera_optical",
            "--blur-threshold",
            "1e9",
        ]
    )
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]  # the rest is the progress bar
    assert code == 2 and len(errors) == 1 and "no frame kept" in errors[0] and "blurred 24" in errors[0]
    assert "Traceback" not in err


def test_time_blocks_put_whole_blocks_in_one_split() -> None:
    stamps = [i * 100_000_000 for i in range(100)]  # 10 s at 10 Hz
    splits = time_block_splits(stamps, test_fraction=0.2, block_seconds=1.0)
    assert splits.count("test") == 20
    for b in range(10):
        assert len(set(splits[b * 10 : (b + 1) * 10])) == 1
    # Shorter than five blocks: the blocks shrink so a test part still exists, contiguous.
    short = time_block_splits([i * 10**9 for i in range(30)], test_fraction=0.2, block_seconds=20.0)
    first, last = short.index("test"), len(short) - short[::-1].index("test")
    assert 3 <= short.count("test") <= 9 and set(short[first:last]) == {"test"}
    with pytest.raises(ValueError, match="test fraction"):
        time_block_splits(stamps, 1.5, 1.0)


def test_sfm_poses_aligned_to_ground_truth_agree_within_two_percent_and_two_degrees(tmp_path: Path) -> None:
    """The paper's labelling: SIFT + sequential matching + incremental mapping on a video, then a
    similarity to metric ground truth. Known poses make the check exact."""
    cfg = SynthConfig(
        train_sequences=1, test_sequences=0, frames_per_sequence=30, width=320, height=240, heading_spread_deg=40
    )
    render_dataset(cfg, tmp_path / "video", progress=False)
    frames = tmp_path / "video" / "seq-01"
    result = label_sfm(
        SfmConfig(frames, tmp_path / "sfm", matcher="sequential", align_to=tmp_path / "video" / "poses.csv")
    )
    assert result.registered >= 0.9 * result.images
    truth = {Path(r.image).name: r for r in read_poses_csv(tmp_path / "video")}
    labelled = read_poses_csv(tmp_path / "sfm")
    pos = np.array([position_error(r.position, truth[Path(r.image).name].position) for r in labelled])
    rot = np.array([rotation_error_deg(r.quaternion, truth[Path(r.image).name].quaternion) for r in labelled])
    extent = 10.0  # the synthetic room's largest dimension (m)
    assert np.median(pos) < 0.02 * extent and np.median(rot) < 2.0, (np.median(pos), np.median(rot))
    assert {r.split for r in labelled} == {"train", "test"}
    # SfM's estimate of the camera goes to cameras.json (the map needs it): the renderer's 65-degree
    # pinhole (fx 251.2 at 320x240) within a few percent, the principal point in OpenCV's convention.
    from posenet_train.scene_map import dataset_intrinsics, synth_intrinsics

    camera, exact = dataset_intrinsics(tmp_path / "sfm"), synth_intrinsics(cfg)
    assert (camera.width, camera.height) == (320, 240) and "label-sfm" in result.intrinsics
    assert camera.fx == pytest.approx(exact.fx, rel=0.05) and abs(camera.cx - exact.cx) < 0.01  # COLMAP fixes it


def test_alignment_by_scale_and_refusal_without_shared_frames(tmp_path: Path) -> None:
    from posenet_ros.geometry import Pose

    poses = {f"{i}.png": Pose(np.array([i, 0.0, 0.0]), np.array([1.0, 0, 0, 0])) for i in range(4)}
    scaled, rms = align(poses, 2.5, None)
    assert rms is None and np.allclose(scaled["3.png"].position, [7.5, 0, 0])
    (tmp_path / "gt.csv").write_text("image,split,x,y,z,qw,qx,qy,qz\nother.png,train,0,0,0,1,0,0,0\n")
    from posenet_train.sfm import SfmError

    with pytest.raises(SfmError, match="only 0 reconstructed images"):
        align(poses, None, tmp_path / "gt.csv")


def test_from_bag_holds_val_blocks_out_of_the_training_time(tmp_path: Path, capsys) -> None:
    """``--val-fraction``: whole time blocks of the training part become val, the frames within the
    gap on either side are dropped (their images too), the test blocks are what they were without
    val, and the command says what it kept and dropped (issue 18)."""
    from posenet_train.datasets import VAL_GAP_FRAMES

    cfg = SynthConfig(train_sequences=0, test_sequences=1, frames_per_sequence=120, width=48, height=36)
    render_dataset(cfg, tmp_path / "data", progress=False)
    dataset_to_bag(ToBagConfig(tmp_path / "data", tmp_path / "bag", rate_hz=10.0, storage="mcap"))
    argv = ["from-bag", str(tmp_path / "bag"), "--gt-frames", "map", "camera_optical", "--block-seconds", "1"]
    assert train_main([*argv, "--out", str(tmp_path / "v")]) == 0  # --val-fraction 0.1 by default
    out = capsys.readouterr().out
    assert "wrote 110 frames (80 train, 10 val, 20 test)" in out
    assert f"dropped {2 * VAL_GAP_FRAMES} training frames beside the val blocks" in out
    assert train_main([*argv, "--out", str(tmp_path / "n"), "--val-fraction", "0"]) == 0
    assert "wrote 120 frames (100 train, 0 val, 20 test)" in capsys.readouterr().out
    with_val = {r.image: r.split for r in read_poses_csv(tmp_path / "v")}
    without = {r.image: r.split for r in read_poses_csv(tmp_path / "n")}
    layout = [with_val.get(name, "-") for name in sorted(without)]  # stamp order (equal-length names)
    assert [s for s in layout if s == "test"] == [s for s in without.values() if s == "test"]
    assert {n for n, s in with_val.items() if s == "test"} == {n for n, s in without.items() if s == "test"}
    # One contiguous 1 s block (10 frames) of val, the gap frames beside it gone from disk too.
    first, last = layout.index("val"), len(layout) - layout[::-1].index("val")
    assert last - first == 10 and set(layout[first:last]) == {"val"}
    assert layout[first - VAL_GAP_FRAMES : first] == ["-"] * VAL_GAP_FRAMES
    assert layout[last : last + VAL_GAP_FRAMES] == ["-"] * VAL_GAP_FRAMES
    assert len(list((tmp_path / "v" / "images").iterdir())) == 110
    # An impossible share is one line before any frame is read.
    assert train_main([*argv, "--out", str(tmp_path / "x"), "--val-fraction", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--val-fraction must be" in err and "\n" not in err


def write_bag_with_camera_info(data: Path, bag: Path, info: dict | None, compressed: bool = False) -> None:
    """The recording's test frames as a camera driver records them: images, the ground truth pose,
    and (``info`` given) a sensor_msgs/CameraInfo beside the image topic at every frame."""
    from posenet_ros.bagio import BagWriter
    from posenet_ros.image_codec import encode_compressed, encode_image

    image_topic = "/cam/color/image_raw" + ("/compressed" if compressed else "")
    with BagWriter(bag, "mcap") as w:
        w.add_topic(image_topic, "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image")
        w.add_topic("/gt", "geometry_msgs/msg/PoseStamped")
        if info is not None:
            w.add_topic("/cam/color/camera_info", "sensor_msgs/msg/CameraInfo")
        for i, rec in enumerate(ordered_truth(data)):
            stamp = 1_700_000_000_000_000_000 + i * 250_000_000
            bgr = cv2.imread(str(data / rec.image))
            w.write("/gt", stamp, w.pose_stamped(stamp, "map", rec.pose()))
            if compressed:
                msg = w.compressed_image(stamp, "cam", "jpeg", encode_compressed(bgr))
            else:
                msg = w.image(stamp, "cam", encode_image(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), "rgb8"))
            w.write(image_topic, stamp, msg)
            if info is not None:
                roi = w.msg(
                    "sensor_msgs/msg/RegionOfInterest", x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
                )
                fields = {"binning_x": 0, "binning_y": 0, "roi": roi, **info}
                fields["d"] = np.asarray(fields["d"], np.float64)
                fields["k"] = np.asarray(fields["k"], np.float64)
                fields["r"] = np.eye(3).ravel()
                fields["p"] = np.zeros(12)
                w.write(
                    "/cam/color/camera_info",
                    stamp,
                    w.msg("sensor_msgs/msg/CameraInfo", header=w.header(stamp, "cam"), **fields),
                )


def camera_info(width: int, height: int, d: list[float], model: str = "plumb_bob") -> dict:
    k = [80.0, 0.0, 47.25, 0.0, 81.0, 35.75, 0.0, 0.0, 1.0]
    return {"width": width, "height": height, "distortion_model": model, "d": d, "k": k}


def test_from_bag_takes_the_intrinsics_from_the_camera_info_topic(recording: tuple[Path, Path], tmp_path: Path) -> None:
    from posenet_ros.camera import Camera
    from posenet_train.datasets import read_cameras_json
    from posenet_train.scene_map import dataset_intrinsics

    data, _ = recording
    truth = GroundTruthSource("/gt")
    write_bag_with_camera_info(data, tmp_path / "bag", camera_info(96, 72, [0.01, -0.002, 0.0005, 0.0, 0.0]))
    _, stats = bag_to_dataset(FromBagConfig(tmp_path / "bag", tmp_path / "out", truth), progress=False)
    camera = Camera(96, 72, 80.0, 81.0, 47.25, 35.75, (0.01, -0.002, 0.0005, 0.0))
    assert read_cameras_json(tmp_path / "out").single() == camera
    assert "/cam/color/camera_info" in stats.line() and "cameras.json" in stats.line()
    assert dataset_intrinsics(tmp_path / "out") == camera  # with its distortion: the map undistorts with it
    # Compressed images: the camera_info beside the image topic, not beside .../compressed.
    write_bag_with_camera_info(data, tmp_path / "cbag", camera_info(96, 72, []), compressed=True)
    bag_to_dataset(FromBagConfig(tmp_path / "cbag", tmp_path / "cout", truth), progress=False)
    assert read_cameras_json(tmp_path / "cout").single() == Camera(96, 72, 80.0, 81.0, 47.25, 35.75)


@pytest.mark.parametrize(
    ("info", "why"),
    [
        (None, "no sensor_msgs/msg/CameraInfo on /cam/color/camera_info"),
        ({**camera_info(96, 72, []), "k": [0.0] * 9}, "not calibrated"),
        (camera_info(640, 480, []), "the CameraInfo is for 640x480, the images are 96x72"),
        (camera_info(96, 72, [0.1, 0, 0, 0], "equidistant"), "distortion model 'equidistant'"),
    ],
)
def test_from_bag_without_usable_camera_info_writes_no_intrinsics(
    recording: tuple[Path, Path], tmp_path: Path, info: dict | None, why: str
) -> None:
    from posenet_train.datasets import read_cameras_json

    data, _ = recording
    write_bag_with_camera_info(data, tmp_path / "bag", info)
    _, stats = bag_to_dataset(
        FromBagConfig(tmp_path / "bag", tmp_path / "out", GroundTruthSource("/gt")), progress=False
    )
    assert read_cameras_json(tmp_path / "out") is None and stats.kept == FRAMES  # poses as ever
    assert why in stats.intrinsics and "refinement (posenet-train map) will need" in stats.intrinsics


def test_to_bag_records_the_camera_info_that_from_bag_reads_back(recording: tuple[Path, Path], tmp_path: Path) -> None:
    """to-bag writes the data set's camera as sensor_msgs/CameraInfo beside the images, at every
    frame, as a driver does; from-bag turns it back into the same cameras.json."""
    from posenet_ros.bagio import open_bag
    from posenet_train.datasets import read_cameras_json
    from posenet_train.scene_map import synth_intrinsics

    _, bag = recording
    with open_bag(bag) as reader:
        infos = [c for c in reader.connections if c.topic == "/camera/camera_info"]
        assert len(infos) == 1 and infos[0].msgtype == "sensor_msgs/msg/CameraInfo" and infos[0].msgcount == FRAMES
    bag_to_dataset(FromBagConfig(bag, tmp_path / "out", GroundTruthSource("/ground_truth/camera_pose")), False)
    cameras = read_cameras_json(tmp_path / "out")
    assert cameras is not None and cameras.single() == synth_intrinsics(SynthConfig(width=96, height=72))
