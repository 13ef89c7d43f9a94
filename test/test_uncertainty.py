"""Bayesian PoseNet uncertainty: Monte Carlo dropout in the exported file, the covariance maths,
calibration (fit, storage in the contract, application by the engine), the node's outlier gate and
``posenet-train calibrate`` / ``eval --uncertainty`` on small data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomized_posenet, small_contract

from posenet_ros import geometry as g
from posenet_ros.contract import Calibration, Contract
from posenet_ros.engine import Engine, EngineConfig, EngineError, calibrated, load_model, spread_covariance
from posenet_ros.export import export_torchscript
from posenet_train.cli import main as train_main
from posenet_train.synth import SynthConfig, render_dataset
from posenet_train.uncertainty import CHI2_3DOF_50, CHI2_3DOF_95, Predictions, fit_calibration, metrics, nees, spearman

CPU = EngineConfig(device="cpu", warmup_iters=2)


@pytest.fixture(scope="module")
def mc_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PoseNet at 64x64 input whose final-head dropout gives a visible spread."""
    model = randomized_posenet(3)
    return export_torchscript(model, small_contract(), tmp_path_factory.mktemp("mc") / "mc.pt", mc_dropout=True)


def frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (96, 128, 3), dtype=np.uint8)


def test_export_keeps_dropout_sampling_only_when_asked(mc_file: Path, tiny_file, tmp_path: Path) -> None:
    module, contract = load_model(mc_file)
    assert contract.uncertainty_modes == ("fixed", "crops", "mc_dropout")
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.manual_seed(0)
        a = module.mc_dropout(x, 5)
        b = module.mc_dropout(x, 5)
        det = module(x)
    assert a.shape == (10, 7) and not torch.equal(a, b)  # dropout is active: samples differ
    assert torch.allclose(a[:, 3:].norm(dim=1), torch.ones(10)) and (a[:, 3] >= 0).all()
    with torch.inference_mode():
        assert torch.allclose(det, module(x), atol=1e-5)  # forward stays deterministic (no dropout)
    plain = export_torchscript(randomized_posenet(3), small_contract(), tmp_path / "plain.pt")
    assert load_model(plain)[1].uncertainty_modes == ("fixed", "crops")
    with pytest.raises(EngineError, match="not mc_dropout; export it with --mc-dropout"):
        Engine(plain, EngineConfig(device="cpu", uncertainty="mc_dropout"))


def test_mc_dropout_engine_gives_a_sample_covariance(mc_file: Path) -> None:
    engine = Engine(mc_file, EngineConfig(device="cpu", uncertainty="mc_dropout", mc_samples=64, warmup_iters=2))
    loc = engine.localize(frame(), "bgr8")
    # The default sampling: dropout after the last layer, one crop (the paper's is opt-in: test_mc_sampling.py).
    assert engine.mc_sampling == "head" and loc.samples == 64 and loc.crops == 1 and loc.covariance.shape == (6, 6)
    assert np.all(np.linalg.eigvalsh(loc.covariance) > 0) and loc.position_std > 0
    assert loc.uncertainty_score is None  # no calibration in this file yet
    budgeted = Engine(
        mc_file, EngineConfig(device="cpu", uncertainty="mc_dropout", mc_samples=32, latency_budget_ms=1e4)
    )
    assert budgeted.localize(frame(), "bgr8").samples == 32  # everything fits a 10 s budget
    budgeted.set_latency_budget(1e-3)
    assert budgeted.localize(frame(), "bgr8").samples == 2  # never fewer than a spread needs


def test_full_six_by_six_gaussian_with_cross_terms_is_recovered() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(6, 6)) * np.array([0.2, 0.2, 0.2, 0.03, 0.03, 0.03])[:, None]
    true = a @ a.T
    samples = rng.multivariate_normal(np.zeros(6), true, size=40000)
    mean_q = g.quat_unit(np.array([0.2, 0.7, -0.1, 0.6]))
    quats = np.array([g.quat_multiply(g.rotation_vector_to_quat(r), mean_q) for r in samples[:, 3:]])
    quats[1::3] *= -1.0  # hemisphere flips
    cov = spread_covariance(samples[:, :3], quats, mean_q)
    np.testing.assert_allclose(cov, true, atol=0.03 * np.sqrt(np.outer(np.diag(true), np.diag(true))).max())


