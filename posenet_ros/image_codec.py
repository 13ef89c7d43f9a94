"""sensor_msgs Image / CompressedImage <-> ndarray, with cv_bridge's semantics and no ROS import.

Messages are duck-typed: anything with the fields of sensor_msgs/Image (height, width, encoding,
is_bigendian, step, data) or sensor_msgs/CompressedImage (format, data) works, whether it comes from
rclpy (data is an array.array), from a rosbags-deserialized bag (data is a uint8 ndarray) or from
``encode_image`` below. The node uses cv_bridge where it imports and this module otherwise; both
must give identical arrays (tested where cv_bridge exists).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from posenet_ros.preprocess import ENCODINGS


class ImageDecodeError(ValueError):
    """The message cannot be turned into an image; the message says why on one line."""


@dataclass
class RawImage:
    """The fields of sensor_msgs/Image that carry pixels (the header is the caller's)."""

    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: bytes


def _buffer(data: Any) -> np.ndarray:
    try:
        if isinstance(data, np.ndarray):
            # Contiguous first: a strided or wider-than-byte array cannot be viewed as bytes as it is
            # (no copy for the contiguous uint8 arrays rosbags and rclpy hand us).
            return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    except (TypeError, ValueError):
        raise ImageDecodeError(f"image data of type {type(data).__name__} is not a byte buffer") from None


def decode_image(msg: Any) -> tuple[np.ndarray, str]:
    """(HxWxC uint8 view of the message's data, encoding). Row padding (step > width * channels) is
    skipped through strides, without a copy. Supported: the encodings the engine takes."""
    encoding = str(msg.encoding)
    if encoding not in ENCODINGS:
        raise ImageDecodeError(f"unsupported image encoding {encoding!r}; supported: {', '.join(ENCODINGS)}")
    channels = ENCODINGS[encoding][0]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"empty image ({width}x{height})")
    row_bytes = width * channels
    if step < row_bytes:
        raise ImageDecodeError(f"step {step} is smaller than width * channels = {row_bytes} for {encoding}")
    buf = _buffer(msg.data)
    needed = step * (height - 1) + row_bytes
    if buf.size < needed:
        raise ImageDecodeError(
            f"image data truncated: {buf.size} bytes, {needed} needed for {width}x{height} {encoding}"
        )
    # 8-bit encodings: is_bigendian does not change the byte layout.
    image = np.lib.stride_tricks.as_strided(buf, shape=(height, width, channels), strides=(step, channels, 1))
    return image, encoding


def decode_compressed(msg: Any) -> tuple[np.ndarray, str]:
    """Decode a CompressedImage (JPEG or PNG) to (HxWxC uint8, encoding): colour images come back
    bgr8 (bgra8 with alpha), grey ones mono8, as image_transport's compressed plugin expects."""
    fmt = str(getattr(msg, "format", "")).lower()
    fmt = fmt if fmt.isprintable() else repr(fmt)  # the error stays one line whatever a driver sends
    buf = _buffer(msg.data)
    if buf.size == 0:
        raise ImageDecodeError(f"compressed image ({fmt or 'unknown format'}) has no data")
    image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageDecodeError(f"compressed image ({fmt or 'unknown format'}, {buf.size} bytes) could not be decoded")
    if image.dtype != np.uint8:
        raise ImageDecodeError(f"compressed image decodes to {image.dtype}; only 8-bit images are supported")
    if image.ndim == 2:
        return image[:, :, None], "mono8"
    encoding = {1: "mono8", 3: "bgr8", 4: "bgra8"}.get(image.shape[2])
    if encoding is None:
        raise ImageDecodeError(f"compressed image decodes to {image.shape[2]} channels; expected 1, 3 or 4")
    return image, encoding


def decode(msg: Any) -> tuple[np.ndarray, str]:
    """Either message type: CompressedImage has ``format``, Image has ``encoding``."""
    return decode_compressed(msg) if hasattr(msg, "format") and not hasattr(msg, "encoding") else decode_image(msg)


def encode_image(image: np.ndarray, encoding: str, row_padding: int = 0) -> RawImage:
    """HxWxC (or HxW for mono8) uint8 -> Image fields, optionally with padded rows as some drivers send."""
    if encoding not in ENCODINGS:
        raise ImageDecodeError(f"unsupported image encoding {encoding!r}")
    channels = ENCODINGS[encoding][0]
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != channels:
        raise ImageDecodeError(f"{encoding} needs HxWx{channels} uint8, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    rows = image.reshape(height, width * channels)
    if row_padding:
        rows = np.concatenate([rows, np.zeros((height, row_padding), np.uint8)], axis=1)
    return RawImage(height, width, encoding, 0, rows.shape[1], np.ascontiguousarray(rows).tobytes())


def encode_compressed(image_bgr: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    """bgr8 (or mono8) image -> JPEG/PNG bytes for a CompressedImage."""
    ext = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}.get(fmt.lower())
    if ext is None:
        raise ImageDecodeError(f"unsupported compressed format {fmt!r}; use jpeg or png")
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else []
    ok, data = cv2.imencode(ext, image_bgr, params)
    if not ok:
        raise ImageDecodeError(f"could not encode image as {fmt}")
    return data.tobytes()
