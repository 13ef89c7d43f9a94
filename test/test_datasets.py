"""Converters: fabricate each real format from known camera-to-world poses, convert, and get the same
poses back through the canonical CSV (to 1e-9). Malformed input names file and line."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from posenet_ros.camera import Camera
from posenet_ros.geometry import Pose, quat_canonical, quat_conjugate, quat_rotate, quat_to_matrix, rotation_error_deg
from posenet_ros.refine import MapError
from posenet_train.cli import main as train_main
from posenet_train.datasets import (
    CAMERAS_FILE,
    CSV_COLUMNS,
    VAL_GAP_FRAMES,
    DatasetError,
    PoseRecord,
    checked_quaternion,
    convert,
    convert_dataset,
    natural_key,
    read_cameras_json,
    read_poses_csv,
    split_records,
    write_poses_csv,
)
from posenet_train.scene_map import dataset_intrinsics


def known_poses(n: int, seed: int = 0) -> list[Pose]:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return [Pose(rng.uniform(-50, 50, 3), q[i]) for i in range(n)]


def tiny_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((8, 8, 3), 128, np.uint8))


def assert_same_poses(records: list[PoseRecord], poses: list[Pose]) -> None:
    assert len(records) == len(poses)
    for r, p in zip(records, poses, strict=True):
        np.testing.assert_allclose(r.position, p.position, atol=1e-9, rtol=0)
        # Same rotation (sign-free), and canonical w >= 0 as the CSV promises.
        np.testing.assert_allclose(quat_to_matrix(r.quaternion), quat_to_matrix(p.quaternion), atol=1e-9)
        np.testing.assert_allclose(r.quaternion, quat_canonical(p.quaternion), atol=1e-9)
        assert r.quaternion[0] >= 0


def test_canonical_csv_round_trip_is_exact(tmp_path: Path) -> None:
    poses = known_poses(20)
    records = [
        PoseRecord(f"img{i}.png", "train" if i % 3 else "test", p.position, p.quaternion) for i, p in enumerate(poses)
    ]
    for r in records:
        tiny_image(tmp_path / r.image)
    write_poses_csv(tmp_path / "poses.csv", records)
    back = read_poses_csv(tmp_path)
    assert tmp_path.joinpath("poses.csv").read_text().splitlines()[0] == ",".join(CSV_COLUMNS)
    assert [r.split for r in back] == [r.split for r in records]
    for a, b in zip(back, records, strict=True):
        assert np.array_equal(a.position, b.position) and np.array_equal(a.quaternion, quat_canonical(b.quaternion))


def test_quaternion_unit_to_rounding_reads_back_bit_identical(tmp_path: Path) -> None:
    """Norm 1 + 2**-50 (four ulps; every norm kernel, AVX2 or AVX-512, sees it != 1.0): a reader that
    divides by the norm again changes every component, which is how the round trip broke on Intel."""
    q = np.full(4, 0.5 + 2.0**-51)
    assert np.linalg.norm(q) != 1.0
    tiny_image(tmp_path / "a.png")
    write_poses_csv(tmp_path / "poses.csv", [PoseRecord("a.png", "train", np.zeros(3), q)])
    assert read_poses_csv(tmp_path)[0].quaternion.tolist() == q.tolist()


def test_checked_quaternion_is_idempotent() -> None:
    """Reading is a fixed point on its own output, for unit-to-rounding values and for ones printed
    with six digits (renormalized once, then left alone)."""
    rng = np.random.default_rng(5)
    q = rng.normal(size=(300, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    six_digits = np.round(q, 6)
    for v in (*q, *six_digits):
        once = checked_quaternion(v, "test")
        assert checked_quaternion(once, "test").tolist() == once.tolist()
        assert once[0] >= 0 and abs(np.linalg.norm(once) - 1.0) < 1e-15


def test_canonical_csv_with_bom_and_crlf(tmp_path: Path) -> None:
    """A poses.csv saved by a Windows editor (UTF-8 BOM, CRLF), with a non-ASCII image name, reads
    the same whatever the locale's encoding."""
    tiny_image(tmp_path / "caf\u00e9.png")
    text = ",".join(CSV_COLUMNS) + "\r\ncaf\u00e9.png,train,1,2,3,1,0,0,0\r\n"
    (tmp_path / "poses.csv").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    (record,) = read_poses_csv(tmp_path)
    assert record.image == "caf\u00e9.png" and record.position.tolist() == [1.0, 2.0, 3.0]
    (tmp_path / "poses.csv").write_bytes(text.encode("utf-8").replace(b"caf\xc3\xa9", b"caf\xe9"))
    with pytest.raises(DatasetError, match="not UTF-8 text"):
        read_poses_csv(tmp_path)


