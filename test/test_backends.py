"""Fast paths against the reference: the ONNX Runtime backend and chunked dense crops give the
TorchScript/eager poses (position within 1e-3 of the scene scale, rotation within 0.05 deg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from posenet_ros import geometry as g
from posenet_ros.cli import main as ros_main
from posenet_ros.engine import CPU_CHUNK, Engine, EngineConfig, EngineError, ModelLoadError
from posenet_ros.onnx_export import export_onnx
from posenet_ros.preprocess import CpuPreprocessor

pytest.importorskip("onnxruntime")


def frame(seed: int = 0, h: int = 480, w: int = 640) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def onnx_file(posenet_file, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(posenet_file[0], tmp_path_factory.mktemp("onnx") / "posenet.onnx")


def test_onnxruntime_backend_agrees_with_torchscript(posenet_file, onnx_file: Path) -> None:
    ts = Engine(posenet_file[0], EngineConfig(device="cpu", threads=2, max_crops=8))
    ort = Engine(onnx_file, EngineConfig(threads=2, max_crops=8))  # auto: .onnx -> onnxruntime
    assert (ts.backend, ort.backend) == ("torchscript", "onnxruntime") and ort.contract == ts.contract
    extent = max(ts.contract.scene.extent)
    for seed, crops in ((0, 1), (1, 1), (2, 8)):
        a, b = ts.localize(frame(seed), "bgr8", crops=crops), ort.localize(frame(seed), "bgr8", crops=crops)
        assert np.linalg.norm(a.pose.position - b.pose.position) < 1e-3 * extent
        assert g.rotation_error_deg(a.pose.quaternion, b.pose.quaternion) < 0.05
        if crops > 1:
            np.testing.assert_allclose(a.covariance, b.covariance, rtol=1e-3, atol=1e-9)


def test_chunked_dense_crops_equal_one_batch(posenet_file) -> None:
    path, model = posenet_file
    engine = Engine(path, EngineConfig(device="cpu", max_crops=64))
    n = 2 * CPU_CHUNK + 3  # two full chunks and a remainder
    result = engine.localize(frame(4), "bgr8", crops=n)
    batch = CpuPreprocessor(engine.contract.preprocessing)(frame(4), "bgr8", n)
    with torch.no_grad():
        ref = model(batch).double().numpy()
    extent = max(engine.contract.scene.extent)
    assert np.linalg.norm(result.pose.position - ref[:, :3].mean(0)) < 1e-3 * extent
    assert g.rotation_error_deg(result.pose.quaternion, g.quat_average(ref[:, 3:])) < 0.05


def test_backend_choice_is_checked(posenet_file, onnx_file: Path, tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="convert it with posenet-ros export-onnx"):
        Engine(posenet_file[0], EngineConfig(backend="onnxruntime"))
    with pytest.raises(EngineError, match=r"use a TorchScript \.pt file"):
        Engine(onnx_file, EngineConfig(backend="torchscript"))
    with pytest.raises(EngineError, match="unknown backend"):
        Engine(onnx_file, EngineConfig(backend="tensorrt"))
    with pytest.raises(EngineError, match="runs on the CPU"):
        Engine(onnx_file, EngineConfig(device="cuda"))
    garbage = tmp_path / "x.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="not an ONNX model"):
        Engine(garbage)


def test_onnx_without_contract_is_refused(onnx_file: Path, tmp_path: Path) -> None:
    import onnx

    proto = onnx.load(str(onnx_file))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(ModelLoadError, match="no posenet contract"):
        Engine(bare)


def test_export_onnx_command(posenet_file, tmp_path: Path, capsys) -> None:
    out = tmp_path / "m.onnx"
    assert ros_main(["export-onnx", str(posenet_file[0]), str(out)]) == 0 and out.is_file()
    assert ros_main(["export-onnx", str(tmp_path / "missing.pt"), str(out)]) == 2
    assert "model file not found" in capsys.readouterr().err
