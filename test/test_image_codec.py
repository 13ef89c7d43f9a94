"""sensor_msgs Image/CompressedImage conversion without ROS: encodings, padding, bad messages."""

from __future__ import annotations

import array
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from posenet_ros.image_codec import (
    ImageDecodeError,
    RawImage,
    decode,
    decode_compressed,
    decode_image,
    encode_compressed,
    encode_image,
)

RNG = np.random.default_rng(0)


def pixels(h: int, w: int, c: int) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, c), dtype=np.uint8)


@pytest.mark.parametrize(("encoding", "channels"), [("rgb8", 3), ("bgr8", 3), ("rgba8", 4), ("bgra8", 4), ("mono8", 1)])
@pytest.mark.parametrize("padding", [0, 5])
def test_round_trip_every_encoding_with_and_without_row_padding(encoding: str, channels: int, padding: int) -> None:
    image = pixels(7, 13, channels)
    msg = encode_image(image, encoding, row_padding=padding)
    assert msg.step == 13 * channels + padding
    decoded, enc = decode_image(msg)
    assert enc == encoding
    np.testing.assert_array_equal(decoded, image)


def test_padding_bytes_are_skipped_not_read_as_pixels() -> None:
    image = pixels(4, 3, 3)
    rows = np.concatenate([image.reshape(4, 9), np.full((4, 7), 255, np.uint8)], axis=1)
    msg = RawImage(4, 3, "rgb8", 0, 16, rows.tobytes())
    np.testing.assert_array_equal(decode_image(msg)[0], image)


def test_last_row_may_omit_its_padding() -> None:
    image = pixels(3, 2, 3)
    full = encode_image(image, "rgb8", row_padding=2)
    trimmed = RawImage(3, 2, "rgb8", 0, full.step, full.data[:-2])
    np.testing.assert_array_equal(decode_image(trimmed)[0], image)


@pytest.mark.parametrize(
    "container", [bytes, bytearray, lambda b: array.array("B", b), lambda b: np.frombuffer(b, np.uint8)]
)
def test_data_from_rclpy_rosbags_or_bytes(container) -> None:
    image = pixels(5, 6, 3)
    raw = encode_image(image, "bgr8")
    msg = SimpleNamespace(height=5, width=6, encoding="bgr8", is_bigendian=1, step=raw.step, data=container(raw.data))
    np.testing.assert_array_equal(decode(msg)[0], image)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"encoding": "16UC1"}, "unsupported image encoding '16UC1'"),
        ({"encoding": "yuv422"}, "unsupported image encoding"),
        ({"step": 10}, "step 10 is smaller"),
        ({"data": b"\x00" * 50}, "truncated"),
        ({"height": 0}, "empty image"),
        ({"data": 12345}, "not a byte buffer"),
    ],
)
def test_bad_image_messages_fail_on_one_line(fields: dict, message: str) -> None:
    raw = encode_image(pixels(8, 8, 3), "rgb8")
    msg = SimpleNamespace(**{**raw.__dict__, **fields})
    with pytest.raises(ImageDecodeError, match=message) as info:
        decode_image(msg)
    assert "\n" not in str(info.value)


def test_png_round_trip_is_exact_and_comes_back_bgr() -> None:
    bgr = pixels(20, 30, 3)
    decoded, enc = decode_compressed(SimpleNamespace(format="png", data=encode_compressed(bgr, "png")))
    assert enc == "bgr8"
    np.testing.assert_array_equal(decoded, bgr)


def test_jpeg_round_trip_is_close() -> None:
    smooth = cv2.GaussianBlur(pixels(64, 64, 3), (9, 9), 3)
    data = encode_compressed(smooth, "jpeg", quality=95)
    msg = SimpleNamespace(format="rgb8; jpeg compressed bgr8", data=array.array("B", data))
    decoded, enc = decode(msg)
    assert enc == "bgr8" and decoded.shape == smooth.shape
    assert np.abs(decoded.astype(int) - smooth).mean() < 3


def test_grey_png_is_mono8() -> None:
    grey = pixels(10, 10, 1)[:, :, 0]
    decoded, enc = decode_compressed(SimpleNamespace(format="png", data=encode_compressed(grey, "png")))
    assert enc == "mono8" and decoded.shape == (10, 10, 1)
    np.testing.assert_array_equal(decoded[:, :, 0], grey)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "has no data"),
        (b"\xff\xd8\xff\xe0 this is not really a jpeg", "could not be decoded"),
        (cv2.imencode(".png", np.zeros((4, 4), np.uint16))[1].tobytes(), "only 8-bit"),
    ],
)
def test_bad_compressed_images_fail_on_one_line(data: bytes, message: str) -> None:
    with pytest.raises(ImageDecodeError, match=message):
        decode_compressed(SimpleNamespace(format="jpeg", data=data))


def test_grey_alpha_png_comes_back_bgra8() -> None:
    import io

    from PIL import Image

    grey_alpha = pixels(6, 5, 2)
    buf = io.BytesIO()
    Image.fromarray(grey_alpha, "LA").save(buf, "PNG")
    decoded, enc = decode_compressed(SimpleNamespace(format="png", data=buf.getvalue()))
    assert enc == "bgra8" and decoded.shape == (6, 5, 4)
    np.testing.assert_array_equal(decoded[:, :, 0], grey_alpha[:, :, 0])
    np.testing.assert_array_equal(decoded[:, :, 3], grey_alpha[:, :, 1])


def test_odd_channel_counts_are_refused_not_mislabelled(monkeypatch) -> None:
    monkeypatch.setattr(cv2, "imdecode", lambda buf, flags: np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ImageDecodeError, match="2 channels"):
        decode_compressed(SimpleNamespace(format="png", data=b"\x89PNG"))


def test_encoders_refuse_mismatched_input() -> None:
    with pytest.raises(ImageDecodeError):
        encode_image(np.zeros((4, 4, 3), np.uint8), "mono8")
    with pytest.raises(ImageDecodeError):
        encode_compressed(np.zeros((4, 4, 3), np.uint8), "tiff")


def test_padded_strided_frames_localize_like_contiguous_ones(tiny_file) -> None:
    from posenet_ros.engine import Engine, EngineConfig

    engine = Engine(tiny_file[0], EngineConfig(device="cpu", warmup_iters=1))
    image = pixels(120, 160, 4)
    padded, enc = decode_image(encode_image(image, "bgra8", row_padding=12))
    assert not padded.flags["C_CONTIGUOUS"]
    a = engine.localize(padded, enc).pose
    b = engine.localize(np.ascontiguousarray(image), "bgra8").pose
    np.testing.assert_array_equal(a.position, b.position)
    np.testing.assert_array_equal(a.quaternion, b.quaternion)