def make_seven_scenes(root: Path, poses: list[Pose], ext: str = ".png") -> None:
    half = len(poses) // 2
    for i, pose in enumerate(poses):
        seq = root / ("seq-01" if i < half else "seq-02")
        frame = i if i < half else i - half
        tiny_image(seq / f"frame-{frame:06d}.color{ext}")
        np.savetxt(seq / f"frame-{frame:06d}.pose.txt", pose.matrix(), fmt="%.17e")
    (root / "TrainSplit.txt").write_text("sequence1\n")
    (root / "TestSplit.txt").write_text("sequence2\n")


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_seven_scenes_round_trip(tmp_path: Path, ext: str) -> None:
    poses = known_poses(10)
    make_seven_scenes(tmp_path / "src", poses, ext)
    csv_path = convert(tmp_path / "src", "7scenes", tmp_path / "out")
    records = read_poses_csv(csv_path)
    assert_same_poses(records, poses)
    assert [r.split for r in records] == ["train"] * 5 + ["test"] * 5
    assert records[0].image == f"../src/seq-01/frame-000000.color{ext}"
    # The Kinect colour intrinsics the 7-Scenes literature uses, one camera for every image.
    cameras = read_cameras_json(tmp_path / "out")
    assert cameras.single() == Camera(640, 480, 585.0, 585.0, 320.0, 240.0) and not cameras.images
    assert "7-Scenes" in cameras.source


def make_cambridge(root: Path, poses: list[Pose], n_train: int = 6) -> None:
    header = "Visual Landmark Dataset V1\nImageFile, Camera Position [X Y Z W P Q R]\n\n"
    for split, chunk in (("train", poses[:n_train]), ("test", poses[n_train:])):
        lines = []
        for i, pose in enumerate(chunk):
            name = f"seq{1 if split == 'train' else 2}/frame{i + 1:05d}.png"
            tiny_image(root / name)
            q_nvm = quat_conjugate(pose.quaternion)  # NVM: world-to-camera
            q_nvm = -q_nvm if i % 2 else q_nvm  # either sign appears in the wild
            lines.append(f"{name} " + " ".join(f"{v:.17g}" for v in (*pose.position, *q_nvm)))
        (root / f"dataset_{split}.txt").write_text(header + "\n".join(lines) + "\n")


def test_cambridge_round_trip(tmp_path: Path) -> None:
    poses = known_poses(9, seed=1)
    make_cambridge(tmp_path / "src", poses)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / CAMERAS_FILE).write_text("stale, from an earlier conversion")
    report = convert_dataset(tmp_path / "src", "cambridge", tmp_path / "out")
    records = read_poses_csv(report.path)
    assert_same_poses(records, poses)
    assert [r.split for r in records] == ["train"] * 6 + ["test"] * 3
    # dataset_*.txt carry no intrinsics: none written (a stale file goes), and the report says so.
    assert read_cameras_json(tmp_path / "out") is None
    assert "no camera intrinsics" in report.intrinsics and "posenet-train map) will need" in report.intrinsics
    assert report.intrinsics in report.lines(tmp_path / "src")


