"""``posenet-ros live BAG --model MODEL``: a recording played over real DDS into the running node.

The offline ``replay`` runs the node's per-frame logic in this process; ``live`` runs the node itself:
the recording's camera topic is published at its recorded rate with ``/clock`` from the recording's
time (for ``use_sim_time``), optionally into a node this command starts with ``ros2 launch``, and the
poses the node publishes are received, matched to their images by stamp and scored against the
recording's ground truth with the same summary and report as ``replay``. Latency here is what a
robot sees: from publishing the image to receiving its pose.

Only ``/tf_static`` and the camera's ``camera_info`` (beside the image topic) are played besides the
images: in the recordings ``posenet-train to-bag`` writes, ``/tf`` is the ground truth, which the node
would otherwise see as a second parent of the camera.

This module and ``node.py`` are the only ones that import ROS 2.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from posenet_ros.bagio import COMPRESSED_TYPE, camera_info_topic_for, header_stamp_ns, open_bag, pick_image_topic
from posenet_ros.engine import ONNX_SUFFIX, load_model, load_onnx_session, position_std
from posenet_ros.errors import first_line
from posenet_ros.groundtruth import GroundTruth, GroundTruthSource, pose_of_message
from posenet_ros.relocalizer.frames import PUBLISHED

NODE_NAME = "posenet_relocalizer"
NOT_PUBLISHED = "not_published"
NOT_PUBLISHED_REASON = "no pose came back: skipped, dropped or rejected by the node (its counts are in the summary)"
CLOCK_PERIOD_S = 0.01  # /clock at 100 Hz, as `ros2 bag play --clock` does by default


class LiveError(RuntimeError):
    """The live run cannot go on; the message is one line."""


@dataclass(frozen=True)
class LiveConfig:
    bag: Path
    model: Path
    image_topic: str | None = None
    ground_truth: GroundTruthSource | None = None
    launch: bool = False  # start the node with `ros2 launch posenet_ros relocalize.launch.py`
    launch_args: tuple[str, ...] = ()  # extra name:=value arguments for that launch
    namespace: str = ""
    rate: float = 1.0
    clock: bool = True
    startup_timeout_s: float = 90.0
    settle_s: float = 3.0  # how long to wait after the last frame for poses still in flight
    log_path: Path | None = None  # the launched node's output (default: a temporary file)


@dataclass
class _Received:
    """Poses and diagnostics as they arrive, written by rclpy's executor thread."""

    poses: dict[int, tuple[Any, float]] = field(default_factory=dict)  # stamp -> (message, monotonic time)
    diagnostics: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_pose(self, msg: Any) -> None:
        with self.lock:
            self.poses[header_stamp_ns(msg)] = (msg, time.monotonic())

    def on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if status.name.split(":")[0].strip().endswith(NODE_NAME):
                with self.lock:
                    self.diagnostics = {kv.key: kv.value for kv in status.values}


@dataclass
class LiveFrame:
    log_time_ns: int
    stamp_ns: int
    published_at: float  # monotonic time the image was published


def require_ros() -> None:
    """One line naming what is missing when ROS 2 is not sourced, before anything is read."""
    try:
        import diagnostic_msgs.msg  # noqa: F401
        import rclpy  # noqa: F401
        import rosgraph_msgs.msg  # noqa: F401
        import sensor_msgs.msg  # noqa: F401
        import tf2_msgs.msg  # noqa: F401
    except ImportError as exc:
        raise LiveError(f"live needs ROS 2 sourced (source /opt/ros/<distro>/setup.bash): {first_line(exc)}") from None


def _launch_command(cfg: LiveConfig, image_topic: str, compressed: bool) -> list[str]:
    args = [f"model:={cfg.model.resolve()}", f"image_topic:={image_topic}", f"compressed:={str(compressed).lower()}"]
    args.append(f"use_sim_time:={str(cfg.clock).lower()}")
    if cfg.namespace:
        args.append(f"namespace:={cfg.namespace}")
    return ["ros2", "launch", "posenet_ros", "relocalize.launch.py", *args, *cfg.launch_args]


def _node_topic(namespace: str, name: str) -> str:
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    return f"{ns}/{NODE_NAME}/{name}"


