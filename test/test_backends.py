"""Fast paths against the reference: the ONNX Runtime backend and chunked dense crops give the
TorchScript/eager poses (position within 1e-3 of the scene scale, rotation within 0.05 deg)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
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


def test_onnxruntime_workers_spin_within_a_run_only(onnx_file: Path) -> None:
    """Spinning between layers, stopped after each run: no wake-up per layer, no core burnt
    between frames (posenet-ros bench, case 6, shows the CPU share at 10 Hz)."""
    options = Engine(onnx_file, EngineConfig(threads=2)).session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    assert options.intra_op_num_threads == 2


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


# -- int8 (posenet-ros export-onnx --int8) ------------------------------------------------------

DEMO_MODEL = Path(__file__).resolve().parents[1] / "models" / "posenet_demo.pt"


@pytest.fixture(scope="module")
def demo_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model's scene: one sequence to calibrate on, another to compare on."""
    from posenet_train.synth import SynthConfig, render_dataset

    root = tmp_path_factory.mktemp("scene")
    cfg = SynthConfig(
        train_sequences=1, test_sequences=1, frames_per_sequence=24, width=256, height=192, heading_spread_deg=50.0
    )
    render_dataset(cfg, root, progress=False)
    return root


def test_int8_export_is_quantized_and_stays_close_to_float(demo_scene: Path, tmp_path: Path, capsys) -> None:
    """Measured on the 400 demo test frames: int8 moves poses a median 0.11 m / 0.84 deg from float32.
    Bounds here: 2% of the scene and 2 deg (median), 6% and 6 deg (worst of 24 frames)."""
    import onnx

    calib, test = demo_scene / "seq-01", demo_scene / "seq-02"
    out = tmp_path / "demo_int8.onnx"
    assert ros_main(["export-onnx", str(DEMO_MODEL), str(out), "--int8", "--calibration", str(calib)]) == 0
    assert "int8, calibrated on 24 frames" in capsys.readouterr().out
    proto = onnx.load(str(out))
    kinds = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= kinds
    int8_weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
    assert len(int8_weights) >= 57  # every convolution of the GoogLeNet backbone
    assert ros_main(["info", str(out)]) == 0
    assert "int8 (QDQ: weights int8 per channel, activations uint8, minmax calibration on 24 frames)" in (
        capsys.readouterr().out
    )
    assert ros_main(["info", "--json", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)  # one JSON document, the quantization inside it
    assert info["quantization"]["frames"] == 24 and info["scene"]["name"] == "synthetic_room"

    fp32 = Engine(export_onnx(DEMO_MODEL, tmp_path / "demo.onnx"), EngineConfig(threads=2))
    int8 = Engine(out, EngineConfig(threads=2))
    assert int8.contract == fp32.contract
    extent = max(fp32.contract.scene.extent)
    moved, turned = [], []
    for path in sorted(test.glob("*.png")):
        image = cv2.imread(str(path))
        a, b = fp32.localize(image, "bgr8"), int8.localize(image, "bgr8")
        moved.append(np.linalg.norm(a.pose.position - b.pose.position) / extent)
        turned.append(g.rotation_error_deg(a.pose.quaternion, b.pose.quaternion))
    assert len(moved) == 24 and 0 < np.median(moved) < 0.02 and np.median(turned) < 2.0
    assert max(moved) < 0.06 and max(turned) < 6.0


def test_reduced_precision_agreement_with_fp32_on_the_demo_scene(demo_scene: Path) -> None:
    """The fp16/bf16 figure, on the CPU's kernels (the engine runs them on CUDA, where the bench's
    gpu case reports the same figure). Measured on these 24 frames: fp16 moves the position a median
    0.34 mm (max 0.80 mm) in a 5.5 m scene and the rotation 0.028 deg (max 0.052); bf16 3.0 mm
    (max 8.7 mm) and 0.20 deg (max 0.40). So fp16 keeps the float32 bounds in position, and in
    rotation in the median; bf16 does not."""
    from posenet_ros.bench import precision_agreement

    frames = [cv2.imread(str(p)) for p in sorted((demo_scene / "seq-02").glob("*.png"))]
    fusion = torch.jit.onednn_fusion_enabled()
    fp16 = precision_agreement(DEMO_MODEL, frames, torch.device("cpu"), "fp16")
    bf16 = precision_agreement(DEMO_MODEL, frames, torch.device("cpu"), "bf16")
    assert torch.jit.onednn_fusion_enabled() == fusion  # the process-wide switch is put back
    extent = fp16["scene_extent_m"]
    assert fp16["frames"] == bf16["frames"] == 24 and fp16["non_finite"] == bf16["non_finite"] == 0
    assert 0 < fp16["position_max_m"] < 1e-3 * extent and 0 < fp16["rotation_median_deg"] < 0.05
    assert fp16["rotation_max_deg"] < 0.15
    # bf16 keeps 8 mantissa bits to fp16's 11: several times further off, and it shows.
    assert fp16["position_median_m"] * 3 < bf16["position_median_m"] < 2e-3 * extent
    assert bf16["rotation_max_deg"] < 1.0


def test_int8_calibration_frames_from_a_bag(demo_scene: Path, tmp_path: Path) -> None:
    from posenet_ros.bagio import BagWriter
    from posenet_ros.image_codec import encode_image
    from posenet_ros.onnx_export import calibration_frames

    images = [cv2.imread(str(p)) for p in sorted((demo_scene / "seq-01").glob("*.png"))[:9]]
    with BagWriter(tmp_path / "bag", "mcap", "jazzy") as w:
        w.add_topic("/cam/image_raw", "sensor_msgs/msg/Image")
        for i, image in enumerate(images):
            stamp = (i + 1) * 100_000_000
            w.write("/cam/image_raw", stamp, w.image(stamp, "cam", encode_image(image, "bgr8")))
    frames = calibration_frames(tmp_path / "bag", 3)
    assert [e for _, e in frames] == ["bgr8"] * 3
    for (got, _), want in zip(frames, (images[0], images[4], images[8]), strict=True):
        np.testing.assert_array_equal(got, want)  # first, middle and last: spread evenly
    assert (
        ros_main(
            ["export-onnx", str(DEMO_MODEL), str(tmp_path / "m.onnx"), "--int8", "--calibration", str(tmp_path / "bag")]
        )
        == 0
    )


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--int8"], "--int8 and --calibration go together"),
        (["--calibration", "EMPTY"], "--int8 and --calibration go together"),
        (["--int8", "--calibration", "EMPTY"], "no images"),
        (["--int8", "--calibration", "MISSING"], "calibration source not found"),
        (["--int8", "--calibration", "BROKEN"], "cannot decode calibration image"),
        (["--int8", "--calibration", "EMPTY", "--calibration-frames", "0"], "must be >= 1"),
    ],
)
def test_int8_export_mistakes_are_one_line_errors(tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "BROKEN").mkdir()
    (tmp_path / "BROKEN" / "frame.png").write_bytes(b"not a png")
    args = [a if a not in ("EMPTY", "MISSING", "BROKEN") else str(tmp_path / a) for a in extra]
    out = tmp_path / "m.onnx"
    assert ros_main(["export-onnx", str(DEMO_MODEL), str(out), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists()
