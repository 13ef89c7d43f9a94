"""Every decision the ROS node makes, without ROS: parameters and their validation, the newest-frame
slot, stale-frame dropping, covariance, TF composition per mode, counters and diagnostics figures,
and filling message objects (anything with the ROS field names: real rclpy messages or test fakes).

``node.py`` only wires rclpy callbacks, publishers and tf2 to what is here.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from posenet_ros.engine import (
    Engine,
    EngineConfig,
    ImageError,
    Localization,
    NonFiniteOutputError,
    position_std,
)
from posenet_ros.geometry import Pose, wxyz_to_xyzw, xyzw_to_wxyz
from posenet_ros.image_codec import ImageDecodeError

TF_MODES = ("map_to_camera", "map_to_base", "map_to_odom", "none")
DEVICES_HELP = "auto, cpu, cuda or cuda:N"


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any
    description: str
    read_only: bool = False
    range: tuple[float, float] | None = None  # inclusive
    choices: tuple[str, ...] | None = None


# The node's parameters: the YAML, the launch file and the README are checked against this table.
PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "model_path",
        "models/posenet_demo.pt",
        "TorchScript model; absolute or relative to the package share dir",
        read_only=True,
    ),
    ParamSpec(
        "backend",
        "auto",
        "torchscript, or onnxruntime for a .onnx model (CPU); auto: by the file name",
        read_only=True,
        choices=("auto", "torchscript", "onnxruntime"),
    ),
    ParamSpec("device", "auto", f"inference device: {DEVICES_HELP}", read_only=True),
    ParamSpec("precision", "fp32", "fp32, or fp16/bf16 on CUDA", read_only=True, choices=("fp32", "fp16", "bf16")),
    ParamSpec(
        "threads", 0, "CPU threads, inference and preprocessing (0: torch default)", read_only=True, range=(0, 256)
    ),
    ParamSpec("compressed", False, "subscribe to <image>/compressed (sensor_msgs/CompressedImage)", read_only=True),
    ParamSpec("map_frame", "map", "frame_id of the published poses and parent of the published TF"),
    ParamSpec("camera_frame", "", "camera optical frame; empty: the image header's frame_id"),
    ParamSpec("base_frame", "base_link", "robot body frame (tf_mode map_to_base and map_to_odom)"),
    ParamSpec("odom_frame", "odom", "odometry frame (tf_mode map_to_odom)"),
    ParamSpec("tf_mode", "map_to_camera", "which transform to broadcast", choices=TF_MODES),
    ParamSpec("transform_tolerance", 0.1, "seconds map->odom is future-dated (as AMCL)", range=(0.0, 10.0)),
    ParamSpec(
        "latency_budget_ms", 0.0, "per-frame budget that picks the crop count; 0: fixed 'crops'", range=(0.0, 10000.0)
    ),
    ParamSpec("crops", 1, "crops per frame when no latency budget is set", range=(1, 128)),
    ParamSpec("max_crops", 16, "upper bound on crops per frame", read_only=True, range=(1, 128)),
    ParamSpec(
        "max_frame_age_ms", 500.0, "drop frames older than this when their turn comes; 0: never", range=(0.0, 60000.0)
    ),
    ParamSpec(
        "uncertainty",
        "crops",
        "covariance source: fixed (the variances below), crops (their spread), mc_dropout (Monte Carlo dropout)",
        read_only=True,
        choices=("fixed", "crops", "mc_dropout"),
    ),
    ParamSpec(
        "mc_samples", 40, "dropout samples per frame (mc_dropout); under a budget, the most it picks", True, (2, 1024)
    ),
    ParamSpec(
        "max_position_std",
        0.0,
        "poses whose position std (m, RMS over x, y, z) is above this are not published; 0: publish all",
        range=(0.0, 1e6),
    ),
    ParamSpec("position_variance", 0.25, "m^2 per axis when a single crop gives no spread", range=(1e-9, 1e6)),
    ParamSpec("orientation_variance", 0.03, "rad^2 per axis when a single crop gives no spread", range=(1e-9, 1e3)),
    ParamSpec("min_variance", 1e-6, "floor on every variance from the crop spread", range=(1e-12, 1e3)),
    ParamSpec("diagnostics_period", 1.0, "seconds between /diagnostics messages", read_only=True, range=(0.1, 60.0)),
)
SPECS = {p.name: p for p in PARAMETERS}


def check_parameter(name: str, value: Any) -> str | None:
    """None when ``value`` is acceptable for ``name``, else the reason (one line)."""
    spec = SPECS.get(name)
    if spec is None:
        return None  # not ours (use_sim_time and friends)
    expected = type(spec.default)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not expected:
        return f"{name} must be {expected.__name__}, got {type(value).__name__}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be finite, got {value}"
    if spec.range is not None and not spec.range[0] <= value <= spec.range[1]:
        return f"{name} must be in [{spec.range[0]}, {spec.range[1]}], got {value}"
    if spec.choices is not None and value not in spec.choices:
        return f"{name} must be one of {', '.join(spec.choices)}, got {value!r}"
    if name == "device" and not (value in ("auto", "cpu", "cuda") or _is_cuda_index(value)):
        return f"device must be {DEVICES_HELP}, got {value!r}"
    return None


def _is_cuda_index(value: str) -> bool:
    prefix, _, index = value.partition(":")
    return prefix == "cuda" and index.isdigit()


@dataclass
class NodeSettings:
    """The validated parameter values, one attribute per entry of PARAMETERS."""

    values: dict[str, Any] = field(default_factory=lambda: {p.name: p.default for p in PARAMETERS})

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    def engine_config(self, **overrides: Any) -> EngineConfig:
        """The engine's configuration from these parameters (node and replay build it the same way);
        ``overrides`` replace fields, e.g. replay's --device and --threads."""
        config = EngineConfig(
            backend=self.backend,
            device=self.device,
            precision=self.precision,
            threads=self.threads or None,
            crops=self.crops,
            max_crops=self.max_crops,
            latency_budget_ms=self.latency_budget_ms or None,
            uncertainty=self.uncertainty,
            mc_samples=self.mc_samples,
        )
        return replace(config, **overrides)

    def update(self, changes: dict[str, Any]) -> str | None:
        """Apply all of ``changes`` or none; returns the first reason for refusal."""
        merged = dict(self.values)
        for name, value in changes.items():
            reason = check_parameter(name, value)
            if reason:
                return reason
            if name in SPECS:
                merged[name] = float(value) if isinstance(SPECS[name].default, float) else value
        if merged["crops"] > merged["max_crops"]:
            return f"crops ({merged['crops']}) must not exceed max_crops ({merged['max_crops']})"
        self.values = merged
        return None