def make_colmap(root: Path, poses: list[Pose]) -> None:
    model = root / "sparse" / "0"
    model.mkdir(parents=True)
    lines = [
        "# Image list with two lines of data per image:",
        "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
    ]
    for i, pose in enumerate(poses):
        q_w2c = quat_conjugate(pose.quaternion)
        t = -quat_rotate(q_w2c, pose.position)  # world-to-camera translation
        name = f"img {i:03d}.jpg"  # COLMAP names may contain spaces
        tiny_image(root / "images" / name)
        lines.append(f"{i + 1} " + " ".join(f"{v:.17g}" for v in (*q_w2c, *t)) + f" 1 {name}")
        lines.append("10.5 20.5 -1" if i % 2 else "")
    (model / "images.txt").write_text("\n".join(lines) + "\n")
    (model / "cameras.txt").write_text("1 PINHOLE 64 48 50 50 32 24\n")


def test_colmap_round_trip(tmp_path: Path) -> None:
    poses = known_poses(16, seed=2)
    make_colmap(tmp_path / "src", poses)
    records = read_poses_csv(convert(tmp_path / "src", "colmap", tmp_path / "out"))
    assert_same_poses(records, poses)
    assert sum(r.split == "test" for r in records) == 2  # every 8th image by name
    # cameras.txt's PINHOLE camera, the principal point moved from COLMAP's pixel convention to OpenCV's.
    assert read_cameras_json(tmp_path / "out").single() == Camera(64, 48, 50.0, 50.0, 31.5, 23.5)
    # ... which is what posenet-train map takes for the data set.
    assert dataset_intrinsics(tmp_path / "out") == Camera(64, 48, 50.0, 50.0, 31.5, 23.5)


@pytest.mark.parametrize(
    ("line", "camera"),
    [
        ("1 SIMPLE_PINHOLE 64 48 50 32 24", Camera(64, 48, 50.0, 50.0, 31.5, 23.5)),
        ("1 SIMPLE_RADIAL 64 48 50 32 24 0.01", Camera(64, 48, 50.0, 50.0, 31.5, 23.5, (0.01, 0, 0, 0))),
        ("1 RADIAL 64 48 50 32 24 0.01 -0.002", Camera(64, 48, 50.0, 50.0, 31.5, 23.5, (0.01, -0.002, 0, 0))),
        ("1 OPENCV 64 48 50 51 32 24 0.1 0.2 0.3 0.4", Camera(64, 48, 50.0, 51.0, 31.5, 23.5, (0.1, 0.2, 0.3, 0.4))),
    ],
)
def test_colmap_camera_models(tmp_path: Path, line: str, camera: Camera) -> None:
    make_colmap(tmp_path / "src", known_poses(4, seed=3))
    (tmp_path / "src/sparse/0/cameras.txt").write_text("# Camera list\n" + line + "\n")
    convert(tmp_path / "src", "colmap", tmp_path / "out")
    assert read_cameras_json(tmp_path / "out").single() == camera


