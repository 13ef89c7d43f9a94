"""posenet_ros.node through the strict fake ROS 2 runtime (test/fake_ros): images in, poses, TF and
diagnostics out, parameters, and every way a frame can be refused without the node falling over."""

from __future__ import annotations

import importlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import fake_ros
import numpy as np
import pytest
import torch
from conftest import NaNPoseNet, small_contract

from posenet_ros.export import export_torchscript
from posenet_ros.geometry import Pose, quat_to_matrix
from posenet_ros.image_codec import encode_compressed, encode_image

IMAGE_TOPIC = "/camera/image_raw"
POSE = "/posenet_relocalizer/pose"
POSE_COV = "/posenet_relocalizer/pose_with_covariance"


@pytest.fixture
def ros(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Install the fake, init rclpy; yields the fake graph. Removes everything afterwards."""
    with_bridge = getattr(request, "param", False)
    sys.modules.pop("posenet_ros.node", None)
    fake_ros.install(with_cv_bridge=with_bridge)
    import rclpy
    from rclpy._graph import reset

    graph = reset()
    rclpy.init()
    nodes: list[Any] = []
    graph.nodes = nodes
    # Imported fresh against this fake (a stale posenet_ros.node would hold another install's rclpy).
    graph.node_module = importlib.import_module("posenet_ros.node")
    yield graph
    for node in nodes:
        node.shutdown()
        node.destroy_node()
    rclpy.try_shutdown()
    sys.modules.pop("posenet_ros.node", None)
    fake_ros.uninstall()


def make_node(graph: Any, model: Path, **params: Any) -> Any:
    from rclpy.parameter import Parameter

    values = {"model_path": str(model), "device": "cpu", "max_frame_age_ms": 0.0, **params}
    node = graph.node_module.RelocalizerNode(
        parameter_overrides=[Parameter(k, value=v) for k, v in values.items()],
        cli_args=["--ros-args", "-r", f"image:={IMAGE_TOPIC}", "-r", f"image/compressed:={IMAGE_TOPIC}/compressed"],
    )
    graph.nodes.append(node)
    return node


def image_msg(stamp_ns: int, frame_id: str = "camera_optical", encoding: str = "rgb8", seed: int = 0, padding: int = 0):
    from sensor_msgs.msg import Image

    rng = np.random.default_rng(seed)
    channels = {"mono8": 1, "rgba8": 4, "bgra8": 4}.get(encoding, 3)
    raw = encode_image(rng.integers(0, 256, (48, 64, channels), dtype=np.uint8), encoding, row_padding=padding)
    msg = Image(height=raw.height, width=raw.width, encoding=raw.encoding, step=raw.step, data=raw.data)
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    return msg


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting for the node")
        time.sleep(0.005)


def stamp_ns(msg: Any) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def send_and_wait(graph: Any, msg: Any, topic: str = POSE) -> Any:
    before = len(graph.published[topic])
    assert graph.deliver(IMAGE_TOPIC, msg) == 1
    wait_for(lambda: len(graph.published[topic]) > before)
    return graph.published[topic][-1]


def matrix(pose_msg_or_tf: Any) -> np.ndarray:
    """4x4 from a geometry_msgs Pose or Transform, written out independently of posenet_ros."""
    p = getattr(pose_msg_or_tf, "position", None) or pose_msg_or_tf.translation
    q = getattr(pose_msg_or_tf, "orientation", None) or pose_msg_or_tf.rotation
    x, y, z, w = q.x, q.y, q.z, q.w
    r = np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = r, [p.x, p.y, p.z]
    return m


def transform_msg(parent: str, child: str, m: np.ndarray, stamp: int = 0):
    from geometry_msgs.msg import TransformStamped

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


def logs(graph: Any, severity: str) -> list[str]:
    return [m for _, s, m in graph.logs if s == severity]


# -- images in, poses out --------------------------------------------------------------------------


def test_n_images_give_n_poses_with_their_stamps_and_frames(ros: Any, tiny_file: tuple[Path, Any]) -> None:
    node = make_node(ros, tiny_file[0], map_frame="world")
    sub = node.subscriptions[0]
    assert sub.topic == IMAGE_TOPIC and sub.qos.depth == 1 and sub.qos.reliability.name == "BEST_EFFORT"
    stamps = [1_700_000_000_000_000_000 + k * 33_333_333 for k in range(5)]
    for k, s in enumerate(stamps):
        send_and_wait(ros, image_msg(s, seed=k))
    wait_for(lambda: len(ros.published[POSE_COV]) == 5)
    poses, covs = ros.published[POSE], ros.published[POSE_COV]
    assert [stamp_ns(m) for m in poses] == stamps == [stamp_ns(m) for m in covs]
    for p, c in zip(poses, covs, strict=True):
        assert p.header.frame_id == c.header.frame_id == "world"
        q = p.pose.orientation
        assert abs(np.linalg.norm([q.x, q.y, q.z, q.w]) - 1) < 1e-9 and q.w >= 0
        assert p.pose == c.pose.pose
        cov = np.array(c.pose.covariance).reshape(6, 6)
        assert np.all(np.isfinite(cov)) and np.all(np.diag(cov) > 0)
    # One crop: the configured variances.
    assert np.diag(np.array(covs[0].pose.covariance).reshape(6, 6)).tolist() == [0.25] * 3 + [0.03] * 3
    pub = next(p for p in node.publishers if p.topic == POSE)
    assert pub.qos.reliability.name == "RELIABLE"


def test_pose_matches_the_engine_on_the_same_image(ros: Any, tiny_file: tuple[Path, Any]) -> None:
    """The message carries the engine's pose, converted to ROS order (x, y, z, w) correctly."""
    from posenet_ros.engine import Engine, EngineConfig
    from posenet_ros.image_codec import decode

    node = make_node(ros, tiny_file[0])
    msg = image_msg(5, seed=3)
    out = send_and_wait(ros, msg)
    image, encoding = decode(msg)
    expected = Engine(tiny_file[0], EngineConfig(device="cpu", warmup_iters=1)).localize(image, encoding).pose
    np.testing.assert_allclose(matrix(out.pose), expected.matrix(), atol=1e-5)
    assert node.stats.published == 1


def test_busy_node_keeps_only_the_newest_frame(ros: Any, tiny_file: tuple[Path, Any]) -> None:
    node = make_node(ros, tiny_file[0])
    gate, started = threading.Event(), threading.Event()
    real_localize = node.engine.localize

    def slow_localize(*args: Any, **kwargs: Any) -> Any:
        started.set()
        gate.wait(10)
        return real_localize(*args, **kwargs)

    node.engine.localize = slow_localize
    ros.deliver(IMAGE_TOPIC, image_msg(1))
    assert started.wait(10)
    for s in (2, 3, 4):  # arrive while frame 1 is in the network
        ros.deliver(IMAGE_TOPIC, image_msg(s))
    gate.set()
    wait_for(lambda: len(ros.published[POSE]) == 2)
    time.sleep(0.1)
    assert [stamp_ns(m) for m in ros.published[POSE]] == [1, 4]
    assert node.slot.skipped == 2 and node.stats.received == 4


def test_stale_frames_are_dropped_by_the_sim_clock(ros: Any, tiny_file: tuple[Path, Any]) -> None:
    from rosgraph_msgs.msg import Clock

    node = make_node(ros, tiny_file[0], use_sim_time=True, max_frame_age_ms=500.0)
    clock = Clock()
    clock.clock.sec = 100
    ros.deliver("/clock", clock)
    assert node.get_clock().now().nanoseconds == 100 * 10**9  # the node reads the sim clock
    assert node.process(_frame(image_msg(99 * 10**9))) is False  # 1 s old
    assert node.stats.dropped_stale == 1
    assert node.process(_frame(image_msg(99_800_000_000))) is True  # 0.2 s old
    assert stamp_ns(ros.published[POSE][-1]) == 99_800_000_000
    assert any("older than max_frame_age_ms" in m for m in logs(ros, "WARN"))


def _frame(msg: Any) -> Any:
    from posenet_ros.relocalizer import Frame

    return Frame(msg, stamp_ns(msg), msg.header.frame_id)


# -- TF --------------------------------------------------------------------------------------------


def test_tf_map_to_camera(ros: Any, tiny_file: tuple[Path, Any]) -> None:
    make_node(ros, tiny_file[0], tf_mode="map_to_camera")
    pose = send_and_wait(ros, image_msg(7, frame_id="cam_opt"))
    tf = ros.published["/tf"][-1].transforms[0]
    assert (tf.header.frame_id, tf.child_frame_id, stamp_ns(tf)) == ("map", "cam_opt", 7)
    np.testing.assert_allclose(matrix(tf.transform), matrix(pose.pose), atol=1e-12)


def test_tf_camera_frame_parameter_overrides_the_header(ros: Any, tiny_file: tuple[Path, Any]) -> None:
    make_node(ros, tiny_file[0], camera_frame="front_camera_optical")
    send_and_wait(ros, image_msg(7, frame_id="whatever"))
    assert ros.published["/tf"][-1].transforms[0].child_frame_id == "front_camera_optical"


def test_tf_map_to_base_uses_the_static_camera_mount(ros: Any, tiny_file: tuple[Path, Any]) -> None:
    from tf2_msgs.msg import TFMessage

    make_node(ros, tiny_file[0], tf_mode="map_to_base")
    base_cam = random_transform(1)
    ros.deliver("/tf_static", TFMessage(transforms=[transform_msg("base_link", "cam", base_cam)]))
    pose = send_and_wait(ros, image_msg(9, frame_id="cam"))
    wait_for(lambda: len(ros.published["/tf"]) == 1)
    tf = ros.published["/tf"][-1].transforms[0]
    assert (tf.header.frame_id, tf.child_frame_id, stamp_ns(tf)) == ("map", "base_link", 9)
    expected = matrix(pose.pose) @ np.linalg.inv(base_cam)
    np.testing.assert_allclose(matrix(tf.transform), expected, atol=1e-9)


def test_tf_map_to_odom_as_amcl(ros: Any, tiny_file: tuple[Path, Any]) -> None:
    from tf2_msgs.msg import TFMessage

    node = make_node(ros, tiny_file[0], tf_mode="map_to_odom", transform_tolerance=0.25)
    base_cam, odom_base_then, odom_base_other = random_transform(2), random_transform(3), random_transform(4)
    t_img = 50 * 10**9
    ros.deliver("/tf_static", TFMessage(transforms=[transform_msg("base_link", "cam", base_cam)]))
    ros.deliver("/tf", TFMessage(transforms=[transform_msg("odom", "base_link", odom_base_other, t_img - 10**8)]))
    ros.deliver("/tf", TFMessage(transforms=[transform_msg("odom", "base_link", odom_base_then, t_img)]))
    before = len(ros.published["/tf"])
    assert node.process(_frame(image_msg(t_img, frame_id="cam")))
    pose = ros.published[POSE][-1]
    tf = ros.published["/tf"][before].transforms[0]
    assert (tf.header.frame_id, tf.child_frame_id) == ("map", "odom")
    assert stamp_ns(tf) == t_img + 250_000_000  # future-dated by transform_tolerance
    # map<-odom * odom<-base(t_img) * base<-cam == the estimated map<-cam
    np.testing.assert_allclose(matrix(tf.transform) @ odom_base_then @ base_cam, matrix(pose.pose), atol=1e-9)


def test_tf_mode_none_publishes_no_transform(ros: Any, tiny_file: tuple[Path, Any]) -> None:
    make_node(ros, tiny_file[0], tf_mode="none")
    send_and_wait(ros, image_msg(3))
    assert ros.published["/tf"] == []


def test_missing_tf_is_a_throttled_warning_not_a_crash(ros: Any, tiny_file: tuple[Path, Any]) -> None:
    node = make_node(ros, tiny_file[0], tf_mode="map_to_base")
    for s in (1, 2, 3):
        send_and_wait(ros, image_msg(s, frame_id="cam"))
    assert len(ros.published[POSE]) == 3 and ros.published["/tf"] == []
    assert node.stats.tf_failures == 3
    warnings = [m for m in logs(ros, "WARN") if "no TF map->base_link" in m]
    assert len(warnings) == 1  # throttled


# -- refused frames --------------------------------------------------------------------------------


def test_bad_encodings_and_truncated_data_are_counted_and_survived(ros: Any, tiny_file: tuple[Path, Any]) -> None:
    node = make_node(ros, tiny_file[0])
    bad = image_msg(1)
    bad.encoding = "16UC1"
    assert node.process(_frame(bad)) is False
    truncated = image_msg(2)
    truncated.data = bytes(truncated.data)[:100]
    assert node.process(_frame(truncated)) is False
    empty = image_msg(3)
    empty.height, empty.width, empty.step, empty.data = 0, 4, 12, b""
    assert node.process(_frame(empty)) is False
    assert node.stats.rejected == 3
    tiny = image_msg(4)
    tiny.height, tiny.width, tiny.step, tiny.data = 4, 4, 12, bytes(48)
    assert node.process(_frame(tiny)) is True  # upscaled by the resize rule, not refused
    errors = logs(ros, "ERROR")
    assert any("16UC1" in m for m in errors) and any("truncated" in m for m in errors)
    assert all("\n" not in m for m in errors)
    assert node.process(_frame(image_msg(5))) is True  # still running


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8", "mono8"])
def test_every_supported_encoding_with_row_padding(ros: Any, tiny_file: tuple[Path, Any], encoding: str) -> None:
    node = make_node(ros, tiny_file[0])
    assert node.process(_frame(image_msg(1, encoding=encoding, padding=7))) is True


def test_nan_output_is_not_published(ros: Any, tmp_path: Path) -> None:
    path = export_torchscript(NaNPoseNet(), small_contract(), tmp_path / "nan.pt")
    node = make_node(ros, path)
    assert node.process(_frame(image_msg(1))) is False
    assert node.stats.non_finite == 1 and ros.published[POSE] == [] and ros.published[POSE_COV] == []


def test_compressed_subscription(ros: Any, tiny_file: tuple[Path, Any]) -> None:
    from sensor_msgs.msg import CompressedImage

    node = make_node(ros, tiny_file[0], compressed=True)
    assert node.subscriptions[0].topic == f"{IMAGE_TOPIC}/compressed"
    img = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    msg = CompressedImage(format="jpeg", data=encode_compressed(img, "jpeg"))
    msg.header.stamp.sec = 12
    before = len(ros.published[POSE])
    ros.deliver(f"{IMAGE_TOPIC}/compressed", msg)
    wait_for(lambda: len(ros.published[POSE]) > before)
    assert stamp_ns(ros.published[POSE][-1]) == 12 * 10**9
    junk = CompressedImage(format="jpeg", data=b"not a jpeg")
    assert node.process(_frame(junk)) is False and node.stats.rejected == 1


# -- covariance, budget, diagnostics ---------------------------------------------------------------


def test_several_crops_give_a_spread_covariance(ros: Any, tiny_file: tuple[Path, Any]) -> None:
    node = make_node(ros, tiny_file[0], crops=4, min_variance=1e-4)
    msg = send_and_wait(ros, image_msg(1, seed=5), POSE_COV)
    cov = np.array(msg.pose.covariance).reshape(6, 6)
    assert np.allclose(cov, cov.T) and np.all(np.diag(cov) >= 1e-4)
    assert np.diag(cov).tolist() != [0.25] * 3 + [0.03] * 3
    assert node.stats.summary(0)["crops_last"] == 4


def test_latency_budget_chooses_crops_and_counts_overruns(ros: Any, tiny_file: tuple[Path, Any]) -> None:
    node = make_node(ros, tiny_file[0], latency_budget_ms=0.001, max_crops=8)
    send_and_wait(ros, image_msg(1))
    assert node.stats.summary(0)["crops_last"] == 1  # nothing fits a 1 us budget: one crop
    assert node.stats.overruns == 1


def test_diagnostics(ros: Any, tiny_file: tuple[Path, Any]) -> None:
    node = make_node(ros, tiny_file[0])
    node.timers[0].callback()
    first = ros.published["/diagnostics"][-1].status[0]
    assert first.level == b"\x01" and "no pose" in first.message
    for s in (1, 2):
        send_and_wait(ros, image_msg(s))
    node.timers[0].callback()
    status = ros.published["/diagnostics"][-1].status[0]
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == b"\x00" and status.hardware_id == "cpu"
    assert values["published"] == "2" and values["received"] == "2" and values["model_scene"] == "test_scene"
    for key in (
        "rate_hz",
        "latency_p50_ms",
        "latency_p95_ms",
        "crops_last",
        "skipped",
        "dropped_stale",
        "rejected",
        "overruns",
        "device",
        "contract_version",
    ):
        assert key in values


# -- parameters ------------------------------------------------------------------------------------


def test_live_parameter_changes_are_validated(ros: Any, tiny_file: tuple[Path, Any]) -> None:
    from rclpy.parameter import Parameter

    node = make_node(ros, tiny_file[0])
    refused = {
        "crops": 0,  # below the descriptor's range
        "tf_mode": "map_to_moon",
        "model_path": "/other.pt",  # read-only
        "position_variance": -1.0,
        "map_frame": 3,  # wrong type
    }
    for name, value in refused.items():
        (result,) = node.set_parameters([Parameter(name, value=value)])
        assert not result.successful and result.reason, name
    (result,) = node.set_parameters([Parameter("crops", value=32)])  # > max_crops (16)
    assert not result.successful and "max_crops" in result.reason
    (result,) = node.set_parameters([Parameter("tf_mode", value="none")])
    assert result.successful and node.settings.tf_mode == "none"
    (result,) = node.set_parameters([Parameter("latency_budget_ms", value=50.0)])
    assert result.successful and node.engine.budget.budget_ms == 50.0
    descriptor = node.describe_parameter("model_path")
    assert descriptor.read_only and descriptor.description


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"model_path": "/nonexistent/model.pt"}, "model"),
        ({"model_path": "CONTRACTLESS"}, "contract"),
        ({"crops": 500}, "out of range"),
        ({"device": "tpu"}, "device must be"),
        ({"transform_tolerance": 1}, "transform_tolerance"),  # an int for a double: rclpy refuses it
    ],
)
def test_startup_errors_exit_non_zero_with_one_line(
    ros: Any, tiny_file: tuple[Path, Any], params: dict[str, Any], message: str
) -> None:
    import rclpy

    node_module = ros.node_module
    rclpy.try_shutdown()
    if params.get("model_path") == "CONTRACTLESS":
        bare = tiny_file[0].with_name("no_contract.pt")
        torch.jit.save(torch.jit.load(str(tiny_file[0])), str(bare))  # drops the extra files
        params = {"model_path": str(bare)}
    values = {"model_path": str(tiny_file[0]), "device": "cpu", **params}
    args = ["relocalize_node", "--ros-args"] + [x for k, v in values.items() for x in ("-p", f"{k}:={v}")]
    assert node_module.main(args) == 1
    errors = logs(ros, "ERROR") + logs(ros, "FATAL")
    assert len(errors) == 1 and message in errors[0] and "\n" not in errors[0]