class _Launched:
    """The node started by ``ros2 launch`` in its own process group; ended by that group."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("wb") as out:
            self.popen = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )

    def _lines(self) -> list[str]:
        return [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]

    def node_status(self) -> int | None:
        """The node's exit status as launch reports it (launch itself exits 0 either way)."""
        for line in reversed(self._lines()):
            if "process has finished cleanly" in line:
                return 0
            died = re.search(r"process has died \[pid \d+, exit code (-?\d+)", line)
            if died:
                return int(died.group(1))
        return None

    def failure(self) -> str:
        """Why the node stopped: its own one-line reason where it gave one."""
        lines = self._lines()
        reasons = [ln for ln in lines if "cannot start:" in ln]
        if reasons:
            return reasons[-1][reasons[-1].index("cannot start:") :]
        return lines[-1][:300] if lines else "no output"

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGINT, as Ctrl-C in the terminal that runs `ros2 launch`; the node's exit status."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=timeout_s)
        with contextlib.suppress(ProcessLookupError):  # whatever is left in its group
            os.killpg(self.popen.pid, signal.SIGKILL)
        launch_status = self.popen.wait(timeout=10)
        status = self.node_status()
        return launch_status if status is None else status


def _image_topics(reader: Any, cfg: LiveConfig) -> tuple[str, str, bool]:
    """The recording's camera topic, the topic to publish it on, and whether it is compressed.
    A launched node subscribes to ``<image_topic>/compressed`` for compressed images."""
    topic = pick_image_topic(reader, cfg.image_topic)
    msgtype = next(c.msgtype for c in reader.connections if c.topic == topic)
    compressed = msgtype == COMPRESSED_TYPE
    if not compressed:
        return topic, topic, False
    if topic.endswith("/compressed"):
        return topic, topic, True
    return topic, f"{topic}/compressed", True


class _Player:
    """An rclpy node that publishes the recording and receives the node's outputs."""

    def __init__(self, msg_class: Any, publish_topic: str, namespace: str, info_topic: str) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseWithCovarianceStamped
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import CameraInfo
        from tf2_msgs.msg import TFMessage

        self.context = Context()
        rclpy.init(args=[], context=self.context)  # not sys.argv: our options are no ROS arguments
        self.node = rclpy.create_node("posenet_live_player", context=self.context)
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        # Reliable is matched by best-effort and reliable subscribers alike.
        self.image_pub = self.node.create_publisher(msg_class, publish_topic, reliable)
        self.clock_pub = self.node.create_publisher(Clock, "/clock", QoSProfile(depth=1))
        self.info_topic = info_topic
        self.info_pub = self.node.create_publisher(CameraInfo, info_topic, reliable)
        latched = QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        tf_static = "/tf_static" if not namespace.strip("/") else f"/{namespace.strip('/')}/tf_static"
        self.tf_static_pub = self.node.create_publisher(TFMessage, tf_static, latched)
        self.received = _Received()
        self.pose_topic = _node_topic(namespace, "pose_with_covariance")
        self.node.create_subscription(PoseWithCovarianceStamped, self.pose_topic, self.received.on_pose, 1000)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.received.on_diagnostics, 10)
        self._clock_class = Clock
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spin = threading.Thread(target=self._spin_forever, name="live_spin", daemon=True)
        self._spin.start()

    def _spin_forever(self) -> None:
        with contextlib.suppress(Exception):  # the context shutting down under the spin
            self.executor.spin()

    def node_ready(self) -> bool:
        return self.image_pub.get_subscription_count() > 0 and self.node.count_publishers(self.pose_topic) > 0

    def publish_clock(self, ns: int) -> None:
        msg = self._clock_class()
        msg.clock.sec, msg.clock.nanosec = divmod(ns, 1_000_000_000)
        self.clock_pub.publish(msg)

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=2)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._spin.join(timeout=5)


def _message_class(compressed: bool) -> Any:
    from sensor_msgs.msg import CompressedImage, Image

    return CompressedImage if compressed else Image


class _BagClock:
    """The recording's time as it plays, published on /clock at 100 Hz (when enabled) from the first
    frame until stopped, so the node's timers (diagnostics) keep running after the last frame."""

    def __init__(self, player: _Player, rate: float, publish: bool) -> None:
        self.player, self.rate, self.publish = player, rate, publish
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.bag0 = self.wall0 = 0.0

    def start(self, bag0_ns: int) -> None:
        if self.publish:  # the node's clock at the recording's first instant before the first frame, not at 0
            for _ in range(50):
                self.player.publish_clock(bag0_ns)
                time.sleep(CLOCK_PERIOD_S)
        self.bag0, self.wall0 = bag0_ns, time.monotonic()
        if self.publish:
            self._thread = threading.Thread(target=self._tick, name="live_clock", daemon=True)
            self._thread.start()

    def now_ns(self) -> int:
        return int(self.bag0 + (time.monotonic() - self.wall0) * 1e9 * self.rate)

    def wait_until(self, bag_ns: int) -> None:
        delay = (bag_ns - self.bag0) / 1e9 / self.rate - (time.monotonic() - self.wall0)
        if delay > 0:
            time.sleep(delay)

    def _tick(self) -> None:
        while not self._stop.wait(CLOCK_PERIOD_S):
            self.player.publish_clock(self.now_ns())

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)