def test_colmap_several_cameras_unsupported_models_and_errors(tmp_path: Path) -> None:
    make_colmap(tmp_path / "src", known_poses(4, seed=3))
    images_txt = tmp_path / "src/sparse/0/images.txt"
    cameras_txt = tmp_path / "src/sparse/0/cameras.txt"
    text = images_txt.read_text()
    images_txt.write_text(text.replace(" 1 img 001.jpg", " 2 img 001.jpg"))
    cameras_txt.write_text("1 PINHOLE 64 48 50 50 32 24\n2 SIMPLE_PINHOLE 64 48 60 32 24\n")
    convert(tmp_path / "src", "colmap", tmp_path / "out")
    cameras = read_cameras_json(tmp_path / "out")
    assert len(cameras.cameras) == 2 and cameras.single() is None
    assert cameras.camera_for("../src/images/img 001.jpg").fx == 60.0
    assert cameras.camera_for("../src/images/img 002.jpg").fx == 50.0
    with pytest.raises(MapError, match="2 different cameras"):
        dataset_intrinsics(tmp_path / "out")
    # A model this does not read: poses convert, intrinsics are left out and the report says why.
    cameras_txt.write_text("1 PINHOLE 64 48 50 50 32 24\n2 OPENCV_FISHEYE 64 48 50 50 32 24 0 0 0 0\n")
    report = convert_dataset(tmp_path / "src", "colmap", tmp_path / "out")
    assert read_cameras_json(tmp_path / "out") is None and "OPENCV_FISHEYE" in report.intrinsics
    cameras_txt.unlink()
    assert "no cameras.txt" in convert_dataset(tmp_path / "src", "colmap", tmp_path / "out").intrinsics
    cameras_txt.write_text("1 PINHOLE 64 48 50 50 32\n")
    with pytest.raises(DatasetError, match=r"cameras.txt:1 \(PINHOLE parameters\): expected 4 numbers, got 3"):
        convert(tmp_path / "src", "colmap", tmp_path / "out")
    cameras_txt.write_text("1 PINHOLE 64 48 50 50 32 24\n")
    with pytest.raises(DatasetError, match=r"images.txt:\d+: camera 2 is not in .*cameras.txt"):
        convert(tmp_path / "src", "colmap", tmp_path / "out")


def test_cambridge_intrinsics_come_from_the_nvm_reconstruction(tmp_path: Path) -> None:
    """reconstruction.nvm (VisualSFM) names the original .jpg frames; dataset_*.txt lists them as .png.
    Each image gets its focal length, the principal point at its centre and the radial term as k1."""
    make_cambridge(tmp_path / "src", known_poses(9, seed=2))
    rows = [f"seq1/frame{i:05d}.jpg {1670 + i} 1 0 0 0 0 0 0 {-2e-9 * i} 0" for i in range(1, 7)]
    rows += [f"seq2/frame{i:05d}.jpg 1700 1 0 0 0 0 0 0 0 0" for i in (1, 2)]  # frame 3 of seq2 is not named
    (tmp_path / "src" / "reconstruction.nvm").write_text("NVM_V3\n\n8\n" + "\n".join(rows) + "\n\n0\n")
    report = convert_dataset(tmp_path / "src", "cambridge", tmp_path / "out")
    cameras = read_cameras_json(tmp_path / "out")
    assert (
        cameras is not None
        and "reconstruction.nvm" in report.intrinsics
        and "1 images it does not name" in (cameras.source)
    )
    records = read_poses_csv(report.path)
    first = cameras.camera_for(records[0].image)
    assert first == Camera(8, 8, 1671.0, 1671.0, 3.5, 3.5, (2e-9 * 1671.0 * 1671.0, 0, 0, 0))
    assert cameras.camera_for(records[-1].image) is None  # seq2/frame00003 has no NVM entry
    (tmp_path / "src" / "reconstruction.nvm").write_text("NVM_V3\n\n2\nseq1/frame00001.jpg -5 1 0 0 0 0 0 0 0 0\n")
    with pytest.raises(DatasetError, match="2 cameras announced"):
        convert_dataset(tmp_path / "src", "cambridge", tmp_path / "out")
    (tmp_path / "src" / "reconstruction.nvm").write_text("NVM_V3\n\n1\nseq1/frame00001.jpg -5 1 0 0 0 0 0 0 0 0\n")
    with pytest.raises(DatasetError, match=r"reconstruction.nvm:4: focal length must be positive") as err:
        convert_dataset(tmp_path / "src", "cambridge", tmp_path / "out")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("seq1/frame00001.png 1 2 3 1 0 0", "expected 'image X Y Z W P Q R'"),
        ("seq1/frame00001.png 1 2 x 1 0 0 0", "not a number"),
        ("seq1/frame00001.png 1 2 3 2 0 0 0", "not unit length"),
        ("seq1/frame00001.png 1 2 3 nan 0 0 0", "non-finite"),
        ("seq1/missing.png 1 2 3 1 0 0 0", "not found"),
    ],
)
def test_cambridge_errors_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    tiny_image(tmp_path / "seq1/frame00001.png")
    (tmp_path / "dataset_train.txt").write_text(f"h1\nh2\nh3\nseq1/frame00001.png 0 0 0 1 0 0 0\n{line}\n")
    (tmp_path / "dataset_test.txt").write_text("h1\nh2\nh3\n")
    with pytest.raises(DatasetError, match=message) as err:
        convert(tmp_path, "cambridge", tmp_path / "out")
    assert "dataset_train.txt:5" in str(err.value) and "\n" not in str(err.value)