def test_main_spins_and_shuts_down_cleanly(ros: Any, tiny_file: tuple[Path, Any]) -> None:
    import rclpy

    node_module = ros.node_module
    rclpy.try_shutdown()
    seen = []

    def spin_hook(node: Any) -> None:
        seen.append(node.get_name())
        raise KeyboardInterrupt

    rclpy.SPIN_HOOK[0] = spin_hook
    try:
        code = node_module.main(
            ["relocalize_node", "--ros-args", "-p", f"model_path:={tiny_file[0]}", "-p", "device:=cpu"]
        )
    finally:
        rclpy.SPIN_HOOK[0] = None
    assert code == 0 and seen == ["posenet_relocalizer"] and not rclpy.ok()


def test_yaml_config_loads_into_the_node(ros: Any, tiny_file: tuple[Path, Any]) -> None:
    """config/relocalize.yaml through the parameter file path: its types must be what the node declares."""
    from rclpy.parameter import Parameter

    RelocalizerNode = ros.node_module.RelocalizerNode
    config = Path(__file__).resolve().parents[1] / "config" / "relocalize.yaml"
    node = RelocalizerNode(
        cli_args=["--ros-args", "--params-file", str(config)],
        parameter_overrides=[Parameter("model_path", value=str(tiny_file[0])), Parameter("device", value="cpu")],
    )
    ros.nodes.append(node)
    assert node.settings.tf_mode == "map_to_camera" and node.settings.transform_tolerance == 0.1


