"""The benchmark suite (``posenet-ros bench``): every figure next to a baseline measured in the same
run, on the same frames, with paths interleaved in rounds so machine noise hits them alike.

Cases:
1. End to end per frame (640x480 and 1920x1080 bgr8 ``sensor_msgs/Image`` in, pose out, centre
   crop): ours, per backend, against a baseline built the way public PoseNet ports do it:
   cv_bridge-style copy of the message, PIL resize of the shortest side and centre crop,
   torchvision-style ToTensor/Normalize, eager model under ``no_grad``.
2. Preprocessing alone (conversion + resize + crop + normalize): ours against the baseline's.
3. Dense crops: 1, 8, 32, 128 crops per frame, and the crop counts the latency budget picks at
   50 and 100 ms.
4. Replay throughput (frames/s) of ``posenet-ros replay`` on a generated bag.
5. Memory: peak RSS, and RSS after 1,000 and after 10,000 frames.
6. Paced: latency and CPU use when frames come at a camera's rate (10 Hz) instead of back to back,
   as the node sees them: idle worker threads go to sleep between frames and must be woken.
7. GPU: case 1's 640x480 centre crop on a CUDA device in each precision (fp32, fp16, bf16) against
   the baseline run on the same device, ms per frame at 128 crops, and how far each reduced
   precision moves the pose from fp32 on the same frames. Without CUDA it is reported as not
   measured; ``--gpu-device cpu`` runs the same case on the CPU (fp32 timing, reduced-precision
   numerics only), which is how it is tested on machines without a GPU.

Case 1 also races each precision this CPU runs (issue 16): fp32 (the float32 paths), bf16 on CPUs
with native bf16 (torchscript, ``precision bf16``; elsewhere reported as not native, with the
engine's reason), int8 (onnxruntime-int8), and the engine with ``precision auto``, whose choice
and reason are reported; and on the same frames, how far bf16 and int8 move each frame's pose
from fp32 (median and max, mm and degrees). The machine section reports the CPU's ISA.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posenet_ros.contract import Contract, Preprocessing
from posenet_ros.engine import (
    PRECISIONS,
    Engine,
    EngineConfig,
    EngineError,
    cast_frozen_constants,
    cpu_bf16_support,
    cpu_flags,
    load_model,
    resolve_device,
)
from posenet_ros.errors import first_line
from posenet_ros.export import export_torchscript
from posenet_ros.geometry import quat_unit, rotation_error_deg
from posenet_ros.image_codec import RawImage, decode_image, encode_image
from posenet_ros.model import PoseNet
from posenet_ros.preprocess import CpuPreprocessor, TorchPreprocessor

SIZES = ((640, 480), (1920, 1080))
# Bench path -> engine backend. The headline compares float32 paths (the ones held to the reference
# by the agreement tests); int8 trades accuracy for speed and is reported beside it.
PATH_BACKENDS = {"torchscript": "torchscript", "onnxruntime": "onnxruntime", "onnxruntime-int8": "onnxruntime"}
FLOAT_PATHS = ("torchscript", "onnxruntime")
CROP_COUNTS = (1, 8, 32, 128)
BUDGETS_MS = (50.0, 100.0)
GPU_CROPS = 128  # the H100 target's dense-crop count
# The ISA names the machine section reports, each from the /proc/cpuinfo flags it needs.
ISA_FLAGS = (
    ("AVX2", ("avx2",)),
    ("AVX-512", ("avx512f",)),
    ("AVX512-VNNI", ("avx512_vnni",)),
    ("AVX512-BF16", ("avx512_bf16",)),
    ("AMX-BF16", ("amx_tile", "amx_bf16")),
    ("AMX-INT8", ("amx_tile", "amx_int8")),
)
BF16_PATH = "torchscript-bf16"  # case 1's bf16 row: the torchscript engine with precision bf16
AUTO_PATH = "auto"  # case 1's row of the engine with precision auto
AGREEMENT_FRAMES = 16


def cpu_isa(flags: set[str] | None = None) -> dict[str, Any]:
    """Which of ``ISA_FLAGS`` this CPU has (``flags``: default /proc/cpuinfo's), and a summary
    line; None per ISA where the flags cannot be read (not Linux)."""
    flags = cpu_flags() if flags is None else flags
    if flags is None:
        return {**{name: None for name, _ in ISA_FLAGS}, "summary": "unknown (no /proc/cpuinfo flags)"}
    have = {name: all(f in flags for f in needed) for name, needed in ISA_FLAGS}
    return {**have, "summary": ", ".join(name for name, ok in have.items() if ok) or "none of " + "/".join(have)}


def synthetic_frames(n: int, height: int = 480, width: int = 640, seed: int = 0) -> list[np.ndarray]:
    """Deterministic textured BGR frames (smooth gradients plus noise), cheap to make."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for i in range(n):
        base = 127 + 60 * np.sin(xx / (17 + i) + i) + 50 * np.cos(yy / (23 + 2 * i))
        noise = rng.normal(0, 12, (height, width, 3))
        frames.append(np.clip(base[:, :, None] + noise, 0, 255).astype(np.uint8))
    return frames


class PublicPortBaseline:
    """The inference path of typical public PoseNet ports, kept honest: same model architecture,
    eager, float32, the same thread count; on a GPU the model runs there and the preprocessed
    tensor is copied to it, as those ports do."""

    def __init__(self, spec: Preprocessing, model: torch.nn.Module, device: torch.device | None = None) -> None:
        from PIL import Image  # optional dependency: only the benchmark needs it

        self._image = Image
        self.spec = spec
        self.device = device or torch.device("cpu")
        self.model = model.eval().to(self.device)
        self.mean = torch.tensor(spec.mean).view(3, 1, 1)
        self.std = torch.tensor(spec.std).view(3, 1, 1)

    def preprocess(self, msg: RawImage) -> torch.Tensor:
        s = self.spec
        frame_bgr = np.frombuffer(msg.data, np.uint8).reshape(msg.height, msg.width, 3).copy()  # cv_bridge-style
        img = self._image.fromarray(np.ascontiguousarray(frame_bgr[:, :, ::-1]))
        w, h = img.size
        scale = s.resize_shortest_side / min(w, h)
        img = img.resize((round(w * scale), round(h * scale)), self._image.BILINEAR)
        w, h = img.size
        left, top = (w - s.input_width) // 2, (h - s.input_height) // 2
        img = img.crop((left, top, left + s.input_width, top + s.input_height))
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255.0)
        return ((x - self.mean) / self.std).unsqueeze(0)

    def __call__(self, msg: RawImage) -> np.ndarray:
        x = self.preprocess(msg).to(self.device)
        with torch.no_grad():
            out = self.model(x)[0].cpu().numpy().astype(np.float64)
        q = out[3:] / np.linalg.norm(out[3:])
        return np.concatenate([out[:3], q])


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p95_ms: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"median_ms": self.median_ms, "p95_ms": self.p95_ms, "n": self.n}


