"""The node's parameters: one table (names, defaults, descriptions, ranges, choices, read-only),
their validation, and the validated settings the rest of the node reads. The YAML, the launch file
and the README are checked against the table."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from posenet_ros.engine import EngineConfig

TF_MODES = ("map_to_camera", "map_to_base", "map_to_odom", "none")
POSE_FRAMES = ("auto", "camera", "base")
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
        "map_path",
        "",
        "3D map of the scene for refinement (posenet-train map); absolute or relative to the share dir; "
        "empty: PoseNet's pose only",
        read_only=True,
    ),
    ParamSpec(
        "refine",
        "always",
        "with map_path: always (every frame), budget (on frames where refinement's recent time fits "
        "latency_budget_ms beside one crop) or off (map loaded, not used)",
        read_only=True,
        choices=("always", "budget", "off"),
    ),
    ParamSpec(
        "refine_rate_hz",
        0.0,
        "refine about this often (image time, at most 1/0.9 times it); PoseNet's pose between; 0: every frame",
        range=(0.0, 1000.0),
    ),
    ParamSpec(
        "camera_info_topic",
        "camera_info",
        "sensor_msgs/CameraInfo of the camera: refinement's intrinsics (over the map's) and the field-of-view "
        "check against the training camera; empty: not subscribed",
        read_only=True,
    ),
    ParamSpec(
        "camera_info_rectified",
        False,
        "the images are rectified (image_rect): their camera is CameraInfo's P, without distortion; "
        "false: the raw images' K and D",
        read_only=True,
    ),
    ParamSpec(
        "fov_tolerance",
        0.05,
        "how far an edge of the live view may lie from the training camera's (relative to half its field of view) "
        "before it is reported (and cropped where wider)",
        read_only=True,
        range=(0.0, 1.0),
    ),
    ParamSpec(
        "backend",
        "auto",
        "torchscript, or onnxruntime for a .onnx model (CPU); auto: by the file name",
        read_only=True,
        choices=("auto", "torchscript", "onnxruntime"),
    ),
    ParamSpec("device", "auto", f"inference device: {DEVICES_HELP}", read_only=True),
    ParamSpec(
        "precision",
        "auto",
        "fp32; fp16/bf16 on CUDA, bf16 on CPUs with native bf16 (AMX, AVX512-BF16); auto: the fastest native "
        "precision whose poses agree with fp32 on the warm-up frames",
        read_only=True,
        choices=("fp32", "fp16", "bf16", "auto"),
    ),
    ParamSpec(
        "threads", 0, "CPU threads, inference and preprocessing (0: torch default)", read_only=True, range=(0, 256)
    ),
    ParamSpec("compressed", False, "subscribe to <image>/compressed (sensor_msgs/CompressedImage)", read_only=True),
    ParamSpec("map_frame", "map", "frame_id of the published poses and parent of the published TF"),
    ParamSpec("camera_frame", "", "camera optical frame; empty: the image header's frame_id"),
    ParamSpec("base_frame", "base_link", "robot body frame (pose_frame base, tf_mode map_to_base and map_to_odom)"),
    ParamSpec("odom_frame", "odom", "odometry frame (tf_mode map_to_odom)"),
    ParamSpec(
        "tf_mode",
        "map_to_camera",
        "which transform to broadcast; never one that would give a frame a second parent",
        choices=TF_MODES,
    ),
    ParamSpec(
        "pose_frame",
        "auto",
        "whose pose the pose topics carry: camera, base (base_frame, via the static base<-camera TF); "
        "auto: base in tf_mode map_to_base and map_to_odom, else camera",
        choices=POSE_FRAMES,
    ),
    ParamSpec("transform_tolerance", 0.1, "seconds map->odom is future-dated (as AMCL)", range=(0.0, 10.0)),
    ParamSpec(
        "tf_timeout", 0.1, "seconds to wait for odom<-base at the image stamp (odometry arrives late)", range=(0.0, 5.0)
    ),
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
    ParamSpec(
        "initial_pose_topic",
        "initialpose",
        "where ~/publish_initial_pose (std_srvs/Trigger) sends the next good base_frame pose (AMCL's)",
        read_only=True,
    ),
    ParamSpec("initial_pose_on_start", False, "also send the first good pose after start-up to initial_pose_topic"),
    ParamSpec("diagnostics_window", 10.0, "seconds the rates and levels in /diagnostics look back", True, (0.5, 600.0)),
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
            map_path=self.map_path or None,
            refine=self.refine,
            fov_tolerance=self.fov_tolerance,
        )
        return replace(config, **overrides)

    @property
    def pose_of_base(self) -> bool:
        """True when the pose topics carry base_frame's pose rather than the camera's."""
        if self.pose_frame == "auto":
            return self.tf_mode in ("map_to_base", "map_to_odom")
        return self.pose_frame == "base"

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
        if merged["refine"] == "budget" and not merged["latency_budget_ms"] > 0:
            return "refine budget needs latency_budget_ms > 0 (the budget it refines within)"
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
