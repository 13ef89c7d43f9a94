"""Reading and writing ROS bags with the ``rosbags`` library (no ROS install needed).

Reading takes everything a robot team may hand us: rosbag2 folders in sqlite3 or MCAP storage with
any metadata version Humble, Jazzy or Kilted writes, a bare ``.db3``/``.mcap`` file without its
``metadata.yaml``, and ROS 1 ``.bag`` files. Writing produces rosbag2 folders that the chosen
distro's ``ros2 bag play`` reads, with the offered QoS of each topic recorded.
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from posenet_ros.camera import Camera, camera_from_info
from posenet_ros.errors import first_line
from posenet_ros.geometry import Pose, wxyz_to_xyzw

if TYPE_CHECKING:
    from posenet_ros.bagrecover import RecoveryLog

IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
IMAGE_TYPES = (IMAGE_TYPE, COMPRESSED_TYPE)
CAMERA_INFO_TYPE = "sensor_msgs/msg/CameraInfo"
TF_TOPICS = ("/tf", "/tf_static")
STORAGES = ("sqlite3", "mcap")
# rosbag2 metadata version each distro writes: Humble 5 (QoS as a YAML string of integers),
# Jazzy 8 (adds type hashes, custom data), Kilted 9 (QoS as a list with enum names).
DISTRO_VERSIONS = {"humble": 5, "jazzy": 8, "kilted": 9}


class BagError(RuntimeError):
    """The bag cannot be read or written as asked; the message is one line."""


# -- reading --------------------------------------------------------------------------------------


def _split_index(path: Path) -> tuple[str, int, str]:
    """Sort key of rosbag2's split files: ``bag_2`` before ``bag_10``."""
    m = re.fullmatch(r"(.*?)(\d+)", path.stem)
    return (m.group(1), int(m.group(2)), path.name) if m else (path.stem, -1, path.name)


def _bare_storage(path: Path) -> list[Path]:
    """The storage files to wrap when ``path`` is one, or a folder holding them without its
    metadata.yaml (a recorder killed before writing it, possibly after several splits)."""
    if path.is_file() and path.suffix in (".db3", ".mcap"):
        return [path]
    if path.is_dir() and not (path / "metadata.yaml").exists():
        for suffix in (".mcap", ".db3"):
            files = sorted(path.glob(f"*{suffix}"), key=_split_index)
            if files:
                return files
    return []


def _write_metadata_for(storage_files: list[Path], folder: Path, log: RecoveryLog) -> None:
    """A metadata.yaml describing ``storage_files`` from their own tables/records, next to links to
    them in ``folder``: what ``ros2 bag reindex`` would recreate (damaged files read as recovered)."""
    from rosbags.rosbag2.metadata import dump_qos_v9

    from posenet_ros.bagrecover import plugins

    storage = "mcap" if storage_files[0].suffix == ".mcap" else "sqlite3"
    topics: dict[tuple[str, str], dict[str, Any]] = {}
    start, end, count = 2**63 - 1, 0, 0
    for storage_file in storage_files:
        reader = plugins(log)[storage](storage_file)
        reader.open()
        try:
            conns, meta = list(reader.connections), reader.metadata
        finally:
            reader.close()
        (folder / storage_file.name).symlink_to(storage_file.resolve())
        if meta.message_count:
            start, end, count = min(start, meta.start_time), max(end, meta.end_time), count + meta.message_count
        for c in conns:
            entry = topics.setdefault(
                (c.topic, c.msgtype),
                {
                    "topic_metadata": {
                        "name": c.topic,
                        "type": c.msgtype,
                        "serialization_format": c.ext.serialization_format,
                        "offered_qos_profiles": dump_qos_v9(c.ext.offered_qos_profiles),
                        "type_description_hash": c.digest,
                    },
                    "message_count": 0,
                },
            )
            entry["message_count"] += c.msgcount
    info = {
        "version": 9,
        "storage_identifier": storage,
        "relative_file_paths": [f.name for f in storage_files],
        "duration": {"nanoseconds": max(0, end - start) if count else 0},
        "starting_time": {"nanoseconds_since_epoch": start if count else 0},
        "message_count": count,
        "topics_with_message_count": list(topics.values()),
        "compression_format": "",
        "compression_mode": "",
    }
    (folder / "metadata.yaml").write_text(yaml.safe_dump({"rosbag2_bagfile_information": info}), encoding="utf-8")