def time_interleaved(
    paths: dict[str, Callable[[Any], Any]], inputs: list[Any], iterations: int, rounds: int = 6, warmup: int = 3
) -> dict[str, Timing]:
    """Median and p95 per path; each round runs every path over its share of iterations in turn."""
    for fn in paths.values():
        for x in inputs[:warmup]:
            fn(x)
    samples: dict[str, list[float]] = {name: [] for name in paths}
    rounds = max(1, min(rounds, iterations))
    per_round = max(1, iterations // rounds)
    for r in range(rounds):
        for name, fn in paths.items():
            for i in range(per_round):
                x = inputs[(r * per_round + i) % len(inputs)]
                t = time.perf_counter()
                fn(x)
                samples[name].append((time.perf_counter() - t) * 1000.0)
    return {name: Timing(float(np.median(v)), float(np.percentile(v, 95)), len(v)) for name, v in samples.items()}


def message_paths(baseline: PublicPortBaseline, engines: dict[str, Engine]) -> dict[str, Callable[[Any], Any]]:
    """The timed paths of an end-to-end race: the baseline and each engine, Image message in."""
    paths: dict[str, Callable[[Any], Any]] = {"baseline": baseline}
    for name, engine in engines.items():
        paths[name] = lambda msg, e=engine: e.localize(*decode_image(msg))
    return paths


def rss_mb() -> float:
    """Current resident set size (Linux /proc; elsewhere the peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mb()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


@dataclass
class BenchConfig:
    model: Path | None = None  # default: a freshly exported PoseNet at the paper's 224x224 input
    iterations: int = 60
    threads: int = 2
    backends: tuple[str, ...] = tuple(PATH_BACKENDS)
    memory_frames: tuple[int, ...] = (1000, 10000)
    replay_frames: int = 100
    crop_iterations: int = 6
    paced_frames: int = 50
    gpu_device: str = "cuda"  # case 7's device; "cpu" runs the case's mechanics without a GPU


class Bench:
    def __init__(self, cfg: BenchConfig, workdir: Path) -> None:
        self.cfg = cfg
        torch.set_num_threads(cfg.threads)
        self.notes: list[str] = []
        model = cfg.model
        if model is None:
            torch.manual_seed(0)
            model = export_torchscript(PoseNet(), Contract(), workdir / "posenet_224.pt")
            self.notes.append(
                "bf16/int8 agreement with fp32 (and auto's) measured on a fresh random-weight PoseNet, whose "
                "outputs hardly vary: pass --model a trained model (models/posenet_demo.pt) for meaningful figures"
            )
        self.model_paths = {"torchscript": Path(model)}
        try:
            from posenet_ros.onnx_export import export_onnx, quantize_onnx

            if "onnxruntime" in cfg.backends:
                self.model_paths["onnxruntime"] = export_onnx(model, workdir / "model.onnx")
            if "onnxruntime-int8" in cfg.backends:
                # Calibrated on the benchmark's own frames: its timing is representative, its
                # accuracy is not (that needs the scene's frames: export-onnx --int8 --calibration).
                frames = [(f, "bgr8") for f in synthetic_frames(16)]
                self.model_paths["onnxruntime-int8"] = quantize_onnx(model, workdir / "model_int8.onnx", frames)
        except ImportError as exc:
            self.notes.append(f"onnxruntime paths not measured: {exc}")
        self.engines = {
            name: Engine(
                path,
                EngineConfig(backend=PATH_BACKENDS[name], device="cpu", threads=cfg.threads, crops=1, max_crops=128),
            )
            for name, path in self.model_paths.items()
            if name in cfg.backends
        }
        self.spec = next(iter(self.engines.values())).contract.preprocessing
        # Per precision (issue 16): bf16 where the engine runs it natively, and precision auto.
        self.bf16_refusal: str | None = None
        self.precision_engines: dict[str, Engine] = {}
        if "torchscript" in self.engines:
            model_path = self.model_paths["torchscript"]
            config = EngineConfig(backend="torchscript", device="cpu", threads=cfg.threads, crops=1, max_crops=128)
            try:
                self.precision_engines[BF16_PATH] = Engine(model_path, replace(config, precision="bf16"))
            except EngineError as exc:  # a CPU without native bf16: the engine refuses it in one line
                self.bf16_refusal = f"not native: {first_line(exc)}"
            self.precision_engines[AUTO_PATH] = Engine(model_path, replace(config, precision="auto"))
        else:
            self.bf16_refusal = "not measured: needs the torchscript backend (--backends)"
        # Timing only: the baseline runs the same architecture eagerly (weights do not change cost).
        self.baseline = PublicPortBaseline(self.spec, PoseNet())

    def end_to_end(self, width: int, height: int) -> dict[str, Any]:
        frames = [encode_image(f, "bgr8") for f in synthetic_frames(8, height, width)]
        paths = message_paths(self.baseline, {**self.engines, **self.precision_engines})
        t = time_interleaved(paths, frames, self.cfg.iterations)
        extra = {name: t.pop(name) for name in self.precision_engines}  # not in "paths": it keeps its rows
        base = t["baseline"]
        out: dict[str, Any] = {"baseline_ms": base.median_ms, "baseline_p95_ms": base.p95_ms}
        floats = [n for n in self.engines if n in FLOAT_PATHS]
        if floats:
            ours_name = min(floats, key=lambda n: t[n].median_ms)
            ours = t[ours_name]
            out.update(
                ours_ms=ours.median_ms,
                ours_p95_ms=ours.p95_ms,
                ours_backend=ours_name,
                ratio=base.median_ms / ours.median_ms,
            )
        if "onnxruntime-int8" in t:
            int8 = t["onnxruntime-int8"]
            out.update(int8_ms=int8.median_ms, int8_p95_ms=int8.p95_ms, int8_ratio=base.median_ms / int8.median_ms)
        out["paths"] = {name: timing.as_dict() for name, timing in t.items()}
        out["precisions"] = self._precision_rows(base, t, extra)
        if AUTO_PATH in extra:
            auto = extra[AUTO_PATH]
            out.update(auto_ms=auto.median_ms, auto_p95_ms=auto.p95_ms, auto_ratio=base.median_ms / auto.median_ms)
        return out

    def _precision_rows(self, base: Timing, t: dict[str, Timing], extra: dict[str, Timing]) -> dict[str, Any]:
        """Case 1 per precision: its timed path, median/p95 and speed-up over the baseline of the same
        race; a precision this CPU does not run says why; auto names the precision it runs."""

        def row(path: str, timing: Timing) -> dict[str, Any]:
            return {"path": path, **timing.as_dict(), "ratio": base.median_ms / timing.median_ms}

        rows: dict[str, Any] = {}
        floats = [n for n in FLOAT_PATHS if n in t]
        if floats:
            best = min(floats, key=lambda n: t[n].median_ms)
            rows["fp32"] = row(best, t[best])
        if BF16_PATH in extra:
            rows["bf16"] = {"native": cpu_bf16_support(), **row(BF16_PATH, extra[BF16_PATH])}
            if "torchscript" in t:  # the same backend in fp32: what bf16 itself buys
                rows["bf16"]["speedup_over_fp32_torchscript"] = t["torchscript"].median_ms / extra[BF16_PATH].median_ms
        else:
            rows["bf16"] = {"native": None, "reason": self.bf16_refusal}
        if "onnxruntime-int8" in t:
            rows["int8"] = row("onnxruntime-int8", t["onnxruntime-int8"])
        else:
            rows["int8"] = {"reason": "not measured: needs the onnxruntime-int8 backend (--backends) and onnxruntime"}
        if AUTO_PATH in extra:
            rows["auto"] = {
                "precision": self.precision_engines[AUTO_PATH].precision,
                **row(AUTO_PATH, extra[AUTO_PATH]),
            }
        return rows

    def auto_choice(self) -> dict[str, Any]:
        """What precision auto picked at start-up and why (the engine's own figures)."""
        engine = self.precision_engines.get(AUTO_PATH)
        if engine is None:
            return {"measured": False, "reason": "needs the torchscript backend (--backends)"}
        trials = {name: asdict(trial) for name, trial in engine.precision_trials.items()}
        return {"measured": True, "precision": engine.precision, "reason": engine.precision_reason, "trials": trials}

    def agreement(self, frames: int = AGREEMENT_FRAMES) -> dict[str, Any]:
        """Per frame, how far bf16 (against fp32 torchscript) and int8 (against fp32 onnxruntime) move
        the pose on the same 640x480 frames, centre crop, through the engines case 1 times."""
        images = synthetic_frames(frames, seed=1)
        pairs = {"bf16": ("torchscript", BF16_PATH), "int8": ("onnxruntime", "onnxruntime-int8")}
        engines = {**self.engines, **self.precision_engines}
        out: dict[str, Any] = {}
        for precision, (ref, low) in pairs.items():
            if ref not in engines or low not in engines:
                reason = self.bf16_refusal if precision == "bf16" and low not in engines else None
                out[precision] = {"measured": False, "reason": reason or f"needs the {ref} and {low} paths"}
                continue
            out[precision] = {
                "measured": True,
                "reference": ref,
                "path": low,
                **pose_agreement(engines[ref], engines[low], images),
            }
        return out

    def preprocessing(self, width: int = 640, height: int = 480) -> dict[str, Any]:
        frames = [encode_image(f, "bgr8") for f in synthetic_frames(8, height, width)]
        ours = CpuPreprocessor(self.spec, threads=self.cfg.threads)
        paths = {"baseline": self.baseline.preprocess, "ours": lambda msg: ours(*decode_image(msg))}
        t = time_interleaved(paths, frames, max(self.cfg.iterations, 200))
        return {
            "ours_ms": t["ours"].median_ms,
            "baseline_ms": t["baseline"].median_ms,
            "ratio": t["baseline"].median_ms / t["ours"].median_ms,
            "paths": {name: timing.as_dict() for name, timing in t.items()},
        }

    def dense_crops(self) -> dict[str, Any]:
        engine = self.engines.get("torchscript") or next(iter(self.engines.values()))
        frame = synthetic_frames(1)[0]
        per_count = {}
        for n in CROP_COUNTS:
            iters = max(2, self.cfg.crop_iterations if n > 8 else self.cfg.iterations // 3)
            t = time_interleaved({"engine": lambda f, n=n: engine.localize(f, "bgr8", crops=n)}, [frame], iters, 1, 2)
            per_count[str(n)] = t["engine"].as_dict()
        chosen = {}
        for budget in BUDGETS_MS:
            e = Engine(
                self.model_paths["torchscript"],
                EngineConfig(device="cpu", threads=self.cfg.threads, max_crops=128, latency_budget_ms=budget),
            )
            results = [e.localize(frame, "bgr8") for _ in range(20)]
            counts = Counter(r.crops for r in results)
            chosen[f"{budget:g}"] = {
                "crops": counts.most_common(1)[0][0],
                "crops_seen": {str(k): v for k, v in sorted(counts.items())},
                "median_ms": float(np.median([r.latency.total_ms for r in results])),
                "overruns": sum(r.overrun for r in results),
            }
        return {"ms_per_frame": per_count, "budget_choice": chosen, "backend": engine.backend}

    def replay_throughput(self, workdir: Path) -> dict[str, Any]:
        from posenet_ros.bagio import BagWriter
        from posenet_ros.replay import ReplayConfig, replay

        bag = workdir / "bench_bag"
        frames = synthetic_frames(8)
        with BagWriter(bag, "sqlite3", "jazzy") as w:
            w.add_topic("/camera/image_raw", "sensor_msgs/msg/Image")
            for i in range(self.cfg.replay_frames):
                stamp = (i + 1) * 100_000_000
                w.write("/camera/image_raw", stamp, w.image(stamp, "camera", encode_image(frames[i % 8], "bgr8")))
        out = {}
        for name, path in self.model_paths.items():
            cfg = ReplayConfig(
                bag, path, device="cpu", threads=self.cfg.threads, progress=False, node_parameters={"max_crops": 1}
            )
            start = time.perf_counter()
            result = replay(cfg)
            wall = time.perf_counter() - start
            out[name] = {
                "frames": result.summary["frames_processed"],
                "frames_per_s": result.summary["frames_processed"] / wall,
                "seconds_incl_model_load": wall,
            }
        return out

    def memory(self) -> dict[str, Any]:
        engine = self.engines.get("torchscript") or next(iter(self.engines.values()))
        msgs = [encode_image(f, "bgr8") for f in synthetic_frames(4)]
        marks = sorted(self.cfg.memory_frames)
        engine.localize(*decode_image(msgs[0]))
        before = rss_mb()
        out: dict[str, Any] = {"rss_after_warmup_mb": before, "backend": engine.backend}
        done = 0
        start = time.perf_counter()
        for mark in marks:
            while done < mark:
                engine.localize(*decode_image(msgs[done % len(msgs)]))
                done += 1
            out[f"rss_after_{mark}_frames_mb"] = rss_mb()
        out["peak_rss_mb"] = peak_rss_mb()
        out["growth_mb"] = out[f"rss_after_{marks[-1]}_frames_mb"] - out[f"rss_after_{marks[0]}_frames_mb"]
        out["seconds"] = time.perf_counter() - start
        return out

    def paced(self, rate_hz: float = 10.0) -> dict[str, Any]:
        """Per path: median/p95 latency of 640x480 frames arriving every 1/rate s, and the process's
        CPU time over that stretch as a share of one core (idle engines' threads sleep)."""
        msgs = [encode_image(f, "bgr8") for f in synthetic_frames(8)]
        period, frames = 1.0 / rate_hz, self.cfg.paced_frames
        out: dict[str, Any] = {"rate_hz": rate_hz, "frames": frames, "paths": {}}
        for name, engine in self.engines.items():
            for msg in msgs[:3]:
                engine.localize(*decode_image(msg))
            latencies = []
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for i in range(frames):
                start = time.perf_counter()
                engine.localize(*decode_image(msgs[i % len(msgs)]))
                latencies.append((time.perf_counter() - start) * 1000.0)
                time.sleep(max(0.0, period - (time.perf_counter() - start)))
            cpu_share = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
            out["paths"][name] = {
                "median_ms": float(np.median(latencies)),
                "p95_ms": float(np.percentile(latencies, 95)),
                "cpu_percent_of_one_core": 100.0 * cpu_share,
            }
        return out

    def gpu(self) -> dict[str, Any]:
        """Case 7 on ``cfg.gpu_device``: per precision the engine runs there, 640x480 centre crop end
        to end against the baseline on the same device and ms per frame at 128 crops; per reduced
        precision, its pose difference from fp32 on the same frames."""
        try:
            device = resolve_device(self.cfg.gpu_device)
        except EngineError as exc:
            return {"measured": False, "reason": str(exc)}
        model = self.model_paths["torchscript"]
        engines, refused = {}, {}
        for p in PRECISIONS:
            if device.type == "cpu" and p == "bf16":
                # The engine runs bf16 on CPUs with native bf16 now, but this case is the CUDA
                # comparison; on the CPU it stays fp32 timing and reduced-precision numerics only.
                refused[p] = "case 7 times bf16 on CUDA only; on the CPU use the engine's precision bf16 or auto"
                continue
            config = EngineConfig(
                backend="torchscript",
                device=str(device),
                precision=p,
                threads=self.cfg.threads,
                crops=1,
                max_crops=GPU_CROPS,
            )
            try:
                engines[p] = Engine(model, config)
            except (EngineError, RuntimeError) as exc:  # reduced precision on the CPU, or a GPU without bf16
                refused[p] = first_line(exc)
        if "fp32" not in engines:
            return {"measured": False, "reason": refused["fp32"]}
        frames = synthetic_frames(8)
        msgs = [encode_image(f, "bgr8") for f in frames]
        paths = message_paths(PublicPortBaseline(self.spec, PoseNet(), device), engines)
        t = time_interleaved(paths, msgs, self.cfg.iterations)
        best = min(engines, key=lambda p: t[p].median_ms)
        dense = {}
        for p, engine in engines.items():
            run = {p: lambda f, e=engine: e.localize(f, "bgr8", crops=GPU_CROPS)}
            dense[p] = time_interleaved(run, frames[:1], max(2, self.cfg.crop_iterations), 1, 2)[p].as_dict()
        return {
            "measured": True,
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
            "ours_ms": t[best].median_ms,
            "ours_precision": best,
            "baseline_ms": t["baseline"].median_ms,
            "ratio": t["baseline"].median_ms / t[best].median_ms,
            "paths": {name: timing.as_dict() for name, timing in t.items()},
            "crops": GPU_CROPS,
            "dense_ms_per_frame": dense,
            "not_timed": refused,
            # On the CPU the numbers can be measured even though the engine will not run them.
            "agreement_with_fp32": {
                p: precision_agreement(model, frames, device, p)
                for p in PRECISIONS
                if p != "fp32" and (p in engines or device.type == "cpu")
            },
        }

    def machine(self) -> dict[str, Any]:
        return {
            "machine": platform.processor() or platform.machine(),
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "threads": self.cfg.threads,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": _version("onnxruntime"),
            "device": "cpu",
            "dtype": "fp32",  # every path but onnxruntime-int8
            "cpu_native_bf16": cpu_bf16_support(),  # AMX-BF16, AVX512-BF16 or None
            "isa": cpu_isa(),  # AVX2 / AVX-512 / AVX512-VNNI / AVX512-BF16 / AMX-BF16 / AMX-INT8, from the flags
            "int8_path": "onnxruntime QDQ: int8 per-channel weights, uint8 activations"
            if "onnxruntime-int8" in self.engines
            else None,
            "model_input": f"{self.spec.input_width}x{self.spec.input_height}",
        }


def pose_agreement(reference: Engine, engine: Engine, frames: list[np.ndarray]) -> dict[str, Any]:
    """Per-frame deviation of ``engine``'s pose from ``reference``'s on the same bgr8 ``frames``
    (centre crop): median and max, in mm and degrees; frames either engine drops are counted."""
    moved, turned, dropped = [], [], 0
    for frame in frames:
        try:
            a, b = reference.localize(frame, "bgr8", crops=1).pose, engine.localize(frame, "bgr8", crops=1).pose
        except EngineError:  # a non-finite output
            dropped += 1
            continue
        moved.append(float(np.linalg.norm(a.position - b.position)) * 1000.0)
        turned.append(float(rotation_error_deg(a.quaternion, b.quaternion)))
    out: dict[str, Any] = {"frames": len(frames), "dropped": dropped}
    if moved:
        out.update(
            position_median_mm=float(np.median(moved)),
            position_max_mm=max(moved),
            rotation_median_deg=float(np.median(turned)),
            rotation_max_deg=max(turned),
        )
    return out


def precision_agreement(
    model_path: Path, frames: list[np.ndarray], device: torch.device, precision: str
) -> dict[str, float | int]:
    """How far ``precision`` moves the pose from fp32 over ``frames`` (bgr8) on ``device``: the
    frozen weights cast as the engine casts them, the frames preprocessed as the engine does on a
    GPU. On the CPU this measures the numbers only (fusion off: oneDNN cannot build fp16 graphs)."""
    reference, contract = load_model(model_path, map_location=device)
    reduced, _ = load_model(model_path, map_location=device)
    dtype = PRECISIONS[precision]
    cast_frozen_constants(reduced, dtype)
    spec = contract.preprocessing
    full, low = TorchPreprocessor(spec, device), TorchPreprocessor(spec, device, dtype)
    moved, turned, non_finite = [], [], 0
    fusion = torch.jit.onednn_fusion_enabled()
    # oneDNN graph fusion (switched on by CPU engines) cannot build fp16 graphs on the CPU.
    torch.jit.enable_onednn_fusion(False)
    try:
        with torch.inference_mode():
            for frame in frames:
                a = reference(full(frame, "bgr8")).double().cpu().numpy()[0]
                b = reduced(low(frame, "bgr8")).double().cpu().numpy()[0]
                if not np.all(np.isfinite(b)) or not np.any(b[3:]):
                    non_finite += 1
                    continue
                positions = contract.output.positions(np.stack([a[:3], b[:3]]))
                moved.append(float(np.linalg.norm(positions[0] - positions[1])))
                turned.append(float(rotation_error_deg(quat_unit(a[3:]), quat_unit(b[3:]))))
    finally:
        torch.jit.enable_onednn_fusion(fusion)
    out: dict[str, float | int] = {"frames": len(frames), "non_finite": non_finite}
    if moved:
        out.update(
            position_median_m=float(np.median(moved)),
            position_max_m=max(moved),
            rotation_median_deg=float(np.median(turned)),
            rotation_max_deg=max(turned),
            scene_extent_m=max(contract.scene.extent),
        )
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def run_suite(cfg: BenchConfig, cases: tuple[str, ...]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="posenet_bench_") as tmp:
        bench = Bench(cfg, Path(tmp))
        results: dict[str, Any] = {**bench.machine(), "notes": bench.notes}
        if "e2e" in cases:
            results["end_to_end"] = {f"{w}x{h}": bench.end_to_end(w, h) for w, h in SIZES}
            # The headline: 640x480, as the issue and the README quote it.
            headline = ("ours_ms", "baseline_ms", "ratio", "int8_ms", "int8_ratio")
            results.update({k: v for k, v in results["end_to_end"]["640x480"].items() if k in headline})
            results["auto"] = bench.auto_choice()
            if "auto_ms" in results["end_to_end"]["640x480"]:
                results.update(auto_ms=results["end_to_end"]["640x480"]["auto_ms"])
                results.update(auto_ratio=results["end_to_end"]["640x480"]["auto_ratio"])
            results["agreement_with_fp32"] = bench.agreement()
        if "preprocess" in cases:
            results["preprocess"] = bench.preprocessing()
        if "crops" in cases:
            results["dense_crops"] = bench.dense_crops()
        if "replay" in cases:
            results["replay"] = bench.replay_throughput(Path(tmp))
        if "memory" in cases:
            results["memory"] = bench.memory()
        if "paced" in cases:
            results["paced"] = bench.paced()
        if "gpu" in cases:
            results["gpu"] = bench.gpu()
            if not results["gpu"]["measured"]:
                bench.notes.append(f"gpu case not measured: {results['gpu']['reason']}")
    return results


def format_results(r: dict[str, Any]) -> str:
    lines = [
        f"posenet_ros benchmark: {r['cpu']} ({r['cores']} cores), {r['threads']} threads, torch {r['torch']}, "
        f"onnxruntime {r['onnxruntime']}, {r['device']} {r['dtype']}, model input {r['model_input']}",
        f"   ISA: {r['isa']['summary']}; native bf16: {r['cpu_native_bf16'] or 'none'}",
    ]
    for size, e in r.get("end_to_end", {}).items():
        lines.append(f"1. end to end, {size} bgr8 Image -> pose, centre crop        median ms    p95 ms")
        for name, t in e["paths"].items():
            label = "baseline (copy, PIL, eager no_grad)" if name == "baseline" else f"ours ({name})"
            lines.append(f"   {label:<56}{t['median_ms']:>9.2f}{t['p95_ms']:>10.2f}")
        if "ratio" in e:
            lines.append(f"   speed-up baseline / ours, float32 ({e['ours_backend']}): {e['ratio']:.2f}x")
        if "int8_ratio" in e:
            lines.append(f"   speed-up baseline / ours, int8 (onnxruntime-int8): {e['int8_ratio']:.2f}x")
        lines.extend(_format_precisions(e.get("precisions", {})))
    if "auto" in r:
        a = r["auto"]
        lines.append(
            f"   precision auto picked {a['precision']}: {a['reason']}" if a["measured"] else f"   auto: {a['reason']}"
        )
    for p, a in r.get("agreement_with_fp32", {}).items():
        if not a["measured"]:
            lines.append(f"   {p} vs fp32: {a['reason']}")
        elif "position_max_mm" in a:
            lines.append(
                f"   {p} ({a['path']}) vs fp32 ({a['reference']}) over {a['frames']} frames: position median "
                f"{a['position_median_mm']:.3g} mm (max {a['position_max_mm']:.3g}), rotation median "
                f"{a['rotation_median_deg']:.3g} deg (max {a['rotation_max_deg']:.3g}), dropped {a['dropped']}"
            )
        else:
            lines.append(f"   {p} vs fp32: all {a['frames']} frames dropped (non-finite)")
    if "preprocess" in r:
        p = r["preprocess"]
        lines.append(
            f"2. preprocessing 640x480: baseline {p['baseline_ms']:.3f} ms, ours {p['ours_ms']:.3f} ms, "
            f"{p['ratio']:.1f}x"
        )
    if "dense_crops" in r:
        d = r["dense_crops"]
        per = ", ".join(f"{n}: {t['median_ms']:.1f}" for n, t in d["ms_per_frame"].items())
        lines.append(f"3. dense crops, ms per frame ({d['backend']}): {per}")
        for budget, c in d["budget_choice"].items():
            lines.append(
                f"   budget {budget} ms -> {c['crops']} crops ({c['median_ms']:.1f} ms median, "
                f"{c['overruns']} overruns in 20 frames)"
            )
    if "replay" in r:
        per = ", ".join(f"{name} {v['frames_per_s']:.1f}" for name, v in r["replay"].items())
        lines.append(f"4. replay throughput, frames/s incl. model load: {per}")
    if "memory" in r:
        m = r["memory"]
        marks = [k for k in m if k.startswith("rss_after_") and k.endswith("_frames_mb")]
        after = ", ".join(f"{k[len('rss_after_') : -len('_frames_mb')]} frames {m[k]:.0f} MB" for k in marks)
        lines.append(
            f"5. memory: after warm-up {m['rss_after_warmup_mb']:.0f} MB, {after}, "
            f"growth {m['growth_mb']:+.1f} MB, peak {m['peak_rss_mb']:.0f} MB"
        )
    if "paced" in r:
        p = r["paced"]
        per = ", ".join(
            f"{name} {v['median_ms']:.1f} ms (p95 {v['p95_ms']:.1f}, CPU {v['cpu_percent_of_one_core']:.0f}% of a core)"
            for name, v in p["paths"].items()
        )
        lines.append(f"6. paced at {p['rate_hz']:g} Hz, 640x480, median latency: {per}")
    if r.get("gpu", {}).get("measured"):
        lines.extend(_format_gpu(r["gpu"]))
    lines.extend(f"note: {n}" for n in r.get("notes", []))
    return "\n".join(lines)


def _format_precisions(rows: dict[str, Any]) -> list[str]:
    lines = []
    for p, row in rows.items():
        if "median_ms" in row:
            what = f"{p} ({row['path']}" + (f" -> {row['precision']})" if p == "auto" else ")")
            lines.append(
                f"   {what:<30} median {row['median_ms']:.2f} ms, p95 {row['p95_ms']:.2f} ms, "
                f"{row['ratio']:.2f}x the baseline"
                + (
                    f", {row['speedup_over_fp32_torchscript']:.2f}x fp32 torchscript"
                    if "speedup_over_fp32_torchscript" in row
                    else ""
                )
            )
        else:
            lines.append(f"   {p:<30} {row['reason']}")
    return lines


def _format_gpu(g: dict[str, Any]) -> list[str]:
    per = ", ".join(f"{name} {t['median_ms']:.2f}" for name, t in g["paths"].items())
    dense = ", ".join(f"{p} {t['median_ms']:.2f}" for p, t in g["dense_ms_per_frame"].items())
    lines = [
        f"7. gpu {g['device']} ({g['device_name']}), 640x480 centre crop, median ms: {per}; "
        f"speed-up ({g['ours_precision']}): {g['ratio']:.2f}x",
        f"   {g['crops']} crops, ms per frame: {dense}",
    ]
    lines.extend(f"   {p} not timed: {why}" for p, why in g["not_timed"].items())
    for p, a in g["agreement_with_fp32"].items():
        if "position_max_m" in a:
            lines.append(
                f"   {p} vs fp32 over {a['frames']} frames: position median {a['position_median_m']:.2e} m "
                f"(max {a['position_max_m']:.2e}), rotation median {a['rotation_median_deg']:.3f} deg "
                f"(max {a['rotation_max_deg']:.3f}), non-finite {a['non_finite']}"
            )
        else:
            lines.append(f"   {p} vs fp32: all {a['frames']} outputs non-finite")
    return lines


def main_bench(cfg: BenchConfig, cases: tuple[str, ...], json_path: Path | None) -> int:
    results = run_suite(cfg, cases)
    print(format_results(results))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2))
        print(f"wrote {json_path}")
    return 0
