"""The engine applies the calibration fitted for the crop count it ran (issue 18, defect 5): a
model calibrated by ``posenet-train calibrate`` in crops mode carries a table per crop count
(``calibration.crops.by_crops``), and the covariance and the uncertainty score of a frame run with
n crops use the table's entry for n; a file without the table behaves as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from posenet_ros.engine import Engine, EngineConfig, calibrated, load_model
from posenet_train.synth import SynthConfig, render_dataset
from posenet_train.uncertainty import (
    CALIBRATION_CROP_COUNTS,
    CHI2_3DOF_50,
    calibrate,
    metrics,
    predict,
    read_contract_dict,
    write_contract_dict,
)


@pytest.fixture(scope="module")
def calibrated_file(tiny_file, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny model calibrated in crops mode on 12 rendered frames (the table at 2..128 crops)."""
    root = tmp_path_factory.mktemp("cal")
    data = root / "data"
    config = SynthConfig(train_sequences=0, test_sequences=1, frames_per_sequence=12, width=96, height=72)
    render_dataset(config, data, progress=False)
    out = root / "calibrated.pt"
    calibrate(tiny_file[0], data, out, "test", "crops", 40, None, progress=False)
    return out, data


def test_covariance_is_calibrated_at_every_crop_count_the_budget_may_pick(calibrated_file) -> None:
    """Median position and orientation NEES at the chi-square median at 4..128 crops, on the frames
    the table was fitted on (so equal to the fit's target to rounding); the single 16-crop entry
    alone, which is what the engine applied before, is off by 1.3x and more at 4 and 128 crops."""
    out, data = calibrated_file
    contract = load_model(out)[1]
    table = contract.calibration["crops"].by_crops
    assert tuple(table) == CALIBRATION_CROP_COUNTS
    single = contract.calibration["crops"]
    for n in (4, 8, 16, 32, 64, 128):
        m = metrics(predict(out, data, "test", "crops", crops=n, calibrated=True, progress=False))
        assert m["median_nees_position"] == pytest.approx(CHI2_3DOF_50, rel=1e-6), n
        assert m["median_nees_orientation"] == pytest.approx(CHI2_3DOF_50, rel=1e-6), n
    raw = {n: predict(out, data, "test", "crops", crops=n, calibrated=False, progress=False) for n in (4, 128)}
    off = {}
    for n, pred in raw.items():
        pred.covariances = np.array([calibrated(c, single) for c in pred.covariances])
        off[n] = metrics(pred)["median_nees_position"] / CHI2_3DOF_50
    assert off[4] > 1.3 and off[128] < 0.7


def test_uncertainty_score_and_covariance_use_the_entry_for_the_count_run(calibrated_file) -> None:
    out, _ = calibrated_file
    engine = Engine(out, EngineConfig(device="cpu", uncertainty="crops", max_crops=128, warmup_iters=1))
    table = engine.contract.calibration["crops"].by_crops
    image = np.random.default_rng(3).integers(0, 256, (72, 96, 3), dtype=np.uint8)
    for n, entry in ((4, 4), (16, 16), (100, 128), (6, 8), (3, 4)):
        assert engine.calibration_for(n) is table[entry]
        loc = engine.localize(image, "rgb8", crops=n)
        assert loc.uncertainty_score == pytest.approx(loc.position_std / table[entry].reference_position_std)
    engine.calibration = None  # what predict(calibrated=False) does: no calibration at any count
    assert engine.calibration_for(16) is None and engine.localize(image, "rgb8", crops=16).uncertainty_score is None


def test_a_file_without_the_table_uses_its_single_entry_at_every_count(calibrated_file, tmp_path: Path) -> None:
    out, _ = calibrated_file
    data = read_contract_dict(out)
    del data["calibration"]["crops"]["by_crops"]
    old = write_contract_dict(out, tmp_path / "old.pt", data)
    config = EngineConfig(device="cpu", max_crops=32, warmup_iters=1)
    with_table, without, uncalibrated = Engine(out, config), Engine(old, config), Engine(old, config)
    uncalibrated.calibration = None
    single, table = without.contract.calibration["crops"], with_table.contract.calibration["crops"].by_crops
    assert single.by_crops == {} and single == with_table.contract.calibration["crops"]
    image = np.random.default_rng(5).integers(0, 256, (72, 96, 3), dtype=np.uint8)
    for n in (2, 4, 32):
        a, b, raw = (e.localize(image, "rgb8", crops=n) for e in (with_table, without, uncalibrated))
        assert without.calibration_for(n) is single
        np.testing.assert_allclose(b.covariance, calibrated(raw.covariance, single), rtol=1e-9)
        assert b.uncertainty_score == pytest.approx(b.position_std / single.reference_position_std)
        np.testing.assert_allclose(a.covariance, calibrated(raw.covariance, table[n]), rtol=1e-9)
        assert a.uncertainty_score == pytest.approx(a.position_std / table[n].reference_position_std)
