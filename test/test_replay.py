"""Offline replay on real rosbag2 / ROS 1 files written here: both storages, the metadata versions
Humble, Jazzy and Kilted write, bare storage files, ground truth from TF and from topics, the output
bag, the report, realtime skipping and every kind of bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from rosbags.highlevel import AnyReader

from posenet_ros.bagio import BagError, BagWriter, open_bag, pick_image_topic
from posenet_ros.cli import main as ros_main
from posenet_ros.geometry import Pose, position_error, rotation_error_deg, xyzw_to_wxyz
from posenet_ros.groundtruth import GroundTruthSource
from posenet_ros.image_codec import encode_image
from posenet_ros.replay import NODE_NAMESPACE, ReplayConfig, replay, write_report
from posenet_train.bags import ToBagConfig, dataset_to_bag
from posenet_train.datasets import read_poses_csv, split_records
from posenet_train.synth import SynthConfig, render_dataset

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "posenet_demo.pt"
FRAMES = 16
TF_TRUTH = GroundTruthSource(frames=("map", "camera_optical"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo scene's test trajectory, short and small (images are upscaled by the resize rule)."""
    root = tmp_path_factory.mktemp("replay_data")
    cfg = SynthConfig(
        train_sequences=0, test_sequences=1, frames_per_sequence=FRAMES, width=128, height=96, heading_spread_deg=50
    )
    render_dataset(cfg, root, progress=False)
    return root


def make_bag(dataset: Path, out: Path, **kw: object) -> Path:
    dataset_to_bag(ToBagConfig(dataset, out, **kw))  # type: ignore[arg-type]
    return out


def truth_poses(dataset: Path) -> list[Pose]:
    records = sorted(split_records(read_poses_csv(dataset), "test"), key=lambda r: r.image)
    return [r.pose() for r in records]


def read_back(bag: Path) -> dict[str, list[tuple[int, object]]]:
    out: dict[str, list[tuple[int, object]]] = {}
    with AnyReader([bag]) as reader:
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, reader.deserialize(raw, conn.msgtype)))
    return out


