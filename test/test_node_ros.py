"""The node on real ROS 2, as users run it: `ros2 run` / `ros2 launch` of the colcon-built package
in its own process, fed by real rclpy publishers, read by real subscribers, a real tf2 buffer and
the real ros2 CLI over Fast DDS. Skipped where ROS 2 is not importable (`make test` sets it up)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import NaNPoseNet, small_contract
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped, TransformStamped
from ros_harness import POSE, POSE_COV, RosTestbed, stamp_ns, tf2_ros, wait_for
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from tf2_msgs.msg import TFMessage

from posenet_ros.engine import Engine, EngineConfig
from posenet_ros.export import export_torchscript
from posenet_ros.geometry import Pose, quat_to_matrix
from posenet_ros.image_codec import decode, encode_compressed, encode_image

CAMERA = "/camera/image_raw"
ROOT = Path(__file__).resolve().parents[1]


def run_node(bed: RosTestbed, model: Path, *params: str, ros_args: tuple[str, ...] = ()) -> Any:
    """`ros2 run posenet_ros relocalize_node` with -p name:=value as a person types them."""
    # fp32: poses are compared with an fp32 Engine in this process (precision auto, the node's default,
    # may pick bf16; its own test passes precision:=auto, which the later -p overrides).
    defaults = (f"model_path:={model}", "device:=cpu", "precision:=fp32", "max_frame_age_ms:=0.0")
    defaults += ("diagnostics_period:=0.2",)
    argv = ["ros2", "run", "posenet_ros", "relocalize_node", "--ros-args", "-r", f"image:={CAMERA}"]
    argv += ["-r", f"image/compressed:={CAMERA}/compressed", *ros_args]
    for p in (*defaults, *params):
        argv += ["-p", p]
    return bed.start(argv)


def image_msg(
    stamp_ns_: int,
    seed: int = 0,
    encoding: str = "rgb8",
    padding: int = 0,
    frame: str = "camera_optical",
    pixels: np.ndarray | None = None,
):
    """An Image of ``pixels`` (default: 64x48 of seeded noise in ``encoding``)."""
    if pixels is None:
        channels = {"mono8": 1, "rgba8": 4, "bgra8": 4}.get(encoding, 3)
        pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, channels), dtype=np.uint8)
    raw = encode_image(pixels, encoding, row_padding=padding)
    msg = Image(height=raw.height, width=raw.width, encoding=raw.encoding, step=raw.step, data=bytes(raw.data))
    msg.header.frame_id = frame
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns_, 1_000_000_000)
    return msg


def send_until(pub: Any, msg: Any, outputs: list[Any], timeout: float = 30.0) -> None:
    """Publish ``msg`` (again every 0.5 s, as a camera keeps streaming) until an output carries its stamp."""
    end = time.monotonic() + timeout
    while not any(stamp_ns(o) == stamp_ns(msg) for o in outputs):
        assert time.monotonic() < end, "timed out waiting for the pose of a published frame"
        pub.publish(msg)
        wait_until = time.monotonic() + 0.5
        while time.monotonic() < wait_until and not any(stamp_ns(o) == stamp_ns(msg) for o in outputs):
            time.sleep(0.01)


def dedupe(msgs: list[Any]) -> list[Any]:
    seen: dict[int, Any] = {}
    for m in msgs:
        seen.setdefault(stamp_ns(m), m)
    return list(seen.values())


def now_ns(bed: RosTestbed) -> int:
    return bed.node.get_clock().now().nanoseconds


def latest_status(diags: list[Any]) -> tuple[int, str, dict[str, str]]:
    status = diags[-1].status[0]
    return status.level[0], status.message, {kv.key: kv.value for kv in status.values}


def prime(pub: Any, make: Any, diags: list[Any], timeout: float = 60.0) -> int:
    """Send frames from ``make()`` until the node has received one (discovery is complete both ways:
    a reader that has not yet matched the writer drops its first samples); returns how many frames
    /diagnostics then accounts for, the baseline for ``wait_counts``."""
    end = time.monotonic() + timeout
    while not diags or latest_status(diags)[2]["received"] == "0":
        assert time.monotonic() < end, "the node never received a frame"
        pub.publish(make())
        time.sleep(0.3)
    received = int(latest_status(diags)[2]["received"])
    wait_counts(diags, received)
    return received


def wait_counts(diags: list[Any], total: int, timeout: float = 30.0) -> dict[str, str]:
    """Until /diagnostics accounts for ``total`` frames (published + refused in any way)."""
    keys = ("published", "rejected", "non_finite", "dropped_stale", "skipped", "errors")

    def done() -> dict[str, str] | None:
        if not diags:
            return None
        values = latest_status(diags)[2]
        return values if sum(int(values[k]) for k in keys) >= total else None

    return wait_for(done, timeout, f"{total} frames accounted for in /diagnostics")


def matrix_of(p: Any, q: Any) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = quat_to_matrix(np.array([q.w, q.x, q.y, q.z]))
    m[:3, 3] = [p.x, p.y, p.z]
    return m


def pose_matrix(msg: Any) -> np.ndarray:
    return matrix_of(msg.position, msg.orientation)


def tf_matrix(t: Any) -> np.ndarray:
    return matrix_of(t.translation, t.rotation)


def transform_msg(parent: str, child: str, m: np.ndarray, stamp: int = 0) -> TransformStamped:
    pose = Pose.from_matrix(m)
    t = TransformStamped()
    t.header.frame_id, t.child_frame_id = parent, child
    t.header.stamp.sec, t.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
    t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = (float(v) for v in pose.position)
    w, x, y, z = (float(v) for v in pose.quaternion)
    t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z, t.transform.rotation.w = x, y, z, w
    return t


def random_transform(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=4)
    m = np.eye(4)
    m[:3, :3] = quat_to_matrix(q / np.linalg.norm(q))
    m[:3, 3] = rng.uniform(-2, 2, 3)
    return m


def assert_clean_exit(proc: Any, sig: int) -> None:
    proc.signal(sig)
    assert proc.wait(timeout=30) == 0, proc.output[-2000:]
    assert "Traceback" not in proc.output, proc.output[-2000:]


# -- images in, poses out ----------------------------------------------------------------------------


@pytest.mark.parametrize("reliable", [True, False], ids=["reliable_camera", "best_effort_camera"])
def test_images_give_poses_with_their_stamps_frames_and_covariance(
    bed: RosTestbed, tiny_file: tuple[Path, Any], reliable: bool
) -> None:
    poses, covs = bed.collect(PoseStamped, POSE), bed.collect(PoseWithCovarianceStamped, POSE_COV)
    pub = bed.publisher(Image, CAMERA, reliable=reliable)
    node = run_node(bed, tiny_file[0], "map_frame:=world")
    bed.wait_matched(pub)
    engine = Engine(tiny_file[0], EngineConfig(device="cpu", warmup_iters=1))
    encodings = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")
    sent = [
        image_msg(1_700_000_000_000_000_000 + k * 33_333_333, seed=k, encoding=e, padding=3 * k)
        for k, e in enumerate(encodings)
    ]
    for msg in sent:
        send_until(pub, msg, covs)
    wait_for(lambda: {stamp_ns(m) for m in poses} == {stamp_ns(m) for m in sent}, what="5 PoseStamped")
    # Best effort may lose a frame before discovery completes, so a frame may have been sent twice.
    poses, covs = dedupe(poses), dedupe(covs)
    assert [stamp_ns(m) for m in poses] == [stamp_ns(m) for m in sent] == [stamp_ns(m) for m in covs]
    for msg, p, c in zip(sent, poses, covs, strict=True):
        assert p.header.frame_id == c.header.frame_id == "world"
        q = p.pose.orientation
        assert abs(np.linalg.norm([q.x, q.y, q.z, q.w]) - 1) < 1e-9 and q.w >= 0
        cov = np.array(c.pose.covariance).reshape(6, 6)  # row-major x, y, z, rotX, rotY, rotZ
        assert np.diag(cov).tolist() == [0.25] * 3 + [0.03] * 3  # one crop: the configured variances
        image, encoding = decode(msg)
        expected = engine.localize(image, encoding).pose.matrix()
        np.testing.assert_allclose(pose_matrix(p.pose), expected, atol=1e-5)
        np.testing.assert_allclose(pose_matrix(c.pose.pose), expected, atol=1e-5)
    assert "cv_bridge unavailable" in node.output or "image converter cv_bridge" in node.output
    assert_clean_exit(node, signal.SIGINT)


def test_rejected_frames_in_any_order_leave_the_node_localizing(bed: RosTestbed, tiny_file: tuple[Path, Any]) -> None:
    """Stale, unsupported-encoding and truncated frames, interleaved (a stale frame after an
    unsupported one killed the worker on real rclpy: a log call site changed severity)."""
    poses = bed.collect(PoseStamped, POSE)
    diags = bed.collect(DiagnosticArray, "/diagnostics")
    pub = bed.publisher(Image, CAMERA, reliable=True)
    run_node(bed, tiny_file[0], "max_frame_age_ms:=500.0")
    bed.wait_matched(pub)

    def unsupported() -> Image:
        m = image_msg(now_ns(bed))
        m.encoding = "16UC1"
        return m

    def truncated() -> Image:
        m = image_msg(now_ns(bed))
        m.data = bytes(m.data)[:100]
        return m

    def stale() -> Image:
        return image_msg(now_ns(bed) - 5_000_000_000)

    base = prime(pub, unsupported, diags)
    order = [stale, unsupported, stale, truncated, stale, unsupported, truncated, stale]
    for k, make in enumerate(order, start=1):
        pub.publish(make())
        wait_counts(diags, base + k)
    values = wait_counts(diags, base + len(order))
    assert (int(values["rejected"]) - base, values["dropped_stale"], values["published"]) == (4, "4", "0")
    level, message, _ = latest_status(diags)
    assert level == 2 and "no pose" in message  # frames arrive, nothing is published: ERROR
    for k in range(3):
        pub.publish(image_msg(now_ns(bed), seed=k))
        wait_for(lambda k=k: len(poses) > k, what="a pose after the refused frames")
    wait_for(lambda: latest_status(diags)[0] == 0, what="diagnostics back to OK")


def test_compressed_images_and_undecodable_jpeg(bed: RosTestbed, tiny_file: tuple[Path, Any]) -> None:
    poses = bed.collect(PoseStamped, POSE)
    diags = bed.collect(DiagnosticArray, "/diagnostics")
    pub = bed.publisher(CompressedImage, f"{CAMERA}/compressed", reliable=True)
    run_node(bed, tiny_file[0], "compressed:=true")
    bed.wait_matched(pub)
    img = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    msgs = [
        CompressedImage(format="jpeg", data=b"\xff\xd8 not a jpeg"),
        CompressedImage(format="jpeg", data=bytes(encode_compressed(img, "jpeg"))),
        CompressedImage(format="png", data=bytes(encode_compressed(img, "png"))[:50]),  # cut short
        CompressedImage(format="png", data=bytes(encode_compressed(img, "png"))),
    ]
    base = prime(pub, lambda: msgs[0], diags)
    for k, msg in enumerate(msgs, start=1):
        msg.header.stamp.sec = k
        pub.publish(msg)
        wait_counts(diags, base + k)
    wait_for(lambda: len(poses) == 2, what="2 poses")
    assert [p.header.stamp.sec for p in poses] == [2, 4]
    assert int(latest_status(diags)[2]["rejected"]) == base + 2


def test_non_finite_network_output_is_not_published(bed: RosTestbed, tmp_path: Path) -> None:
    model = export_torchscript(NaNPoseNet(), small_contract(), tmp_path / "nan.pt")
    poses = bed.collect(PoseStamped, POSE)
    diags = bed.collect(DiagnosticArray, "/diagnostics")
    pub = bed.publisher(Image, CAMERA, reliable=True)
    run_node(bed, model)
    bed.wait_matched(pub)
    base = prime(pub, lambda: image_msg(1), diags)
    for k in range(3):
        pub.publish(image_msg(k + 2))
        wait_counts(diags, base + k + 1)
    assert int(latest_status(diags)[2]["non_finite"]) == base + 3 and poses == []
    level, message, _ = latest_status(diags)
    assert level == 2 and "no pose" in message


# -- TF, base pose, initial pose ---------------------------------------------------------------------


def static_mount(bed: RosTestbed, parent: str, child: str, m: np.ndarray) -> Any:
    broadcaster = tf2_ros.StaticTransformBroadcaster(bed.node)
    broadcaster.sendTransform(transform_msg(parent, child, m))
    return broadcaster


def lookup(bed: RosTestbed, parent: str, child: str, stamp: int) -> np.ndarray:
    from rclpy.duration import Duration
    from rclpy.time import Time

    errors: list[str] = []

    def get() -> Any:
        try:
            return bed.tf_buffer.lookup_transform(parent, child, Time(nanoseconds=stamp), timeout=Duration(seconds=0))
        except tf2_ros.TransformException as exc:
            errors[:] = [str(exc)]
            return None

    try:
        return tf_matrix(wait_for(get, 20, f"TF {parent}->{child}").transform)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {errors}") from None


def test_tf_map_to_camera_through_a_real_tf2_buffer(bed: RosTestbed, tiny_file: tuple[Path, Any]) -> None:
    poses = bed.collect(PoseStamped, POSE)
    pub = bed.publisher(Image, CAMERA)
    bed.tf_buffer  # noqa: B018  (listening from the start)
    run_node(bed, tiny_file[0], "camera_frame:=front_camera_optical")
    bed.wait_matched(pub)
    msg = image_msg(7_000_000_000, frame="ignored_header_frame")
    send_until(pub, msg, poses)
    np.testing.assert_allclose(
        lookup(bed, "map", "front_camera_optical", 7_000_000_000), pose_matrix(poses[0].pose), atol=1e-9
    )


def test_map_to_odom_as_amcl_with_late_odometry_and_base_pose(bed: RosTestbed, tiny_file: tuple[Path, Any]) -> None:
    """Odometry at 50 Hz reaching the node 20-50 ms after the image; map->odom future-dated by
    transform_tolerance; the pose topics carry base_link's pose (pose_frame auto) with the
    covariance carried through the mount."""
    covs = bed.collect(PoseWithCovarianceStamped, POSE_COV)
    tfs = bed.collect(TFMessage, "/tf")
    pub = bed.publisher(Image, CAMERA)
    bed.tf_buffer  # noqa: B018
    base_cam = random_transform(2)
    static_mount(bed, "base_link", "camera_optical", base_cam)
    odom_pub = tf2_ros.TransformBroadcaster(bed.node)
    node = run_node(bed, tiny_file[0], "tf_mode:=map_to_odom", "transform_tolerance:=0.25", "crops:=4")
    bed.wait_matched(pub)

    def odom_base(t_ns: int) -> np.ndarray:
        m = np.eye(4)
        m[:3, 3] = [0.5 * t_ns / 1e9 % 7.0, 0.1, 0.0]  # driving along x
        return m

    t0 = now_ns(bed)
    images: list[int] = []
    for k in range(60):  # 1.2 s of odometry at 50 Hz, an image every 5th tick (10 Hz)
        t = t0 + k * 20_000_000
        if k % 5 == 0:
            pub.publish(image_msg(t, seed=k))
            images.append(t)
        if k >= 2:  # the odometry of tick k-2 arrives now: 40 ms late
            odom_pub.sendTransform(transform_msg("odom", "base_link", odom_base(t - 40_000_000), t - 40_000_000))
        time.sleep(0.02)
    wait_for(lambda: len(covs) >= 5, what="base poses")
    time.sleep(0.5)
    by_stamp = {stamp_ns(c): c for c in covs}
    odom_tfs = [x for m in tfs for x in m.transforms if (x.header.frame_id, x.child_frame_id) == ("map", "odom")]
    assert len(odom_tfs) >= 3, node.output
    lookup(bed, "map", "odom", stamp_ns(odom_tfs[0]))  # a real tf2 buffer has it at the future-dated stamp
    for x in odom_tfs:
        t = stamp_ns(x) - 250_000_000  # future-dated by transform_tolerance
        assert t in images
        c = by_stamp[t]
        np.testing.assert_allclose(tf_matrix(x.transform) @ odom_base(t), pose_matrix(c.pose.pose), atol=1e-6)
        cov = np.array(c.pose.covariance).reshape(6, 6)
        assert np.allclose(cov, cov.T) and np.all(np.linalg.eigvalsh(cov) > 0)  # 4 crops: floored, definite
    assert_clean_exit(node, signal.SIGINT)


def test_map_to_camera_never_gives_a_urdf_camera_a_second_parent(bed: RosTestbed, tiny_file: tuple[Path, Any]) -> None:
    poses = bed.collect(PoseStamped, POSE)
    tf_msgs = bed.collect(TFMessage, "/tf")
    pub = bed.publisher(Image, CAMERA)
    static_mount(bed, "base_link", "camera_optical", random_transform(5))  # as robot_state_publisher would
    node = run_node(bed, tiny_file[0])  # default tf_mode map_to_camera
    bed.wait_matched(pub)
    time.sleep(1.5)  # the node's buffer has the latched /tf_static
    for k in range(3):
        send_until(pub, image_msg(now_ns(bed) + k, seed=k), poses)
    time.sleep(0.5)
    assert not [t for m in tf_msgs for t in m.transforms if t.child_frame_id == "camera_optical"]
    assert "camera_optical already has parent base_link" in node.output


def test_initial_pose_service_sends_the_next_base_pose(bed: RosTestbed, tiny_file: tuple[Path, Any]) -> None:
    initial = bed.collect(PoseWithCovarianceStamped, "/initialpose")
    covs = bed.collect(PoseWithCovarianceStamped, POSE_COV)
    pub = bed.publisher(Image, CAMERA)
    base_cam = random_transform(7)
    static_mount(bed, "base_link", "camera_optical", base_cam)
    run_node(bed, tiny_file[0], "tf_mode:=none", "initial_pose_on_start:=true")
    bed.wait_matched(pub)
    end = time.monotonic() + 60
    while not initial:  # a camera streams; the first frames may come before the node has the mount
        assert time.monotonic() < end, "timed out waiting for the start-up /initialpose"
        pub.publish(image_msg(now_ns(bed)))
        time.sleep(0.1)
    time.sleep(0.5)
    camera = next(c for c in covs if stamp_ns(c) == stamp_ns(initial[0]))  # pose_frame auto, tf_mode none: camera
    np.testing.assert_allclose(
        pose_matrix(initial[0].pose.pose), pose_matrix(camera.pose.pose) @ np.linalg.inv(base_cam), atol=1e-6
    )
    send_until(pub, image_msg(now_ns(bed), seed=1), covs)
    assert len(initial) == 1  # once, not for every frame
    out = bed.ros2("service", "call", "/posenet_relocalizer/publish_initial_pose", "std_srvs/srv/Trigger")
    assert out.returncode == 0 and "success=True" in out.stdout, out.stdout + out.stderr
    send_until(pub, image_msg(now_ns(bed), seed=2), covs)
    wait_for(lambda: len(initial) == 2, what="the requested /initialpose")
    assert stamp_ns(initial[1]) == stamp_ns(covs[-1]) and initial[1].header.frame_id == "map"


# -- parameters, every way a user sets them ----------------------------------------------------------


def param_get(bed: RosTestbed, name: str) -> str:
    out = bed.ros2("param", "get", "/posenet_relocalizer", name)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def launch_node(bed: RosTestbed, model: Path, *args: str) -> Any:
    argv = ["ros2", "launch", "posenet_ros", "relocalize.launch.py", f"model:={model}", "device:=cpu", *args]
    return bed.start(argv, name="launch")


def test_parameters_from_yaml_launch_arguments_user_file_and_live(
    bed: RosTestbed, tiny_file: tuple[Path, Any], tmp_path: Path
) -> None:
    user = tmp_path / "my_params.yaml"
    user.write_text("/**:\n  ros__parameters:\n    crops: 4\n    max_frame_age_ms: 250.0\n    map_frame: world\n")
    covs = bed.collect(PoseWithCovarianceStamped, "/robot1/posenet_relocalizer/pose_with_covariance")
    pub = bed.publisher(Image, "/robot1/camera/image_raw")
    launch = launch_node(
        bed, tiny_file[0], f"params_file:={user}", "tf_mode:=none", "namespace:=robot1", "image_topic:=camera/image_raw"
    )
    bed.wait_matched(pub)
    node_name = "/robot1/posenet_relocalizer"

    def get(name: str) -> str:
        out = bed.ros2("param", "get", node_name, name)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    assert get("crops").endswith("4") and get("map_frame").endswith("world")  # the user's file
    assert get("tf_mode").endswith("none")  # a launch argument over the file
    assert get("diagnostics_period").endswith("1.0")  # not in the user's file: the node's default
    send_until(pub, image_msg(now_ns(bed)), covs)
    assert covs[-1].header.frame_id == "world"
    cov = np.array(covs[-1].pose.covariance).reshape(6, 6)
    assert np.diag(cov).tolist() != [0.25] * 3 + [0.03] * 3  # 4 crops: the spread, not the fixed variances

    ok = bed.ros2("param", "set", node_name, "map_frame", "map2")
    assert ok.returncode == 0 and "Set parameter successful" in ok.stdout, ok.stdout + ok.stderr
    send_until(pub, image_msg(now_ns(bed), seed=1), covs)
    assert covs[-1].header.frame_id == "map2"
    for name, value, why in (
        ("crops", "500", "crops"),  # outside the descriptor's range
        ("crops", "32", "max_crops"),  # above max_crops (16)
        ("tf_mode", "map_to_moon", "tf_mode must be one of"),
        ("model_path", "/other.pt", "read-only"),
        ("position_variance", "-1.0", "position_variance"),
    ):
        out = bed.ros2("param", "set", node_name, name, value)
        said = out.stdout + out.stderr
        assert "Setting parameter failed" in said and why in said, (name, said)
    assert get("crops").endswith("4") and get("tf_mode").endswith("none")  # refused: nothing changed
    assert_clean_exit(launch, signal.SIGINT)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (("model_path:=/nonexistent/model.pt",), "model"),
        (("crops:=500",), "crops"),
        (("crops:=2.5",), "crops"),  # a double for an integer parameter, as a person types it
        (("tf_mode:=map_to_moon",), "tf_mode must be one of"),
        (("device:=tpu",), "device must be"),
        (("transform_tolerance:=1",), "transform_tolerance"),  # an integer literal for a double
        (("backend:=onnxruntime",), "onnxruntime"),  # a TorchScript file
    ],
)
def test_bad_start_up_exits_non_zero_with_one_line(
    bed: RosTestbed, tiny_file: tuple[Path, Any], params: tuple[str, ...], message: str
) -> None:
    proc = run_node(bed, tiny_file[0], *params)
    assert proc.wait(timeout=60) != 0
    lines = [ln for ln in proc.output.splitlines() if "ERROR" in ln or "FATAL" in ln]
    assert len(lines) == 1 and "cannot start" in lines[0] and message in lines[0], proc.output
    assert "Traceback" not in proc.output


def test_a_model_without_contract_is_refused(bed: RosTestbed, tiny_file: tuple[Path, Any], tmp_path: Path) -> None:
    bare = tmp_path / "no_contract.pt"
    torch.jit.save(torch.jit.load(str(tiny_file[0])), str(bare))  # drops the extra files
    proc = run_node(bed, bare)
    assert proc.wait(timeout=60) == 1
    assert "contract" in proc.output and "Traceback" not in proc.output


# -- process life and load ---------------------------------------------------------------------------


def node_executable(ros_env: dict[str, str]) -> str:
    prefix = next(p for p in ros_env["AMENT_PREFIX_PATH"].split(":") if p.endswith("posenet_ros"))
    return str(Path(prefix) / "lib" / "posenet_ros" / "relocalize_node")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_signals_end_the_node_cleanly_while_inference_is_busy(
    bed: RosTestbed, posenet_file: tuple[Path, Any], ros_env: dict[str, str], sig: int
) -> None:
    """Ctrl-C and SIGTERM (launch, systemd, docker stop) in the middle of inference: exit 0, no traceback."""
    diags = bed.collect(DiagnosticArray, "/diagnostics")
    pub = bed.publisher(Image, CAMERA)
    argv = [node_executable(ros_env), "--ros-args", "-r", f"image:={CAMERA}", "-p", f"model_path:={posenet_file[0]}"]
    argv += ["-p", "device:=cpu", "-p", "crops:=16", "-p", "max_frame_age_ms:=0.0", "-p", "diagnostics_period:=0.2"]
    proc = bed.start(argv)
    bed.wait_matched(pub)
    prime(pub, lambda: image_msg(now_ns(bed)), diags)  # 16 full PoseNet crops: well over 100 ms each frame
    pub.publish(image_msg(now_ns(bed), seed=1))
    time.sleep(0.05)
    assert_clean_exit(proc, sig)


def test_a_faster_camera_gets_only_the_newest_frame_processed(bed: RosTestbed, posenet_file: tuple[Path, Any]) -> None:
    """30 Hz into an engine that needs several frame periods: poses come for a subset of the frames, in
    order, each for a frame that was the newest when its turn came (nothing queues)."""
    poses = bed.collect(PoseStamped, POSE)
    diags = bed.collect(DiagnosticArray, "/diagnostics")
    pub = bed.publisher(Image, CAMERA)
    run_node(bed, posenet_file[0], "crops:=8")
    bed.wait_matched(pub)
    prime(pub, lambda: image_msg(now_ns(bed)), diags)
    first = len(poses)
    sent: list[int] = []
    sent_at: dict[int, float] = {}
    for k in range(90):  # 3 s at 30 Hz
        msg = image_msg(now_ns(bed), seed=k)
        sent.append(stamp_ns(msg))
        sent_at[stamp_ns(msg)] = time.monotonic()
        pub.publish(msg)
        time.sleep(1 / 30)
    time.sleep(2.0)
    stamps = [stamp_ns(p) for p in poses[first:]]
    values = latest_status(diags)[2]
    assert stamps == sorted(stamps) and set(stamps) <= set(sent)
    assert 2 <= len(stamps) < len(sent) and int(values["skipped"]) > 0
    # Each pose is for a frame at most two inference times old; a queue would make that grow.
    assert sent.index(stamps[-1]) >= len(sent) - 1 - 2 * (len(sent) // len(stamps) + 1)


def test_diagnostics_turn_error_when_poses_stop_while_frames_keep_coming(
    bed: RosTestbed, tiny_file: tuple[Path, Any]
) -> None:
    """Poses stop (every frame now above max_position_std) while the camera streams: within the
    diagnostics window the level goes from OK to ERROR, naming the reason."""
    poses = bed.collect(PoseStamped, POSE)
    diags = bed.collect(DiagnosticArray, "/diagnostics")
    pub = bed.publisher(Image, CAMERA)
    run_node(bed, tiny_file[0], "diagnostics_window:=1.5", "uncertainty:=fixed")
    bed.wait_matched(pub)
    stop = time.monotonic() + 60

    def stream_until(condition: Any) -> None:
        k = 0
        while not condition():
            assert time.monotonic() < stop, latest_status(diags) if diags else "no diagnostics"
            pub.publish(image_msg(now_ns(bed), seed=k))
            k += 1
            time.sleep(0.05)

    stream_until(lambda: diags and latest_status(diags)[0] == 0 and len(poses) > 5)
    out = bed.ros2("param", "set", "/posenet_relocalizer", "max_position_std", "0.1")  # fixed std is 0.5 m
    assert out.returncode == 0, out.stderr
    stream_until(lambda: latest_status(diags)[0] == 2)
    _level, message, values = latest_status(diags)
    assert "no pose published" in message and "max_position_std" in message
    assert float(values["position_std_last_m"]) == pytest.approx(0.5, abs=1e-3)


def test_the_launch_testing_test_runs(bed: RosTestbed) -> None:
    """launch_testing's own runner on the package's launch file (test/launch_tests/launch_relocalize.py)."""
    proc = bed.start(["launch_test", str(ROOT / "test" / "launch_tests" / "launch_relocalize.py")], name="launch_test")
    assert proc.wait(timeout=180) == 0, proc.output[-4000:]
    assert "test_poses_and_tf_for_published_images" in proc.output and "OK" in proc.output, proc.output[-3000:]


def test_sim_time_follows_clock_including_a_bag_loop_jumping_back(bed: RosTestbed, tiny_file: tuple[Path, Any]) -> None:
    """use_sim_time with a real /clock publisher at 100 Hz, as `ros2 bag play --clock --loop`: frames
    stamped by the bag's clock are localized (max_frame_age_ms is measured on that clock), and
    after the clock jumps back to the start of the bag the node keeps localizing."""
    from rosgraph_msgs.msg import Clock

    poses = bed.collect(PoseStamped, POSE)
    bed.collect(DiagnosticArray, "/diagnostics")
    pub = bed.publisher(Image, CAMERA, reliable=True)
    clock_pub = bed.node.create_publisher(Clock, "/clock", 10)
    start = 1_000 * 10**9  # the bag's time, far from the wall clock

    def tick(t: int) -> None:
        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = divmod(t, 1_000_000_000)
        clock_pub.publish(msg)

    tick(start)
    run_node(bed, tiny_file[0], "use_sim_time:=true", "max_frame_age_ms:=500.0")
    bed.wait_matched(pub)
    for _ in range(50):  # the node's clock has /clock before the first frame
        tick(start)
        time.sleep(0.02)
    for loop in range(2):
        stamps = []
        for k in range(40):  # 0.4 s of bag at 100 Hz clock, a frame every 10th tick
            t = start + k * 10_000_000
            tick(t)
            if k % 10 == 5:
                pub.publish(image_msg(t, seed=k))
                stamps.append(t)
            time.sleep(0.01)
        wait_for(lambda stamps=stamps: {stamp_ns(p) for p in poses} >= set(stamps), what=f"the poses of loop {loop}")


def test_precision_auto_reports_what_it_chose(bed: RosTestbed, tiny_file: tuple[Path, Any]) -> None:
    """precision:=auto is a start-up parameter like any other; /diagnostics says which precision runs
    (fp32, or bf16 where the CPU runs it natively and the poses agree), never "auto"."""
    diags = bed.collect(DiagnosticArray, "/diagnostics")
    poses = bed.collect(PoseStamped, POSE)
    pub = bed.publisher(Image, CAMERA, reliable=True)
    node = run_node(bed, tiny_file[0], "precision:=auto")
    bed.wait_matched(pub)
    send_until(pub, image_msg(now_ns(bed)), poses)
    precision = wait_for(lambda: diags and latest_status(diags)[2].get("precision"), what="/diagnostics")
    assert precision in ("fp32", "bf16"), precision
    reason = latest_status(diags)[2]["precision_reason"]  # auto's figures, not "set in the configuration"
    assert reason.startswith(precision) and "configuration" not in reason, reason
    assert_clean_exit(node, signal.SIGINT)


@pytest.fixture(scope="module")
def demo_room_with_map(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Frames of the demo model's room (as it was trained on them) and a map of two training walks."""
    from posenet_train.scene_map import MapConfig, build_map
    from posenet_train.synth import SynthConfig, render_dataset

    root = tmp_path_factory.mktemp("refine_room")
    cfg = SynthConfig(
        train_sequences=2, test_sequences=1, frames_per_sequence=40, width=256, height=192, heading_spread_deg=50
    )
    render_dataset(cfg, root / "room", progress=False)
    build_map(root / "room", root / "room_map.npz", MapConfig(), scene="synthetic_room")
    return root / "room", root / "room_map.npz"


