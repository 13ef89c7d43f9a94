"""The rclpy relocalization node: the only module of the node that imports ROS. It wires
subscriptions, publishers, parameters, a service, TF and diagnostics to the ROS-free pieces in
``posenet_ros.relocalizer`` (every decision lives there), ``engine`` and ``image_codec``.

Threading: the subscription callback only stores the newest frame; one worker thread runs
inference, so the executor is never blocked and frames never queue behind the network.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any

import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped, TransformStamped
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_srvs.srv import Trigger
from tf2_ros import Buffer, TransformBroadcaster, TransformException, TransformListener

from posenet_ros.camera import Camera, camera_from_info
from posenet_ros.engine import Engine, EngineError
from posenet_ros.errors import first_line
from posenet_ros.geometry import Pose
from posenet_ros.image_codec import ImageDecodeError, decode
from posenet_ros.relocalizer.diagnostics import NodeStats, diagnostic_level
from posenet_ros.relocalizer.frames import (
    DROPPED_STALE,
    PUBLISHED,
    Frame,
    LatestFrameSlot,
    RefineGate,
    localize_frame,
    stamp_to_ns,
)
from posenet_ros.relocalizer.messages import covariance_list, fill_pose, fill_transform, pose_from_transform, set_stamp
from posenet_ros.relocalizer.params import PARAMETERS, NodeSettings, ParamSpec, resolve_model_path
from posenet_ros.relocalizer.tf_plans import (
    TfPlan,
    base_pose_with_covariance,
    compose_for_plan,
    conflict_advice,
    frame_parents,
    second_parent,
    tf_plan,
)

NODE_NAME = "posenet_relocalizer"
PACKAGE = "posenet_ros"
THROTTLE_S = 5.0
TF_TREE_REFRESH_S = 1.0  # how often the one-parent check re-reads the TF tree
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
            logger.warning(
                f"cv_bridge unavailable ({type(exc).__name__}: {first_line(exc)}); using the built-in converter"
            )

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
        map_path = resolve_model_path(s.map_path, _share_dir()) if s.map_path else None
        # EngineError (a bad model, a map of another scene): main() logs it and exits non-zero.
        self.engine = Engine(model_path, s.engine_config(map_path=map_path))
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.converter = ImageConverter(self.get_logger())
        self.slot = LatestFrameSlot()
        self.stats = NodeStats(window_s=s.diagnostics_window)
        self.worker_error = ""  # set if the worker ever stops for good; /diagnostics turns ERROR
        self._initial_pose_armed = s.initial_pose_on_start
        self._tf_parents: tuple[float, dict[str, str]] = (-float("inf"), {})
        self.refine_gate = RefineGate()
        # The newest CameraInfo's camera (set by the subscription, applied by the worker: the engine
        # is only ever touched from the worker thread) and what was wrong with the last one.
        # One attribute, (camera, header.frame_id), so the worker never pairs a camera with another
        # message's frame: a camera's CameraInfo and its images share the frame_id.
        self._camera_info: tuple[Camera, str] | None = None
        self._camera_info_problem = "" if s.camera_info_topic else "not subscribed (camera_info_topic empty)"
        self._camera_info_mismatch = ""  # set by the worker: the CameraInfo is another frame's
        if s.camera_info_topic:
            self.create_subscription(CameraInfo, s.camera_info_topic, self._on_camera_info, SENSOR_QOS)
        if s.compressed:
            self.create_subscription(CompressedImage, "image/compressed", self._on_image, SENSOR_QOS)
        else:
            self.create_subscription(Image, "image", self._on_image, SENSOR_QOS)
        self.pose_pub = self.create_publisher(PoseStamped, "~/pose", RELIABLE_QOS)
        self.pose_cov_pub = self.create_publisher(PoseWithCovarianceStamped, "~/pose_with_covariance", RELIABLE_QOS)
        self.initial_pose_pub = self.create_publisher(PoseWithCovarianceStamped, s.initial_pose_topic, RELIABLE_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", RELIABLE_QOS)
        self.create_service(Trigger, "~/publish_initial_pose", self._on_publish_initial_pose)
        self.tf_broadcaster = TransformBroadcaster(self)
        self.tf_buffer = Buffer()
        self.tf_listener = TransformListener(self.tf_buffer, self)
        self.create_timer(s.diagnostics_period, self.publish_diagnostics)
        self._worker = threading.Thread(target=self._run_worker, name="posenet_inference", daemon=True)
        self._worker.start()
        c = self.engine.contract
        self.get_logger().info(
            f"loaded {model_path} (scene {c.scene.name}, input {c.preprocessing.input_width}x"
            f"{c.preprocessing.input_height}) on {self.engine.device}; image converter {self.converter.name}; "
            f"tf_mode {s.tf_mode}, pose of {'base ' + s.base_frame if s.pose_of_base else 'the camera'}; "
            f"refinement {'against ' + str(map_path) if map_path and s.refine != 'off' else 'off'}"
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
        if changes.get("initial_pose_on_start") is True:
            self._initial_pose_armed = True
        return SetParametersResult(successful=True, reason="")

    def _on_publish_initial_pose(self, request: Any, response: Any) -> Any:
        self._initial_pose_armed = True
        response.success = True
        topic = self.initial_pose_pub.topic_name
        response.message = f"the next good {self.settings.base_frame} pose will be published on {topic}"
        return response

    # -- frames ----------------------------------------------------------------------------------

    def _on_image(self, msg: Any) -> None:
        self.stats.received_frame()
        self.slot.put(Frame(msg, stamp_to_ns(msg.header.stamp), msg.header.frame_id))

    def _on_camera_info(self, msg: Any) -> None:
        camera, why = camera_from_info(msg, self.settings.camera_info_rectified)
        if camera is None:
            if why != self._camera_info_problem:  # once per new reason, not at the camera's rate
                self.get_logger().warning(f"ignoring CameraInfo: {why}")
            self._camera_info_problem = why
            return
        old = self._camera_info
        if old is not None and old[0] == camera:  # the same calibration at the camera's rate: keep the object
            camera = old[0]
        self._camera_info = (camera, msg.header.frame_id)
        self._camera_info_problem = ""

    def _usable_camera_info(self, image_frame: str) -> Camera | None:
        """The newest CameraInfo's camera unless it names another frame than the images (a topic
        remapped to another camera's calibration): then none, with a warning once per pairing."""
        camera, info_frame = self._camera_info or (None, "")
        if camera is None or not info_frame or not image_frame or info_frame == image_frame:
            self._camera_info_mismatch = ""
            return camera
        why = f"CameraInfo is for frame {info_frame!r}, the images for {image_frame!r}: ignored"
        if why != self._camera_info_mismatch:
            self.get_logger().warning(f"{why} (check the camera_info_topic remapping)")
        self._camera_info_mismatch = why
        return None

    def _run_worker(self) -> None:
        try:
            while not self.slot.closed:
                frame = self.slot.take(timeout=0.1)
                if frame is None:
                    continue
                try:
                    self.process(frame)
                except Exception as exc:  # outside the frame path (CUDA OOM, a converter bug): survive it
                    if self.slot.closed or not self.context.ok():
                        return  # shutting down: publishing into a closed context is expected to fail
                    reason = f"{type(exc).__name__}: {first_line(exc)}"
                    self.stats.count("errors", reason=reason)
                    self.get_logger().error(f"frame failed, still running: {reason}", throttle_duration_sec=THROTTLE_S)
        except BaseException as exc:  # never silently: /diagnostics reports it as ERROR
            self.worker_error = f"{type(exc).__name__}: {first_line(exc)}"
            raise

    def process(self, frame: Frame) -> bool:
        """Localize one frame and publish; False when it was dropped (counted and logged)."""
        s = self.settings
        camera = s.camera_frame or frame.frame_id
        plan = tf_plan(s, frame.frame_id)
        mount = None  # base<-camera, static
        if s.pose_of_base or self._initial_pose_armed or (plan is not None and plan.base_from_camera is not None):
            mount = self._lookup_mount(s.base_frame, camera)
            if mount is None and s.pose_of_base:
                return False  # counted and logged by _lookup_mount; no point running the network
        live = self._usable_camera_info(frame.frame_id)
        if live is not self.engine.live_camera:
            self.engine.set_camera(live)
        now_ns = self.get_clock().now().nanoseconds
        outcome = localize_frame(self.engine, s, self.converter.decode, frame, now_ns, self.stats, self.refine_gate)
        if outcome.status != PUBLISHED:
            # One call site per severity: rclpy refuses a call site that changes severity.
            if outcome.status == DROPPED_STALE:
                self.get_logger().warning(outcome.reason, throttle_duration_sec=THROTTLE_S)
            else:
                self.get_logger().error(outcome.reason, throttle_duration_sec=THROTTLE_S)
            return False
        camera_pose, camera_cov = outcome.loc.pose, outcome.covariance
        # TF first: whoever reacts to the pose finds the matching transform already sent.
        if plan is not None:
            self._broadcast_tf(frame, plan, camera_pose, mount)
        base = base_pose_with_covariance(camera_pose, camera_cov, mount) if mount is not None else None
        pose, cov = base if s.pose_of_base and base is not None else (camera_pose, camera_cov)
        header_stamp_ns = frame.stamp_ns
        self._publish_pose(header_stamp_ns, pose, covariance_list(cov))
        if self._initial_pose_armed and base is not None:
            self._initial_pose_armed = False
            self.initial_pose_pub.publish(
                self._pose_with_covariance(header_stamp_ns, base[0], covariance_list(base[1]))
            )
            self.get_logger().info(f"published {s.base_frame} pose on {self.initial_pose_pub.topic_name}")
        return True

    def _pose_with_covariance(self, stamp_ns: int, pose: Pose, covariance: list[float]) -> PoseWithCovarianceStamped:
        msg = PoseWithCovarianceStamped()
        msg.header.frame_id = self.settings.map_frame
        set_stamp(msg.header.stamp, stamp_ns)
        fill_pose(msg.pose.pose, pose)
        msg.pose.covariance = covariance
        return msg

    def _publish_pose(self, stamp_ns: int, pose: Pose, covariance: list[float]) -> None:
        cov_msg = self._pose_with_covariance(stamp_ns, pose, covariance)
        msg = PoseStamped()
        msg.header = cov_msg.header
        msg.pose = cov_msg.pose.pose
        self.pose_pub.publish(msg)
        self.pose_cov_pub.publish(cov_msg)

    def _lookup_mount(self, base_frame: str, camera: str) -> Pose | None:
        try:
            return self._lookup((base_frame, camera), None)
        except TransformException as exc:
            message = f"no {base_frame}<-{camera} transform (the camera mount): {first_line(exc)}"
            self.stats.count("tf_failures", reason=message)
            self.get_logger().warning(message, throttle_duration_sec=THROTTLE_S)
            return None

    def _broadcast_tf(self, frame: Frame, plan: TfPlan, map_to_camera: Pose, mount: Pose | None) -> None:
        existing = second_parent(self._parents(), plan)
        if existing is not None:
            self.stats.count("tf_conflicts")
            self.get_logger().warning(
                conflict_advice(plan, existing, self.settings.tf_mode), throttle_duration_sec=THROTTLE_S
            )
            return
        try:
            wait = Duration(seconds=self.settings.tf_timeout)
            odom_to_base = self._lookup(plan.odom_from_base, frame.stamp_ns, wait)
            transform = compose_for_plan(plan, map_to_camera, mount, odom_to_base)
        except (TransformException, ValueError) as exc:
            message = f"no TF {plan.parent}->{plan.child} published: {first_line(exc)}"
            self.stats.count("tf_failures", reason=message)
            self.get_logger().warning(message, throttle_duration_sec=THROTTLE_S)
            return
        msg = TransformStamped()
        set_stamp(msg.header.stamp, frame.stamp_ns + plan.future_ns)
        msg.header.frame_id = plan.parent
        msg.child_frame_id = plan.child
        fill_transform(msg.transform, transform)
        self.tf_broadcaster.sendTransform(msg)

    def _parents(self) -> dict[str, str]:
        """child -> parent of the TF tree as this node's buffer sees it, re-read once a second."""
        read_at, parents = self._tf_parents
        now = time.monotonic()
        if now - read_at >= TF_TREE_REFRESH_S:
            parents = frame_parents(yaml.safe_load(self.tf_buffer.all_frames_as_yaml()) or {})
            self._tf_parents = (now, parents)
        return parents

    def _lookup(
        self, frames: tuple[str, str] | None, stamp_ns: int | None, wait: Duration | None = None
    ) -> Pose | None:
        if frames is None:
            return None
        when = Time() if stamp_ns is None else Time(nanoseconds=stamp_ns)
        t = self.tf_buffer.lookup_transform(frames[0], frames[1], when, timeout=wait or Duration(seconds=0.0))
        return pose_from_transform(t.transform)

    # -- diagnostics -----------------------------------------------------------------------------

    def publish_diagnostics(self) -> None:
        summary = self.stats.summary(self.slot.skipped)
        worker_error = self.worker_error or ("" if self._worker.is_alive() else "the inference thread ended")
        fov = self.engine.fov
        level, message = diagnostic_level(
            summary,
            self.settings.latency_budget_ms,
            worker_error,
            self.stats.last_drop_reason,
            self._camera_info_mismatch or (fov.message if fov is not None and fov.warning else ""),
        )
        status = DiagnosticStatus()
        status.level = bytes([level])
        status.name = f"{self.get_name()}: relocalization"
        status.message = message
        status.hardware_id = str(self.engine.device)
        c = self.engine.contract
        e = self.engine
        extra = {"device": str(e.device), "backend": e.backend, "precision": e.precision}
        extra["precision_reason"] = e.precision_reason  # precision auto's choice and its figures
        extra |= {"model_scene": c.scene.name, "contract_version": c.version}
        extra["camera_info"] = (
            self._camera_info_problem
            or self._camera_info_mismatch
            or e.camera_mismatch
            or ("received" if self._camera_info else "none received yet")
        )
        if fov is not None:
            extra["field_of_view"] = fov.message
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
    """Exit 0 after Ctrl-C or SIGTERM (launch, systemd and docker stop that way), 1 with one
    error line when the node cannot start (bad model, bad parameter, bad arguments)."""
    node = None
    try:
        rclpy.init(args=args)
        node = RelocalizerNode()
    except Exception as exc:  # any start-up failure is one line and a non-zero exit, never a traceback
        detail = first_line(exc) if isinstance(exc, EngineError) else f"{type(exc).__name__}: {first_line(exc)}"
        rclpy.logging.get_logger(NODE_NAME).error(f"cannot start: {' '.join(detail.split())}")
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        return 1
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # rclpy's signal handler shuts the context down from another thread; an executor building
        # its wait set at that moment raises RCLError "context is not valid" (ros2/rclpy#398,
        # ros2/ros2cli#854). That is a Ctrl-C, not a failure; anything else still is.
        if node.context.ok():
            raise
    finally:
        # A second Ctrl-C during clean-up must not print a traceback either.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        node.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