def test_seven_scenes_errors(tmp_path: Path) -> None:
    make_seven_scenes(tmp_path, known_poses(4))
    (tmp_path / "TestSplit.txt").write_text("sequence2\nseq3\n")
    with pytest.raises(DatasetError, match=r"TestSplit.txt:2: expected 'sequenceN'"):
        convert(tmp_path, "7scenes", tmp_path / "out")
    (tmp_path / "TestSplit.txt").write_text("sequence9\n")
    with pytest.raises(DatasetError, match="seq-09 does not exist"):
        convert(tmp_path, "7scenes", tmp_path / "out")
    (tmp_path / "TestSplit.txt").write_text("sequence2\n")
    (tmp_path / "seq-02/frame-000000.pose.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n")
    with pytest.raises(DatasetError, match="expected a 4x4 matrix"):
        convert(tmp_path, "7scenes", tmp_path / "out")
    (tmp_path / "seq-02/frame-000000.pose.txt").write_text("2 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    with pytest.raises(DatasetError, match="not a rotation matrix"):
        convert(tmp_path, "7scenes", tmp_path / "out")
    (tmp_path / "seq-02/frame-000000.color.png").unlink()
    with pytest.raises(DatasetError, match=r"no image frame-000000\.color"):
        convert(tmp_path, "7scenes", tmp_path / "out")


def test_colmap_errors(tmp_path: Path) -> None:
    make_colmap(tmp_path, known_poses(2))
    images_txt = tmp_path / "sparse/0/images.txt"
    images_txt.write_text("1 0.5 0.5 0.5 0.4 0 0 0 1 img 000.jpg\n\n")
    with pytest.raises(DatasetError, match=r"images.txt:1: quaternion is not unit length"):
        convert(tmp_path / "sparse/0", "colmap", tmp_path / "out")
    images_txt.write_text("1 1 0 0 0 0 0 0 1 nothere.jpg\n\n")
    with pytest.raises(DatasetError, match=r"'nothere\.jpg' not found"):
        convert(tmp_path, "colmap", tmp_path / "out")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("a.png,train,1,2,3,1,0,0", "expected 9 columns"),
        ("a.png,valid,1,2,3,1,0,0,0", "split must be one of"),
        ("a.png,train,1,2,3,0.5,0,0,0", "not unit length"),
        ("a.png,train,1,inf,3,1,0,0,0", "non-finite"),
        ("b.png,train,1,2,3,1,0,0,0", "'b.png' not found"),
    ],
)
def test_canonical_csv_errors(tmp_path: Path, row: str, message: str) -> None:
    tiny_image(tmp_path / "a.png")
    (tmp_path / "poses.csv").write_text(",".join(CSV_COLUMNS) + "\na.png,test,0,0,0,1,0,0,0\n" + row + "\n")
    with pytest.raises(DatasetError, match=message) as err:
        read_poses_csv(tmp_path)
    assert "poses.csv:3" in str(err.value)


