"""ROS-free inference: load a TorchScript PoseNet and its contract, preprocess, run, decode a pose.

The node and the offline replay both call ``Engine.localize``; every per-frame decision that is not
ROS wiring (crop count under the latency budget, averaging, uncertainty, sanity of the output,
refinement of the pose against a 3D map) lives here or in the modules it uses.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from posenet_ros.camera import Camera, CameraError, FovCheck, fov_check
from posenet_ros.contract import (
    EXTRA_FILE_NAME,
    UNCERTAINTY_MODES,
    Calibration,
    Contract,
    ContractError,
    OutputSpec,
    Preprocessing,
)
from posenet_ros.errors import first_line
from posenet_ros.geometry import (
    Pose,
    quat_average,
    quat_conjugate,
    quat_multiply,
    quat_to_rotation_vector,
    quat_unit,
    rotation_error_deg,
)
from posenet_ros.model_files import torch_file_kind
from posenet_ros.preprocess import CpuPreprocessor, InputError, TorchPreprocessor, check_image, resized_size
from posenet_ros.refine import (
    MapError,
    RefineConfig,
    SceneMap,
    check_map_scene,
    extract_features,
    load_map,
    refine_pose,
)

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PRECISION_CHOICES = ("auto", *PRECISIONS)  # auto: the fastest native precision that agrees with fp32
# Refinement against EngineConfig.map_path (docs/refinement.md): every frame, never, or on the frames
# where refinement's recent time plus the network's single crop fits the latency budget.
REFINE_MODES = ("off", "always", "budget")
REFINE_PROBE_EVERY = 30  # under "budget", frames skipped before refinement's cost is measured again


class EngineError(RuntimeError):
    """Base class of everything the engine refuses; the message is one line."""


class ModelLoadError(EngineError):
    """The model file is missing, not TorchScript, or has no valid contract."""


class NonFiniteOutputError(EngineError):
    """The network produced NaN or infinity; no pose must be published for this frame."""


class ImageError(EngineError):
    """The frame cannot be used (dtype, shape, channels, encoding, size)."""


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[torch.jit.ScriptModule, Contract]:
    """Load a TorchScript file and its contract; refuse files without a valid one."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    if torch_file_kind(path) == "checkpoint":  # torch's own error calls the file corrupted
        raise ModelLoadError(
            f"{path} is a training checkpoint, not an exported model; "
            f"make one with: posenet-train export {path} MODEL.pt"
        )
    extra = {EXTRA_FILE_NAME: ""}
    try:
        module = torch.jit.load(str(path), map_location=map_location, _extra_files=extra)
    except Exception as exc:  # torch raises RuntimeError/ValueError/zipfile errors for non-TorchScript input
        raise ModelLoadError(f"{path}: not a TorchScript file ({first_line(exc)})") from None
    if not extra[EXTRA_FILE_NAME]:
        raise ModelLoadError(
            f"{path}: no posenet contract ({EXTRA_FILE_NAME}) in the file; export it with posenet-train export"
        )
    try:
        contract = Contract.from_json(extra[EXTRA_FILE_NAME])
    except ContractError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    return module, contract


BACKENDS = ("auto", "torchscript", "onnxruntime")
CPU_CHUNK = 16  # crops per forward pass on the CPU
MAX_MC_SAMPLES = 1024
EXTRA_METHODS = ("features", "mc_dropout", "mc_dropout_crops")  # exported besides forward (model.PoseNet)
MC_CROPS_METHOD = "mc_dropout_crops"  # the paper's sampling (posenet_ros.model.PoseNet.mc_dropout_crops)
# mc_dropout's sampling: "paper" (Bayesian PoseNet: per sample a random crop of the resized frame,
# dropout on the inception5b output and after the final fully connected layer; the backbone runs
# per sample), "head" (the first one: the centre crop, or config.crops crops, through the backbone
# once, only the head's dropout sampled), "auto": paper where the file has it (exported by this
# version or later), head for files from before it, which keep the figures they were calibrated with.
MC_SAMPLINGS = ("auto", "paper", "head")
ONNX_SUFFIX = ".onnx"