def test_poses_refined_against_a_map_are_centimetre_accurate(
    bed: RosTestbed, demo_room_with_map: tuple[Path, Path]
) -> None:
    """map_path: the node refines PoseNet's pose against the scene's map (SIFT + PnP) and publishes
    the refined pose, within a few centimetres of the rendered ground truth; /diagnostics counts it."""
    import cv2

    from posenet_train.datasets import read_poses_csv, split_records

    room, map_path = demo_room_with_map
    covs = bed.collect(PoseWithCovarianceStamped, POSE_COV)
    diags = bed.collect(DiagnosticArray, "/diagnostics")
    pub = bed.publisher(Image, CAMERA, reliable=True)
    model = ROOT / "models" / "posenet_demo.pt"
    node = run_node(bed, model, f"map_path:={map_path}")
    bed.wait_matched(pub)
    frames = split_records(read_poses_csv(room / "poses.csv"), "test")[::5]
    truth = {}
    for k, rec in enumerate(frames):
        stamp = 1_700_000_000_000_000_000 + k * 100_000_000
        rgb = cv2.cvtColor(cv2.imread(str(room / rec.image)), cv2.COLOR_BGR2RGB)
        send_until(pub, image_msg(stamp, pixels=rgb), covs)
        truth[stamp] = rec.pose()
    got = {stamp_ns(c): c for c in dedupe(covs)}
    assert set(got) == set(truth)
    errors = [np.linalg.norm(pose_matrix(got[s].pose.pose)[:3, 3] - truth[s].position) for s in truth]
    assert sum(e < 0.05 for e in errors) >= 0.75 * len(errors), errors  # PoseNet alone: about 0.23 m
    values = wait_for(
        # At least every frame: one re-sent while its pose was on the way is refined again.
        lambda: diags and int(latest_status(diags)[2]["refine_attempts"]) >= len(truth) and latest_status(diags)[2],
        what="/diagnostics counting every frame's refinement",
    )
    assert int(values["refined"]) >= 0.75 * len(truth)
    assert float(values["refine_inliers_median"]) >= 20 and float(values["refine_latency_p50_ms"]) > 0
    assert float(values["refine_latency_p95_ms"]) >= float(values["refine_latency_p50_ms"])
    assert "refinement against" in node.output
    assert_clean_exit(node, signal.SIGINT)