def test_model_path_relative_to_the_share_dir(ros: Any, tiny_file: tuple[Path, Any], tmp_path: Path) -> None:
    from ament_index_python import packages

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "scene.pt").write_bytes(tiny_file[0].read_bytes())
    packages.SHARE_DIRS["posenet_ros"] = str(tmp_path)
    node = make_node(ros, Path("models/scene.pt"))
    assert node.engine.contract.scene.name == "test_scene"


def test_namespace_moves_the_topics(ros: Any, tiny_file: tuple[Path, Any]) -> None:
    from rclpy.parameter import Parameter

    RelocalizerNode = ros.node_module.RelocalizerNode
    node = RelocalizerNode(
        namespace="robot1",
        parameter_overrides=[Parameter("model_path", value=str(tiny_file[0])), Parameter("device", value="cpu")],
    )
    ros.nodes.append(node)
    assert {p.topic for p in node.publishers} >= {
        "/robot1/posenet_relocalizer/pose",
        "/robot1/posenet_relocalizer/pose_with_covariance",
    }
    assert node.subscriptions[0].topic == "/robot1/image"


# -- cv_bridge -------------------------------------------------------------------------------------


def test_without_cv_bridge_the_builtin_converter_is_used_with_one_warning(
    ros: Any, tiny_file: tuple[Path, Any]
) -> None:
    node = make_node(ros, tiny_file[0])
    assert node.converter.name == "builtin"
    assert len([m for m in logs(ros, "WARN") if "cv_bridge unavailable" in m]) == 1