def load_onnx_session(path: str | Path, threads: int | None) -> tuple[Any, Contract]:
    """An ONNX Runtime CPU session for a file from ``posenet-ros export-onnx`` and its contract (kept
    in the ONNX model's metadata under the same key as in TorchScript files)."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelLoadError(
            "the onnxruntime backend needs the onnxruntime package (pip install onnxruntime)"
        ) from None
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    # Workers spin between the operators of a run (no wake-up per layer) but stop when the run
    # returns, so they neither burn a core between frames nor steal the next frame's preprocessing.
    # Measured here against no spinning: 22 vs 25-29 ms back to back, 25.5 vs 31-34 ms at 10 Hz,
    # same CPU share (51%); spinning without the stop held 96% of a core at 10 Hz.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types for non-ONNX input
        raise ModelLoadError(f"{path}: not an ONNX model ({first_line(exc)})") from None
    text = session.get_modelmeta().custom_metadata_map.get(EXTRA_FILE_NAME, "")
    if not text:
        raise ModelLoadError(
            f"{path}: no posenet contract in the ONNX metadata; export it with posenet-ros export-onnx"
        )
    try:
        return session, Contract.from_json(text)
    except ContractError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None


def cast_frozen_constants(module: torch.jit.ScriptModule, dtype: torch.dtype) -> int:
    """Cast the floating-point weights baked into a frozen graph to ``dtype`` (frozen graphs hold
    weights as constants, so ``module.half()`` cannot reach them). Must run before the first call:
    the graph executor caches its optimized plan. Every exported method has its own graph (forward,
    features, mc_dropout), so each is cast. Returns the number of tensors cast."""
    count = 0
    graphs = [module.graph] + [getattr(module, name).graph for name in EXTRA_METHODS if hasattr(module, name)]
    for graph in graphs:
        for node in graph.findAllNodes("prim::Constant"):
            if node.hasAttribute("value") and node.kindOf("value") == "t":
                tensor = node.t("value")
                if tensor.is_floating_point():
                    node.t_("value", tensor.to(dtype))
                    count += 1
    return count


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return None


def cpu_bf16_support() -> str | None:
    """The ISA this CPU runs bf16 convolutions and matrix products with natively (oneDNN's kernels):
    ``AMX-BF16`` or ``AVX512-BF16``; None elsewhere (AVX2-only x86, most ARM), where torch emulates
    bf16 and it is slower than fp32. From the CPU flags, else torch's own probe of the CPU."""
    if not torch.backends.mkldnn.is_available():
        return None
    flags = cpu_flags()
    if flags is not None:
        amx, avx512 = "amx_bf16" in flags and "amx_tile" in flags, "avx512_bf16" in flags
    else:
        probe = torch.cpu
        amx = bool(getattr(probe, "_is_amx_tile_supported", lambda: False)())
        avx512 = bool(getattr(probe, "_is_avx512_bf16_supported", lambda: False)())
    return "AMX-BF16" if amx else "AVX512-BF16" if avx512 else None


# precision auto: a reduced precision replaces fp32 only when, on every warm-up frame, its pose is
# within these bounds of fp32's and its forward pass is AUTO_MIN_SPEEDUP times faster. A deviation
# d moves a frame's error by at most d (by about d^2 / 2|e| when unrelated to the error e), so
# 0.25% of the scene's largest extent is under a tenth of the demo model's own median error (0.23 m,
# 4% of its 5.6 m extent) even in the worst case; bf16 on the demo's test frames moves the pose
# 3.0 mm median / 8.7 mm max (0.16%) and 0.20 / 0.40 deg (test_backends), fp16 ten times less.
AUTO_POSITION_FRACTION = 0.0025
AUTO_ROTATION_DEG = 0.5
AUTO_MIN_SPEEDUP = 1.1  # below this, timing noise at start-up could pick the slower path
AUTO_FRAMES = 4
# The forward time compared is a low quantile of interleaved rounds, not their median: other load
# on the machine only ever adds time, so the fastest rounds estimate the unloaded cost, and a start
# that shares its cores with a build for most rounds still finds a few quiet ones (issue 16: a
# median of 7 rounds read bf16 102.5 vs fp32 98.9 ms in one loaded start, 16.7 vs 46.6 in another).
# Rounds run until AUTO_ROUNDS or the AUTO_BUDGET_S time budget (at least AUTO_MIN_ROUNDS), the
# order of the precisions alternating from round to round.
AUTO_ROUNDS = 25
AUTO_MIN_ROUNDS = 5
AUTO_BUDGET_S = 1.5  # the timing rounds' share of start-up (about 25 rounds of the demo model here)
AUTO_QUANTILE = 0.2


@dataclass(frozen=True)
class PrecisionTrial:
    """One precision measured at start-up against fp32 on the warm-up frames."""

    precision: str
    forward_ms: float  # forward pass, one crop: the AUTO_QUANTILE quantile of the rounds (what is compared)
    position_max_m: float = 0.0  # largest deviation of the pose from fp32's
    rotation_max_deg: float = 0.0
    non_finite: int = 0  # frames whose output was not finite
    median_ms: float = 0.0  # the rounds' median (load included; for information)
    rounds: int = 0  # timing rounds measured

    def agrees(self, extent: float) -> bool:
        return (
            self.non_finite == 0
            and self.position_max_m <= AUTO_POSITION_FRACTION * extent
            and self.rotation_max_deg <= AUTO_ROTATION_DEG
        )


def choose_precision(trials: dict[str, PrecisionTrial], extent: float) -> tuple[str, str]:
    """precision auto's rule: the fastest trial that agrees with fp32 (see ``PrecisionTrial.agrees``
    and the AUTO_ bounds) and is AUTO_MIN_SPEEDUP x faster than fp32, else fp32. Returns the choice
    and why, on one line. ``extent`` is the scene's largest extent (metres)."""
    base = trials["fp32"]
    bound = f"bounds {AUTO_POSITION_FRACTION * extent * 1000:.1f} mm / {AUTO_ROTATION_DEG} deg"
    notes = []
    best = "fp32"
    for name, t in sorted(trials.items(), key=lambda kv: kv[1].forward_ms):
        if name == "fp32":
            continue
        figures = (
            f"{name} {t.forward_ms:.2f} ms vs fp32 {base.forward_ms:.2f} ms, within "
            f"{t.position_max_m * 1000:.1f} mm / {t.rotation_max_deg:.2f} deg of fp32"
            + (f", {t.non_finite} non-finite" if t.non_finite else "")
        )
        if not t.agrees(extent):
            notes.append(f"{figures}: outside the {bound}")
        elif t.forward_ms * AUTO_MIN_SPEEDUP > base.forward_ms:
            notes.append(f"{figures}: not {AUTO_MIN_SPEEDUP}x faster")
        elif best == "fp32":
            best = name
            notes.insert(0, f"{figures} ({bound})")
    if not notes:
        return "fp32", "fp32 (no reduced precision runs natively here)"
    return best, f"{best}: " + "; ".join(notes)


def warmup_frames(spec: Preprocessing, count: int = AUTO_FRAMES) -> list[np.ndarray]:
    """Seeded rgb8 frames at the model's resize size (4:3): white noise, then smooth random
    scenes with fine texture on top, closer to a camera's statistics than noise alone."""
    rng = np.random.default_rng(0)
    h = spec.resize_shortest_side
    w = h * 4 // 3
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8)]
    while len(frames) < count:
        coarse = rng.uniform(0, 255, (6, 8, 3)).astype(np.float32)
        smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 12, (h, w, 3))
        frames.append(np.clip(smooth, 0, 255).astype(np.uint8))
    return frames


def forward_cost_ms(times_ms: list[float]) -> float:
    """The forward time precision auto compares: the AUTO_QUANTILE quantile of the rounds' times
    (load only adds time, so the fast rounds are the machine's own cost)."""
    return float(np.quantile(np.asarray(times_ms, dtype=np.float64), AUTO_QUANTILE))


