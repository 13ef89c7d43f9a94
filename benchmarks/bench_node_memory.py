"""The node's memory over a long run on real ROS 2: a 30 Hz camera (640x480 rgb8) for 10 minutes into
the node started from its colcon install, its resident memory read from /proc every 10 s. Prints
the RSS after warm-up and at the end, the growth and its least-squares slope, frames sent and poses
received, and writes them as JSON. `make bench-node-memory` builds the package and runs it.

Usage (ROS 2 and the package's install sourced):
    python benchmarks/bench_node_memory.py [--minutes 10] [--rate 30] [--model M.pt] [--json OUT]

The machine is shared: the node gets a private ROS_DOMAIN_ID (unless one is set) and its own log
folder, and is ended by its process group.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WARMUP_S = 60.0  # allocator pools, torch's and DDS's caches fill during the first minute


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def start_node(model: Path, log_dir: Path) -> subprocess.Popen:
    from ament_index_python.packages import get_package_prefix

    exe = Path(get_package_prefix("posenet_ros")) / "lib" / "posenet_ros" / "relocalize_node"
    argv = [str(exe), "--ros-args", "-r", "image:=/camera/image_raw"]
    for p in (f"model_path:={model}", "device:=cpu", "max_frame_age_ms:=0.0"):
        argv += ["-p", p]
    log = (log_dir / "node.log").open("wb")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=30.0, help="camera rate (Hz)")
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "posenet_demo.pt")
    ap.add_argument("--sample-every", type=float, default=10.0, help="seconds between RSS readings")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randrange(100, 200)))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    log_dir = Path(tempfile.mkdtemp(prefix="posenet_mem_"))
    os.environ["ROS_LOG_DIR"] = str(log_dir / "ros_log")

    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    rclpy.init(args=[])
    node = rclpy.create_node("posenet_memory_bench")
    pub = node.create_publisher(Image, "/camera/image_raw", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE))
    poses: list[int] = [0]
    node.create_subscription(
        PoseStamped, "/posenet_relocalizer/pose", lambda _m: poses.__setitem__(0, poses[0] + 1), 10
    )
    diagnostics: dict[str, str] = {}  # the node's own last counts and latency

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith("posenet_relocalizer"):
                diagnostics.update({kv.key: kv.value for kv in status.values})

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()

    proc = start_node(args.model.resolve(), log_dir)
    samples: list[tuple[float, float]] = []
    sent = 0
    try:
        end_wait = time.monotonic() + 90
        while pub.get_subscription_count() == 0:
            if proc.poll() is not None or time.monotonic() > end_wait:
                print(f"the node did not start; see {log_dir / 'node.log'}", file=sys.stderr)
                return 1
            time.sleep(0.1)
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8).tobytes() for _ in range(8)]
        msg = Image(height=480, width=640, encoding="rgb8", step=640 * 3)
        msg.header.frame_id = "camera_optical"
        t0 = time.monotonic()
        duration, period = args.minutes * 60.0, 1.0 / args.rate
        next_sample = 0.0
        while (elapsed := time.monotonic() - t0) < duration:
            if proc.poll() is not None:
                print(f"the node exited with {proc.returncode} after {elapsed:.0f} s", file=sys.stderr)
                return 1
            msg.header.stamp = node.get_clock().now().to_msg()
            msg.data = frames[sent % len(frames)]
            pub.publish(msg)
            sent += 1
            if elapsed >= next_sample:
                samples.append((elapsed, rss_mb(proc.pid)))
                next_sample += args.sample_every
            time.sleep(max(0.0, t0 + sent * period - time.monotonic()))
        samples.append((time.monotonic() - t0, rss_mb(proc.pid)))
        time.sleep(1.5)  # the node's last /diagnostics
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        executor.shutdown(timeout_sec=2)
        rclpy.try_shutdown()

    t = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples])
    steady = t >= min(WARMUP_S, t[-1] / 2)
    slope = float(np.polyfit(t[steady] / 60.0, rss[steady], 1)[0]) if steady.sum() >= 2 else float("nan")
    after_warmup = float(rss[steady][0])
    result = {
        "minutes": args.minutes,
        "camera_hz": args.rate,
        "frames_sent": sent,
        "poses_received": poses[0],
        "rss_start_mb": float(rss[0]),
        "rss_after_warmup_mb": after_warmup,
        "rss_end_mb": float(rss[-1]),
        "rss_max_mb": float(rss.max()),
        "growth_after_warmup_mb": float(rss[-1] - after_warmup),
        "slope_mb_per_min": slope,
        "node_exit_status": proc.returncode,
        "node_diagnostics": dict(diagnostics),
        "samples": [[round(a, 1), round(b, 1)] for a, b in samples],
    }
    print(
        f"node memory over {args.minutes:g} min at {args.rate:g} Hz 640x480: frames sent {sent}, poses received "
        f"{poses[0]}; RSS start {rss[0]:.0f} MB, after {WARMUP_S:.0f} s warm-up {after_warmup:.0f} MB, end "
        f"{rss[-1]:.0f} MB (max {rss.max():.0f}); growth after warm-up {rss[-1] - after_warmup:+.1f} MB, "
        f"slope {slope:+.2f} MB/min; node exit status {proc.returncode}"
    )
    if diagnostics:
        print(
            f"the node's own count: received {diagnostics.get('received')}, published {diagnostics.get('published')}, "
            f"skipped (replaced by a newer frame) {diagnostics.get('skipped')}; latency p50 "
            f"{diagnostics.get('latency_p50_ms')} ms, p95 {diagnostics.get('latency_p95_ms')} ms"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