def synthetic_predictions(n: int, factor: float, seed: int = 0) -> Predictions:
    """Predicted covariances that vary per frame; true errors drawn with ``factor`` times them."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.05, 0.5, n)
    covs = np.array([np.diag([s**2] * 3 + [(s / 10) ** 2] * 3) for s in scale])
    truth_p = rng.normal(size=(n, 3))
    truth_q = g.quat_unit(rng.normal(size=(n, 4)))
    errs = np.array([rng.multivariate_normal(np.zeros(6), factor * c) for c in covs])
    est_q = np.array(
        [
            g.quat_multiply(g.quat_conjugate(g.rotation_vector_to_quat(e)), q)
            for e, q in zip(errs[:, 3:], truth_q, strict=True)
        ]
    )
    return Predictions(truth_p + errs[:, :3], est_q, covs, truth_p, truth_q)


def test_calibration_fits_the_scale_and_meets_the_targets() -> None:
    raw = synthetic_predictions(4000, factor=4.0)
    before = metrics(raw)
    assert before["coverage_position_95"] < 0.7 and before["nees_position"] > 10  # overconfident by 4x
    cal = fit_calibration(raw)
    assert abs(cal.position_scale - 4.0) < 0.4 and abs(cal.orientation_scale - 4.0) < 0.4
    fixed = Predictions(
        raw.positions,
        raw.quaternions,
        np.array([calibrated(c, cal) for c in raw.covariances]),
        raw.truth_positions,
        raw.truth_quaternions,
    )
    after = metrics(fixed)
    assert 0.94 <= after["coverage_position_95"] <= 0.96 and 0.94 <= after["coverage_orientation_95"] <= 0.96
    assert abs(after["nees_position"] - 3.0) < 0.3 * 3.0 and abs(after["nees_orientation"] - 3.0) < 0.3 * 3.0
    assert after["spearman_position"] > 0.5  # errors grow with the predicted std by construction
    # Rotation errors are measured like the engine's covariance: q_true * q_est^-1 about map axes.
    assert np.allclose(nees(raw.rotation_errors(), raw.covariances[:, 3:, 3:]).mean() / 4.0, 3.0, rtol=0.1)


def test_spearman_and_chi_square_constant() -> None:
    x = np.arange(50.0)
    assert spearman(x, x**3) == pytest.approx(1.0) and spearman(x, -x) == pytest.approx(-1.0)
    from scipy.stats import chi2

    assert pytest.approx(chi2.ppf(0.95, 3)) == CHI2_3DOF_95


def test_calibration_is_stored_in_the_contract_and_applied(mc_file: Path, tmp_path: Path) -> None:
    cal = Calibration(position_scale=2.5, orientation_scale=0.5, reference_position_std=0.2, frames=10)
    from dataclasses import replace

    from posenet_ros.export import rewrite_contract

    contract = load_model(mc_file)[1]
    out = rewrite_contract(mc_file, tmp_path / "cal.pt", replace(contract, calibration={"mc_dropout": cal}))
    assert Contract.from_json(load_model(out)[1].to_json()).calibration["mc_dropout"] == cal
    cfg = EngineConfig(device="cpu", uncertainty="mc_dropout", mc_samples=16, warmup_iters=1)
    raw_engine, cal_engine = Engine(mc_file, cfg), Engine(out, cfg)
    torch.manual_seed(5)
    a = raw_engine.localize(frame(2), "bgr8")
    torch.manual_seed(5)
    b = cal_engine.localize(frame(2), "bgr8")
    np.testing.assert_allclose(b.covariance[:3, :3], 2.5 * a.covariance[:3, :3], rtol=1e-6)
    np.testing.assert_allclose(b.covariance[3:, 3:], 0.5 * a.covariance[3:, 3:], rtol=1e-6)
    np.testing.assert_allclose(b.covariance[:3, 3:], np.sqrt(2.5 * 0.5) * a.covariance[:3, 3:], rtol=1e-6)
    assert b.uncertainty_score == pytest.approx(b.position_std / 0.2)


def test_calibrate_and_eval_uncertainty_commands(mc_file: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    render_dataset(
        SynthConfig(train_sequences=0, test_sequences=1, val_sequences=1, frames_per_sequence=12, width=96, height=72),
        data,
        progress=False,
    )
    out = tmp_path / "calibrated.pt"
    assert train_main(["calibrate", str(mc_file), str(data), "--samples", "16", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "variance scale: position" in printed and "after:" in printed
    assert "(val, 12 frames)" in printed  # fitted on val by default, never on test (issue 18)
    assert "mc_dropout" in load_model(out)[1].calibration
    report = tmp_path / "eval"
    args = ["eval", str(out), str(data), "--no-baseline", "--uncertainty", "--samples", "16", "--out", str(report)]
    args += ["--split", "val"]
    assert train_main([*args, "--ood", str(data)]) == 0
    summary = json.loads((report / "summary.json").read_text())
    for key in ("coverage_position_95", "coverage_orientation_95", "nees_position", "spearman_position"):
        assert np.isfinite(summary[key])
    # Calibrated on these very frames with the same seeded dropout draws: the median NEES is the
    # chi-square median exactly.
    assert summary["median_nees_position"] == pytest.approx(CHI2_3DOF_50, rel=1e-6)
    assert summary["median_nees_orientation"] == pytest.approx(CHI2_3DOF_50, rel=1e-6)
    assert summary["ood_std_ratio"] == pytest.approx(1.0, rel=0.5)  # same frames, other dropout draws
    assert (report / "uncertainty.png").read_bytes()[:4] == b"\x89PNG"


def test_replay_runs_mc_dropout_and_gates_on_position_std(mc_file: Path, tmp_path: Path) -> None:
    import csv

    from posenet_ros.replay import ReplayConfig, replay, write_report
    from posenet_train.bags import ToBagConfig, dataset_to_bag

    data = tmp_path / "data"
    render_dataset(
        SynthConfig(train_sequences=0, test_sequences=1, frames_per_sequence=6, width=96, height=72),
        data,
        progress=False,
    )
    dataset_to_bag(ToBagConfig(data, tmp_path / "bag"))
    params = {"uncertainty": "mc_dropout", "mc_samples": 8, "precision": "fp32"}  # both runs alike
    torch.manual_seed(0)  # the same dropout draws in both runs
    result = replay(ReplayConfig(tmp_path / "bag", mc_file, device="cpu", progress=False, node_parameters=params))
    stds = [r.position_std for r in result.records]
    assert result.summary["frames_processed"] == 6 and all(s > 0 for s in stds)
    threshold = float(np.median(stds))
    torch.manual_seed(0)
    gated = replay(
        ReplayConfig(
            tmp_path / "bag",
            mc_file,
            device="cpu",
            progress=False,
            node_parameters={**params, "max_position_std": threshold},
        )
    )
    s = gated.summary
    assert 0 < s["frames_rejected"] < 6 and s["frames_processed"] + s["frames_rejected"] == 6
    write_report(gated, tmp_path / "report")
    rows = list(csv.DictReader((tmp_path / "report" / "frames.csv").open()))
    assert all(float(r["position_std_m"]) > threshold for r in rows if r["status"] == "rejected")
    assert all(float(r["position_std_m"]) <= threshold for r in rows if r["status"] == "published")


def test_reduced_precision_reaches_the_sampling_method(mc_file: Path) -> None:
    """fp16/bf16 on CUDA casts every exported graph; checked on the CPU with bf16."""
    from posenet_ros.engine import cast_frozen_constants

    module, _ = load_model(mc_file)
    cast_frozen_constants(module, torch.bfloat16)
    with torch.inference_mode():
        out = module.mc_dropout(torch.randn(1, 3, 64, 64).to(torch.bfloat16), 4)
    assert out.dtype == torch.bfloat16 and out.shape == (4, 7) and torch.isfinite(out.float()).all()


def test_onnx_export_drops_the_mode_it_cannot_run(mc_file: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from dataclasses import replace

    from posenet_ros.export import rewrite_contract
    from posenet_ros.onnx_export import export_onnx

    contract = load_model(mc_file)[1]
    cal = Calibration(2.0, 2.0, 0.1, 5)
    calibrated_pt = rewrite_contract(mc_file, tmp_path / "c.pt", replace(contract, calibration={"mc_dropout": cal}))
    engine = Engine(export_onnx(calibrated_pt, tmp_path / "c.onnx"), EngineConfig(warmup_iters=1))
    assert engine.contract.uncertainty_modes == ("fixed", "crops") and engine.contract.calibration == {}


def test_crops_calibration_holds_at_every_crop_count(tiny_file, tmp_path: Path) -> None:
    """Issue 18, defect 5: the crops' grid, hence the raw spread, changes with the crop count the
    engine's budget picks (1..128); one calibration fitted at 16 crops is off at the others. The
    calibration is fitted per count and stored as a table the current contract reader ignores."""
    from posenet_train.uncertainty import (
        CALIBRATION_CROP_COUNTS,
        calibrate,
        calibrated_predictions,
        calibration_for_crops,
        calibration_table,
        predict,
        read_contract_dict,
    )

    model_file, _ = tiny_file
    data = tmp_path / "data"
    render_dataset(
        SynthConfig(train_sequences=0, test_sequences=1, frames_per_sequence=12, width=96, height=72),
        data,
        progress=False,
    )
    out = tmp_path / "calibrated.pt"
    single, _, after = calibrate(model_file, data, out, "test", "crops", 40, None, progress=False)
    assert after["median_nees_position"] == pytest.approx(CHI2_3DOF_50, rel=1e-6)  # at 16 crops, as before
    stored = read_contract_dict(out)
    table = calibration_table(stored, "crops")
    assert tuple(table) == CALIBRATION_CROP_COUNTS and table[16] == single
    # Backward compatible: today's reader sees the single 16-crop entry, and the engine runs the file.
    assert load_model(out)[1].calibration["crops"] == single
    Engine(out, EngineConfig(uncertainty="crops", crops=4, warmup_iters=1)).localize(frame(), "rgb8")

    single_nees = {}
    for n in CALIBRATION_CROP_COUNTS:
        raw = predict(out, data, "test", "crops", crops=n, calibrated=False, progress=False)
        cal = calibration_for_crops(stored, "crops", n)
        assert cal == table[n]
        fitted = calibrated_predictions(raw, cal)
        if n < 4:  # 2 crops: singular 3x3 blocks; the trace rule gives the published std its meaning
            err = raw.position_errors()
            ratio = np.einsum("ni,ni->n", err, err) / np.trace(fitted.covariances[:, :3, :3], axis1=1, axis2=2)
            assert np.median(ratio) == pytest.approx(CHI2_3DOF_50 / 3, rel=1e-6)
            continue
        m = metrics(fitted)
        assert m["median_nees_position"] == pytest.approx(CHI2_3DOF_50, rel=1e-6), n
        assert m["median_nees_orientation"] == pytest.approx(CHI2_3DOF_50, rel=1e-6), n
        single_nees[n] = metrics(calibrated_predictions(raw, single))["median_nees_position"]
    # What the single entry alone gives away from 16 crops (here 4.0 at 4 crops, 1.14 at 128).
    assert single_nees[4] > 1.3 * CHI2_3DOF_50 and single_nees[128] < 0.7 * CHI2_3DOF_50
    # Counts between the table's: the nearest in log2; a file without a table: the single entry.
    assert calibration_for_crops(stored, "crops", 100) == table[128]
    assert calibration_for_crops(stored, "crops", 6) == table[8]
    assert calibration_for_crops(stored, "crops", 3) == table[4]
    del stored["calibration"]["crops"]["by_crops"]
    assert calibration_for_crops(stored, "crops", 128) == single
    assert calibration_for_crops(stored, "mc_dropout", 16) is None
