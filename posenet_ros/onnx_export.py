"""Convert an exported TorchScript model to ONNX for the engine's onnxruntime backend.

Sits above ``engine`` (it loads the TorchScript file and its contract the way the engine does);
``export.py`` below it stays free of the engine.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import replace
from pathlib import Path

import torch

from posenet_ros.atomic import atomic_path
from posenet_ros.contract import EXTRA_FILE_NAME
from posenet_ros.engine import load_model


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
