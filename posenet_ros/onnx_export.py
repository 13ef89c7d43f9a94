"""Convert an exported TorchScript model to ONNX for the engine's onnxruntime backend, in float32 or
quantized to int8.

Sits above ``engine`` (it loads the TorchScript file and its contract the way the engine does, and
preprocesses int8 calibration frames with the engine's own preprocessing); ``export.py`` below it
stays free of the engine.
"""

from __future__ import annotations

import io
import json
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from posenet_ros.atomic import atomic_path
from posenet_ros.contract import EXTRA_FILE_NAME
from posenet_ros.engine import EngineError, load_model
from posenet_ros.preprocess import CpuPreprocessor

QUANTIZATION_KEY = "posenet_quantization"  # ONNX metadata: how an int8 file was made
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm")


class CalibrationError(EngineError):
    """The int8 calibration frames cannot be read or are missing."""


def export_onnx(model_path: str | Path, out: str | Path, opset: int = 17) -> Path:
    """Convert an exported TorchScript model to ONNX for the onnxruntime backend: same graph (the
    quaternion normalization included), dynamic batch for dense crops, and the same contract in
    the ONNX metadata. Needs the ``onnx`` package; writes atomically."""
    import onnx  # only needed to convert, not to run

    module, contract = load_model(model_path)
    spec = contract.preprocessing
    example = torch.zeros(2, 3, spec.input_height, spec.input_width)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript-based exporter announces its deprecation
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=["pose"],
            dynamic_axes={"image": {0: "batch"}, "pose": {0: "batch"}},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    # Only forward is converted: the dropout sampling method stays a TorchScript feature.
    modes = tuple(m for m in contract.uncertainty_modes if m != "mc_dropout")
    calibration = {m: c for m, c in contract.calibration.items() if m in modes}
    entry = proto.metadata_props.add()
    entry.key, entry.value = (
        EXTRA_FILE_NAME,
        replace(contract, uncertainty_modes=modes, calibration=calibration).to_json(),
    )
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))
    return Path(out)


def calibration_frames(source: str | Path, count: int, image_topic: str | None = None) -> list[tuple[np.ndarray, str]]:
    """``count`` frames (or all, if fewer) spread evenly over a folder of images (searched
    recursively, sorted by path) or over the image topic of a bag, as (HxWxC uint8, encoding)."""
    source = Path(source)
    if count < 1:
        raise CalibrationError(f"calibration frame count must be >= 1, got {count}")
    if not source.exists():
        raise CalibrationError(f"calibration source not found: {source}")
    if source.is_dir() and not _is_bag_folder(source):
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise CalibrationError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {source}")
        frames = []
        for p in _spread(paths, count):
            image = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if image is None:
                raise CalibrationError(f"cannot decode calibration image {p}")
            frames.append((image, "bgr8"))
        return frames
    return _bag_frames(source, image_topic, count)


def _is_bag_folder(path: Path) -> bool:
    return (path / "metadata.yaml").is_file()


def _spread(items: list[Any], count: int) -> list[Any]:
    if len(items) <= count:
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def _bag_frames(bag: Path, image_topic: str | None, count: int) -> list[tuple[np.ndarray, str]]:
    """``count`` frames spread evenly over the bag's image topic; only those are decoded."""
    from posenet_ros.bagio import open_bag, pick_image_topic, read_messages
    from posenet_ros.image_codec import ImageDecodeError, decode

    frames = []
    with open_bag(bag) as reader:
        topic = pick_image_topic(reader, image_topic)
        total = sum(c.msgcount for c in reader.connections if c.topic == topic)
        wanted = set(_spread(list(range(total)), count))
        for index, message in enumerate(read_messages(reader, [topic])):
            if index not in wanted or message.msg is None:
                continue
            try:
                frames.append(decode(message.msg))
            except ImageDecodeError:
                continue  # a broken frame is not a calibration sample; the others still are
    if not frames:
        raise CalibrationError(f"no decodable image on {topic} in {bag}")
    return frames


def quantize_onnx(
    model_path: str | Path,
    out: str | Path,
    frames: list[tuple[np.ndarray, str]],
) -> Path:
    """Int8 ONNX model for the onnxruntime backend: static quantization (QDQ), int8 weights per
    output channel, uint8 activations whose ranges come from ``frames`` run through the model with
    the contract's own preprocessing (centre crop). Frames should look like what the robot will see:
    the scene's training images or a recording. The contract and how the file was quantized go
    into the ONNX metadata. 1.5-1.7x faster than float32 on an AVX2 CPU, at some accuracy cost
    that ``posenet-ros replay`` of a held-out recording with ground truth measures."""
    if not frames:
        raise CalibrationError("no calibration frames")
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    _, contract = load_model(model_path)
    preprocess = CpuPreprocessor(contract.preprocessing)
    batches = [preprocess(image, encoding).contiguous().numpy().copy() for image, encoding in frames]

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter({"image": b} for b in batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    with tempfile.TemporaryDirectory(prefix="posenet_int8_") as tmp:
        fp32, prepared, int8 = (Path(tmp) / n for n in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        export_onnx(model_path, fp32)
        quant_pre_process(str(fp32), str(prepared))  # folds and infers shapes so every conv is quantized
        quantize_static(
            str(prepared),
            str(int8),
            Frames(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,  # percentile/entropy: no better on the demo scene
        )
        proto = onnx.load(str(int8))
        metadata = {p.key: p.value for p in onnx.load(str(fp32)).metadata_props}
    metadata[QUANTIZATION_KEY] = json.dumps(
        {
            "format": "QDQ",
            "weights": "int8 per channel",
            "activations": "uint8",
            "method": "minmax",
            "frames": len(batches),
        }
    )
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    with atomic_path(out) as tmp_out:
        onnx.save(proto, str(tmp_out))
    return Path(out)