def camera_info_msg(camera: Any, stamp: int, frame: str = "camera_optical") -> Any:
    msg = CameraInfo(width=camera.width, height=camera.height, distortion_model="plumb_bob")
    msg.k = [camera.fx, 0.0, camera.cx, 0.0, camera.fy, camera.cy, 0.0, 0.0, 1.0]
    msg.d = [0.0] * 5
    msg.header.frame_id = frame
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
    return msg


def test_camera_info_gives_refinement_its_intrinsics_and_the_field_of_view_check(
    bed: RosTestbed, demo_room_with_map: tuple[Path, Path], tmp_path: Path
) -> None:
    """A camera wider than the training one (80 vs 65 deg, 320x240) announced on CameraInfo: the
    node refines with CameraInfo's intrinsics (the map's, scaled to 320x240, would be 25% off in
    focal length and PnP would fail), crops the network's input to the training view and says so in
    /diagnostics; a narrower camera afterwards turns /diagnostics WARN with the reason."""
    import dataclasses

    from posenet_ros.export import rewrite_contract
    from posenet_train.datasets import read_poses_csv, split_records
    from posenet_train.scene_map import synth_intrinsics
    from posenet_train.synth import Camera as RenderCamera
    from posenet_train.synth import Renderer, SynthConfig, room_scene

    room, map_path = demo_room_with_map
    demo = ROOT / "models" / "posenet_demo.pt"
    trained = synth_intrinsics(SynthConfig(width=256, height=192))
    contract = dataclasses.replace(Engine(demo, EngineConfig(device="cpu", warmup_iters=1)).contract, camera=trained)
    model = rewrite_contract(demo, tmp_path / "with_camera.pt", contract)
    covs = bed.collect(PoseWithCovarianceStamped, POSE_COV)
    diags = bed.collect(DiagnosticArray, "/diagnostics")
    pub = bed.publisher(Image, CAMERA, reliable=True)
    info_pub = bed.publisher(CameraInfo, "/camera/camera_info", reliable=True)
    node = run_node(bed, model, f"map_path:={map_path}", "camera_info_topic:=/camera/camera_info")
    bed.wait_matched(pub)
    bed.wait_matched(info_pub)
    wide = synth_intrinsics(SynthConfig(width=320, height=240, hfov_deg=80.0))
    render = Renderer(room_scene(0), RenderCamera(320, 240, 80.0))
    truth = {}
    for k, rec in enumerate(split_records(read_poses_csv(room / "poses.csv"), "test")[::8]):
        stamp = 1_700_000_000_000_000_000 + k * 100_000_000
        info_pub.publish(camera_info_msg(wide, stamp))
        send_until(pub, image_msg(stamp, pixels=render.render(rec.pose())[0]), covs)
        truth[stamp] = rec.pose()
    got = {stamp_ns(c): c for c in dedupe(covs)}
    errors = [np.linalg.norm(pose_matrix(got[s].pose.pose)[:3, 3] - truth[s].position) for s in truth]
    assert sum(e < 0.05 for e in errors) >= 0.75 * len(errors), errors
    level, _, values = wait_for(lambda: diags and latest_status(diags), what="/diagnostics")
    assert values["camera_info"] == "received" and "cropped to" in values["field_of_view"], values
    assert level == 0
    narrow = synth_intrinsics(SynthConfig(width=320, height=240, hfov_deg=50.0))
    narrow_render = Renderer(room_scene(0), RenderCamera(320, 240, 50.0))
    stamp = 1_700_000_100_000_000_000
    info_pub.publish(camera_info_msg(narrow, stamp))
    time.sleep(0.5)  # CameraInfo first, as a driver sends it
    send_until(pub, image_msg(stamp, pixels=narrow_render.render(next(iter(truth.values())))[0]), covs)
    level, message, values = wait_for(
        lambda: diags and latest_status(diags)[0] == 1 and latest_status(diags), what="/diagnostics WARN"
    )
    assert "narrower" in message and "narrower" in values["field_of_view"]
    # Another camera's calibration (a wrong remapping): its frame_id is not the images'. Ignored,
    # with the reason in /diagnostics and the log; the field-of-view warning was that camera's.
    stamp += 100_000_000
    info_pub.publish(camera_info_msg(wide, stamp, frame="rear_camera_optical"))
    time.sleep(0.5)
    send_until(pub, image_msg(stamp, pixels=render.render(next(iter(truth.values())))[0]), covs)
    level, message, values = wait_for(
        lambda: diags and "rear_camera_optical" in latest_status(diags)[2]["camera_info"] and latest_status(diags),
        what="/diagnostics naming the other camera's frame",
    )
    assert level == 1 and "ignored" in message and "'camera_optical'" in values["camera_info"], values
    assert "narrower" not in values.get("field_of_view", "")
    assert_clean_exit(node, signal.SIGINT)
    assert "check the camera_info_topic remapping" in node.output


def test_a_ctrl_c_racing_the_executor_is_a_clean_exit(
    bed: RosTestbed, tiny_file: tuple[Path, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """rclpy's signal handler shuts the context down from another thread; an executor building its
    wait set at that moment raises RCLError "context is not valid" (ros2/rclpy#398). The node's
    main() exits 0 then, as after any Ctrl-C, and still raises a failure while the context is valid."""
    import rclpy

    from posenet_ros import node as node_module

    monkeypatch.setenv("ROS_DOMAIN_ID", str(bed.domain_id))
    args = ["relocalize_node", "--ros-args", "-p", f"model_path:={tiny_file[0]}"]

    def racing_spin(node: Any) -> None:
        rclpy.shutdown(context=node.context)  # what the signal handler does, mid-spin
        raise RuntimeError("failed to initialize wait set: the given context is not valid")

    monkeypatch.setattr(rclpy, "spin", racing_spin)
    assert node_module.main(args) == 0

    def failing_spin(node: Any) -> None:
        raise RuntimeError("a real failure")

    monkeypatch.setattr(rclpy, "spin", failing_spin)
    with pytest.raises(RuntimeError, match="a real failure"):
        node_module.main(args)