def resolve_model_path(path: str, share_dir: str | Path | None) -> Path:
    """Absolute paths as given; relative ones under the package share directory when it has the
    file (installed use), else relative to the working directory (running from a checkout)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    if share_dir is not None and (Path(share_dir) / p).exists():
        return Path(share_dir) / p
    return p.resolve()


# -- newest-frame slot ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    msg: Any
    stamp_ns: int
    frame_id: str


class LatestFrameSlot:
    """One pending frame: a new frame replaces the waiting one (counted as skipped), so inference
    always works on the newest image and nothing queues behind it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._closed = False
        self.skipped = 0

    def put(self, frame: Frame) -> bool:
        """Store ``frame``; True when it replaced one that was never processed."""
        with self._cond:
            replaced = self._frame is not None
            self.skipped += int(replaced)
            self._frame = frame
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> Frame | None:
        with self._cond:
            if self._frame is None and not self._closed:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            return frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


def stamp_to_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def frame_age_ms(stamp_ns: int, now_ns: int) -> float:
    return (now_ns - stamp_ns) / 1e6


def is_stale(stamp_ns: int, now_ns: int, max_age_ms: float) -> bool:
    """Older than the limit by the node's clock (sim time under bag replay). 0 disables it."""
    return max_age_ms > 0 and frame_age_ms(stamp_ns, now_ns) > max_age_ms


# -- one frame, as the node and the offline replay both handle it ---------------------------------

# What happened to a frame; the counter of the same name in NodeStats counts it.
PUBLISHED, DROPPED_STALE, REJECTED, NON_FINITE = "published", "dropped_stale", "rejected", "non_finite"


@dataclass(frozen=True)
class FrameOutcome:
    status: str
    loc: Localization | None = None
    covariance: np.ndarray | None = None  # 6x6, ready for covariance_list
    reason: str = ""
    position_std: float | None = None  # of ``covariance`` (m), what max_position_std gates on


