"""Image -> network input, derived from the model contract (never hard-coded twice).

Rule: resize so the shortest side is ``resize_shortest_side`` (area interpolation), take crops of
``input_height x input_width`` (the centre one, or N evenly spaced over the resized image as the paper
does for dense evaluation), scale to [0, 1], subtract mean, divide by std, in the contract's channel
order. Two implementations of the same rule:

- ``CpuPreprocessor``: OpenCV float resize of only the source pixels the crops need, with the whole
  frame's scale factors and a start on a whole source pixel, so it equals the whole-frame resize
  (``resize_shortest_side``, what training does) up to float rounding (its two halves on two
  threads), then one ``cv2.transform`` per crop (channel order + normalization) into a reused
  channels-last buffer; no per-frame allocation.
- ``TorchPreprocessor``: for CUDA; the uint8 frame is uploaded once (pinned memory) and resized,
  cropped and normalized on the device. It runs on any torch device, so CPU tests cover it.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import torch

from posenet_ros.contract import Preprocessing

# Encoding -> (channels, order of the first three channels). Matches sensor_msgs image encodings.
ENCODINGS: dict[str, tuple[int, str]] = {
    "rgb8": (3, "rgb"),
    "bgr8": (3, "bgr"),
    "rgba8": (4, "rgb"),
    "bgra8": (4, "bgr"),
    "mono8": (1, "mono"),
}


class InputError(ValueError):
    """The image cannot be used: wrong dtype, shape, channel count, encoding or size."""


def check_image(image: np.ndarray, encoding: str) -> np.ndarray:
    """Validate an HxWxC uint8 frame for ``encoding``; returns it as HxWxC (HxW mono gets a C axis)."""
    if encoding not in ENCODINGS:
        raise InputError(f"unsupported encoding {encoding!r}; supported: {', '.join(ENCODINGS)}")
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"image dtype must be uint8 for {encoding}, got {image.dtype}")
    channels = ENCODINGS[encoding][0]
    if image.ndim == 2 and channels == 1:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] != channels:
        raise InputError(f"{encoding} needs an HxWx{channels} image, got shape {image.shape}")
    h, w = image.shape[:2]
    if min(h, w) < 1:
        raise InputError(f"image {w}x{h} is empty")  # any other size is resized to the network's input
    return image


def resized_size(height: int, width: int, shortest_side: int) -> tuple[int, int]:
    """(h, w) after scaling so min(h, w) == shortest_side, aspect ratio kept."""
    scale = shortest_side / min(height, width)
    return max(shortest_side, round(height * scale)), max(shortest_side, round(width * scale))


def crop_offsets(height: int, width: int, crop_h: int, crop_w: int, n: int) -> list[tuple[int, int]]:
    """Top-left corners of ``n`` crops spread evenly over a height x width image.

    n == 1 is the centre crop. Otherwise a rows x cols grid whose spacing is about equal in both
    directions covers the whole free range; when rows*cols > n, n grid points are taken evenly."""
    if n < 1:
        raise ValueError(f"crop count must be >= 1, got {n}")
    range_y, range_x = height - crop_h, width - crop_w
    if range_y < 0 or range_x < 0:
        raise ValueError(f"crop {crop_w}x{crop_h} does not fit in {width}x{height}")
    if n == 1:
        return [(range_y // 2, range_x // 2)]
    rows = min(n, max(1, round(math.sqrt(n * (range_y + 1) / (range_x + 1)))))
    cols = math.ceil(n / rows)

    def axis(count: int, extent: int) -> np.ndarray:
        if count == 1:
            return np.array([extent // 2])
        return np.rint(np.linspace(0, extent, count)).astype(int)

    grid = [(int(y), int(x)) for y in axis(rows, range_y) for x in axis(cols, range_x)]
    picks = np.rint(np.linspace(0, len(grid) - 1, n)).astype(int)
    return [grid[i] for i in picks]


def normalization_affine(spec: Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, beta) with (x / 255 - mean) / std == x * alpha + beta, per channel."""
    std = np.asarray(spec.std, dtype=np.float64)
    mean = np.asarray(spec.mean, dtype=np.float64)
    return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)