def warn_stderr(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr)


@contextmanager
def open_bag(path: str | Path, warn: Callable[[str], None] = warn_stderr) -> Iterator[Any]:
    """An open ``rosbags.highlevel.AnyReader`` for a rosbag2 folder, a bare storage file or a ROS 1
    bag. Messages without embedded definitions deserialize with the Humble typestore. A recording
    cut off mid-write (see ``bagrecover``) is read up to the damage, and ``warn`` gets one line
    saying what was lost; the recording itself is only ever read."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from posenet_ros.bagrecover import RecoveryLog, install

    path = Path(path)
    if not path.exists():
        raise BagError(f"bag not found: {path}")
    with tempfile.TemporaryDirectory(prefix="posenet_bag_") as tmp:
        log = RecoveryLog(Path(tmp) / "recovered")
        try:
            bare = _bare_storage(path)
            if bare:
                target = Path(tmp) / "bag"
                target.mkdir()
                _write_metadata_for(bare, target, log)
            elif path.is_file() and path.suffix != ".bag":
                raise BagError(f"{path}: not a bag (expected a rosbag2 folder, a .db3/.mcap file or a ROS 1 .bag)")
            elif path.is_dir() and path.suffix == ".bag":  # rosbags takes any *.bag for ROS 1
                target = Path(tmp) / "rosbag2"
                target.symlink_to(path.resolve(), target_is_directory=True)
            else:
                target = path
            reader = AnyReader([target], default_typestore=get_typestore(Stores.ROS2_HUMBLE))
            install(reader, log)
            reader.open()
        except BagError:
            raise
        except Exception as exc:  # rosbags raises its own errors, OSError, sqlite and YAML errors
            raise BagError(f"cannot read bag {path}: {first_line(exc)}") from None
        line = log.line()
        if line:
            warn(line)
        try:
            yield reader
        finally:
            reader.close()


def topics_of_type(reader: Any, msgtypes: tuple[str, ...]) -> list[str]:
    return sorted({c.topic for c in reader.connections if c.msgtype in msgtypes})


def pick_image_topic(reader: Any, requested: str | None) -> str:
    """The requested image topic (checked), or the only image topic in the bag."""
    found = topics_of_type(reader, IMAGE_TYPES)
    listing = ", ".join(found) if found else "none"
    if requested is not None:
        if requested not in found:
            raise BagError(f"image topic {requested!r} not in the bag; image topics found: {listing}")
        return requested
    if len(found) != 1:
        raise BagError(
            f"{len(found)} image topics in the bag, pick one with --image-topic: {listing}"
            if found
            else "no sensor_msgs/Image or CompressedImage topic in the bag"
        )
    return found[0]


@dataclass(frozen=True)
class BagMessage:
    topic: str
    msgtype: str
    log_time_ns: int  # when it was recorded
    msg: Any | None  # None when it could not be deserialized
    error: str = ""


def read_messages(reader: Any, topics: list[str]) -> Iterator[BagMessage]:
    """Messages on ``topics`` in recording order; an undecodable one comes with ``msg`` None and the
    reason, so the caller counts it and goes on."""
    conns = [c for c in reader.connections if c.topic in topics]
    count = 0
    stream = reader.messages(connections=conns)
    while True:
        try:
            conn, log_time, raw = next(stream)
        except StopIteration:
            return
        except Exception as exc:  # damage the storage layer meets mid-way: a bad chunk, an unreadable page
            raise BagError(f"bag read failed after {count} messages: {first_line(exc)}") from None
        count += 1
        try:
            msg = reader.deserialize(raw, conn.msgtype)
        except Exception as exc:  # a corrupt payload raises anything from struct/index errors to rosbags ones
            yield BagMessage(conn.topic, conn.msgtype, log_time, None, f"undecodable {conn.msgtype}: {first_line(exc)}")
            continue
        yield BagMessage(conn.topic, conn.msgtype, log_time, msg)


def header_stamp_ns(msg: Any) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


def storage_of(path: str | Path) -> str:
    """sqlite3 or mcap: what the input bag uses (ROS 1 bags: sqlite3, rosbag2's default)."""
    path = Path(path)
    meta = path / "metadata.yaml"
    if path.is_dir() and meta.exists():
        info = yaml.safe_load(meta.read_text(encoding="utf-8")).get("rosbag2_bagfile_information", {})
        return "mcap" if info.get("storage_identifier") == "mcap" else "sqlite3"
    bare = _bare_storage(path)
    return "mcap" if bare and bare[0].suffix == ".mcap" else "sqlite3"


def camera_info_topic_for(image_topic: str, msgtype: str) -> str:
    """Where a camera driver publishes the CameraInfo of ``image_topic``: beside it in the same
    namespace (image_transport's convention; ``/cam/image_raw`` and ``/cam/image_raw/compressed``
    -> ``/cam/camera_info``)."""
    if msgtype.endswith("CompressedImage") and image_topic.endswith("/compressed"):
        image_topic = image_topic[: -len("/compressed")]
    namespace = image_topic.rsplit("/", 1)[0]
    return f"{namespace}/camera_info"


def read_camera_info(reader: Any, topic: str) -> tuple[Camera | None, str]:
    """The camera of the first decodable CameraInfo on ``topic`` (a camera's calibration does not
    change mid-recording; a later different one is reported), or None and why not."""
    if topic not in {c.topic for c in reader.connections if c.msgtype == CAMERA_INFO_TYPE}:
        return None, f"no {CAMERA_INFO_TYPE} on {topic}"
    first: tuple[Camera | None, str] | None = None
    for m in read_messages(reader, [topic]):
        if m.msg is None:
            continue
        got = camera_from_info(m.msg)
        if first is None:
            first = got
        elif got[0] != first[0]:
            return first[0], f"the CameraInfo on {topic} changes during the recording; the first is used"
    return first if first is not None else (None, f"no decodable CameraInfo on {topic}")


# -- writing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TopicQos:
    reliable: bool = True
    transient_local: bool = False
    depth: int = 10


class BagWriter:
    """A rosbag2 folder for one distro: messages are built from that distro's typestore, QoS is
    recorded as ``ros2 bag record`` would, and the metadata has the version the distro writes."""

    def __init__(self, path: str | Path, storage: str = "sqlite3", distro: str = "jazzy") -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        if storage not in STORAGES:
            raise BagError(f"unknown storage {storage!r}; use {' or '.join(STORAGES)}")
        if distro not in DISTRO_VERSIONS:
            raise BagError(f"unknown ROS distro {distro!r}; use one of {', '.join(DISTRO_VERSIONS)}")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f"output bag {self.path} already exists; remove it or pick another path")
        self.distro = distro
        self.typestore = get_typestore(Stores.ROS2_HUMBLE if distro == "humble" else Stores.ROS2_JAZZY)
        # rosbags writes versions 8 and 9; Humble's version 5 is version 8 without the newer keys.
        version = 9 if distro == "kilted" else 8
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=version, storage_plugin=plugin)
        self._connections: dict[str, Any] = {}
        try:
            self._writer.open()
        except Exception as exc:
            raise BagError(f"cannot write bag {self.path}: {first_line(exc)}") from None

    def add_topic(self, topic: str, msgtype: str, qos: TopicQos = TopicQos()) -> None:
        from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

        infinite = QosTime(9223372036, 854775807)  # RMW_DURATION_INFINITE as ros2 bag record writes it
        offered = Qos(
            QosHistory.KEEP_LAST,
            qos.depth,
            QosReliability.RELIABLE if qos.reliable else QosReliability.BEST_EFFORT,
            QosDurability.TRANSIENT_LOCAL if qos.transient_local else QosDurability.VOLATILE,
            infinite,
            infinite,
            QosLiveliness.AUTOMATIC,
            infinite,
            False,
        )
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, typestore=self.typestore, offered_qos_profiles=[offered]
        )

    def write(self, topic: str, log_time_ns: int, msg: Any) -> None:
        conn = self._connections[topic]
        self._writer.write(conn, log_time_ns, self.typestore.serialize_cdr(msg, conn.msgtype))

    def close(self) -> None:
        self._writer.close()
        if self.distro == "humble":
            _downgrade_metadata_to_humble(self.path / "metadata.yaml")

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self._writer.abort()

    # -- message construction (field names as in the ROS definitions) --------------------------

    def msg(self, msgtype: str, **fields: Any) -> Any:
        return self.typestore.types[msgtype](**fields)

    def header(self, stamp_ns: int, frame_id: str) -> Any:
        stamp = self.msg(
            "builtin_interfaces/msg/Time", sec=int(stamp_ns // 1_000_000_000), nanosec=int(stamp_ns % 1_000_000_000)
        )
        return self.msg("std_msgs/msg/Header", stamp=stamp, frame_id=frame_id)

    def pose(self, pose: Pose) -> Any:
        x, y, z = (float(v) for v in pose.position)
        qx, qy, qz, qw = (float(v) for v in wxyz_to_xyzw(pose.quaternion))
        return self.msg(
            "geometry_msgs/msg/Pose",
            position=self.msg("geometry_msgs/msg/Point", x=x, y=y, z=z),
            orientation=self.msg("geometry_msgs/msg/Quaternion", x=qx, y=qy, z=qz, w=qw),
        )

    def pose_stamped(self, stamp_ns: int, frame_id: str, pose: Pose) -> Any:
        return self.msg("geometry_msgs/msg/PoseStamped", header=self.header(stamp_ns, frame_id), pose=self.pose(pose))

    def pose_with_covariance_stamped(self, stamp_ns: int, frame_id: str, pose: Pose, covariance: list[float]) -> Any:
        inner = self.msg(
            "geometry_msgs/msg/PoseWithCovariance", pose=self.pose(pose), covariance=np.asarray(covariance, np.float64)
        )
        return self.msg(
            "geometry_msgs/msg/PoseWithCovarianceStamped", header=self.header(stamp_ns, frame_id), pose=inner
        )

    def tf_message(self, stamp_ns: int, parent: str, child: str, pose: Pose) -> Any:
        x, y, z = (float(v) for v in pose.position)
        qx, qy, qz, qw = (float(v) for v in wxyz_to_xyzw(pose.quaternion))
        transform = self.msg(
            "geometry_msgs/msg/Transform",
            translation=self.msg("geometry_msgs/msg/Vector3", x=x, y=y, z=z),
            rotation=self.msg("geometry_msgs/msg/Quaternion", x=qx, y=qy, z=qz, w=qw),
        )
        stamped = self.msg(
            "geometry_msgs/msg/TransformStamped",
            header=self.header(stamp_ns, parent),
            child_frame_id=child,
            transform=transform,
        )
        return self.msg("tf2_msgs/msg/TFMessage", transforms=[stamped])

    def image(self, stamp_ns: int, frame_id: str, raw: Any) -> Any:
        """sensor_msgs/Image from ``image_codec.RawImage`` fields."""
        return self.msg(
            IMAGE_TYPE,
            header=self.header(stamp_ns, frame_id),
            height=raw.height,
            width=raw.width,
            encoding=raw.encoding,
            is_bigendian=raw.is_bigendian,
            step=raw.step,
            data=np.frombuffer(raw.data, np.uint8),
        )

    def camera_info(self, stamp_ns: int, frame_id: str, camera: Camera) -> Any:
        """sensor_msgs/CameraInfo of ``camera`` (plumb_bob; P = K, no rectification)."""
        k = camera.matrix()
        d = (*camera.distortion, 0.0, 0.0, 0.0, 0.0, 0.0)[:5]
        p = np.hstack([k, np.zeros((3, 1))])
        roi = self.msg("sensor_msgs/msg/RegionOfInterest", x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        return self.msg(
            CAMERA_INFO_TYPE,
            header=self.header(stamp_ns, frame_id),
            height=camera.height,
            width=camera.width,
            distortion_model="plumb_bob",
            d=np.asarray(d, np.float64),
            k=k.ravel(),
            r=np.eye(3).ravel(),
            p=p.ravel(),
            binning_x=0,
            binning_y=0,
            roi=roi,
        )

    def compressed_image(self, stamp_ns: int, frame_id: str, fmt: str, data: bytes) -> Any:
        return self.msg(
            COMPRESSED_TYPE, header=self.header(stamp_ns, frame_id), format=fmt, data=np.frombuffer(data, np.uint8)
        )


def _downgrade_metadata_to_humble(meta_path: Path) -> None:
    """Rewrite version-8 metadata as Humble's version 5: Humble's parser fails on keys and types it
    does not know (its QoS is a YAML string of integer enums, which version 8 also uses)."""
    doc = yaml.safe_load(meta_path.read_text())
    info = doc["rosbag2_bagfile_information"]
    info["version"] = 5
    for key in ("custom_data", "ros_distro"):
        info.pop(key, None)
    for entry in info["topics_with_message_count"]:
        entry["topic_metadata"].pop("type_description_hash", None)
    meta_path.write_text(yaml.safe_dump(doc, sort_keys=False))