def localize_frame(
    engine: Engine,
    settings: NodeSettings,
    decode: Callable[[Any], tuple[np.ndarray, str]],
    frame: Frame,
    now_ns: int,
    stats: NodeStats,
) -> FrameOutcome:
    """Stale check, image conversion, inference and covariance for one frame, counted in ``stats``.
    Nothing here raises for a bad frame: the outcome says why it produced no pose."""
    if is_stale(frame.stamp_ns, now_ns, settings.max_frame_age_ms):
        stats.count(DROPPED_STALE)
        return FrameOutcome(DROPPED_STALE, reason=f"frame older than max_frame_age_ms={settings.max_frame_age_ms}")
    try:
        image, encoding = decode(frame.msg)
        crops = None if settings.latency_budget_ms > 0 else settings.crops
        loc = engine.localize(image, encoding, crops=crops)
    except (ImageDecodeError, ImageError) as exc:
        stats.count(REJECTED)
        return FrameOutcome(REJECTED, reason=f"rejected image: {exc}")
    except NonFiniteOutputError as exc:
        stats.count(NON_FINITE)
        return FrameOutcome(NON_FINITE, reason=str(exc))
    cov = pose_covariance(loc, settings.position_variance, settings.orientation_variance, settings.min_variance)
    std = position_std(cov)
    if 0 < settings.max_position_std < std:
        stats.count(REJECTED)
        reason = f"position std {std:.3f} m above max_position_std={settings.max_position_std}"
        return FrameOutcome(REJECTED, loc, cov, reason, std)
    stats.record(loc, std)
    return FrameOutcome(PUBLISHED, loc, cov, position_std=std)


# -- covariance and TF ---------------------------------------------------------------------------


def pose_covariance(
    loc: Localization, position_variance: float, orientation_variance: float, min_variance: float
) -> np.ndarray:
    """6x6 (x, y, z, rotX, rotY, rotZ). From the crop spread when several crops ran (diagonal
    floored so a degenerate spread never claims certainty), else the configured variances."""
    fixed = np.diag([position_variance] * 3 + [orientation_variance] * 3)
    cov = loc.covariance
    if cov is None or cov.shape != (6, 6) or not np.all(np.isfinite(cov)):
        return fixed
    cov = 0.5 * (cov + cov.T)
    idx = np.diag_indices(6)
    cov[idx] = np.maximum(cov[idx], min_variance)
    return cov


def map_to_base(map_to_camera: Pose, base_to_camera: Pose) -> Pose:
    """map<-base = map<-camera * (base<-camera)^-1."""
    return map_to_camera.compose(base_to_camera.inverse())


def map_to_odom(map_to_base_pose: Pose, odom_to_base: Pose) -> Pose:
    """REP-105 as AMCL: map<-odom = map<-base * (odom<-base)^-1, so map<-odom<-base is the estimate."""
    return map_to_base_pose.compose(odom_to_base.inverse())


@dataclass(frozen=True)
class TfPlan:
    """The transform to broadcast in the current tf_mode and the lookups it needs first:
    ``base_from_camera`` = (base_frame, camera frame), static, latest; ``odom_from_base`` =
    (odom_frame, base_frame) at the image stamp."""

    parent: str
    child: str
    base_from_camera: tuple[str, str] | None
    odom_from_base: tuple[str, str] | None
    future_ns: int  # added to the image stamp on the broadcast transform


def tf_plan(settings: NodeSettings, image_frame: str) -> TfPlan | None:
    camera = settings.camera_frame or image_frame
    mode = settings.tf_mode
    if mode == "none":
        return None
    if mode == "map_to_camera":
        return TfPlan(settings.map_frame, camera, None, None, 0)
    base_lookup = (settings.base_frame, camera)
    if mode == "map_to_base":
        return TfPlan(settings.map_frame, settings.base_frame, base_lookup, None, 0)
    tolerance_ns = round(settings.transform_tolerance * 1e9)
    odom_lookup = (settings.odom_frame, settings.base_frame)
    return TfPlan(settings.map_frame, settings.odom_frame, base_lookup, odom_lookup, tolerance_ns)


def compose_for_plan(plan: TfPlan, map_to_camera: Pose, base_to_camera: Pose | None, odom_to_base: Pose | None) -> Pose:
    """The parent<-child transform of ``plan`` from the estimate and the looked-up transforms."""
    if plan.base_from_camera is None:
        return map_to_camera
    if base_to_camera is None:
        raise ValueError(f"{plan.base_from_camera[0]}<-{plan.base_from_camera[1]} transform is needed")
    base = map_to_base(map_to_camera, base_to_camera)
    if plan.odom_from_base is None:
        return base
    if odom_to_base is None:
        raise ValueError(f"{plan.odom_from_base[0]}<-{plan.odom_from_base[1]} transform is needed")
    return map_to_odom(base, odom_to_base)


# -- counters and diagnostics --------------------------------------------------------------------