@pytest.mark.parametrize("ros", [True], indirect=True)
def test_cv_bridge_and_builtin_give_identical_arrays(ros: Any, tiny_file: tuple[Path, Any]) -> None:
    from sensor_msgs.msg import CompressedImage

    from posenet_ros.image_codec import decode

    node = make_node(ros, tiny_file[0])
    assert node.converter.name == "cv_bridge"
    msgs = [image_msg(1, encoding=e, padding=5, seed=i) for i, e in enumerate(("rgb8", "bgr8", "rgba8", "mono8"))]
    img = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    msgs.append(CompressedImage(format="png", data=encode_compressed(cv2.cvtColor(img, cv2.COLOR_RGB2BGR), "png")))
    for msg in msgs:
        a, enc_a = node.converter.decode(msg)
        b, enc_b = decode(msg)
        assert enc_a == enc_b
        np.testing.assert_array_equal(np.asarray(a).reshape(b.shape), b)
    assert node.process(_frame(msgs[0])) is True


def test_real_cv_bridge_matches_builtin_where_installed() -> None:
    """On a ROS machine: the real cv_bridge and our converter agree (skipped where it is absent)."""
    cv_bridge = pytest.importorskip("cv_bridge")
    from sensor_msgs.msg import Image

    from posenet_ros.image_codec import decode

    bridge = cv_bridge.CvBridge()
    rng = np.random.default_rng(0)
    for encoding, c in (("rgb8", 3), ("bgr8", 3), ("mono8", 1), ("bgra8", 4)):
        raw = encode_image(rng.integers(0, 256, (20, 30, c), dtype=np.uint8), encoding, row_padding=6)
        msg = Image(height=raw.height, width=raw.width, encoding=encoding, step=raw.step, data=raw.data)
        a = bridge.imgmsg_to_cv2(msg, "passthrough")
        b, _ = decode(msg)
        np.testing.assert_array_equal(np.asarray(a).reshape(b.shape), b)


