"""Every preprocessing path against training's rule (issue 18, defect 2).

Training resizes the whole frame so its shortest side is S (``resize_shortest_side``: area when
shrinking), then crops. The CPU path resizes only the source pixels the crops need and the torch
path only the rows and columns they keep; both must give the whole-frame result to well under a
grey level, for the centre crop and for dense crops, on noise (the worst case for a shifted or
rescaled sampling grid) and on rendered frames, at the demo's size, VGA and 1080p. Before the fix
the CPU path rounded the kept region's source bounds to whole pixels: a mean 2.4 grey levels
(max 50) off at 256x192 -> 128/112, which moved the demo model's poses by a median 2.6 cm."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from posenet_ros.contract import Preprocessing
from posenet_ros.engine import Engine, EngineConfig
from posenet_ros.geometry import position_error, rotation_error_deg
from posenet_ros.preprocess import (
    CpuPreprocessor,
    TorchPreprocessor,
    crop_offsets,
    resized_size,
    uses_area,
)
from posenet_train.synth import Camera, Renderer, room_scene, smooth_trajectory

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "models" / "posenet_demo.pt"

# (frame height, width, shortest side S, crop): the demo model's input, and the default 256/224.
SIZES = [(192, 256, 128, 112), (480, 640, 256, 224), (1080, 1920, 256, 224)]
MAX_LEVELS = 0.5  # grey levels in [0, 255]: the largest difference on any value of any crop
MEAN_LEVELS = 0.05


def spec_for(s: int, crop: int) -> Preprocessing:
    return Preprocessing(resize_shortest_side=s, input_height=crop, input_width=crop)


def whole_frame_resize(image: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """Training's resize written out: the whole frame, shortest side to S, area when shrinking."""
    h, w = resized_size(*image.shape[:2], spec.resize_shortest_side)
    interp = cv2.INTER_AREA if uses_area(*image.shape[:2], spec) else cv2.INTER_LINEAR
    return cv2.resize(image, (w, h), interpolation=interp)


def training_rule(image_rgb: np.ndarray, spec: Preprocessing, n_crops: int) -> np.ndarray:
    """The rule as training states it, unrounded: the whole frame resized (float), the crops cut
    from it, (x / 255 - mean) / std; float64 (N, 3, H, W)."""
    resized = whole_frame_resize(image_rgb.astype(np.float32), spec).astype(np.float64)
    h, w = resized.shape[:2]
    out = []
    for y, x in crop_offsets(h, w, spec.input_height, spec.input_width, n_crops):
        crop = resized[y : y + spec.input_height, x : x + spec.input_width] / 255.0
        out.append(((crop - spec.mean) / spec.std).transpose(2, 0, 1))
    return np.stack(out)


def grey_levels(batch: np.ndarray, ref: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """|batch - ref| back in [0, 255] grey levels (undoing each channel's std)."""
    return np.abs(batch - ref) * (np.asarray(spec.std).reshape(1, 3, 1, 1) * 255.0)


@pytest.fixture(scope="module")
def rendered() -> dict[tuple[int, int], np.ndarray]:
    """One rendered room frame (RGB) per size: edges, textures and aliasing, not just noise."""
    scene = room_scene(0)
    pose = smooth_trajectory(scene, 8, seed=3, heading_spread_deg=50)[2]
    return {(h, w): Renderer(scene, Camera(w, h)).render(pose)[0] for h, w, _, _ in SIZES}


def noise(h: int, w: int) -> np.ndarray:
    return np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)


PATHS = {
    "cpu": lambda spec: CpuPreprocessor(spec, threads=1),
    "cpu-2-threads": lambda spec: CpuPreprocessor(spec, threads=2),
    "torch": lambda spec: TorchPreprocessor(spec, torch.device("cpu")),
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("n_crops", [1, 8])
@pytest.mark.parametrize("kind", ["noise", "rendered"])
@pytest.mark.parametrize(("h", "w", "s", "crop"), SIZES, ids=[f"{w}x{h}-{s}-{c}" for h, w, s, c in SIZES])
def test_path_agrees_with_the_training_rule(
    h: int, w: int, s: int, crop: int, kind: str, n_crops: int, path: str, rendered
) -> None:
    spec = spec_for(s, crop)
    image = noise(h, w) if kind == "noise" else rendered[(h, w)]
    ref = training_rule(image, spec, n_crops)
    # bgr8 in: the channel swap is part of every path.
    got = PATHS[path](spec)(np.ascontiguousarray(image[:, :, ::-1]), "bgr8", n_crops).numpy()
    assert got.shape == ref.shape
    diff = grey_levels(got, ref, spec)
    assert diff.max() < MAX_LEVELS and diff.mean() < MEAN_LEVELS, (
        f"{path}: max {diff.max():.3f}, mean {diff.mean():.4f} grey levels off the training rule"
    )


@pytest.mark.parametrize(("h", "w", "s", "crop"), SIZES, ids=[f"{w}x{h}-{s}-{c}" for h, w, s, c in SIZES])
def test_training_cache_is_the_rule_rounded_to_grey_levels(h: int, w: int, s: int, crop: int, tmp_path) -> None:
    """Training's decoded-once cache (``load_resized``) is the same whole-frame resize in uint8:
    it differs from the unrounded rule the node computes by OpenCV's rounding only, and the shared
    function it calls is the rule."""
    from posenet_ros.preprocess import resize_shortest_side
    from posenet_train.data import load_resized

    spec = spec_for(s, crop)
    image = noise(h, w)
    path = tmp_path / "frame.png"
    assert cv2.imwrite(str(path), image[:, :, ::-1])
    cached = load_resized(path, spec)
    assert cached.dtype == np.uint8 and cached.shape[:2] == resized_size(h, w, s)
    exact = whole_frame_resize(image.astype(np.float32), spec)
    assert np.abs(cached - exact).max() <= 0.5 + 1e-3
    np.testing.assert_array_equal(resize_shortest_side(image.astype(np.float32), spec), exact)


def demo_frames(count: int) -> list[np.ndarray]:
    """Frames like the demo's: 256x192 renders of the room the demo model was trained on."""
    scene = room_scene(0)
    renderer = Renderer(scene, Camera(256, 192, 65.0))
    return [renderer.render(p)[0] for p in smooth_trajectory(scene, count, seed=11, heading_spread_deg=50)]


def test_demo_model_poses_match_the_training_rule() -> None:
    """The demo model through the engine (CPU path) and through the training rule's input."""
    engine = Engine(DEMO_MODEL, EngineConfig(device="cpu", threads=1, warmup_iters=1))
    spec = engine.contract.preprocessing
    frames = demo_frames(16)
    ours = [engine.localize(f, "rgb8").pose for f in frames]

    def rule(image: np.ndarray, encoding: str, n_crops: int) -> torch.Tensor:
        assert encoding == "rgb8"
        batch = torch.from_numpy(training_rule(image, spec, n_crops).astype(np.float32))
        return batch.contiguous(memory_format=torch.channels_last)

    engine.preprocess = rule
    theirs = [engine.localize(f, "rgb8").pose for f in frames]
    dp = position_error(np.array([p.position for p in ours]), np.array([p.position for p in theirs]))
    dq = rotation_error_deg(np.array([p.quaternion for p in ours]), np.array([p.quaternion for p in theirs]))
    moved = f"median {1000 * np.median(dp):.2f} mm, {np.median(dq):.4f} deg"
    assert np.median(dp) < 0.002 and np.median(dq) < 0.02, f"{moved} (max {1000 * dp.max():.2f} mm, {dq.max():.3f} deg)"