class NodeStats:
    """Counters and a latency window for /diagnostics. Thread-safe (callback vs worker)."""

    def __init__(self, window: int = 200) -> None:
        self._lock = threading.Lock()
        self.received = 0
        self.published = 0
        self.dropped_stale = 0
        self.rejected = 0
        self.non_finite = 0
        self.overruns = 0
        self.tf_failures = 0
        self.position_std_last: float | None = None
        self.uncertainty_score_last: float | None = None  # position std / the model's calibrated reference
        self._latency_ms: deque[float] = deque(maxlen=window)
        self._crops: deque[int] = deque(maxlen=window)
        self._publish_times: deque[float] = deque(maxlen=window)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def record(self, loc: Localization, position_std_m: float, wall_time: float | None = None) -> None:
        with self._lock:
            self.published += 1
            self.position_std_last = position_std_m
            self.uncertainty_score_last = loc.uncertainty_score
            self.overruns += int(loc.overrun)
            self._latency_ms.append(loc.latency.total_ms)
            self._crops.append(loc.crops)
            self._publish_times.append(time.monotonic() if wall_time is None else wall_time)

    def summary(self, skipped: int, now: float | None = None) -> dict[str, float | int]:
        with self._lock:
            now = time.monotonic() if now is None else now
            times = [t for t in self._publish_times if now - t <= 10.0]
            rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
            lat = np.asarray(self._latency_ms) if self._latency_ms else np.zeros(1)
            return {
                "rate_hz": rate,
                "latency_p50_ms": float(np.percentile(lat, 50)),
                "latency_p95_ms": float(np.percentile(lat, 95)),
                "crops_last": self._crops[-1] if self._crops else 0,
                "received": self.received,
                "published": self.published,
                "skipped": skipped,
                "dropped_stale": self.dropped_stale,
                "rejected": self.rejected,
                "non_finite": self.non_finite,
                "overruns": self.overruns,
                "tf_failures": self.tf_failures,
                "position_std_last_m": self.position_std_last if self.position_std_last is not None else float("nan"),
                "uncertainty_score_last": (
                    self.uncertainty_score_last if self.uncertainty_score_last is not None else float("nan")
                ),
            }


def diagnostic_level(summary: dict[str, float | int], budget_ms: float) -> tuple[int, str]:
    """0 OK, 1 WARN, 2 ERROR (diagnostic_msgs levels) with a short message."""
    if summary["published"] == 0:
        return (
            (1, "no pose published yet") if summary["received"] == 0 else (2, "frames received but no pose published")
        )
    if budget_ms > 0 and summary["latency_p95_ms"] > budget_ms:
        return 1, f"p95 latency {summary['latency_p95_ms']:.1f} ms over the {budget_ms:.1f} ms budget"
    return 0, "localizing"


# -- filling messages ----------------------------------------------------------------------------


def set_stamp(stamp: Any, ns: int) -> None:
    stamp.sec = int(ns // 1_000_000_000)
    stamp.nanosec = int(ns % 1_000_000_000)


def fill_pose(msg_pose: Any, pose: Pose) -> None:
    """geometry_msgs/Pose from ours: ROS quaternion order (x, y, z, w)."""
    x, y, z = (float(v) for v in pose.position)
    msg_pose.position.x, msg_pose.position.y, msg_pose.position.z = x, y, z
    qx, qy, qz, qw = (float(v) for v in wxyz_to_xyzw(pose.quaternion))
    msg_pose.orientation.x, msg_pose.orientation.y, msg_pose.orientation.z, msg_pose.orientation.w = qx, qy, qz, qw


def fill_transform(msg_tf: Any, pose: Pose) -> None:
    """geometry_msgs/Transform from a parent<-child pose."""
    t, r = msg_tf.translation, msg_tf.rotation
    t.x, t.y, t.z = (float(v) for v in pose.position)
    r.x, r.y, r.z, r.w = (float(v) for v in wxyz_to_xyzw(pose.quaternion))


def pose_from_transform(msg_tf: Any) -> Pose:
    t, r = msg_tf.translation, msg_tf.rotation
    return Pose(np.array([t.x, t.y, t.z]), xyzw_to_wxyz(np.array([r.x, r.y, r.z, r.w])))


def covariance_list(cov: np.ndarray) -> list[float]:
    """Row-major 36 floats; refuses NaN/inf and zero variances (robot_localization would trust them)."""
    flat = [float(v) for v in np.asarray(cov, dtype=np.float64).reshape(36)]
    diag = flat[::7]
    if not all(math.isfinite(v) for v in flat) or min(diag) <= 0:
        raise ValueError("covariance must be finite with positive variances")
    return flat