def test_backend_parameter_runs_an_onnx_model(ros: Any, tiny_file: tuple[Path, Any], tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from posenet_ros.onnx_export import export_onnx

    onnx_model = export_onnx(tiny_file[0], tmp_path / "tiny.onnx")
    node = make_node(ros, onnx_model)  # backend auto: by the file name
    assert node.engine.backend == "onnxruntime"
    assert node.process(_frame(image_msg(1))) is True
    with pytest.raises(Exception, match="backend onnxruntime cannot load"):
        make_node(ros, tiny_file[0], backend="onnxruntime")


def test_uncertain_poses_are_held_back_and_the_score_reaches_diagnostics(
    ros: Any, tiny_file: tuple[Path, Any], tmp_path: Path
) -> None:
    """max_position_std gates publication on the published covariance; mc_dropout mode runs from
    the node's parameters and its position std and score are in /diagnostics."""
    from dataclasses import replace

    from conftest import randomized_posenet, small_contract
    from rclpy.parameter import Parameter

    from posenet_ros.contract import Calibration
    from posenet_ros.export import export_torchscript

    contract = small_contract()
    contract = replace(
        contract,
        uncertainty_modes=("fixed", "crops", "mc_dropout"),
        calibration={"mc_dropout": Calibration(1.0, 1.0, 0.05, 10)},
    )
    model = export_torchscript(randomized_posenet(3), contract, tmp_path / "mc.pt", mc_dropout=True)
    node = make_node(ros, model, uncertainty="mc_dropout", mc_samples=8)
    assert node.process(_frame(image_msg(1))) is True
    node.timers[0].callback()
    values = {kv.key: kv.value for kv in ros.published["/diagnostics"][-1].status[0].values}
    std, score = float(values["position_std_last_m"]), float(values["uncertainty_score_last"])
    assert std > 0 and score == pytest.approx(std / 0.05, rel=1e-2)
    published = len(ros.published.get("/posenet_relocalizer/pose", []))

    fixed = make_node(ros, tiny_file[0], uncertainty="fixed", position_variance=0.25)
    fixed.set_parameters([Parameter("max_position_std", value=0.4)])
    assert fixed.process(_frame(image_msg(2))) is False  # std 0.5 m > 0.4 m
    assert fixed.stats.rejected == 1 and any("above max_position_std" in m for m in logs(ros, "ERROR"))
    assert len(ros.published.get("/posenet_relocalizer/pose", [])) == published
