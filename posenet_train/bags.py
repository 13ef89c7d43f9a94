"""Canonical data sets <-> rosbag2 recordings.

``to-bag`` records a data set's images as a camera would publish them, with ground truth both as TF
(``map -> base_link`` per frame plus a static ``base_link -> camera optical`` mount, the chain a
robot records) and as a PoseStamped topic, so every ground-truth path of the replay is exercised.

``from-bag`` turns a recording with ground truth into a training set: frames picked every Nth or by
minimum motion, blurred frames rejected, poses interpolated to the image stamps, and a train/test
split by time blocks (neighbouring frames are near-duplicates; a random split would leak them), then
val blocks held out of the training time the same way, with a gap of dropped frames either side
(``datasets.hold_out_val``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from posenet_ros.bagio import (
    CAMERA_INFO_TYPE,
    BagError,
    BagWriter,
    TopicQos,
    camera_info_topic_for,
    header_stamp_ns,
    open_bag,
    pick_image_topic,
    read_camera_info,
    read_messages,
)
from posenet_ros.geometry import Pose, matrix_to_quat, position_error, rotation_error_deg
from posenet_ros.groundtruth import GroundTruth, GroundTruthSource
from posenet_ros.image_codec import decode, encode_compressed, encode_image
from posenet_train.datasets import (
    VAL_FRACTION,
    VAL_GAP_FRAMES,
    DatasetCameras,
    DatasetError,
    PoseRecord,
    dataset_camera,
    hold_out_val,
    read_poses_csv,
    split_records,
    write_dataset_cameras,
    write_poses_csv,
)
from posenet_train.synth import OPTICAL_IN_BODY

# The camera's mount on the robot in to-bag recordings: 0.2 m ahead of and 0.5 m above base_link,
# looking forward (optical z = body x).
CAMERA_MOUNT = Pose(np.array([0.2, 0.0, 0.5]), matrix_to_quat(OPTICAL_IN_BODY))


@dataclass(frozen=True)
class ToBagConfig:
    dataset: Path
    out: Path
    split: str = "test"
    rate_hz: float = 10.0
    start_ns: int = 1_700_000_000 * 1_000_000_000
    storage: str = "sqlite3"
    ros_distro: str = "jazzy"
    compressed: bool = False
    image_topic: str = "/camera/image_raw"
    # Sequences (the images' folders) are separate walks: recorded as separate time spans, this far
    # apart, so nothing downstream interpolates or draws a path between the end of one and the start
    # of the next (the ground truth teleports there).
    sequence_gap_s: float = 5.0
    gt_topic: str = "/ground_truth/camera_pose"
    map_frame: str = "map"
    base_frame: str = "base_link"
    camera_frame: str = "camera_optical"


def dataset_to_bag(cfg: ToBagConfig) -> int:
    """Write the ``split`` images (in file order) at ``rate_hz``, each sequence (image folder) its own
    time span ``sequence_gap_s`` after the previous one; returns the number of frames."""
    if not cfg.rate_hz > 0:
        raise ValueError(f"rate must be > 0 Hz, got {cfg.rate_hz}")
    if not cfg.sequence_gap_s >= 0:
        raise ValueError(f"sequence gap must be >= 0 s, got {cfg.sequence_gap_s}")
    records = sorted(split_records(read_poses_csv(cfg.dataset), cfg.split), key=lambda r: r.image)
    root = Path(cfg.dataset)
    stamps = sequence_stamps([sequence_of(r.image) for r in records], cfg.start_ns, cfg.rate_hz, cfg.sequence_gap_s)
    image_topic = f"{cfg.image_topic}/compressed" if cfg.compressed else cfg.image_topic
    with BagWriter(cfg.out, cfg.storage, cfg.ros_distro) as w:
        w.add_topic(
            image_topic,
            "sensor_msgs/msg/CompressedImage" if cfg.compressed else "sensor_msgs/msg/Image",
            TopicQos(reliable=False, depth=5),
        )
        w.add_topic("/tf", "tf2_msgs/msg/TFMessage", TopicQos(depth=100))
        w.add_topic("/tf_static", "tf2_msgs/msg/TFMessage", TopicQos(transient_local=True, depth=1))
        w.add_topic(cfg.gt_topic, "geometry_msgs/msg/PoseStamped")
        # The camera's calibration beside its images, as a driver publishes it (refinement and the
        # node's field-of-view check read it); a data set without intrinsics records none.
        camera_info = dataset_camera(root)
        info_topic = camera_info_topic_for(cfg.image_topic, "")  # image_topic before /compressed
        if camera_info is not None:
            w.add_topic(info_topic, CAMERA_INFO_TYPE, TopicQos(reliable=False, depth=5))
        w.write("/tf_static", cfg.start_ns, w.tf_message(cfg.start_ns, cfg.base_frame, cfg.camera_frame, CAMERA_MOUNT))
        for rec, stamp in zip(records, stamps, strict=True):
            bgr = cv2.imread(str(root / rec.image), cv2.IMREAD_COLOR)
            if bgr is None:
                raise DatasetError(f"{root / rec.image}: cannot be read as an image")
            camera = rec.pose()
            base = camera.compose(CAMERA_MOUNT.inverse())
            w.write("/tf", stamp, w.tf_message(stamp, cfg.map_frame, cfg.base_frame, base))
            w.write(cfg.gt_topic, stamp, w.pose_stamped(stamp, cfg.map_frame, camera))
            if cfg.compressed:
                msg = w.compressed_image(stamp, cfg.camera_frame, "bgr8; jpeg compressed bgr8", encode_compressed(bgr))
            else:
                msg = w.image(stamp, cfg.camera_frame, encode_image(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), "rgb8"))
            if camera_info is not None:
                w.write(info_topic, stamp, w.camera_info(stamp, cfg.camera_frame, camera_info))
            w.write(image_topic, stamp, msg)
    return len(records)


def sequence_of(image: str) -> str:
    """The sequence an image belongs to: its folder (``seq-01/frame-000000.color.png`` -> ``seq-01``)."""
    return str(Path(image).parent)


def sequence_stamps(sequences: list[str], start_ns: int, rate_hz: float, gap_s: float) -> list[int]:
    """One stamp per frame: ``1 / rate_hz`` apart within a sequence, plus ``gap_s`` where it changes."""
    period_ns, gap_ns = round(1e9 / rate_hz), round(gap_s * 1e9)
    stamps, t = [], start_ns
    for i, seq in enumerate(sequences):
        if i:
            t += period_ns + (gap_ns if seq != sequences[i - 1] else 0)
        stamps.append(t)
    return stamps


# -- from-bag -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FromBagConfig:
    bag: Path
    out: Path
    ground_truth: GroundTruthSource
    image_topic: str | None = None
    every: int = 1  # keep every Nth frame ...
    min_translation: float = 0.0  # ... and only when it moved this far (m) ...
    min_rotation_deg: float = 0.0  # ... or turned this much since the last kept frame
    blur_threshold: float = 0.0  # variance of the Laplacian below this: too blurred (0: keep all)
    test_fraction: float = 0.2
    block_seconds: float = 10.0  # the split assigns whole blocks of this length
    val_fraction: float = VAL_FRACTION  # share of the training frames held out as val (0: none)
    camera_info_topic: str | None = None  # None: the image topic's sibling camera_info (camera_info_topic_for)


@dataclass
class FromBagStats:
    images: int = 0
    kept: int = 0
    not_every_nth: int = 0
    too_little_motion: int = 0
    blurred: int = 0
    no_ground_truth: int = 0
    undecodable: int = 0
    beside_val: int = 0  # training frames dropped in the gap on either side of a val block
    intrinsics: str = ""  # what was written to cameras.json, or why nothing was

    def line(self) -> str:
        counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in vars(self).items() if k != "intrinsics")
        return f"{counts}; {self.intrinsics}" if self.intrinsics else counts


def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image: low for blurred frames."""
    grey = (
        image[..., 0] if image.shape[2] == 1 else cv2.cvtColor(np.ascontiguousarray(image[..., :3]), cv2.COLOR_BGR2GRAY)
    )
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def to_bgr(image: np.ndarray, encoding: str) -> np.ndarray:
    if encoding == "mono8":
        return cv2.cvtColor(np.ascontiguousarray(image[..., 0]), cv2.COLOR_GRAY2BGR)
    code = {"rgb8": cv2.COLOR_RGB2BGR, "rgba8": cv2.COLOR_RGBA2BGR, "bgra8": cv2.COLOR_BGRA2BGR}.get(encoding)
    return np.ascontiguousarray(image) if code is None else cv2.cvtColor(np.ascontiguousarray(image), code)