def msg_pose(p: object) -> Pose:
    return Pose(
        np.array([p.position.x, p.position.y, p.position.z]),
        xyzw_to_wxyz(np.array([p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w])),
    )


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("distro", ["humble", "jazzy"])
def test_replay_writes_poses_tf_and_report(dataset: Path, tmp_path: Path, storage: str, distro: str) -> None:
    bag = make_bag(dataset, tmp_path / "in", storage=storage, ros_distro=distro)
    meta = yaml.safe_load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["version"] == {"humble": 5, "jazzy": 8}[distro] and meta["storage_identifier"] == storage
    out_bag, report = tmp_path / "out", tmp_path / "report"
    cfg = ReplayConfig(
        bag, MODEL, ground_truth=TF_TRUTH, out_bag=out_bag, ros_distro=distro, device="cpu", progress=False
    )
    result = replay(cfg)
    s = result.summary
    assert (s["frames_read"], s["frames_processed"], s["frames_rejected"]) == (FRAMES, FRAMES, 0)
    assert s["ground_truth"]["frames_with_ground_truth"] == FRAMES
    # The bundled model on its own scene: tens of centimetres, a few degrees (models/README.md).
    assert s["errors"]["median_position_m"] < 0.6 and s["errors"]["median_rotation_deg"] < 8.0

    # Output bag: same storage, the requested distro's metadata, one pose/covariance/TF per frame,
    # stamped with the image stamps, reliable QoS recorded.
    meta = yaml.safe_load((out_bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["storage_identifier"] == storage and meta["version"] == {"humble": 5, "jazzy": 8}[distro]
    for entry in meta["topics_with_message_count"]:
        assert ("type_description_hash" in entry["topic_metadata"]) == (distro != "humble")
        qos = yaml.safe_load(entry["topic_metadata"]["offered_qos_profiles"])
        assert qos[0]["reliability"] == 1 and qos[0]["durability"] == 2  # reliable, volatile
    msgs = read_back(out_bag)
    images = read_back(bag)["/camera/image_raw"]
    image_stamps = [m.header.stamp.sec * 10**9 + m.header.stamp.nanosec for _, m in images]
    poses = msgs[f"{NODE_NAMESPACE}/pose"]
    covs = msgs[f"{NODE_NAMESPACE}/pose_with_covariance"]
    tfs = msgs["/tf"]
    assert len(poses) == len(covs) == len(tfs) == FRAMES
    for k, rec in enumerate(result.records):
        for _, m in (poses[k], covs[k]):
            assert m.header.stamp.sec * 10**9 + m.header.stamp.nanosec == image_stamps[k] == rec.stamp_ns
            assert m.header.frame_id == "map"
        est = msg_pose(poses[k][1].pose)
        assert (
            np.allclose(est.position, rec.pose.position)
            and rotation_error_deg(est.quaternion, rec.pose.quaternion) < 1e-6
        )
        assert np.allclose(msg_pose(covs[k][1].pose.pose).position, rec.pose.position)
        cov = np.asarray(covs[k][1].pose.covariance).reshape(6, 6)
        assert np.all(np.diag(cov) > 0) and np.allclose(cov, cov.T)
        t = tfs[k][1].transforms[0]
        assert (t.header.frame_id, t.child_frame_id) == ("map", "camera_optical")
        assert np.allclose([t.transform.translation.x, t.transform.translation.y], rec.pose.position[:2])

    index = write_report(result, report)
    summary = json.loads((report / "summary.json").read_text())
    for key in ("frames_read", "frames_processed", "frames_rejected", "latency_ms", "crops_used", "errors"):
        assert key in summary
    assert set(summary["latency_ms"]) >= {"p50", "p95", "max"} and summary["crops_used"] == {"1": FRAMES}
    for png in ("trajectory_top.png", "error_over_time.png", "error_cdf.png", "latency_hist.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png in index.read_text()
    assert len((report / "frames.csv").read_text().splitlines()) == FRAMES + 1


def test_estimates_match_ground_truth_from_topic_and_from_tf_chain(dataset: Path, tmp_path: Path) -> None:
    bag = make_bag(dataset, tmp_path / "in")
    fp32 = {"precision": "fp32"}  # the two runs' poses are compared: one precision, whatever auto picks
    via_tf = replay(ReplayConfig(bag, MODEL, ground_truth=TF_TRUTH, device="cpu", progress=False, node_parameters=fp32))
    topic = GroundTruthSource(topic="/ground_truth/camera_pose")
    via_topic = replay(ReplayConfig(bag, MODEL, ground_truth=topic, device="cpu", progress=False, node_parameters=fp32))
    truth = truth_poses(dataset)
    for a, b, gt in zip(via_tf.records, via_topic.records, truth, strict=True):
        # map <- base_link (dynamic) * base_link <- camera_optical (static) is the camera pose.
        assert position_error(a.truth.position, gt.position) < 1e-9
        assert rotation_error_deg(a.truth.quaternion, gt.quaternion) < 1e-6
        assert position_error(b.truth.position, gt.position) < 1e-12
        assert np.allclose(a.pose.position, b.pose.position)


def test_kilted_bare_storage_files_compressed_images_and_ros1(dataset: Path, tmp_path: Path) -> None:
    kilted = make_bag(dataset, tmp_path / "kilted", ros_distro="kilted", compressed=True)
    assert yaml.safe_load((kilted / "metadata.yaml").read_text())["rosbag2_bagfile_information"]["version"] == 9
    r = replay(ReplayConfig(kilted, MODEL, ground_truth=TF_TRUTH, device="cpu", progress=False))
    assert r.summary["image_topic"] == "/camera/image_raw/compressed" and r.summary["frames_processed"] == FRAMES
    assert r.summary["errors"]["median_position_m"] < 0.6  # JPEG costs little

    for storage in ("sqlite3", "mcap"):
        folder = make_bag(dataset, tmp_path / f"bare_{storage}", storage=storage)
        storage_file = next(p for p in folder.iterdir() if p.suffix in (".db3", ".mcap"))
        bare = tmp_path / f"recording{storage_file.suffix}"
        shutil.copy(storage_file, bare)
        r = replay(ReplayConfig(bare, MODEL, ground_truth=TF_TRUTH, device="cpu", progress=False))
        assert (
            r.summary["frames_processed"] == FRAMES and r.summary["ground_truth"]["frames_with_ground_truth"] == FRAMES
        )

    named_like_ros1 = make_bag(dataset, tmp_path / "rosbag2_folder.bag")
    r = replay(ReplayConfig(named_like_ros1, MODEL, device="cpu", progress=False))
    assert r.summary["frames_processed"] == FRAMES

    ros1 = write_ros1_bag(dataset, tmp_path / "recording.bag")
    r = replay(ReplayConfig(ros1, MODEL, ground_truth=GroundTruthSource(topic="/gt"), device="cpu", progress=False))
    assert r.summary["frames_processed"] == FRAMES and r.summary["errors"]["median_position_m"] < 0.6


def write_ros1_bag(dataset: Path, path: Path) -> Path:
    import cv2
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS1_NOETIC)
    T = ts.types
    records = sorted(split_records(read_poses_csv(dataset), "test"), key=lambda r: r.image)
    with Writer(path) as w:
        img_conn = w.add_connection("/camera/image_raw", "sensor_msgs/msg/Image", typestore=ts)
        gt_conn = w.add_connection("/gt", "geometry_msgs/msg/PoseStamped", typestore=ts)
        for i, rec in enumerate(records):
            stamp = T["builtin_interfaces/msg/Time"](sec=100 + i // 10, nanosec=(i % 10) * 100_000_000)
            header = T["std_msgs/msg/Header"](seq=i, stamp=stamp, frame_id="camera_optical")
            raw = encode_image(cv2.imread(str(dataset / rec.image))[:, :, ::-1], "rgb8")
            image = T["sensor_msgs/msg/Image"](
                header=header,
                height=raw.height,
                width=raw.width,
                encoding="rgb8",
                is_bigendian=0,
                step=raw.step,
                data=np.frombuffer(raw.data, np.uint8),
            )
            x, y, z = rec.position
            qw, qx, qy, qz = rec.quaternion
            pose = T["geometry_msgs/msg/Pose"](
                position=T["geometry_msgs/msg/Point"](x=x, y=y, z=z),
                orientation=T["geometry_msgs/msg/Quaternion"](x=qx, y=qy, z=qz, w=qw),
            )
            t_ns = stamp.sec * 10**9 + stamp.nanosec
            w.write(img_conn, t_ns, ts.serialize_ros1(image, "sensor_msgs/msg/Image"))
            w.write(
                gt_conn,
                t_ns,
                ts.serialize_ros1(
                    T["geometry_msgs/msg/PoseStamped"](header=header, pose=pose), "geometry_msgs/msg/PoseStamped"
                ),
            )
    return path


def test_bad_frames_are_counted_and_the_run_goes_on(tmp_path: Path) -> None:
    """An undecodable payload, an unsupported encoding and a truncated image are rejected frames; a
    tiny image is upscaled and localized."""
    path = tmp_path / "mixed"
    rng = np.random.default_rng(0)
    with BagWriter(path, "sqlite3", "jazzy") as w:
        w.add_topic("/cam", "sensor_msgs/msg/Image")
        good = encode_image(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8), "bgr8")
        tiny = encode_image(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8), "bgr8")
        frames = [
            w.image(1 * 10**8, "cam", good),
            w.image(2 * 10**8, "cam", tiny),
            w.msg(
                "sensor_msgs/msg/Image",
                header=w.header(3 * 10**8, "cam"),
                height=60,
                width=80,
                encoding="16UC1",
                is_bigendian=0,
                step=160,
                data=np.zeros(9600, np.uint8),
            ),
            w.msg(
                "sensor_msgs/msg/Image",
                header=w.header(4 * 10**8, "cam"),
                height=60,
                width=80,
                encoding="bgr8",
                is_bigendian=0,
                step=240,
                data=np.zeros(100, np.uint8),
            ),
        ]
        for k, f in enumerate(frames):
            w.write("/cam", (k + 1) * 10**8, f)
        w._writer.write(w._connections["/cam"], 5 * 10**8, b"\x00\x01\x00\x00garbage")  # not CDR of an Image
        w.write("/cam", 6 * 10**8, w.image(6 * 10**8, "cam", good))
    r = replay(ReplayConfig(path, MODEL, device="cpu", progress=False))
    statuses = [rec.status for rec in r.records]
    assert statuses == ["published", "published", "rejected", "rejected", "rejected", "published"]
    assert (
        "16UC1" in r.records[2].reason and "truncated" in r.records[3].reason and "undecodable" in r.records[4].reason
    )
    assert (r.summary["frames_read"], r.summary["frames_rejected"], r.summary["frames_processed"]) == (6, 3, 3)


def test_realtime_mode_counts_what_the_node_would_skip(dataset: Path, tmp_path: Path) -> None:
    bag = make_bag(dataset, tmp_path / "in", rate_hz=10.0)
    # 1000x the recorded rate: frames arrive every 0.1 ms while one inference takes milliseconds,
    # so the newest-frame slot replaces frames, exactly as the node's subscription would.
    r = replay(ReplayConfig(bag, MODEL, realtime=True, rate=1000.0, device="cpu", progress=False))
    s = r.summary
    assert s["mode"] == "realtime" and s["frames_read"] == FRAMES
    assert s["frames_skipped"] > 0
    assert s["frames_processed"] + s["frames_skipped"] + s["frames_dropped_stale"] == FRAMES
    # The last frame is never replaced: the node always gets to the newest image.
    assert r.records[-1].stamp_ns == max(rec.stamp_ns for rec in r.records)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing_bag"], "bag not found"),
        (["BAG", "--image-topic", "/nope"], "image topics found: /camera/image_raw"),
        (["BAG", "--gt-topic", "/camera/image_raw"], "of type sensor_msgs/msg/Image"),
        (["BAG", "--gt-frames", "map", "cam"], "frames found: base_link, camera_optical, map"),
        (["BAG", "--crops", "0"], "bad parameter"),
        (["BAG", "--rate", "0", "--realtime"], "--rate must be > 0"),
        (["CORRUPT"], "cannot read bag"),
        (["BAG", "--out", "BAG"], "already exists"),
        (["BAG", "--gt-topic", "/a", "--gt-frames", "m", "c"], "not both"),
    ],
)
def test_user_mistakes_are_one_line_errors(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    bag = make_bag(dataset, tmp_path / "in")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: 8, storage_identifier: sqlite3")
    args = [{"BAG": str(bag), "CORRUPT": str(corrupt)}.get(a, a) for a in args]
    code = ros_main(["replay", *args, "--model", str(MODEL), "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_several_image_topics_need_a_choice(tmp_path: Path) -> None:
    path = tmp_path / "two"
    with BagWriter(path, "mcap", "jazzy") as w:
        w.add_topic("/left/image", "sensor_msgs/msg/Image")
        w.add_topic("/right/image/compressed", "sensor_msgs/msg/CompressedImage")
    with open_bag(path) as reader:
        with pytest.raises(BagError, match=r"2 image topics.*--image-topic: /left/image, /right/image/compressed"):
            pick_image_topic(reader, None)
        assert pick_image_topic(reader, "/left/image") == "/left/image"


def test_a_failure_in_the_realtime_worker_reaches_the_caller(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    from posenet_ros import replay as replay_module

    def broken(self, msg, now_ns):
        raise OSError("disk full")

    monkeypatch.setattr(replay_module._Run, "handle", broken)
    bag = make_bag(dataset, tmp_path / "in")
    with pytest.raises(OSError, match="disk full"):
        replay(ReplayConfig(bag, MODEL, realtime=True, rate=100.0, device="cpu", progress=False))
