"""Preprocessing from the contract: resize rule, crop layout, normalization, encodings, both paths."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from posenet_ros import preprocess
from posenet_ros.contract import Preprocessing
from posenet_ros.preprocess import (
    CpuPreprocessor,
    InputError,
    TorchPreprocessor,
    crop_offsets,
    resized_size,
)

SPEC = Preprocessing()  # 256 shortest side, 224 crop, ImageNet mean/std, RGB


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def reference(image_rgb: np.ndarray, spec: Preprocessing, offsets: list[tuple[int, int]]) -> np.ndarray:
    """The rule written the slow, obvious way: whole-frame resize, crop, (x/255 - mean)/std."""
    h, w = resized_size(*image_rgb.shape[:2], spec.resize_shortest_side)
    interp = cv2.INTER_AREA if min(h, w) <= min(image_rgb.shape[:2]) else cv2.INTER_LINEAR
    resized = cv2.resize(image_rgb.astype(np.float32), (w, h), interpolation=interp).astype(np.float64)
    out = []
    for y, x in offsets:
        crop = resized[y : y + spec.input_height, x : x + spec.input_width] / 255.0
        out.append(((crop - spec.mean) / spec.std).transpose(2, 0, 1))
    return np.stack(out)


@pytest.mark.parametrize(
    ("h", "w", "expect"),
    [(480, 640, (256, 341)), (1080, 1920, (256, 455)), (100, 50, (512, 256)), (256, 256, (256, 256))],
)
def test_resized_size_keeps_aspect_with_shortest_side(h: int, w: int, expect: tuple[int, int]) -> None:
    assert resized_size(h, w, 256) == expect


def test_centre_crop_is_centred() -> None:
    assert crop_offsets(256, 341, 224, 224, 1) == [(16, 58)]


@pytest.mark.parametrize("n", [2, 3, 8, 32, 128])
def test_dense_crops_are_inside_distinct_and_span_the_image(n: int) -> None:
    offsets = crop_offsets(256, 341, 224, 224, n)
    assert len(offsets) == n
    assert len(set(offsets)) == n
    ys, xs = zip(*offsets, strict=False)
    assert min(ys) >= 0 and max(ys) <= 32 and min(xs) >= 0 and max(xs) <= 117
    assert min(xs) == 0 and max(xs) == 117  # evenly spread over the whole free range
    if n >= 32:  # enough crops for several rows (fewer go in one centred row: equal spacing)
        assert min(ys) == 0 and max(ys) == 32


def test_dense_crops_on_a_square_image_repeat_safely() -> None:
    assert crop_offsets(224, 224, 224, 224, 4) == [(0, 0)] * 4


def test_crop_offsets_refuse_bad_requests() -> None:
    with pytest.raises(ValueError):
        crop_offsets(256, 341, 224, 224, 0)
    with pytest.raises(ValueError):
        crop_offsets(200, 341, 224, 224, 1)


# One grey level after normalization: OpenCV rounds its uint8 resize output, the reference does not.
LEVEL = 1.0 / 255.0 / min(SPEC.std)


def test_cpu_path_is_exact_when_the_resize_factor_is_integer() -> None:
    image = smooth_image(512, 512)
    got = CpuPreprocessor(SPEC)(image, "rgb8", 1).numpy()
    # Resized in float, never rounded to uint8: the rule's value up to float32 rounding.
    np.testing.assert_allclose(got, reference(image, SPEC, [(16, 16)]), atol=1e-4)


@pytest.mark.parametrize(
    ("h", "w", "n"), [(480, 640, 1), (480, 640, 6), (1080, 1920, 1), (720, 1280, 3), (481, 640, 1)]
)
def test_two_threads_give_the_single_thread_result(h: int, w: int, n: int, monkeypatch) -> None:
    """The rows are resized as two pieces on two threads only where that changes nothing: split on
    an output row that lies on a source row edge (a 481-row frame has none inside the crop's rows,
    481 and 256 being coprime, so it stays in one piece)."""
    image = smooth_image(h, w, seed=7)
    one = CpuPreprocessor(SPEC, threads=1)(image, "bgr8", n).clone()
    pieces = []
    resize = preprocess._convert_resize
    monkeypatch.setattr(preprocess, "_convert_resize", lambda *a: pieces.append(a[1].shape) or resize(*a))
    two = CpuPreprocessor(SPEC, threads=2)
    for _ in range(2):  # the second call reuses the buffers
        torch.testing.assert_close(two(image, "bgr8", n), one, atol=0, rtol=0)
    assert len(pieces) == (2 if h == 481 else 4)


@pytest.mark.parametrize("n", [1, 5])
def test_cpu_path_matches_reference_rule_on_a_4_3_frame(n: int) -> None:
    image = smooth_image(480, 640)
    got = CpuPreprocessor(SPEC)(image, "rgb8", n)
    assert got.shape == (n, 3, 224, 224)
    assert got.is_contiguous(memory_format=torch.channels_last)
    ref = reference(image, SPEC, crop_offsets(256, 341, 224, 224, n))
    # Only the source pixels the crops need are resized, with the whole frame's sampling grid: the
    # rule's value up to float32 rounding (test_preprocess_training_rule.py: every path and size).
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-4)


@pytest.mark.parametrize(("h", "w"), [(300, 200), (200, 300), (48, 64)])
def test_cpu_path_enlarges_linearly_when_the_shortest_side_grows(h: int, w: int) -> None:
    """Enlarging follows the shortest side whatever the orientation; INTER_AREA would give blocks."""
    image = smooth_image(h, w, seed=6)
    rh, rw = resized_size(h, w, SPEC.resize_shortest_side)
    got = CpuPreprocessor(SPEC)(image, "rgb8").numpy()
    ref = reference(image, SPEC, crop_offsets(rh, rw, 224, 224, 1))
    assert np.abs(got - ref).mean() < 1.5 * LEVEL


def test_encodings_agree() -> None:
    rgb = smooth_image(300, 400, seed=3)
    pre = CpuPreprocessor(SPEC)
    base = pre(rgb, "rgb8").clone()
    # Same pixels through a different channel matrix: equal up to float32 rounding of the sums.
    same = {"atol": 1e-6, "rtol": 0}
    torch.testing.assert_close(pre(np.ascontiguousarray(rgb[:, :, ::-1]), "bgr8"), base, **same)
    alpha = np.full((*rgb.shape[:2], 1), 77, np.uint8)
    torch.testing.assert_close(pre(np.concatenate([rgb, alpha], 2), "rgba8"), base, **same)
    bgra = np.concatenate([rgb[:, :, ::-1], alpha], 2)
    torch.testing.assert_close(pre(np.ascontiguousarray(bgra), "bgra8"), base, **same)
    gray = rgb[:, :, 1].copy()
    mono = pre(gray, "mono8")
    torch.testing.assert_close(mono, pre(np.repeat(gray[:, :, None], 3, 2), "rgb8"), **same)


def test_bgr_model_gets_bgr_channels() -> None:
    spec = Preprocessing(channel_order="bgr", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    image = np.zeros((256, 256, 3), np.uint8)
    image[:, :, 0] = 255  # pure red in rgb8
    out = CpuPreprocessor(spec)(image, "rgb8").numpy()
    assert out[0, 2].min() == 1.0 and out[0, 0].max() == 0.0


@pytest.mark.parametrize(("h", "w", "n"), [(480, 640, 1), (480, 640, 8), (1080, 1920, 3), (48, 64, 1), (300, 200, 4)])
def test_torch_path_is_the_exact_rule(h: int, w: int, n: int) -> None:
    image = smooth_image(h, w, seed=4)
    dev = TorchPreprocessor(SPEC, torch.device("cpu"))(np.ascontiguousarray(image[:, :, ::-1]), "bgr8", n)
    rh, rw = resized_size(h, w, SPEC.resize_shortest_side)
    ref = reference(image, SPEC, crop_offsets(rh, rw, 224, 224, n))
    assert dev.shape == ref.shape and dev.dtype == torch.float32
    np.testing.assert_allclose(dev.numpy(), ref, atol=1e-3)


def test_cpu_and_torch_paths_agree_on_upscaled_tiny_images() -> None:
    image = smooth_image(48, 64, seed=5)
    cpu = CpuPreprocessor(SPEC)(image, "rgb8")
    dev = TorchPreprocessor(SPEC, torch.device("cpu"))(image, "rgb8")
    assert (dev - cpu).abs().mean() < 1.5 * LEVEL


@pytest.mark.parametrize(
    ("image", "encoding", "message"),
    [
        (np.zeros((100, 100, 3), np.float32), "rgb8", "dtype"),
        (np.zeros((100, 100, 4), np.uint8), "rgb8", "HxWx3"),
        (np.zeros((100, 100), np.uint8), "bgr8", "HxWx3"),
        (np.zeros((100, 100, 3), np.uint8), "yuv422", "unsupported encoding"),
        (np.zeros((0, 100, 3), np.uint8), "rgb8", "empty"),
        ([[1, 2, 3]], "rgb8", "numpy array"),
    ],
)
def test_bad_images_raise_input_error(image, encoding: str, message: str) -> None:
    for pre in (CpuPreprocessor(SPEC), TorchPreprocessor(SPEC, torch.device("cpu"))):
        with pytest.raises(InputError, match=message):
            pre(image, encoding)


@pytest.mark.parametrize("shape", [(1, 1, 3), (6, 8, 3), (8, 100, 3)])
def test_tiny_images_are_upscaled_not_rejected(shape: tuple[int, int, int]) -> None:
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    for pre in (CpuPreprocessor(SPEC), TorchPreprocessor(SPEC, torch.device("cpu"))):
        batch = pre(image, "rgb8")
        assert batch.shape == (1, 3, SPEC.input_height, SPEC.input_width) and torch.isfinite(batch).all()