def measure_precisions(
    modules: dict[str, Any],
    batches: list[torch.Tensor],
    output: OutputSpec,
    warmup: int,
    rounds: int = AUTO_ROUNDS,
    budget_s: float = AUTO_BUDGET_S,
    clock: Any = time.perf_counter,
) -> dict[str, PrecisionTrial]:
    """precision auto's start-up measurement: each module (by precision, fp32 among them) run on the
    one-crop ``batches`` (fp32 network inputs, cast per precision): its poses against fp32's, and
    its forward time on the first batch over interleaved rounds (every precision once per round,
    the order reversed every other round, so machine noise hits every precision alike) until
    ``rounds`` or ``budget_s`` seconds of timing (at least AUTO_MIN_ROUNDS); the trial's
    ``forward_ms`` is ``forward_cost_ms`` of them. ``clock`` (seconds) is for tests."""

    def run(name: str, batch: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return modules[name](batch.to(PRECISIONS[name])).double().cpu().numpy()

    outputs = {}
    for name in modules:
        for _ in range(max(1, warmup)):  # the JIT specializes (and oneDNN fuses) on the first runs
            run(name, batches[0])
        outputs[name] = np.concatenate([run(name, b) for b in batches])
    times: dict[str, list[float]] = {name: [] for name in modules}
    order = list(modules)
    began = clock()
    for i in range(max(1, rounds)):
        if i >= AUTO_MIN_ROUNDS and clock() - began > budget_s:
            break
        for name in order if i % 2 == 0 else order[::-1]:
            start = clock()
            run(name, batches[0])
            times[name].append((clock() - start) * 1000.0)

    def usable(out: np.ndarray) -> np.ndarray:
        return np.all(np.isfinite(out), axis=1) & np.any(out[:, 3:7] != 0, axis=1)

    # A model whose fp32 output is not finite on some frames (a broken file) is compared on the
    # others; a precision not finite where fp32 is counts as non-finite, so fp32 stays the choice.
    ref = outputs["fp32"]
    ref_ok = usable(ref)
    ref_positions, ref_quats = output.positions(ref[:, :3]), np.zeros((len(ref), 4))
    ref_quats[ref_ok] = quat_unit(ref[ref_ok, 3:7])
    trials = {}
    for name, out in outputs.items():
        ok = usable(out) & ref_ok
        moved = np.linalg.norm(output.positions(out[ok, :3]) - ref_positions[ok], axis=1)
        turned = rotation_error_deg(quat_unit(out[ok, 3:7]), ref_quats[ok]) if ok.any() else np.zeros(0)
        trials[name] = PrecisionTrial(
            name,
            forward_cost_ms(times[name]),
            float(moved.max(initial=0.0)),
            float(np.max(turned, initial=0.0)),
            int((~usable(out)).sum()),
            median_ms=float(np.median(times[name])),
            rounds=len(times[name]),
        )
    return trials


def resolve_device(device: str) -> torch.device:
    """``auto`` = CUDA when available, else CPU with one warning; or an explicit torch device."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        log.warning("CUDA not available; running PoseNet on the CPU")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise EngineError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(f"device {device!r} requested but CUDA is not available")
    if dev.type not in ("cpu", "cuda"):
        raise EngineError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    return dev


def resolve_backend(backend: str, model_path: str | Path) -> str:
    """torchscript or onnxruntime: ``auto`` goes by the file name (.onnx)."""
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    is_onnx = Path(model_path).suffix.lower() == ONNX_SUFFIX
    if backend == "auto":
        return "onnxruntime" if is_onnx else "torchscript"
    if (backend == "onnxruntime") != is_onnx:
        hint = "convert it with posenet-ros export-onnx" if not is_onnx else "use a TorchScript .pt file"
        raise EngineError(f"backend {backend} cannot load {Path(model_path).name}; {hint}")
    return backend


@dataclass(frozen=True)
class Latency:
    preprocess_ms: float
    inference_ms: float
    total_ms: float  # the whole frame: preprocessing, network, decoding and refinement
    refine_ms: float = 0.0  # refinement against the map (0 when it did not run)


@dataclass(frozen=True)
class Localization:
    """One frame's result. ``covariance`` is 6x6 in ROS order (x, y, z, rotX, rotY, rotZ), the
    sample covariance of the crops (``crops`` mode) or of the Monte Carlo dropout samples
    (``mc_dropout``), rotations as rotation vectors about the map axes around the mean, scaled by the
    model's calibration for that mode (in crops mode, for the crop count run, when the model has a
    per-count table); None in ``fixed`` mode or when one crop gives no spread.

    With a map (``EngineConfig.map_path``), ``pose`` and ``covariance`` are the refined ones when
    ``refined`` (the covariance then the PnP's Gauss-Newton one, a lower bound: pixel noise only;
    None when PnP could not determine it), else the network's; ``coarse_pose`` is always the
    network's pose (the same object as ``pose`` when not refined). ``refine_reason`` says why a frame
    that was tried was not refined; it is empty when refined and when refinement did not run.
    ``uncertainty_score`` stays the network's (its calibration is for the network's spread)."""

    pose: Pose
    covariance: np.ndarray | None
    crops: int
    latency: Latency
    overrun: bool
    samples: int = 0  # Monte Carlo dropout samples (0: not in mc_dropout mode)
    uncertainty_score: float | None = None  # position std / the calibration's reference std
    refined: bool = False  # pose and covariance come from PnP against the map
    refine_reason: str = ""  # why a frame that was tried was not refined (one line)
    inliers: int = 0  # PnP inliers (also when refused: too few, too far from the coarse pose)
    coarse_pose: Pose | None = None  # the network's pose; None given means ``pose``
    refine_ms: float = 0.0  # refinement's time, part of latency.total_ms (0 when it did not run)
    refine_attempted: bool = False  # refinement ran on this frame (map loaded, refine on and due)

    def __post_init__(self) -> None:
        if self.coarse_pose is None:
            object.__setattr__(self, "coarse_pose", self.pose)

    @property
    def position_std(self) -> float | None:
        """RMS of the three position standard deviations (metres), from the covariance."""
        return None if self.covariance is None else position_std(self.covariance)


def position_std(covariance: np.ndarray) -> float:
    """RMS of the three position standard deviations (metres) of a 6x6 pose covariance."""
    return float(np.sqrt(max(np.trace(covariance[:3, :3]), 0.0) / 3.0))


class CropBudget:
    """Picks the largest crop count whose predicted cost fits the latency budget.

    Cost model: t(n) = (fixed + per_crop * n) * drift. fixed/per_crop come from calibration at
    warm-up; drift is a running ratio of measured to predicted time, so the choice follows the
    machine's real speed (thermal throttling, other load) as frames are processed."""

    def __init__(self, budget_ms: float | None, max_crops: int, ema: float = 0.2, minimum: int = 1) -> None:
        if max_crops < minimum:
            raise ValueError(f"max_crops must be >= {minimum}, got {max_crops}")
        if budget_ms is not None and not budget_ms > 0:
            raise ValueError(f"latency budget must be > 0 ms, got {budget_ms}")
        self.budget_ms = budget_ms
        self.max_crops = max_crops
        self.ema = ema
        self.fixed_ms = 0.0
        self.per_crop_ms = 0.0
        self.drift = 1.0
        # Powers of two keep batch shapes few (the JIT and CUDA graphs specialize per shape).
        self.candidates = sorted(
            {1 << k for k in range(max_crops.bit_length()) if minimum <= 1 << k <= max_crops} | {max_crops}
        )

    def calibrate(self, samples: dict[int, float]) -> None:
        """Fit fixed + per_crop * n to measured {crops: ms}; one sample means all cost is per crop."""
        ns = np.array(sorted(samples), dtype=float)
        ts = np.array([samples[int(n)] for n in ns])
        if len(ns) == 1:
            self.fixed_ms, self.per_crop_ms = 0.0, float(ts[0] / ns[0])
        else:
            slope, intercept = np.polyfit(ns, ts, 1)
            self.per_crop_ms = max(float(slope), 1e-6)
            self.fixed_ms = max(float(intercept), 0.0)
        self.drift = 1.0

    def predict_ms(self, n: int) -> float:
        return (self.fixed_ms + self.per_crop_ms * n) * self.drift

    def choose(self, reserve_ms: float = 0.0) -> int:
        """The largest count whose predicted cost plus ``reserve_ms`` (time the frame spends on
        something else, such as refinement) fits the budget; the smallest count when none does."""
        if self.budget_ms is None:
            return self.candidates[0]
        fitting = [n for n in self.candidates if self.predict_ms(n) + reserve_ms <= self.budget_ms]
        return fitting[-1] if fitting else self.candidates[0]

    def observe(self, n: int, measured_ms: float) -> None:
        base = self.fixed_ms + self.per_crop_ms * n
        if base > 0 and np.isfinite(measured_ms):
            self.drift += self.ema * (measured_ms / base - self.drift)