def time_block_splits(stamps_ns: list[int], test_fraction: float, block_seconds: float) -> list[str]:
    """'train'/'test' per stamp: time is cut into blocks of ``block_seconds`` and every k-th block
    (k = round(1 / test_fraction)), starting with the middle one of the first k, is test. A recording
    shorter than k blocks gets shorter blocks, so it still has a test part."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test fraction must be in (0, 1), got {test_fraction}")
    if not block_seconds > 0:
        raise ValueError(f"block length must be > 0 s, got {block_seconds}")
    if not stamps_ns:
        return []
    k = max(2, round(1 / test_fraction))
    t0 = min(stamps_ns)
    span = max(stamps_ns) - t0 + 1
    block_ns = min(round(block_seconds * 1e9), -(-span // k))
    return ["test" if ((s - t0) // block_ns) % k == k // 2 else "train" for s in stamps_ns]


def bag_to_dataset(cfg: FromBagConfig, progress: bool = True) -> tuple[list[PoseRecord], FromBagStats]:
    from tqdm import tqdm

    if cfg.every < 1:
        raise ValueError(f"--every must be >= 1, got {cfg.every}")
    if not 0 <= cfg.val_fraction < 1:
        raise ValueError(f"--val-fraction must be in [0, 1), got {cfg.val_fraction}")
    out = Path(cfg.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    stats = FromBagStats()
    kept: list[tuple[str, int, Pose]] = []
    size: tuple[int, int] | None = None  # the first kept image's (width, height)
    with open_bag(cfg.bag) as reader:
        topic = pick_image_topic(reader, cfg.image_topic)
        image_type = next(c.msgtype for c in reader.connections if c.topic == topic)
        info_topic = cfg.camera_info_topic or camera_info_topic_for(topic, image_type)
        camera, camera_note = read_camera_info(reader, info_topic)
        truth = GroundTruth(reader, cfg.ground_truth)
        total = sum(c.msgcount for c in reader.connections if c.topic == topic)
        last: Pose | None = None
        for i, m in enumerate(tqdm(read_messages(reader, [topic]), total=total, desc="from-bag", disable=not progress)):
            stats.images += 1
            if i % cfg.every:
                stats.not_every_nth += 1
                continue
            if m.msg is None:
                stats.undecodable += 1
                continue
            stamp = header_stamp_ns(m.msg)
            pose = truth.at(stamp)
            if pose is None:
                stats.no_ground_truth += 1
                continue
            if last is not None and (cfg.min_translation > 0 or cfg.min_rotation_deg > 0):
                moved = position_error(pose.position, last.position) >= cfg.min_translation > 0
                turned = rotation_error_deg(pose.quaternion, last.quaternion) >= cfg.min_rotation_deg > 0
                if not (moved or turned):
                    stats.too_little_motion += 1
                    continue
            try:
                image, encoding = decode(m.msg)
            except ValueError:
                stats.undecodable += 1
                continue
            bgr = to_bgr(image, encoding)
            if cfg.blur_threshold > 0 and sharpness(bgr) < cfg.blur_threshold:
                stats.blurred += 1
                continue
            name = f"images/{stamp}.png"
            cv2.imwrite(str(out / name), bgr)
            kept.append((name, stamp, pose))
            size = size or (bgr.shape[1], bgr.shape[0])
            last = pose
    if not kept:
        raise BagError(f"no frame kept from {cfg.bag} ({stats.line()})")
    splits = time_block_splits([s for _, s, _ in kept], cfg.test_fraction, cfg.block_seconds)
    train = sorted((i for i, s in enumerate(splits) if s == "train"), key=lambda i: kept[i][1])
    held = hold_out_val(
        [kept[i][1] for i in train], cfg.val_fraction, max(1, round(cfg.block_seconds * 1e9)), VAL_GAP_FRAMES
    )
    for i, split in zip(train, held, strict=True):
        splits[i] = split
    records = []
    for (name, _, p), split in zip(kept, splits, strict=True):
        if split == "gap":
            (out / name).unlink()
            stats.beside_val += 1
        else:
            records.append(PoseRecord(name, split, p.position, p.quaternion))
    stats.kept = len(records)
    write_poses_csv(out / "poses.csv", records)
    if camera is not None and size != (camera.width, camera.height):
        camera_note = f"the CameraInfo is for {camera.width}x{camera.height}, the images are {size[0]}x{size[1]}"
        camera = None
    source = f"the CameraInfo on {info_topic}" + (f" ({camera_note})" if camera_note else "")
    cameras = None if camera is None else DatasetCameras({"camera": camera}, {}, source)
    stats.intrinsics = write_dataset_cameras(out, cameras, camera_note)
    return records, stats
