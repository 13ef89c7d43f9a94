"""The rclpy relocalization node: the only module that imports ROS. It wires subscriptions,
publishers, parameters, TF and diagnostics to the ROS-free pieces (``relocalizer``, ``engine``,
``image_codec``); every decision lives there.

Threading: the subscription callback only stores the newest frame; one worker thread runs
inference, so the executor is never blocked and frames never queue behind the network.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped, TransformStamped
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.duration import Duration
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image
from tf2_ros import Buffer, TransformBroadcaster, TransformException, TransformListener

from posenet_ros.engine import Engine, EngineError
from posenet_ros.errors import first_line
from posenet_ros.geometry import Pose
from posenet_ros.image_codec import ImageDecodeError, decode
from posenet_ros.relocalizer import (
    DROPPED_STALE,
    PARAMETERS,
    PUBLISHED,
    Frame,
    LatestFrameSlot,
    NodeSettings,
    NodeStats,
    ParamSpec,
    compose_for_plan,
    covariance_list,
    diagnostic_level,
    fill_pose,
    fill_transform,
    localize_frame,
    pose_from_transform,
    resolve_model_path,
    set_stamp,
    stamp_to_ns,
    tf_plan,
)

NODE_NAME = "posenet_relocalizer"
PACKAGE = "posenet_ros"
THROTTLE_S = 5.0
# Sensor data: best effort, keep only the newest frame (rclpy's qos_profile_sensor_data keeps 5).
SENSOR_QOS = QoSProfile(
    reliability=ReliabilityPolicy.BEST_EFFORT,
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    durability=DurabilityPolicy.VOLATILE,
)
RELIABLE_QOS = QoSProfile(reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST, depth=10)


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    d = ParameterDescriptor(description=spec.description, read_only=spec.read_only)
    if spec.choices:
        d.additional_constraints = "one of: " + ", ".join(spec.choices)
    if spec.range is not None and isinstance(spec.default, float):
        d.floating_point_range = [FloatingPointRange(from_value=float(spec.range[0]), to_value=float(spec.range[1]))]
    elif spec.range is not None and isinstance(spec.default, int) and not isinstance(spec.default, bool):
        d.integer_range = [IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=1)]
    return d


class ImageConverter:
    """cv_bridge where it imports (and works), the built-in converter otherwise (one warning)."""

    def __init__(self, logger: Any) -> None:
        self._bridge = None
        try:
            from cv_bridge import CvBridge

            self._bridge = CvBridge()
        except Exception as exc:  # ImportError, or its NumPy ABI break surfacing as anything
            logger.warning(f"cv_bridge unavailable ({type(exc).__name__}: {exc}); using the built-in converter")

    @property
    def name(self) -> str:
        return "cv_bridge" if self._bridge is not None else "builtin"

    def decode(self, msg: Any) -> tuple[Any, str]:
        if self._bridge is None:
            return decode(msg)
        from cv_bridge import CvBridgeError

        try:
            if isinstance(msg, CompressedImage):
                image = self._bridge.compressed_imgmsg_to_cv2(msg, "passthrough")
                channels = 1 if image.ndim == 2 else image.shape[2]
                return image, {1: "mono8", 3: "bgr8", 4: "bgra8"}.get(channels, f"{channels} channels")
            decode(msg)  # same validation and messages as the built-in path (cheap: a strided view)
            return self._bridge.imgmsg_to_cv2(msg, "passthrough"), msg.encoding
        except CvBridgeError as exc:
            raise ImageDecodeError(first_line(exc)) from None


class RelocalizerNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self.settings = NodeSettings()
        self._declare_parameters()
        s = self.settings
        model_path = resolve_model_path(s.model_path, _share_dir())
        self.engine = Engine(model_path, s.engine_config())  # EngineError: main() logs it and exits non-zero
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.converter = ImageConverter(self.get_logger())
        self.slot = LatestFrameSlot()
        self.stats = NodeStats()
        if s.compressed:
            self.create_subscription(CompressedImage, "image/compressed", self._on_image, SENSOR_QOS)
        else:
            self.create_subscription(Image, "image", self._on_image, SENSOR_QOS)
        self.pose_pub = self.create_publisher(PoseStamped, "~/pose", RELIABLE_QOS)
        self.pose_cov_pub = self.create_publisher(PoseWithCovarianceStamped, "~/pose_with_covariance", RELIABLE_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE_QOS)
        self.tf_broadcaster = TransformBroadcaster(self)
        self.tf_buffer = Buffer()
        self.tf_listener = TransformListener(self.tf_buffer, self)
        self.create_timer(s.diagnostics_period, self.publish_diagnostics)
        self._worker = threading.Thread(target=self._run_worker, name="posenet_inference", daemon=True)
        self._worker.start()
        c = self.engine.contract
        self.get_logger().info(
            f"loaded {model_path} (scene {c.scene.name}, input {c.preprocessing.input_width}x"
            f"{c.preprocessing.input_height}) on {self.engine.device}; image converter {self.converter.name}"
        )

    # -- parameters ------------------------------------------------------------------------------

    def _declare_parameters(self) -> None:
        values = {}
        for spec in PARAMETERS:
            values[spec.name] = self.declare_parameter(spec.name, spec.default, descriptor(spec)).value
        reason = self.settings.update(values)
        if reason:
            raise EngineError(f"invalid parameter: {reason}")

    def _on_set_parameters(self, params: list[Any]) -> SetParametersResult:
        changes = {p.name: p.value for p in params}
        reason = self.settings.update(changes)
        if reason:
            return SetParametersResult(successful=False, reason=reason)
        if "latency_budget_ms" in changes:
            self.engine.set_latency_budget(self.settings.latency_budget_ms or None)
        return SetParametersResult(successful=True, reason="")

    # -- frames ----------------------------------------------------------------------------------

    def _on_image(self, msg: Any) -> None:
        self.stats.count("received")
        self.slot.put(Frame(msg, stamp_to_ns(msg.header.stamp), msg.header.frame_id))

    def _run_worker(self) -> None:
        while not self.slot.closed:
            frame = self.slot.take(timeout=0.1)
            if frame is not None:
                self.process(frame)

    def process(self, frame: Frame) -> bool:
        """Localize one frame and publish; False when it was dropped (counted and logged)."""
        now_ns = self.get_clock().now().nanoseconds
        outcome = localize_frame(self.engine, self.settings, self.converter.decode, frame, now_ns, self.stats)
        if outcome.status != PUBLISHED:
            log = self.get_logger()
            report = log.warning if outcome.status == DROPPED_STALE else log.error
            report(outcome.reason, throttle_duration_sec=THROTTLE_S)
            return False
        # TF first: whoever reacts to the pose finds the matching transform already sent.
        self._broadcast_tf(frame, outcome.loc.pose)
        self._publish_pose(frame, outcome.loc.pose, covariance_list(outcome.covariance))
        return True

    def _publish_pose(self, frame: Frame, pose: Pose, covariance: list[float]) -> None:
        msg = PoseStamped()
        msg.header.frame_id = self.settings.map_frame
        set_stamp(msg.header.stamp, frame.stamp_ns)
        fill_pose(msg.pose, pose)
        cov_msg = PoseWithCovarianceStamped()
        cov_msg.header = msg.header
        fill_pose(cov_msg.pose.pose, pose)
        cov_msg.pose.covariance = covariance
        self.pose_pub.publish(msg)
        self.pose_cov_pub.publish(cov_msg)

    def _broadcast_tf(self, frame: Frame, map_to_camera: Pose) -> None:
        plan = tf_plan(self.settings, frame.frame_id)
        if plan is None:
            return
        try:
            base_to_camera = self._lookup(plan.base_from_camera, None)
            odom_to_base = self._lookup(plan.odom_from_base, frame.stamp_ns)
            transform = compose_for_plan(plan, map_to_camera, base_to_camera, odom_to_base)
        except (TransformException, ValueError) as exc:
            self.stats.count("tf_failures")
            self.get_logger().warning(
                f"no TF {plan.parent}->{plan.child} published: {exc}", throttle_duration_sec=THROTTLE_S
            )
            return
        msg = TransformStamped()
        set_stamp(msg.header.stamp, frame.stamp_ns + plan.future_ns)
        msg.header.frame_id = plan.parent
        msg.child_frame_id = plan.child
        fill_transform(msg.transform, transform)
        self.tf_broadcaster.sendTransform(msg)

    def _lookup(self, frames: tuple[str, str] | None, stamp_ns: int | None) -> Pose | None:
        if frames is None:
            return None
        when = Time() if stamp_ns is None else Time(nanoseconds=stamp_ns)
        t = self.tf_buffer.lookup_transform(frames[0], frames[1], when, timeout=Duration(seconds=0.0))
        return pose_from_transform(t.transform)

    # -- diagnostics -----------------------------------------------------------------------------

    def publish_diagnostics(self) -> None:
        summary = self.stats.summary(self.slot.skipped)
        level, message = diagnostic_level(summary, self.settings.latency_budget_ms)
        status = DiagnosticStatus()
        status.level = bytes([level])
        status.name = f"{self.get_name()}: relocalization"
        status.message = message
        status.hardware_id = str(self.engine.device)
        c = self.engine.contract
        extra = {"device": str(self.engine.device), "model_scene": c.scene.name, "contract_version": c.version}
        status.values = [KeyValue(key=k, value=_fmt(v)) for k, v in {**summary, **extra}.items()]
        msg = DiagnosticArray()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.status = [status]
        self.diag_pub.publish(msg)

    def shutdown(self) -> None:
        self.slot.close()
        self._worker.join(timeout=5.0)


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _share_dir() -> str | None:
    try:
        from ament_index_python.packages import get_package_share_directory

        return get_package_share_directory(PACKAGE)
    except Exception:  # not installed through colcon: paths resolve from the working directory
        return None


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    node = None
    try:
        node = RelocalizerNode()
        rclpy.spin(node)
    except (EngineError, ParameterException) as exc:
        # One clear line, then a non-zero exit so launch reports the failure.
        rclpy.logging.get_logger(NODE_NAME).error(f"cannot start: {' '.join(str(exc).split())}")
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        if node is not None:
            node.shutdown()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