def _play(cfg: LiveConfig, reader: Any, topic: str, player: _Player, clock: _BagClock) -> list[LiveFrame]:
    """Publish the recording at its recorded rate (times ``rate``); the frames as published."""
    conns = [c for c in reader.connections if c.topic in (topic, "/tf_static", player.info_topic)]
    first = next(reader.messages(connections=conns), None)
    if first is None:
        raise LiveError(f"no message on {topic} in {cfg.bag}")
    clock.start(first[1])
    frames: list[LiveFrame] = []
    try:
        for conn, log_time, raw in reader.messages(connections=conns):
            clock.wait_until(log_time)
            if conn.topic == "/tf_static":
                player.tf_static_pub.publish(bytes(raw))
                continue
            if conn.topic == player.info_topic:
                player.info_pub.publish(bytes(raw))
                continue
            try:
                stamp = header_stamp_ns(reader.deserialize(raw, conn.msgtype))
            except Exception:  # an undecodable message is played as it is; the node must cope
                stamp = log_time
            if cfg.clock:
                player.publish_clock(log_time)
            player.image_pub.publish(bytes(raw))  # the recorded CDR bytes, as `ros2 bag play` sends them
            frames.append(LiveFrame(log_time, stamp, time.monotonic()))
    except Exception as exc:  # storage damage mid-way: the frames played so far are still scored
        if not frames:
            raise LiveError(f"cannot read {cfg.bag}: {first_line(exc)}") from None
    return frames