def resample_matrix(n_in: int, n_out: int, area: bool) -> np.ndarray:
    """(n_out, n_in) weights of a 1-D resize, OpenCV's sampling exactly: area = overlap of output
    cell [j*s, (j+1)*s) with each input pixel, / s; linear = half-pixel centres, edge clamped."""
    scale = n_in / n_out
    m = np.zeros((n_out, n_in), dtype=np.float64)
    j = np.arange(n_out)
    if area and scale >= 1.0:
        start, end = j * scale, (j + 1) * scale
        for i in range(int(np.ceil(scale)) + 1):
            pix = np.floor(start).astype(int) + i
            valid = pix < np.minimum(np.ceil(end), n_in)
            overlap = np.minimum(end, pix + 1) - np.maximum(start, pix)
            m[j[valid], pix[valid]] += overlap[valid] / scale
    else:
        src = np.clip((j + 0.5) * scale - 0.5, 0.0, n_in - 1)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        frac = src - i0
        np.add.at(m, (j, i0), 1.0 - frac)
        np.add.at(m, (j, i1), frac)
    return m.astype(np.float32)


def channel_affine(encoding: str, spec: Preprocessing) -> np.ndarray:
    """3 x (C + 1) matrix taking a C-channel pixel of ``encoding`` to the network's normalized
    3 channels: picks (and reorders) the colour channels, drops alpha, repeats mono, and applies
    (x / 255 - mean) / std, all in one ``cv2.transform`` pass."""
    channels, order = ENCODINGS[encoding]
    alpha, beta = normalization_affine(spec)
    m = np.zeros((3, channels + 1), dtype=np.float32)
    for c, name in enumerate(spec.channel_order):
        source = 0 if order == "mono" else order.index(name)
        m[c, source] = alpha[c]
    m[:, channels] = beta
    return m


def uses_area(height: int, width: int, spec: Preprocessing) -> bool:
    """Area averaging when the shortest side shrinks (moire-free); linear when it grows, where
    OpenCV's INTER_AREA degenerates to nearest-neighbour blocks. Training resizes by the same rule."""
    return spec.interpolation == "area" and min(height, width) >= spec.resize_shortest_side