@dataclass(frozen=True)
class EngineConfig:
    backend: str = "auto"  # auto: onnxruntime for .onnx files, torchscript otherwise
    device: str = "auto"
    precision: str = "fp32"  # fp32, fp16/bf16 on CUDA, bf16 on CPUs with native bf16, or auto
    threads: int | None = None  # CPU intra-op threads; None leaves torch's default
    crops: int = 1  # crops per frame when no latency budget is set
    max_crops: int = 128
    latency_budget_ms: float | None = None
    uncertainty: str = "crops"  # fixed | crops | mc_dropout (the model must list the mode)
    mc_samples: int = 40  # dropout samples per crop; under a budget, the most it may pick
    # mc_dropout's sampling (MC_SAMPLINGS): head (dropout after the last layer on the crops, the
    # backbone once: fast) stays the default until the paper's sampling (a random crop and dropout
    # on inception5b per sample, about 25x the cost at 40 samples) is shown to calibrate better;
    # paper asks for it, auto takes it where the file has it.
    mc_sampling: str = "head"
    mc_seed: int = 0  # the paper sampling's draws are seeded per frame by this and the frame's pixels
    warmup_iters: int = 5  # the profiling JIT specializes and fuses after a couple of runs
    # Refinement of the network's pose against a 3D map of the scene (docs/refinement.md).
    map_path: str | Path | None = None  # None: no refinement
    refine: str = "always"  # with map_path: "always" every frame, "budget" where it fits, "off" never
    # The query camera: (fx, fy, cx, cy, width, height) in pixels (OpenCV convention, top-left pixel
    # centre at (0, 0)), or a Camera; None: the map's camera, which holds only when the map was
    # built from images of the same camera model as the incoming ones. Frames of another size with
    # the same aspect get the intrinsics scaled to their size. ``Engine.set_camera`` (the node's
    # CameraInfo) replaces it.
    intrinsics: tuple[float, ...] | Camera | None = None  # fx, fy, cx, cy, w, h[, distortion]
    refine_config: RefineConfig = field(default_factory=RefineConfig)
    # A live camera (``set_camera``) whose network view differs from the training camera's by more
    # than this fraction is reported, and cropped to the training view where it is wider.
    fov_tolerance: float = 0.05


@dataclass
class EngineStats:
    frames: int = 0
    overruns: int = 0
    non_finite: int = 0
    crops_histogram: dict[int, int] = field(default_factory=dict)
    refine_attempts: int = 0  # frames refinement ran on
    refined: int = 0  # of those, the ones whose pose is the refined one


def intrinsics_of(value: tuple | list | Camera, where: str = "intrinsics") -> Camera:
    """A ``Camera`` from a Camera or (fx, fy, cx, cy, width, height[, up to five OpenCV distortion
    coefficients]); one-line EngineError."""
    if isinstance(value, Camera):
        k = value
    else:
        try:
            fx, fy, cx, cy, w, h, *distortion = (float(v) for v in value)
            if len(distortion) > 5:
                raise ValueError
        except (TypeError, ValueError):
            raise EngineError(
                f"{where} must be fx, fy, cx, cy, width, height and up to five distortion coefficients, got {value!r}"
            ) from None
        if w != int(w) or h != int(h):
            raise EngineError(f"{where}: width and height must be whole pixels, got {w:g} x {h:g}")
        k = Camera(int(w), int(h), fx, fy, cx, cy, tuple(distortion))
    try:
        return k.check(where)
    except CameraError as exc:
        raise EngineError(str(exc)) from None


def refine_image(image: np.ndarray, encoding: str) -> np.ndarray:
    """The frame as refinement takes it: RGB (H, W, 3), or grey (H, W) for mono8."""
    if encoding == "mono8":
        return image if image.ndim == 2 else image[:, :, 0]
    if encoding in ("bgr8", "bgra8"):
        return cv2.cvtColor(image[:, :, :3], cv2.COLOR_BGR2RGB)
    if encoding == "rgba8":
        return np.ascontiguousarray(image[:, :, :3])
    return image


