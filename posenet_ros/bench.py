"""Engine benchmark: our engine against a baseline built the way public PoseNet ports run inference,
measured in the same process, on the same frames, interleaved so machine noise hits both alike.

Both start from a sensor_msgs/Image (bgr8 bytes), as the node receives it.
Baseline (what the ports do): cv_bridge-style copy of the message into an array, copy to RGB, PIL
resize of the shortest side to 256 (bilinear) and centre crop, ToTensor/Normalize in torch, eager
model under ``no_grad``, quaternion normalized in NumPy.
Ours: ``image_codec.decode_image`` (zero-copy view) and ``Engine.localize`` with a centre crop
(OpenCV area resize of the kept region, fused normalize into a reused channels-last buffer, frozen
TorchScript graph with oneDNN fusion).
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from posenet_ros.contract import Contract, Preprocessing
from posenet_ros.engine import Engine, EngineConfig, Localization
from posenet_ros.export import export_torchscript
from posenet_ros.image_codec import RawImage, decode_image, encode_image
from posenet_ros.model import PoseNet


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
    eager, float32, the same thread count."""

    def __init__(self, spec: Preprocessing, model: torch.nn.Module) -> None:
        from PIL import Image  # optional dependency: only the benchmark needs it

        self._image = Image
        self.spec = spec
        self.model = model.eval()
        self.mean = torch.tensor(spec.mean).view(3, 1, 1)
        self.std = torch.tensor(spec.std).view(3, 1, 1)

    def __call__(self, msg: RawImage) -> np.ndarray:
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
        x = ((x - self.mean) / self.std).unsqueeze(0)
        with torch.no_grad():
            out = self.model(x)[0].numpy().astype(np.float64)
        q = out[3:] / np.linalg.norm(out[3:])
        return np.concatenate([out[:3], q])


@dataclass
class BenchResult:
    ours_ms: float
    baseline_ms: float
    ratio: float
    ours_p95_ms: float
    baseline_p95_ms: float
    ours_preprocess_ms: float
    ours_inference_ms: float
    frames: int
    threads: int
    width: int
    height: int

    def as_dict(self) -> dict[str, object]:
        return {
            **self.__dict__,
            "machine": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": "cpu",
            "dtype": "fp32",
        }


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run_engine_bench(
    model_path: Path | None = None,
    iterations: int = 60,
    threads: int = 2,
    width: int = 640,
    height: int = 480,
    rounds: int = 6,
) -> BenchResult:
    """Time both paths on the same frames; rounds alternate baseline and ours to share the noise."""
    torch.set_num_threads(threads)
    frames = [encode_image(f, "bgr8") for f in synthetic_frames(8, height, width)]
    with tempfile.TemporaryDirectory() as tmp:
        if model_path is None:
            torch.manual_seed(0)
            model_path = export_torchscript(PoseNet(), Contract(), Path(tmp) / "bench_model.pt")
        engine = Engine(model_path, EngineConfig(device="cpu", threads=threads, crops=1))
        # Timing only: the baseline runs the same architecture eagerly (its weights do not change cost).
        baseline = PublicPortBaseline(engine.contract.preprocessing, PoseNet())

        def ours_path(msg: RawImage) -> Localization:
            return engine.localize(*decode_image(msg))

        for frame in frames[:3]:  # warm-up both
            baseline(frame)
            ours_path(frame)
        ours: list[float] = []
        base: list[float] = []
        pre: list[float] = []
        inf: list[float] = []
        per_round = max(1, iterations // rounds)
        for r in range(rounds):
            for i in range(per_round):
                frame = frames[(r * per_round + i) % len(frames)]
                t = time.perf_counter()
                baseline(frame)
                base.append((time.perf_counter() - t) * 1000.0)
            for i in range(per_round):
                frame = frames[(r * per_round + i) % len(frames)]
                t = time.perf_counter()
                result = ours_path(frame)
                ours.append((time.perf_counter() - t) * 1000.0)
                pre.append(result.latency.preprocess_ms)
                inf.append(result.latency.inference_ms)
    ours_ms, base_ms = float(np.median(ours)), float(np.median(base))
    return BenchResult(
        ours_ms=ours_ms,
        baseline_ms=base_ms,
        ratio=base_ms / ours_ms,
        ours_p95_ms=_percentile(ours, 95),
        baseline_p95_ms=_percentile(base, 95),
        ours_preprocess_ms=float(np.median(pre)),
        ours_inference_ms=float(np.median(inf)),
        frames=len(ours),
        threads=threads,
        width=width,
        height=height,
    )


def format_result(r: BenchResult) -> str:
    lines = [
        f"engine benchmark: {r.width}x{r.height} bgr8 Image message in, pose out, centre crop, "
        f"{r.threads} threads, torch {torch.__version__}, cpu fp32, {r.frames} frames each",
        f"  {'path':<28}{'median ms':>10}{'p95 ms':>10}",
        f"  {'baseline (PIL + eager)':<28}{r.baseline_ms:>10.2f}{r.baseline_p95_ms:>10.2f}",
        f"  {'ours (engine)':<28}{r.ours_ms:>10.2f}{r.ours_p95_ms:>10.2f}",
        f"    preprocess {r.ours_preprocess_ms:.2f} ms, inference {r.ours_inference_ms:.2f} ms",
        f"  speed-up (baseline / ours): {r.ratio:.2f}x",
    ]
    return "\n".join(lines)


def main_bench(model: Path | None, iterations: int, threads: int, json_path: Path | None) -> int:
    result = run_engine_bench(model, iterations=iterations, threads=threads)
    print(format_result(result))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result.as_dict(), indent=2))
        print(f"wrote {json_path}")
    return 0