def resize_shortest_side(image: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """The resize rule itself, written the slow, obvious way: the whole frame resized so that its
    shortest side is ``resize_shortest_side`` (``cv2.INTER_AREA`` when it shrinks, ``INTER_LINEAR``
    when it grows, see ``uses_area``). Crops are then cut from the result.

    Training's image cache calls it on uint8 frames (OpenCV rounds the result to whole grey
    levels); the preprocessors compute the same resize unrounded, as it does on float32 frames."""
    h, w = image.shape[:2]
    rh, rw = resized_size(h, w, spec.resize_shortest_side)
    interp = cv2.INTER_AREA if uses_area(h, w, spec) else cv2.INTER_LINEAR
    return cv2.resize(image, (rw, rh), interpolation=interp)


@dataclass(frozen=True)
class ResizePiece:
    """One ``cv2.resize`` of the CPU path: source rows/columns ``[y0, y1) x [x0, x1)`` to output
    rows ``[out_y0, out_y0 + out_h)`` of the computed rectangle (all its columns)."""

    source: tuple[int, int, int, int]
    out_y0: int
    out_h: int


@dataclass(frozen=True)
class CropPlan:
    """Where the crops of one frame size come from, computed once per (frame size, crop count).

    ``region`` is the part of the resized image the crops cover, ``(y0, x0, y1, x1)``, and
    ``offsets`` each crop's corner inside it (the torch path resizes exactly the region).

    The CPU path resizes ``computed``, a rectangle of the resized image around the region, from
    the source pixels ``source``, in one resize or in ``pieces`` on two threads, and finds the region
    at ``region_in_computed`` inside it. When shrinking, an area-resized pixel is the mean of a
    rectangle of source pixels whose edges lie on fractional coordinates, so resizing a part of
    the frame gives the whole-frame result only where the part starts on an output edge that
    falls on a source pixel edge: the rectangle starts on one (output index a multiple of
    ``n_out / gcd(n_in, n_out)``) and ends on the first source pixel edge past the region, and
    ``cv2.resize`` is given the whole frame's scale factors (``fx``, ``fy``) instead of an output
    size, so every output edge lands where it does in the whole frame. When enlarging (linear
    filtering reads neighbours across any border) the rectangle is the whole frame."""

    resized: tuple[int, int]
    region: tuple[int, int, int, int]
    offsets: tuple[tuple[int, int], ...]
    area: bool
    computed: tuple[int, int, int, int]
    source: tuple[int, int, int, int]
    scale: tuple[float, float]  # (fx, fy): output pixels per source pixel, as the whole-frame resize has them
    whole: tuple[ResizePiece, ...]  # the computed rectangle as one resize (one thread)
    pieces: tuple[ResizePiece, ...]  # as two resizes (two threads) where it can be split, else ``whole``

    @property
    def region_in_computed(self) -> tuple[int, int]:
        return self.region[0] - self.computed[0], self.region[1] - self.computed[1]


def aligned_span(n_in: int, n_out: int, o0: int, o1: int) -> tuple[int, int, int, int]:
    """(source start, source end, output start, output count) of a 1-D area resize by the factor
    n_out / n_in whose outputs include [o0, o1), each equal to the whole-axis resize's.

    Output edge j lies at source coordinate j * n_in / n_out, a whole pixel exactly when j is a
    multiple of q = n_out / gcd(n_in, n_out): the span starts at the last such edge at or before o0
    and ends at the first source pixel edge at or after o1's. OpenCV, given the factor rather than
    a size, makes round((end - start) * n_out / n_in) outputs; the last may be a partial cell that
    the crops never read."""
    q = n_out // math.gcd(n_in, n_out)
    out0 = o0 // q * q
    start = out0 * n_in // n_out
    end = min(n_in, -(-o1 * n_in // n_out))
    count = round((end - start) * (n_out / n_in))
    if count < o1 - out0 or out0 + count > n_out:
        raise AssertionError(f"span {start}:{end} of {n_in} -> {count} outputs from {out0} misses {o0}:{o1}")
    return start, end, out0, count


def _row_pieces(height: int, rh: int, ys: tuple[int, int, int, int], cols: tuple[int, int]) -> tuple[ResizePiece, ...]:
    """The computed rows as two resizes split on an aligned output row near the middle (two
    threads), or one where no aligned row falls inside."""
    start, end, _, count = ys
    x0, x1 = cols
    q = rh // math.gcd(height, rh)
    half = round(count / 2 / q) * q
    if 0 < half < count:
        cut = start + half * height // rh
        rest = round((end - cut) * (rh / height))
        if rest == count - half:
            return (
                ResizePiece((start, x0, cut, x1), 0, half),
                ResizePiece((cut, x0, end, x1), half, rest),
            )
    return (ResizePiece((start, x0, end, x1), 0, count),)


@lru_cache(maxsize=64)
def crop_plan(height: int, width: int, spec: Preprocessing, n_crops: int) -> CropPlan:
    rh, rw = resized_size(height, width, spec.resize_shortest_side)
    offsets = crop_offsets(rh, rw, spec.input_height, spec.input_width, n_crops)
    area = uses_area(height, width, spec)
    y0 = min(y for y, _ in offsets)
    x0 = min(x for _, x in offsets)
    y1 = max(y for y, _ in offsets) + spec.input_height
    x1 = max(x for _, x in offsets) + spec.input_width
    relative = tuple((y - y0, x - x0) for y, x in offsets)
    if area:
        ys = aligned_span(height, rh, y0, y1)
        sx0, sx1, cx0, cw = aligned_span(width, rw, x0, x1)
        computed = (ys[2], cx0, ys[2] + ys[3], cx0 + cw)
        source = (ys[0], sx0, ys[1], sx1)
        pieces = _row_pieces(height, rh, ys, (sx0, sx1))
    else:
        computed = (0, 0, rh, rw)
        source = (0, 0, height, width)
        pieces = (ResizePiece(source, 0, rh),)
    whole = (ResizePiece(source, 0, computed[2] - computed[0]),)
    scale = (rw / width, rh / height)
    return CropPlan((rh, rw), (y0, x0, y1, x1), relative, area, computed, source, scale, whole, pieces)


class CpuPreprocessor:
    """OpenCV implementation; returns a float32 (N, 3, H, W) tensor in channels-last memory.

    The source pixels the crops need (``CropPlan``) are converted to float32 and area-resized in
    float with the whole frame's scale factors (OpenCV's float INTER_AREA is about 1.5x faster than
    its uint8 one here, and skips the uint8 rounding): the crops equal those of the whole frame
    resized (``resize_shortest_side``) up to float rounding. One ``cv2.transform`` per crop then
    reorders channels and normalizes into a reused buffer. With ``threads`` > 1 the rows are
    resized as two pieces on two threads, split on an output row that lies on a source row edge,
    which keeps the result identical to one resize.

    The tensor views a buffer reused by the next call: consume it before preprocessing again."""

    def __init__(self, spec: Preprocessing, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.spec = spec
        self._affine = {encoding: channel_affine(encoding, spec) for encoding in ENCODINGS}
        self._helper = ThreadPoolExecutor(1, thread_name_prefix="preprocess") if threads > 1 else None
        self._source = _Scratch()  # float copy of the source pixels
        self._region = _Scratch()  # the computed part of the resized frame
        self._crops = _Scratch()  # the network input, N x H x W x 3

    def __call__(self, image: np.ndarray, encoding: str, n_crops: int = 1) -> torch.Tensor:
        image = check_image(image, encoding)
        s = self.spec
        plan = crop_plan(image.shape[0], image.shape[1], s, n_crops)
        region = self._resize(image, plan)
        out = self._crops.view((n_crops, s.input_height, s.input_width, 3))
        affine = self._affine[encoding]
        dy, dx = plan.region_in_computed
        for dst, (y, x) in zip(out, plan.offsets, strict=True):
            y, x = y + dy, x + dx
            cv2.transform(region[y : y + s.input_height, x : x + s.input_width], affine, dst=dst)
        # NHWC memory seen as NCHW: exactly torch's channels_last layout, no copy.
        return torch.from_numpy(out).permute(0, 3, 1, 2)

    def _resize(self, image: np.ndarray, plan: CropPlan) -> np.ndarray:
        """The plan's computed rectangle of the resized frame, float32 HxWxC (HxW for mono)."""
        y0, x0, y1, x1 = plan.computed
        sy0, sx0, sy1, sx1 = plan.source
        if image.shape[2] == 1:
            image = image[:, :, 0]  # OpenCV treats HxWx1 and HxW alike; keep the shapes aligned
        src = self._source.view((sy1 - sy0, sx1 - sx0, *image.shape[2:]))
        dst = self._region.view((y1 - y0, x1 - x0, *image.shape[2:]))
        pieces = plan.pieces if self._helper is not None else plan.whole
        jobs = []
        for piece in pieces:
            py0, px0, py1, px1 = piece.source
            args = (
                image[py0:py1, px0:px1],
                src[py0 - sy0 : py1 - sy0],
                dst[piece.out_y0 : piece.out_y0 + piece.out_h],
                plan.area,
                plan.scale,
            )
            if self._helper is not None and piece is not pieces[-1]:
                jobs.append(self._helper.submit(_convert_resize, *args))
            else:
                _convert_resize(*args)
        for job in jobs:
            job.result()
        return dst


def _convert_resize(
    source: np.ndarray, src: np.ndarray, dst: np.ndarray, area: bool, scale: tuple[float, float]
) -> None:
    """uint8 ``source`` -> float32 ``src`` -> resized into ``dst``: by the whole frame's factors
    (area; OpenCV then derives ``dst``'s size from them), or to ``dst``'s size (linear, whole frame)."""
    np.copyto(src, source)  # uint8 -> float32
    if area:
        out = cv2.resize(src, None, dst=dst, fx=scale[0], fy=scale[1], interpolation=cv2.INTER_AREA)
    else:
        out = cv2.resize(src, (dst.shape[1], dst.shape[0]), dst=dst, interpolation=cv2.INTER_LINEAR)
    if out.shape != dst.shape or out.ctypes.data != dst.ctypes.data:
        raise AssertionError(f"resize made {out.shape}, planned {dst.shape}")


class _Scratch:
    """A float32 array reused from frame to frame, reallocated only when a larger one is needed."""

    def __init__(self) -> None:
        self._data = np.empty(0, dtype=np.float32)

    def view(self, shape: tuple[int, ...]) -> np.ndarray:
        size = math.prod(shape)
        if self._data.size < size:
            self._data = np.empty(size, dtype=np.float32)
        return self._data[:size].reshape(shape)


class TorchPreprocessor:
    """Same rule in torch ops, for CUDA: one upload of the uint8 frame, everything else on device.

    The resize is two small matrix products with OpenCV's area (or linear) weights, restricted to the
    rows and columns the crops keep: exact area averaging (torch's ``mode="area"`` is adaptive
    pooling, several grey levels off) and no work on discarded pixels."""

    def __init__(self, spec: Preprocessing, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        self.spec = spec
        self.device = device
        self.dtype = dtype
        alpha, beta = normalization_affine(spec)
        self.alpha = torch.from_numpy(alpha).to(device).view(1, 3, 1, 1)
        self.beta = torch.from_numpy(beta).to(device).view(1, 3, 1, 1)
        self._weights: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def _resample_weights(self, plan: CropPlan, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, columns^T) weights of the region, cached per frame size and crop count."""
        key = (height, width, len(plan.offsets))
        if key not in self._weights:
            y0, x0, y1, x1 = plan.region
            rh, rw = plan.resized
            wy = resample_matrix(height, rh, plan.area)[y0:y1]
            wx = resample_matrix(width, rw, plan.area)[x0:x1]
            self._weights[key] = (
                torch.from_numpy(wy).to(self.device),
                torch.from_numpy(wx).T.contiguous().to(self.device),
            )
        return self._weights[key]

    def __call__(self, image: np.ndarray, encoding: str, n_crops: int = 1) -> torch.Tensor:
        image = check_image(image, encoding)
        s = self.spec
        height, width = image.shape[:2]
        host = torch.from_numpy(np.ascontiguousarray(image))
        if self.device.type == "cuda":
            host = host.pin_memory()
        frame = host.to(self.device, non_blocking=True)
        _, order = ENCODINGS[encoding]
        if order == "mono":
            frame = frame[:, :, :1].expand(-1, -1, 3)
        else:
            frame = frame[:, :, :3]
            if order != s.channel_order:
                frame = frame.flip(2)
        plan = crop_plan(height, width, s, n_crops)
        wy, wx_t = self._resample_weights(plan, height, width)
        x = frame.permute(2, 0, 1).float()  # (3, H, W)
        region = torch.matmul(torch.matmul(wy, x), wx_t).unsqueeze(0)  # (1, 3, region h, region w)
        crops = [region[:, :, y : y + s.input_height, xx : xx + s.input_width] for y, xx in plan.offsets]
        batch = torch.cat(crops, 0) * self.alpha + self.beta
        return batch.contiguous(memory_format=torch.channels_last).to(self.dtype)