class Engine:
    """Load once, call ``localize`` per frame. Not thread-safe: one caller thread at a time (the
    node's worker); the preprocessing buffer is reused between frames."""

    def __init__(self, model_path: str | Path, config: EngineConfig | None = None) -> None:
        self.config = config = config or EngineConfig()
        if config.precision not in PRECISION_CHOICES:
            raise EngineError(f"unknown precision {config.precision!r}; use one of {', '.join(PRECISION_CHOICES)}")
        if config.crops < 1 or config.max_crops < 1 or config.crops > config.max_crops:
            raise EngineError(f"crops must be in 1..max_crops, got crops={config.crops} max_crops={config.max_crops}")
        self.backend = resolve_backend(config.backend, model_path)
        self.device = torch.device("cpu") if self.backend == "onnxruntime" else resolve_device(config.device)
        if self.backend == "onnxruntime" and config.device not in ("auto", "cpu"):
            raise EngineError(f"the onnxruntime backend runs on the CPU; device {config.device!r} needs torchscript")
        if config.precision != "auto" and (refusal := self._precision_refusal(config.precision)):
            raise EngineError(refusal)
        if config.threads is not None:
            if config.threads < 1:
                raise EngineError(f"threads must be >= 1, got {config.threads}")
            torch.set_num_threads(config.threads)
        if self.backend == "onnxruntime":
            self.session, self.contract = load_onnx_session(model_path, config.threads)
            self._onnx_input = self.session.get_inputs()[0].name
            self.module = None
        else:
            if self.device.type == "cpu":
                # oneDNN graph fusion (conv + bias + ReLU, concat) cuts CPU inference by about a third
                # on this model with bit-for-bit-level agreement; it is a process-wide JIT switch.
                torch.jit.enable_onednn_fusion(True)
            self.module, self.contract = load_model(model_path, map_location=self.device)
            self.module.eval()
        if config.uncertainty not in UNCERTAINTY_MODES:
            raise EngineError(
                f"unknown uncertainty mode {config.uncertainty!r}; use one of {', '.join(UNCERTAINTY_MODES)}"
            )
        if config.uncertainty not in self.contract.uncertainty_modes:
            hint = "; export it with --mc-dropout (TorchScript)" if config.uncertainty == "mc_dropout" else ""
            raise EngineError(
                f"model supports uncertainty modes {', '.join(self.contract.uncertainty_modes)}, "
                f"not {config.uncertainty}{hint}"
            )
        self.mc = config.uncertainty == "mc_dropout"
        if self.mc and not 2 <= config.mc_samples <= MAX_MC_SAMPLES:
            raise EngineError(f"mc_samples must be in 2..{MAX_MC_SAMPLES}, got {config.mc_samples}")
        self.mc_sampling = self._resolve_mc_sampling() if self.mc else ""
        self._full_frame: dict[tuple[int, int], Any] = {}  # paper sampling: whole-frame preprocessors
        self.calibration = self.contract.calibration.get(config.uncertainty)
        spec = self.contract.preprocessing
        # precision: what runs (config.precision may be auto); why, and auto's start-up figures.
        self.precision_trials: dict[str, PrecisionTrial] = {}
        if config.precision == "auto":
            self.precision, self.precision_reason = self._choose_precision(model_path)
            log.info("precision auto: %s", self.precision_reason)
        else:
            self.precision, self.precision_reason = config.precision, "set in the configuration"
            if self.precision != "fp32":
                cast_frozen_constants(self.module, PRECISIONS[self.precision])
        self.dtype = PRECISIONS[self.precision]
        self.preprocess = (
            TorchPreprocessor(spec, self.device, self.dtype)
            if self.device.type == "cuda"
            else CpuPreprocessor(spec, threads=config.threads or torch.get_num_threads())
        )
        try:
            # The budget picks the crop count, or in mc_dropout mode the sample count.
            self.budget = (
                CropBudget(config.latency_budget_ms, config.mc_samples, minimum=2)  # a spread needs two
                if self.mc
                else CropBudget(config.latency_budget_ms, config.max_crops)
            )
        except ValueError as exc:
            raise EngineError(str(exc)) from None
        self.stats = EngineStats()
        self._load_map()
        self._warm_up()

    def _resolve_mc_sampling(self) -> str:
        """mc_dropout's sampling (MC_SAMPLINGS) for this file; one-line EngineError when "paper" is
        asked of a file from before it."""
        wanted = self.config.mc_sampling
        if wanted not in MC_SAMPLINGS:
            raise EngineError(f"unknown mc_sampling {wanted!r}; use one of {', '.join(MC_SAMPLINGS)}")
        has = self.module is not None and hasattr(self.module, MC_CROPS_METHOD)
        if wanted == "paper" and not has:
            raise EngineError(
                "mc_sampling paper needs a model exported with the paper's sampling (this file predates it); "
                "export it again with posenet-train export --mc-dropout, or use mc_sampling head"
            )
        chosen = ("paper" if has else "head") if wanted == "auto" else wanted
        log.info(
            "mc_dropout sampling: %s",
            "paper (a random crop and dropout on inception5b and the head per sample)"
            if chosen == "paper"
            else "head (centre crop, the head's dropout only)"
            + ("; this file predates the paper's sampling" if not has else ""),
        )
        return chosen

    def _load_map(self) -> None:
        """Refinement's map and camera (``config.map_path``, ``config.intrinsics``); one-line
        EngineError for a bad file, a map of another scene or bad intrinsics."""
        config = self.config
        self.scene_map: SceneMap | None = None
        self.intrinsics: Camera | None = None
        self._scaled: dict[tuple[int, int], Camera] = {}
        self._refine_ema_ms = 0.0
        self._refine_skipped = 0
        self.live_camera: Camera | None = None
        self.camera_mismatch = ""  # why the live camera is not used for these images ("": it is)
        self.fov: FovCheck | None = None
        self._fov_windows: dict[tuple[int, int], tuple[int, int, int, int]] = {}
        if config.refine not in REFINE_MODES:
            raise EngineError(f"unknown refine mode {config.refine!r}; use one of {', '.join(REFINE_MODES)}")
        self.refine_mode = config.refine  # "always" without a map: nothing to refine against
        if config.map_path is None:
            if config.intrinsics is not None:
                raise EngineError("intrinsics are for refinement, which needs a map (map_path)")
            return
        try:
            self.scene_map = load_map(config.map_path)
            check_map_scene(self.scene_map, self.contract.scene.name, str(config.map_path))
        except MapError as exc:
            raise EngineError(str(exc)) from None
        self.intrinsics = self.scene_map.intrinsics if config.intrinsics is None else intrinsics_of(config.intrinsics)
        log.info(
            "refinement map %s: scene %s, %d images, %d points; intrinsics %s",
            config.map_path,
            self.scene_map.scene,
            len(self.scene_map.image_names),
            len(self.scene_map.points),
            "from the map" if config.intrinsics is None else "configured",
        )

    @property
    def refining(self) -> bool:
        """Whether frames may be refined now (a map is loaded and the mode is not "off")."""
        return self.scene_map is not None and self.refine_mode != "off"

    def _refine_fits(self) -> bool:
        """Under refine "budget": whether this frame has room for refinement (its recent time plus
        one crop of the network within the budget). Skipped frames count, and every
        ``REFINE_PROBE_EVERY``-th one refines anyway so the estimate follows the machine. Without
        a latency budget it refines every frame (the node refuses refine budget without one)."""
        budget = self.budget.budget_ms
        if self.refine_mode != "budget" or budget is None:
            return True
        fits = self._refine_ema_ms + self.budget.predict_ms(self.budget.candidates[0]) <= budget
        self._refine_skipped = 0 if fits or self._refine_skipped >= REFINE_PROBE_EVERY else self._refine_skipped + 1
        return fits or self._refine_skipped == 0

    def set_refine(self, mode: str) -> None:
        """Switch refinement live (REFINE_MODES); "always" and "budget" need the map loaded at start."""
        if mode not in REFINE_MODES:
            raise EngineError(f"unknown refine mode {mode!r}; use one of {', '.join(REFINE_MODES)}")
        if mode != "off" and self.scene_map is None:
            raise EngineError(f"refine {mode} needs a map; start the engine with map_path")
        self.refine_mode = mode

    def intrinsics_for(self, width: int, height: int) -> Camera:
        """The refinement intrinsics for a frame of this size (scaled when it differs, same aspect);
        ImageError otherwise."""
        k = self._scaled.get((width, height))
        if k is None:
            if len(self._scaled) > 16:  # a camera changing size all the time: do not grow forever
                self._scaled.clear()
            camera = self._live_camera_for(width, height) or self.intrinsics
            try:
                k = self._scaled[(width, height)] = camera.scaled(width, height)
            except CameraError as exc:
                raise ImageError(f"refinement: {exc}; give the camera's intrinsics at this size") from None
        return k

    def _live_camera_for(self, width: int, height: int) -> Camera | None:
        """The live camera where its images have this aspect; None (and ``camera_mismatch`` says
        why) where they do not: a CameraInfo calibrated at another resolution's aspect describes
        some other image, so refinement keeps the map's camera and nothing is cropped."""
        live = self.live_camera
        if live is None:
            return None
        try:
            live.scaled(width, height)
        except CameraError:
            self.camera_mismatch = (
                f"CameraInfo is {live.width}x{live.height}, the images {width}x{height} (another aspect): "
                "not used (refinement keeps the map's camera, no field-of-view crop)"
            )
            return None
        self.camera_mismatch = ""
        return live

    def set_camera(self, camera: Camera | None) -> FovCheck | None:
        """The live camera (the node's CameraInfo): refinement's intrinsics from now on (over the
        map's and ``config.intrinsics``), and its field of view checked against the training
        camera's (``contract.camera``): reported in ``self.fov``, and where the live view is wider,
        frames are cropped to the training view before the network sees them. None: forget it."""
        if camera == self.live_camera:
            return self.fov
        self.live_camera = camera
        self._scaled.clear()
        self._fov_windows.clear()
        if camera is None:
            self.fov = None
            return None
        pre = self.contract.preprocessing
        self.fov = fov_check(
            camera,
            self.contract.camera,
            pre.resize_shortest_side,
            pre.input_width,
            pre.input_height,
            self.config.fov_tolerance,
        )
        report = log.warning if self.fov.warning else log.info
        report("camera %dx%d: %s", camera.width, camera.height, self.fov.message)
        return self.fov

    def _network_view(self, image: np.ndarray) -> np.ndarray:
        """The part of ``image`` the network sees: the training camera's view (``set_camera``)."""
        if self.fov is None or self.fov.window is None:
            return image
        height, width = image.shape[:2]
        window = self._fov_windows.get((width, height))
        if window is None:
            if len(self._fov_windows) > 16:
                self._fov_windows.clear()
            if self._live_camera_for(width, height) is None:  # another aspect: no crop fits
                self._fov_windows[(width, height)] = (0, 0, width, height)
                return image
            x0, y0, w, h = self.fov.window
            sx, sy = width / self.live_camera.width, height / self.live_camera.height
            window = (round(x0 * sx), round(y0 * sy), max(round(w * sx), 1), max(round(h * sy), 1))
            self._fov_windows[(width, height)] = window
        x0, y0, w, h = window
        return image[y0 : y0 + h, x0 : x0 + w]

    def _precision_refusal(self, precision: str) -> str | None:
        """Why this engine cannot run ``precision`` (one line), or None when it can."""
        if precision == "fp32":
            return None
        if self.backend == "onnxruntime":
            return (
                f"precision {precision} runs on the torchscript backend; onnxruntime runs fp32 (int8: a quantized file)"
            )
        if self.device.type == "cuda":
            return None
        if precision == "fp16":
            return "precision fp16 needs a CUDA device; use fp32 (or bf16 where the CPU has it) on the CPU"
        if cpu_bf16_support() is None:
            return (
                "precision bf16 on the CPU needs native bf16 (AMX-BF16 or AVX512-BF16), which this CPU lacks "
                "(emulated bf16 is slower than fp32); use fp32 or auto"
            )
        return None

    def _choose_precision(self, model_path: str | Path) -> tuple[str, str]:
        """precision auto: time and compare every precision this device runs natively against fp32
        on the warm-up frames (``measure_precisions``), keep the module ``choose_precision`` picks."""
        candidates = [p for p in PRECISIONS if self._precision_refusal(p) is None]
        if self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            candidates.remove("bf16")
        if candidates == ["fp32"]:
            return "fp32", "fp32 (no reduced precision runs natively here)"
        modules = {"fp32": self.module}
        for p in candidates[1:]:
            modules[p] = load_model(model_path, map_location=self.device)[0].eval()
            cast_frozen_constants(modules[p], PRECISIONS[p])
        spec = self.contract.preprocessing
        full = TorchPreprocessor(spec, self.device) if self.device.type == "cuda" else CpuPreprocessor(spec)
        batches = [full(f, "rgb8", 1) for f in warmup_frames(spec)]
        self.precision_trials = measure_precisions(modules, batches, self.contract.output, self.config.warmup_iters)
        choice, reason = choose_precision(self.precision_trials, max(self.contract.scene.extent))
        self.module = modules[choice]
        return choice, reason

    def set_latency_budget(self, budget_ms: float | None) -> None:
        """Change the budget live (None: no budget). The cost model calibrated at warm-up stays."""
        if budget_ms is not None and not budget_ms > 0:
            raise EngineError(f"latency budget must be > 0 ms, got {budget_ms}")
        self.budget.budget_ms = budget_ms

    # -- running the network -------------------------------------------------------------------

    def _forward_mc(self, batch: torch.Tensor, samples: int) -> np.ndarray:
        """(len(batch) * samples) x 7 dropout samples from the model's exported sampling method."""
        with torch.inference_mode():
            raw = self.module.mc_dropout(batch.to(self.dtype), samples)
        return raw.float().cpu().numpy().astype(np.float64)

    def _forward_mc_crops(self, batch: torch.Tensor, seed: int) -> np.ndarray:
        """len(batch) x 7: one paper-sampling pose per crop, dropout drawn from torch's generator
        seeded with ``seed`` (forked: the caller's generator state is left as it was). CPU batches
        run in chunks of CPU_CHUNK, as crops do."""
        cuda = self.device.type == "cuda"
        devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()] if cuda else []
        step = len(batch) if cuda else CPU_CHUNK
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(seed)
            raw = torch.cat(
                [self.module.mc_dropout_crops(batch[i : i + step].to(self.dtype)) for i in range(0, len(batch), step)]
            )
        return raw.float().cpu().numpy().astype(np.float64)

    def mc_crops(
        self, image: np.ndarray, encoding: str, samples: int
    ) -> tuple[torch.Tensor, list[tuple[int, int]], int]:
        """The paper sampling's input for a frame: ``samples`` crops of the frame resized as training
        resizes it, at offsets drawn uniformly over the free range (training's random crops), their
        (y, x) offsets in the resized frame, and the seed of the frame's dropout draws. Everything
        is drawn from a generator seeded by ``config.mc_seed`` and a CRC of the frame's pixels, so a
        frame gives the same samples whatever came before it. InputError for an unusable frame."""
        image = check_image(image, encoding)
        spec = self.contract.preprocessing
        rh, rw = resized_size(image.shape[0], image.shape[1], spec.resize_shortest_side)
        full = self._full_frame.get((rh, rw))
        if full is None:
            if len(self._full_frame) > 8:  # a camera changing size all the time: do not grow forever
                self._full_frame.clear()
            whole = replace(spec, input_height=rh, input_width=rw)  # the crop is the whole resized frame
            full = self._full_frame[(rh, rw)] = (
                TorchPreprocessor(whole, self.device, self.dtype)
                if self.device.type == "cuda"
                else CpuPreprocessor(whole)
            )
        crc = zlib.crc32(np.ascontiguousarray(image).data)
        rng = np.random.default_rng([self.config.mc_seed, crc])
        ys = rng.integers(0, rh - spec.input_height + 1, samples)
        xs = rng.integers(0, rw - spec.input_width + 1, samples)
        seed = int(rng.integers(0, 2**62))
        frame = full(image, encoding, 1)
        h, w = spec.input_height, spec.input_width
        batch = torch.cat([frame[:, :, y : y + h, x : x + w] for y, x in zip(ys, xs, strict=True)])
        offsets = [(int(y), int(x)) for y, x in zip(ys, xs, strict=True)]
        return batch.contiguous(memory_format=torch.channels_last), offsets, seed

    def _prepare(self, image: np.ndarray, encoding: str, crops: int, samples: int) -> tuple[torch.Tensor, int]:
        """The network input of a frame and, for the paper sampling, its dropout seed (else 0)."""
        if self.mc and self.mc_sampling == "paper":
            batch, _, seed = self.mc_crops(image, encoding, samples)
            return batch, seed
        return self.preprocess(image, encoding, crops), 0

    def _run(self, batch: torch.Tensor, count: int, seed: int = 0) -> np.ndarray:
        if not self.mc:
            return self._forward(batch)
        return self._forward_mc_crops(batch, seed) if self.mc_sampling == "paper" else self._forward_mc(batch, count)

    def _forward(self, batch: torch.Tensor) -> np.ndarray:
        """N x 7 float64 network outputs. On the CPU, large crop batches run in chunks: past a
        few crops batching buys nothing there, and a 128-crop batch's activations overflow the
        caches (measured here: 37 ms per crop in one 128-crop batch, 29 ms in chunks of 16)."""
        if self.device.type == "cpu" and len(batch) > CPU_CHUNK:
            return np.concatenate([self._forward(batch[i : i + CPU_CHUNK]) for i in range(0, len(batch), CPU_CHUNK)])
        if self.module is None:
            # NCHW copy in NumPy, not torch: a torch op would wake torch's OpenMP pool, whose
            # spinning threads then compete with ONNX Runtime's for the same cores.
            image = np.ascontiguousarray(batch.numpy())
            raw = self.session.run(None, {self._onnx_input: image})[0]
            return raw.astype(np.float64)
        with torch.inference_mode():
            # CPU input is fp32 from the preprocessor: cast it (a no-op in fp32 and on CUDA, where
            # the torch preprocessor already gives the dtype; keeps channels-last).
            raw = self.module(batch.to(self.dtype))
        # The only host sync: N x 7 numbers.
        return raw.float().cpu().numpy().astype(np.float64)

    def _warm_up(self) -> None:
        """Run the graph until the JIT has specialized it, then calibrate the budget's cost model
        (per crop, or per dropout sample in mc_dropout mode)."""
        spec = self.contract.preprocessing
        rng = np.random.default_rng(0)
        frame = rng.integers(0, 256, (spec.resize_shortest_side, spec.resize_shortest_side * 4 // 3, 3), dtype=np.uint8)
        first = self.config.mc_samples if self.mc and self.budget.budget_ms is None else self.budget.candidates[0]
        for _ in range(max(1, self.config.warmup_iters)):
            self._time_frame(frame, first)
        samples = {first: self._time_frame(frame, first)}
        if self.budget.budget_ms is not None and self.budget.max_crops > 1:
            n = min(self.budget.max_crops, 8)
            self._time_frame(frame, n)  # let the JIT specialize this shape first
            samples[n] = self._time_frame(frame, n)
        self.budget.calibrate(samples)
        if self.scene_map is not None:  # builds the detector; its first call is slower
            extract_features(frame, self.scene_map.features)

    def _time_frame(self, frame: np.ndarray, n: int) -> float:
        """ms for one frame with ``n`` crops (or ``n`` dropout samples per crop in mc_dropout mode)."""
        start = time.perf_counter()
        batch, seed = self._prepare(frame, "rgb8", self.config.crops if self.mc else n, n)
        self._run(batch, n, seed)
        return (time.perf_counter() - start) * 1000.0

    # -- public API ----------------------------------------------------------------------------

    def localize(
        self, image: np.ndarray, encoding: str = "rgb8", crops: int | None = None, refine: bool = True
    ) -> Localization:
        """Pose of the camera that took ``image`` (HxWxC uint8 in ``encoding``).

        ``crops`` forces a crop count; otherwise the latency budget picks it (or ``config.crops``
        when no budget is set). In mc_dropout mode ``mc_samples`` poses are drawn (or as many as the
        budget allows): with the paper sampling each from its own random crop (``mc_crops``;
        ``Localization.crops`` is then the sample count), with the head sampling from the centre crop.
        With a map (``config.map_path``, refine "always", or "budget" where the budget leaves
        room) the network's pose is refined against it, unless ``refine`` is False (the node's
        ``refine_rate_hz``) (``posenet_ros.refine.refine_pose``); a frame that is
        not refined keeps the network's pose and says why (``Localization.refine_reason``). Under a
        latency budget the crop count leaves room for refinement's recent time. Raises ImageError
        for unusable frames (also a frame whose aspect differs from the refinement intrinsics') and
        NonFiniteOutputError when the network output is not finite."""
        refining = self.refining and refine and self._refine_fits()
        reserve = self._refine_ema_ms if refining else 0.0  # the budget leaves room for refinement
        if self.mc:
            # Paper sampling: a random crop per sample. Head sampling: dropout samples of each of
            # ``config.crops`` crops, pooled (one crop: the centre).
            samples = self.budget.choose(reserve) if self.budget.budget_ms is not None else self.config.mc_samples
            crops, count = (samples if self.mc_sampling == "paper" else self.config.crops), samples
        else:
            if crops is None:
                crops = self.budget.choose(reserve) if self.budget.budget_ms is not None else self.config.crops
            if not 1 <= crops <= self.config.max_crops:
                raise EngineError(f"crop count must be in 1..{self.config.max_crops}, got {crops}")
            samples, count = 0, crops
        t0 = time.perf_counter()
        try:
            batch, seed = self._prepare(self._network_view(image), encoding, crops, samples)
        except InputError as exc:
            raise ImageError(str(exc)) from None
        intrinsics = self.intrinsics_for(image.shape[1], image.shape[0]) if refining else None
        t1 = time.perf_counter()
        raw = self._run(batch, count, seed)
        t2 = time.perf_counter()
        self.stats.frames += 1
        if not np.all(np.isfinite(raw)):
            self.stats.non_finite += 1
            raise NonFiniteOutputError(f"network output is not finite ({len(raw)} sample(s)); frame dropped")
        pose, covariance = self._decode(raw, crops)
        t3 = time.perf_counter()
        self.budget.observe(count, (t3 - t0) * 1000.0)  # the cost model is the network's part only
        cal = self.calibration_for(crops)
        score = None
        if cal is not None and covariance is not None:
            score = position_std(covariance) / cal.reference_position_std
        coarse = pose
        refined, reason, inliers, refine_ms = False, "", 0, 0.0
        if refining:
            result = refine_pose(
                refine_image(image, encoding), intrinsics, coarse, self.scene_map, self.config.refine_config
            )
            refine_ms = (time.perf_counter() - t3) * 1000.0
            self._refine_ema_ms += 0.2 * (refine_ms - self._refine_ema_ms)
            refined, reason, inliers = result.refined, result.reason, result.inliers
            self.stats.refine_attempts += 1
            if refined:
                self.stats.refined += 1
                pose, covariance = result.pose, result.covariance
        total_ms = (time.perf_counter() - t0) * 1000.0
        budget = self.budget.budget_ms
        overrun = budget is not None and total_ms > budget
        self.stats.overruns += int(overrun)
        self.stats.crops_histogram[crops] = self.stats.crops_histogram.get(crops, 0) + 1
        latency = Latency((t1 - t0) * 1000.0, (t2 - t1) * 1000.0, total_ms, refine_ms)
        return Localization(
            pose,
            covariance,
            crops,
            latency,
            overrun,
            samples,
            score,
            refined=refined,
            refine_reason=reason,
            inliers=inliers,
            coarse_pose=coarse,
            refine_ms=refine_ms,
            refine_attempted=refining,
        )

    def calibration_for(self, crops: int) -> Calibration | None:
        """The calibration of a frame run with ``crops`` crops: in crops mode the model's entry for
        that count when its contract has a per-count table (``Calibration.for_crops``), else the
        mode's single entry; None when the model has none (or ``self.calibration`` was cleared)."""
        if self.calibration is None:
            return None
        return self.calibration if self.mc else self.calibration.for_crops(crops)

    def _decode(self, raw: np.ndarray, crops: int) -> tuple[Pose, np.ndarray | None]:
        positions = self.contract.output.positions(raw[:, :3])
        try:
            quats = quat_unit(raw[:, 3:7])
        except ValueError:
            self.stats.non_finite += 1
            raise NonFiniteOutputError("network output has a zero quaternion; frame dropped") from None
        if len(raw) == 1:
            return Pose(positions[0], quats[0]), None
        mean_q = quat_average(quats)
        pose = Pose(positions.mean(axis=0), mean_q)
        if self.config.uncertainty == "fixed":
            return pose, None
        cov = spread_covariance(positions, quats, mean_q)
        cal = self.calibration_for(crops)
        return pose, cov if cal is None else calibrated(cov, cal)


def calibrated(cov: np.ndarray, cal: Calibration) -> np.ndarray:
    """Scale the position block by ``position_scale``, the orientation block by
    ``orientation_scale`` and the cross terms by the geometric mean (stays positive semi-definite)."""
    scale = np.sqrt(np.array([cal.position_scale] * 3 + [cal.orientation_scale] * 3))
    return cov * np.outer(scale, scale)


def spread_covariance(positions: np.ndarray, quats: np.ndarray, mean_q: np.ndarray) -> np.ndarray:
    """6x6 sample covariance of [position, rotation vector of q_i * mean^-1] (rotation errors
    about the map axes, the frame of the pose's header). Hemisphere-safe via the log map."""
    deltas = quat_to_rotation_vector(quat_multiply(quats, quat_conjugate(mean_q)))
    samples = np.concatenate([positions, deltas], axis=1)
    return np.atleast_2d(np.cov(samples, rowvar=False, ddof=1))
