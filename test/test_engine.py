"""The ROS-free engine: decoding through the contract, dense crops, budget, bad input, devices."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from conftest import NaNPoseNet, small_contract

from posenet_ros import geometry as g
from posenet_ros.engine import (
    CropBudget,
    Engine,
    EngineConfig,
    EngineError,
    ImageError,
    NonFiniteOutputError,
    cast_frozen_constants,
    load_model,
    spread_covariance,
)
from posenet_ros.export import export_torchscript
from posenet_ros.preprocess import CpuPreprocessor, TorchPreprocessor

CPU = EngineConfig(device="cpu", warmup_iters=1)


def frame(h: int = 480, w: int = 640, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_real_posenet_pose_matches_eager_model(posenet_file) -> None:
    path, model = posenet_file
    engine = Engine(path, CPU)
    image = frame()
    result = engine.localize(image, "bgr8")
    with torch.no_grad():
        ref = model(CpuPreprocessor(engine.contract.preprocessing)(image, "bgr8", 1))[0].double().numpy()
    np.testing.assert_allclose(result.pose.position, ref[:3], atol=1e-5)
    assert g.rotation_error_deg(result.pose.quaternion, ref[3:]) < 1e-3
    assert np.isclose(np.linalg.norm(result.pose.quaternion), 1.0) and result.pose.quaternion[0] >= 0
    assert result.crops == 1 and result.covariance is None and not result.overrun
    lat = result.latency
    assert 0 < lat.preprocess_ms < lat.total_ms and 0 < lat.inference_ms < lat.total_ms


def test_cpu_and_reference_preprocessing_give_the_same_pose(posenet_file) -> None:
    """The ROI-resize fast path against the exact rule, at pose level (their agreement is tested, not assumed)."""
    path, model = posenet_file
    engine = Engine(path, CPU)
    image = frame(seed=3)
    exact = TorchPreprocessor(engine.contract.preprocessing, torch.device("cpu"))(image, "rgb8", 1)
    with torch.no_grad():
        ref = model(exact)[0].double().numpy()
    got = engine.localize(image, "rgb8").pose
    extent = max(engine.contract.scene.extent)
    assert np.linalg.norm(got.position - ref[:3]) < 1e-3 * extent
    assert g.rotation_error_deg(got.quaternion, ref[3:]) < 0.05


def test_contract_position_normalization_is_undone(tiny_file) -> None:
    path, model = tiny_file
    engine = Engine(path, CPU)
    image = frame(200, 300)
    with torch.no_grad():
        raw = model(CpuPreprocessor(engine.contract.preprocessing)(image, "rgb8", 1))[0].double().numpy()
    pos = engine.localize(image, "rgb8").pose.position
    np.testing.assert_allclose(pos, raw[:3] * 3.0 + np.array([10.0, -5.0, 1.0]), atol=1e-5)


def test_dense_crops_average_and_give_a_covariance(tiny_file) -> None:
    path, model = tiny_file
    engine = Engine(path, EngineConfig(device="cpu", warmup_iters=1, max_crops=16))
    image = frame(200, 300, seed=2)
    result = engine.localize(image, "rgb8", crops=6)
    with torch.no_grad():
        raw = model(CpuPreprocessor(engine.contract.preprocessing)(image, "rgb8", 6)).double().numpy()
    positions = raw[:, :3] * 3.0 + np.array([10.0, -5.0, 1.0])
    assert result.crops == 6
    np.testing.assert_allclose(result.pose.position, positions.mean(0), atol=1e-5)
    assert g.rotation_error_deg(result.pose.quaternion, g.quat_average(raw[:, 3:])) < 1e-4
    cov = result.covariance
    assert cov.shape == (6, 6)
    np.testing.assert_allclose(cov, cov.T)
    assert np.linalg.eigvalsh(cov).min() > -1e-12
    np.testing.assert_allclose(cov[:3, :3], np.cov(positions, rowvar=False), rtol=1e-6, atol=1e-12)


def test_spread_covariance_recovers_a_known_gaussian() -> None:
    rng = np.random.default_rng(0)
    true = np.diag([0.04, 0.01, 0.09, 0.002, 0.001, 0.003])
    samples = rng.multivariate_normal(np.zeros(6), true, size=20000)
    mean_q = g.quat_unit(np.array([0.9, 0.1, -0.3, 0.2]))
    quats = np.array([g.quat_multiply(g.rotation_vector_to_quat(r), mean_q) for r in samples[:, 3:]])
    quats[::2] *= -1.0  # hemisphere flips must not change anything
    cov = spread_covariance(samples[:, :3] + 5.0, quats, mean_q)
    np.testing.assert_allclose(np.diag(cov), np.diag(true), rtol=0.05)
    off_diagonal = cov - np.diag(np.diag(cov))
    assert np.abs(off_diagonal).max() < 2e-3


def test_budget_picks_largest_fitting_crop_count_and_follows_drift() -> None:
    budget = CropBudget(budget_ms=50.0, max_crops=128)
    budget.calibrate({1: 10.0, 8: 45.0})  # 5 ms fixed + 5 ms per crop
    assert budget.candidates == [1, 2, 4, 8, 16, 32, 64, 128]
    assert budget.choose() == 8
    for _ in range(30):  # the machine got twice as slow
        budget.observe(8, 90.0)
    assert budget.choose() == 4
    for _ in range(50):
        budget.observe(4, 12.5)  # and then twice as fast
    assert budget.choose() == 16


def test_budget_never_goes_below_one_crop_and_none_means_one() -> None:
    tight = CropBudget(budget_ms=0.001, max_crops=64)
    tight.calibrate({1: 30.0})
    assert tight.choose() == 1
    assert CropBudget(budget_ms=None, max_crops=64).choose() == 1
    odd = CropBudget(budget_ms=1e9, max_crops=12)
    odd.calibrate({1: 1.0, 8: 2.0})
    assert odd.candidates == [1, 2, 4, 8, 12] and odd.choose() == 12


@pytest.mark.parametrize(("budget", "max_crops"), [(0.0, 4), (-5.0, 4), (10.0, 0)])
def test_budget_refuses_bad_settings(budget: float, max_crops: int) -> None:
    with pytest.raises(ValueError):
        CropBudget(budget, max_crops)


def test_engine_budget_uses_more_crops_when_there_is_time_and_counts_overruns(tiny_file) -> None:
    path, _ = tiny_file
    roomy = Engine(path, EngineConfig(device="cpu", warmup_iters=1, max_crops=4, latency_budget_ms=1e6))
    assert roomy.localize(frame(100, 150), "rgb8").crops == 4
    tight = Engine(path, EngineConfig(device="cpu", warmup_iters=1, max_crops=4, latency_budget_ms=1e-4))
    result = tight.localize(frame(100, 150), "rgb8")
    assert result.crops == 1 and result.overrun
    assert tight.stats.overruns == 1 and tight.stats.frames == 1


def test_nan_output_raises_and_engine_keeps_running(tmp_path) -> None:
    path = export_torchscript(NaNPoseNet(), small_contract(), tmp_path / "nan.pt")
    engine = Engine(path, CPU)
    for _ in range(2):
        with pytest.raises(NonFiniteOutputError, match="not finite"):
            engine.localize(frame(100, 100), "rgb8")
    assert engine.stats.non_finite == 2


@pytest.mark.parametrize(
    ("image", "encoding"),
    [
        (np.zeros((100, 100, 3), np.uint16), "rgb8"),
        (np.zeros((100, 100, 1), np.uint8), "rgb8"),
        (np.zeros((0, 0, 3), np.uint8), "rgb8"),
        (np.zeros((100, 100, 3), np.uint8), "16UC1"),
    ],
)
def test_bad_images_raise_image_error(tiny_file, image: np.ndarray, encoding: str) -> None:
    engine = Engine(tiny_file[0], CPU)
    with pytest.raises(ImageError) as info:
        engine.localize(image, encoding)
    assert isinstance(info.value, EngineError) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (EngineConfig(device="cpu", precision="fp16"), "needs a CUDA device"),
        (EngineConfig(device="cpu", precision="int8"), "unknown precision"),
        (EngineConfig(device="tpu"), "unsupported device|unknown device"),
        (EngineConfig(device="cpu", crops=5, max_crops=4), "crops must be"),
        (EngineConfig(device="cpu", latency_budget_ms=-1.0), "budget"),
        (EngineConfig(device="cpu", threads=0), "threads"),
    ],
)
def test_bad_configuration_is_refused(tiny_file, config: EngineConfig, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        Engine(tiny_file[0], config)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_cuda_request_without_cuda_is_refused_and_auto_falls_back_with_a_warning(tiny_file, caplog) -> None:
    with pytest.raises(EngineError, match="CUDA is not available"):
        Engine(tiny_file[0], EngineConfig(device="cuda"))
    with caplog.at_level(logging.WARNING):
        engine = Engine(tiny_file[0], EngineConfig(device="auto", warmup_iters=1))
    assert engine.device.type == "cpu"
    assert sum("CUDA not available" in r.message for r in caplog.records) == 1


def test_crop_count_out_of_range_is_refused(tiny_file) -> None:
    engine = Engine(tiny_file[0], EngineConfig(device="cpu", warmup_iters=1, max_crops=4))
    for n in (0, 5):
        with pytest.raises(EngineError, match="crop count"):
            engine.localize(frame(100, 100), "rgb8", crops=n)


def test_reduced_precision_casts_the_frozen_weights(posenet_file) -> None:
    """The mechanism the CUDA fp16/bf16 path uses, exercised on the CPU with bf16."""
    path, model = posenet_file
    module, _ = load_model(path)
    assert cast_frozen_constants(module, torch.bfloat16) > 50
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        out = module(x.to(torch.bfloat16)).float()
        ref = model(x)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out[:, :3] - ref[:, :3]).abs().max() < 0.1 * ref[:, :3].abs().max() + 0.05


def test_threads_setting_is_applied(tiny_file) -> None:
    before = torch.get_num_threads()
    try:
        Engine(tiny_file[0], EngineConfig(device="cpu", warmup_iters=1, threads=1))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_error_messages_are_cut_to_their_first_line() -> None:
    from posenet_ros.errors import first_line

    assert first_line(RuntimeError("bad header\n  at frame 3\n")) == "bad header"
    assert first_line(RuntimeError()) == "RuntimeError" and first_line(ValueError("  \n")) == "ValueError"
    assert first_line(KeyError("topic")) == "topic"  # no repr quotes


def test_a_training_checkpoint_is_named_with_the_command_that_exports_it(tmp_path) -> None:
    """torch's own error calls a checkpoint "corrupted"; the node's log line says what it is."""
    from posenet_ros.engine import ModelLoadError, load_model
    from posenet_ros.model_files import torch_file_kind
    from posenet_train.export_model import load_checkpoint

    ckpt = tmp_path / "checkpoint.pt"
    torch.save({"config": {}, "model": {}, "optimizer": {}, "normalization": {}, "step": 1}, ckpt)
    assert torch_file_kind(ckpt) == "checkpoint"
    with pytest.raises(
        ModelLoadError, match=r"is a training checkpoint, not an exported model; make one with: posenet"
    ):
        load_model(ckpt)
    weights = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(1)}, weights)
    assert torch_file_kind(weights) == "state_dict"
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    assert torch_file_kind(text) == "unknown"
    scripted = export_torchscript(NaNPoseNet(), small_contract(), tmp_path / "m.pt")
    assert torch_file_kind(scripted) == "torchscript"
    with pytest.raises(ValueError, match="is already an exported model, not a training checkpoint"):
        load_checkpoint(scripted)
