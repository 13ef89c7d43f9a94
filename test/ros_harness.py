"""Real ROS 2 for the node's tests: the package built with colcon, the node started as users start
it (`ros2 run`, `ros2 launch`) in its own process group, and a probe in the test process (a real
rclpy node with publishers, subscribers and a tf2 buffer) on the same private ROS_DOMAIN_ID.

Every test gets its own domain id and log folder (the machine is shared: other processes publish
on domain 0), and every process started here is ended by its process group in ``close``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not importable: run the tests through `make test`")
tf2_ros = pytest.importorskip("tf2_ros", reason="tf2_ros is not importable: run the tests through `make test`")

from rclpy.context import Context  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402

_DOMAINS = itertools.count()
POSE = "/posenet_relocalizer/pose"
POSE_COV = "/posenet_relocalizer/pose_with_covariance"


def fresh_domain_id() -> int:
    """1..200, different for every call in this process and spread by pid across processes."""
    return 1 + (os.getpid() * 37 + next(_DOMAINS)) % 200


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "the node") -> Any:
    end = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


@dataclass
class Process:
    """A process started in its own group, its output in a file."""

    popen: subprocess.Popen
    log_path: Path

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)


@dataclass
class RosTestbed:
    """One test's private ROS 2 graph: environment, started processes, and the probe node."""

    base_env: dict[str, str]
    tmp: Path
    domain_id: int = field(default_factory=fresh_domain_id)
    processes: list[Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.env = {
            **self.base_env,
            "ROS_DOMAIN_ID": str(self.domain_id),
            "ROS_LOG_DIR": str(self.tmp / "ros_log"),
            "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            "PYTHONUNBUFFERED": "1",
            "RCUTILS_COLORIZED_OUTPUT": "0",
        }
        self.context = Context()
        rclpy.init(context=self.context, domain_id=self.domain_id)
        self.node = rclpy.create_node(f"probe_{os.getpid()}", context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=4, context=self.context)
        self.executor.add_node(self.node)
        self._spin = threading.Thread(target=self._spin_forever, daemon=True)
        self._spin.start()
        self._tf_buffer: Any = None

    def _spin_forever(self) -> None:
        with contextlib.suppress(Exception):  # the context shutting down under the spin
            self.executor.spin()

    # -- processes ---------------------------------------------------------------------------------

    def start(self, argv: list[str], name: str = "node") -> Process:
        log_path = self.tmp / f"{name}_{len(self.processes)}.log"
        with log_path.open("wb") as out:
            popen = subprocess.Popen(
                argv,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        proc = Process(popen, log_path)
        self.processes.append(proc)
        return proc

    def ros2(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """The real ros2 CLI on this graph. A fresh CLI process may not have discovered the node yet
        ("Node not found" on a loaded machine): asked again until ``timeout``, as a person would."""
        end = time.monotonic() + timeout
        # The ros2 daemon detaches from our process group and would outlive the test: never start one.
        argv = ["ros2", *args, "--no-daemon"] if args and args[0] == "param" else ["ros2", *args]
        while True:
            out = subprocess.run(
                argv, env=self.env, capture_output=True, text=True, timeout=timeout, start_new_session=True
            )
            if "Node not found" not in out.stderr or time.monotonic() > end:
                return out
            time.sleep(0.5)

    # -- probe -------------------------------------------------------------------------------------

    def collect(self, msg_type: Any, topic: str, qos: QoSProfile | int = 50) -> list[Any]:
        """Every message on ``topic`` from now on, appended as it arrives."""
        received: list[Any] = []
        self.node.create_subscription(msg_type, topic, received.append, qos)
        return received

    def publisher(self, msg_type: Any, topic: str, reliable: bool = False, depth: int = 10) -> Any:
        policy = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
        return self.node.create_publisher(msg_type, topic, QoSProfile(depth=depth, reliability=policy))

    @property
    def tf_buffer(self) -> Any:
        """A real tf2 buffer fed by /tf and /tf_static of this graph (created on first use)."""
        if self._tf_buffer is None:
            self._tf_buffer = tf2_ros.Buffer()
            self._tf_listener = tf2_ros.TransformListener(self._tf_buffer, self.node)
        return self._tf_buffer

    def wait_matched(self, publisher: Any, timeout: float = 60.0) -> None:
        wait_for(lambda: publisher.get_subscription_count() > 0, timeout, f"a subscriber on {publisher.topic_name}")

    def close(self) -> None:
        for proc in self.processes:
            proc.signal(signal.SIGINT)
        for proc in self.processes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            else:
                proc.kill()  # whatever is left in its group
            print(
                f"--- {proc.log_path.name} (exit {proc.popen.returncode}) ---\n{proc.output[-4000:]}"
            )  # shown on failure
        self.executor.shutdown(timeout_sec=2)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._spin.join(timeout=5)


def stamp_ns(msg: Any) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