def test_cli_convert_and_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_cambridge(tmp_path / "src", known_poses(9, seed=4))
    assert train_main(["convert", str(tmp_path / "src"), "--format", "cambridge", "--out", str(tmp_path / "o")]) == 0
    assert len(read_poses_csv(tmp_path / "o")) == 9
    assert "refinement (posenet-train map) will need the intrinsics" in capsys.readouterr().out
    assert train_main(["convert", str(tmp_path / "src"), "--format", "7scenes", "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("posenet-train convert: error:") and "TrainSplit.txt" in err and "\n" not in err


def test_converted_rotation_is_the_camera_to_world_one(tmp_path: Path) -> None:
    """Guard against the classic mistake of keeping NVM's world-to-camera quaternion: a camera whose
    optical axis looks along world +x must come out with R[:, 2] == +x."""
    look_x = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    pose = Pose.from_matrix(np.block([[look_x, np.array([[1.0], [2.0], [3.0]])], [np.zeros((1, 3)), np.ones((1, 1))]]))
    make_cambridge(tmp_path / "src", [pose] * 7)
    records = read_poses_csv(convert(tmp_path / "src", "cambridge", tmp_path / "out"))
    np.testing.assert_allclose(quat_to_matrix(records[0].quaternion)[:, 2], [1.0, 0.0, 0.0], atol=1e-12)
    assert rotation_error_deg(records[0].quaternion, pose.quaternion) < 1e-6


# -- the validation split (issue 18) ---------------------------------------------------------------


def test_val_split_round_trips_and_old_files_still_load(tmp_path: Path) -> None:
    poses = known_poses(9, seed=6)
    splits = ["train", "val", "test"] * 3
    records = [
        PoseRecord(f"img{i}.png", s, p.position, p.quaternion)
        for i, (s, p) in enumerate(zip(splits, poses, strict=True))
    ]
    for r in records:
        tiny_image(tmp_path / r.image)
    write_poses_csv(tmp_path / "poses.csv", records)
    back = read_poses_csv(tmp_path)
    assert [r.split for r in back] == splits
    assert [r.image for r in split_records(back, "val")] == ["img1.png", "img4.png", "img7.png"]
    # A file written before val existed: train and test only, read as before; asking it for val
    # says so in one line.
    old = tmp_path / "old"
    old.mkdir()
    tiny_image(old / "a.png")
    (old / "poses.csv").write_text(",".join(CSV_COLUMNS) + "\na.png,train,0,0,0,1,0,0,0\na.png,test,1,0,0,1,0,0,0\n")
    assert [r.split for r in read_poses_csv(old)] == ["train", "test"]
    with pytest.raises(DatasetError, match="no 'val' images"):
        split_records(read_poses_csv(old), "val")


def sequence_layout(src_names: list[str], records: list[PoseRecord]) -> dict[str, list[str]]:
    """Per sequence (image folder), the split of every source frame (``folder/name``) in name order;
    '-' where the converter dropped it."""
    split_of = {"/".join(Path(r.image).parts[-2:]): r.split for r in records}
    by_seq: dict[str, list[str]] = {}
    for name in sorted(src_names, key=lambda n: (str(Path(n).parent), natural_key(Path(n).name))):
        by_seq.setdefault(str(Path(name).parent), []).append(split_of.get(name, "-"))
    return by_seq


def blocks_of(layout: list[str], split: str) -> list[tuple[int, int]]:
    out, start = [], None
    for i, s in enumerate([*layout, None]):
        if s == split and start is None:
            start = i
        elif s != split and start is not None:
            out.append((start, i))
            start = None
    return out


def check_val_blocks(layout: list[str]) -> None:
    """Among the frames that are not test (COLMAP interleaves those): val comes in contiguous blocks,
    every training frame is more than the gap away from any val frame, and the frames in between
    were dropped."""
    layout = [s for s in layout if s != "test"]
    val = [i for i, s in enumerate(layout) if s == "val"]
    train = [i for i, s in enumerate(layout) if s == "train"]
    assert val and all(min(abs(v - t) for v in val) > VAL_GAP_FRAMES for t in train)
    for a, b in blocks_of(layout, "val"):
        assert b - a >= 10  # blocks, not scattered frames
        assert set(layout[max(0, a - VAL_GAP_FRAMES) : a] + layout[b : b + VAL_GAP_FRAMES]) <= {"-"}


def test_seven_scenes_holds_val_blocks_out_of_the_training_sequence(tmp_path: Path, capsys) -> None:
    poses = known_poses(400, seed=7)  # seq-01 (train) and seq-02 (test), 200 frames each
    make_seven_scenes(tmp_path / "src", poses)
    report = convert_dataset(tmp_path / "src", "7scenes", tmp_path / "out")
    records = read_poses_csv(report.path)
    layout = sequence_layout([f"seq-01/frame-{i:06d}.color.png" for i in range(200)], records)["seq-01"]
    check_val_blocks(layout)
    assert layout.count("val") == 20 and layout.count("-") == 2 * VAL_GAP_FRAMES  # 10% of 200
    assert [r.split for r in records if "seq-02" in r.image] == ["test"] * 200  # test untouched
    assert report.read == {"train": 200, "val": 0, "test": 200}
    assert report.kept == {"train": 170, "val": 20, "test": 200} and report.dropped_gap == 10
    # Poses are carried through unchanged, and the split is deterministic.
    by_image = {"/".join(Path(r.image).parts[-2:]): r for r in records}
    kept = [(f"seq-01/frame-{i:06d}.color.png", p) for i, p in enumerate(poses[:200])]
    kept = [(name, p) for name, p in kept if name in by_image]
    assert_same_poses([by_image[name] for name, _ in kept], [p for _, p in kept])
    first = report.path.read_bytes()
    assert convert(tmp_path / "src", "7scenes", tmp_path / "again").read_bytes() == first
    # The command says what it read, kept per split and dropped with why.
    assert train_main(["convert", str(tmp_path / "src"), "--format", "7scenes", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "read 400 frames" in out and "kept 170 train, 20 val, 200 test" in out
    assert f"dropped 10 training frames beside the val blocks (a gap of {VAL_GAP_FRAMES} frames" in out
    # --val-fraction 0: no val, nothing dropped (the files as before).
    assert train_main(["convert", str(tmp_path / "src"), "--format", "7scenes", "--out", str(tmp_path / "n"),
                       "--val-fraction", "0"]) == 0  # fmt: skip
    assert {r.split for r in read_poses_csv(tmp_path / "n")} == {"train", "test"}


def test_cambridge_holds_val_blocks_out_of_each_training_sequence(tmp_path: Path) -> None:
    poses = known_poses(1100, seed=8)
    make_cambridge(tmp_path / "src", poses, n_train=1000)  # seq1: 1000 train frames, seq2: 100 test
    records = read_poses_csv(convert(tmp_path / "src", "cambridge", tmp_path / "out"))
    layout = sequence_layout([f"seq1/frame{i + 1:05d}.png" for i in range(1000)], records)["seq1"]
    check_val_blocks(layout)
    # Two blocks of 50 frames in 1000: 10% of the training frames, each block a contiguous run.
    assert blocks_of(layout, "val") == [(250, 300), (750, 800)]
    assert sum(r.split == "test" for r in records) == 100


def test_colmap_holds_val_blocks_out_by_image_order(tmp_path: Path) -> None:
    poses = known_poses(240, seed=9)
    make_colmap(tmp_path / "src", poses)
    records = read_poses_csv(convert(tmp_path / "src", "colmap", tmp_path / "out"))
    layout = sequence_layout([f"images/img {i:03d}.jpg" for i in range(240)], records)["images"]
    check_val_blocks(layout)
    assert sum(r.split == "test" for r in records) == 30  # every 8th image by name, as before
    assert all(layout[k] == "test" for k in range(7, 240, 8))
    assert 0.08 <= layout.count("val") / (240 - 30) <= 0.12