def _wait_ready(player: _Player, launched: _Launched | None, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while not player.node_ready():
        if launched is not None and (launched.popen.poll() is not None or launched.node_status() is not None):
            raise LiveError(
                f"the node stopped before the first frame ({launched.failure()}); its output: {launched.log_path}"
            )
        if time.monotonic() > end:
            where = f"; its output: {launched.log_path}" if launched is not None else " (is it running?)"
            raise LiveError(
                f"no node subscribed to the camera topic and publishing {player.pose_topic} "
                f"within {timeout_s:.0f} s{where}"
            )
        time.sleep(0.05)


def _wait_settled(cfg: LiveConfig, player: _Player, frames: list[LiveFrame]) -> None:
    """Until every frame's pose arrived or ``settle_s`` passed without a new one."""
    wanted = {f.stamp_ns for f in frames}
    last_count, last_change = -1, time.monotonic()
    while time.monotonic() - last_change < cfg.settle_s:
        with player.received.lock:
            count = len(wanted & player.received.poses.keys())
        if count == len(wanted):
            break
        if count != last_count:
            last_count, last_change = count, time.monotonic()
        time.sleep(0.05)
    # The node's counts are final once a /diagnostics message counts every pose received here.
    end = time.monotonic() + cfg.settle_s
    while time.monotonic() < end:
        with player.received.lock:
            published, received = _count(player.received.diagnostics, "published"), len(player.received.poses)
        if published is not None and published >= received:
            break
        time.sleep(0.05)


@dataclass
class LiveResult:
    records: list[Any]
    summary: dict[str, Any]
    node_exit_status: int | None


def live(cfg: LiveConfig) -> LiveResult:
    if not cfg.rate > 0:
        raise LiveError(f"--rate must be > 0, got {cfg.rate}")
    onnx = cfg.model.suffix == ONNX_SUFFIX
    _, contract = load_onnx_session(cfg.model, threads=1) if onnx else load_model(cfg.model)
    with open_bag(cfg.bag) as reader:
        topic, publish_topic, compressed = _image_topics(reader, cfg)
        truth = GroundTruth(reader, cfg.ground_truth) if cfg.ground_truth else None
        msgtype = next(c.msgtype for c in reader.connections if c.topic == topic)
        info_topic = camera_info_topic_for(topic, msgtype)  # where the launch file's node listens too
        player = _Player(_message_class(compressed), publish_topic, cfg.namespace, info_topic)
        launched: _Launched | None = None
        status: int | None = None
        try:
            if cfg.launch:
                log_path = cfg.log_path or Path(tempfile.mkstemp(prefix="posenet_live_", suffix=".log")[1])
                node_topic = publish_topic.removesuffix("/compressed") if compressed else publish_topic
                launched = _Launched(_launch_command(cfg, node_topic, compressed), log_path)
            _wait_ready(player, launched, cfg.startup_timeout_s)
            start = time.monotonic()
            clock = _BagClock(player, cfg.rate, cfg.clock)
            try:
                frames = _play(cfg, reader, topic, player, clock)
                _wait_settled(cfg, player, frames)
            finally:
                clock.stop()
            wall_s = time.monotonic() - start
        finally:
            if launched is not None:
                status = launched.stop()
            player.close()
    records = _records(frames, player.received, truth)
    summary = _summarize(cfg, topic, contract, records, player.received.diagnostics, wall_s, truth)
    summary["node_exit_status"] = status
    return LiveResult(records, summary, status)


def _records(frames: list[LiveFrame], received: _Received, truth: GroundTruth | None) -> list[Any]:
    from posenet_ros.replay import FrameRecord

    records = []
    for f in frames:
        got = received.poses.get(f.stamp_ns)
        if got is None:
            records.append(FrameRecord(f.log_time_ns, f.stamp_ns, NOT_PUBLISHED, NOT_PUBLISHED_REASON))
            continue
        msg, arrived = got
        covariance = np.asarray(msg.pose.covariance, dtype=np.float64).reshape(6, 6)
        rec = FrameRecord(f.log_time_ns, f.stamp_ns, PUBLISHED, pose=pose_of_message(msg), covariance=covariance)
        rec.latency_ms = (arrived - f.published_at) * 1000.0
        rec.position_std = position_std(covariance)
        rec.truth = truth.at(f.stamp_ns) if truth is not None else None
        records.append(rec)
    return records


def _count(diagnostics: dict[str, str], key: str) -> int | None:
    try:
        return int(diagnostics[key])
    except (KeyError, ValueError):
        return None


def _number(diagnostics: dict[str, str], key: str) -> float | None:
    try:
        value = float(diagnostics[key])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _summarize(
    cfg: LiveConfig,
    topic: str,
    contract: Any,
    records: list[Any],
    diagnostics: dict[str, str],
    wall_s: float,
    truth: GroundTruth | None,
) -> dict[str, Any]:
    from posenet_ros.replay import accuracy_summary, latency_summary

    done = [r for r in records if r.status == PUBLISHED]
    summary: dict[str, Any] = {
        "bag": str(cfg.bag),
        "image_topic": topic,
        "model": str(cfg.model),
        "scene": contract.scene.name,
        "backend": diagnostics.get("backend", "unknown"),
        "precision": diagnostics.get("precision", "unknown"),
        "device": diagnostics.get("device", "unknown"),
        "mode": "live over DDS" + (" into a node started by ros2 launch" if cfg.launch else ""),
        "rate": cfg.rate,
        "use_sim_time": cfg.clock,
        "frames_read": len(records),
        "frames_processed": len(done),
        "frames_not_published": len(records) - len(done),
        # What the node itself counted (its last /diagnostics); None when none arrived.
        "frames_rejected": _count(diagnostics, "rejected"),
        "frames_non_finite": _count(diagnostics, "non_finite"),
        "frames_skipped": _count(diagnostics, "skipped"),
        "frames_dropped_stale": _count(diagnostics, "dropped_stale"),
        "node_received": _count(diagnostics, "received"),
        "latency_budget_ms": None,
        "overruns": _count(diagnostics, "overruns"),
        "latency_ms": latency_summary([r.latency_ms for r in done]),
        "latency_measured": " (image published -> pose received, over DDS)",
        "crops_used": {},
        "wall_time_s": wall_s,
        "throughput_fps": None,  # the recording's rate sets it; time gaps between walks would skew a figure
    }
    attempts = _count(diagnostics, "refine_attempts")
    if attempts:  # a node with a map: what it refined (replay's refinement has per-frame figures)
        summary["node_refinement"] = {
            "attempts": attempts,
            "refined": _count(diagnostics, "refined") or 0,
            # Over the node's recent refinements (its diagnostics window), NaN before any.
            "inliers_median": _number(diagnostics, "refine_inliers_median"),
            "latency_p50_ms": _number(diagnostics, "refine_latency_p50_ms"),
            "latency_p95_ms": _number(diagnostics, "refine_latency_p95_ms"),
        }
    if truth is not None:
        summary.update(accuracy_summary(truth.source, done, contract))
    return summary
