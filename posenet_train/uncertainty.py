"""Is the predicted covariance honest? Calibration and its checks (``posenet-train calibrate``,
``posenet-train eval --uncertainty``).

Frames go through the node's own ``Engine`` in the chosen uncertainty mode (``mc_dropout``: Bayesian
PoseNet's dropout samples; ``crops``: the spread of dense crops), so the covariances checked here
are the ones the node publishes. Errors are taken in the covariance's own coordinates: position in
the map frame, rotation as the rotation vector of q_true * q_est^-1 (about the map axes, as the
engine's sample covariance).

- NEES (normalized estimation error squared) e^T S^-1 e has mean 3 for each 3-dof block when the
  covariance is right; coverage_95 is the fraction with NEES under the chi-square 95% point.
- Calibration scales each block's variance by k so that the held-out split's median NEES is the
  chi-square median (k = median NEES / 2.366 for 3 dof), and records the median calibrated position
  std as the reference of the normalized uncertainty score. The median, not the 95th percentile or
  the mean: a few gross failures (a view the model never learnt) dominate those and inflate every
  other frame's covariance; an EKF's Mahalanobis gate is the tool for the failures.
- In ``crops`` mode the covariance is the spread of crops laid on a grid over the free range, and
  the grid depends on the crop count (2 crops sit at the two extremes, 128 fill the range), which
  changes the raw variance several-fold; the engine picks 1..128 crops under its latency budget. So
  ``calibrate`` fits crops mode once per count in ``CALIBRATION_CROP_COUNTS`` and stores the table
  as ``calibration.crops.by_crops`` ({"2": {...}, "4": {...}, ...}, each entry the fields of a
  calibration) next to the single entry at the requested count. Readers that predate the table
  ignore the key and keep using the single entry (as fitted before); ``calibration_for_crops`` is
  the rule a reader that knows the table applies for the count it ran.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from posenet_ros.atomic import atomic_path
from posenet_ros.contract import EXTRA_FILE_NAME, Calibration, Contract
from posenet_ros.engine import Engine, EngineConfig, load_model
from posenet_ros.geometry import quat_conjugate, quat_multiply, quat_to_rotation_vector
from posenet_train.datasets import DatasetError, PoseRecord, positions, quaternions, read_poses_csv, split_records

CHI2_3DOF_95 = 7.814727903251178  # chi-square quantile, 3 degrees of freedom, p = 0.95
CHI2_3DOF_50 = 2.365973884375338  # its median
CALIBRATED_MODES = ("mc_dropout", "crops")
# Crop counts the crops-mode calibration is fitted at: the engine's budget candidates are the powers
# of two up to max_crops (128 by default); one crop has no spread and no covariance.
CALIBRATION_CROP_COUNTS = (2, 4, 8, 16, 32, 64, 128)
BY_CROPS_KEY = "by_crops"


@dataclass
class Predictions:
    """Per frame: estimate, 6x6 covariance (ROS order) and ground truth."""

    positions: np.ndarray  # (N, 3)
    quaternions: np.ndarray  # (N, 4)
    covariances: np.ndarray  # (N, 6, 6)
    truth_positions: np.ndarray
    truth_quaternions: np.ndarray

    def position_errors(self) -> np.ndarray:
        return self.positions - self.truth_positions

    def rotation_errors(self) -> np.ndarray:
        """Rotation vector of q_true * q_est^-1 (radians, map axes)."""
        return quat_to_rotation_vector(quat_multiply(self.truth_quaternions, quat_conjugate(self.quaternions)))

    def position_std(self) -> np.ndarray:
        return np.sqrt(np.trace(self.covariances[:, :3, :3], axis1=1, axis2=2) / 3.0)

    def orientation_std(self) -> np.ndarray:
        return np.sqrt(np.trace(self.covariances[:, 3:, 3:], axis1=1, axis2=2) / 3.0)


def predict(
    model: str | Path,
    dataset: str | Path,
    split: str,
    mode: str,
    samples: int = 40,
    crops: int | None = None,
    calibrated: bool = True,
    device: str = "cpu",
    progress: bool = True,
    seed: int = 0,
    mc_sampling: str = "head",
) -> Predictions:
    """Run every ``split`` image of ``dataset`` through the engine in uncertainty ``mode``;
    ``calibrated=False`` ignores a calibration stored in the model (what calibrate needs). Dropout
    draws are seeded with ``seed`` (the paper sampling per frame, the head sampling through torch's
    generator once), so the figures are reproducible. ``mc_sampling``: the engine's (auto, paper or
    head; ``EngineConfig.mc_sampling``)."""
    import torch
    from tqdm import tqdm

    if mode not in CALIBRATED_MODES:
        raise ValueError(f"uncertainty mode must be one of {', '.join(CALIBRATED_MODES)}, got {mode!r}")
    crops = crops if crops is not None else (16 if mode == "crops" else 1)
    if mode == "crops" and crops < 2:
        raise ValueError("crops mode needs at least 2 crops for a spread")
    if mode == "mc_dropout" and crops < 1:
        raise ValueError("mc_dropout needs at least 1 crop")
    root = Path(dataset)
    records = split_records(read_poses_csv(root), split)
    config = EngineConfig(
        device=device,
        uncertainty=mode,
        mc_samples=samples,
        crops=crops,
        max_crops=max(crops, 1),
        mc_sampling=mc_sampling,
        mc_seed=seed,
    )
    torch.manual_seed(seed)
    engine = Engine(model, config)
    if not calibrated:
        engine.calibration = None
    est_p, est_q, covs = [], [], []
    for rec in tqdm(records, desc=f"{mode} {split}", unit="frame", disable=not progress):
        image = _read(root, rec)
        loc = engine.localize(image, "bgr8")
        est_p.append(loc.pose.position)
        est_q.append(loc.pose.quaternion)
        covs.append(loc.covariance)
    return Predictions(np.array(est_p), np.array(est_q), np.array(covs), positions(records), quaternions(records))


def _read(root: Path, rec: PoseRecord) -> np.ndarray:
    image = cv2.imread(str(root / rec.image), cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(f"{root / rec.image}: cannot be read as an image")
    return image


def nees(errors: np.ndarray, covariances: np.ndarray) -> np.ndarray:
    """e_i^T S_i^-1 e_i per frame (S regularized by 1e-12 on the diagonal for degenerate spreads)."""
    k = errors.shape[1]
    reg = covariances + 1e-12 * np.eye(k)
    return np.einsum("ni,ni->n", errors, np.linalg.solve(reg, errors[:, :, None])[:, :, 0])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks are not needed: continuous values have no ties)."""
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def blocks(pred: Predictions) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        "position": (pred.position_errors(), pred.covariances[:, :3, :3]),
        "orientation": (pred.rotation_errors(), pred.covariances[:, 3:, 3:]),
    }


def fit_calibration(pred: Predictions, trace_rule: bool = False) -> Calibration:
    """Variance factors that make each block's median NEES the chi-square median.

    ``trace_rule``: for covariances of fewer than 4 samples (2 or 3 crops), whose 3x3 blocks are
    singular and whose NEES is meaningless, the factor instead makes the median of
    ||e||^2 / trace(S) equal chi-square(3)'s median / 3, which is what the NEES rule gives for an
    isotropic covariance: the std the engine publishes (sqrt(trace / 3)) gets the same meaning."""
    scales = {}
    for name, (err, cov) in blocks(pred).items():
        if trace_rule:
            ratio = np.einsum("ni,ni->n", err, err) / np.trace(cov, axis1=1, axis2=2)
            scales[name] = float(np.median(ratio) / (CHI2_3DOF_50 / 3.0))
        else:
            scales[name] = float(np.median(nees(err, cov)) / CHI2_3DOF_50)
    ref = float(np.median(pred.position_std()) * np.sqrt(scales["position"]))
    if not all(np.isfinite(v) and v > 0 for v in (*scales.values(), ref)):
        raise ValueError("calibration failed: the predicted covariances are degenerate on this split")
    return Calibration(scales["position"], scales["orientation"], ref, len(pred.positions))


def metrics(pred: Predictions) -> dict[str, float | int]:
    """The figures the calibration must meet (issue targets: coverage 0.90-0.98, mean NEES within
    30% of 3, Spearman >= 0.3)."""
    out: dict[str, float | int] = {"frames": len(pred.positions)}
    for name, (err, cov) in blocks(pred).items():
        values = nees(err, cov)
        out[f"coverage_{name}_95"] = float(np.mean(values <= CHI2_3DOF_95))
        out[f"nees_{name}"] = float(np.mean(values))
        out[f"median_nees_{name}"] = float(np.median(values))
    pos_err = np.linalg.norm(pred.position_errors(), axis=1)
    rot_err = np.degrees(np.linalg.norm(pred.rotation_errors(), axis=1))
    out["spearman_position"] = spearman(pred.position_std(), pos_err)
    out["spearman_orientation"] = spearman(pred.orientation_std(), rot_err)
    out["median_position_std_m"] = float(np.median(pred.position_std()))
    out["median_orientation_std_deg"] = float(np.degrees(np.median(pred.orientation_std())))
    out["median_position_error_m"] = float(np.median(pos_err))
    out["median_rotation_error_deg"] = float(np.median(rot_err))
    return out


def calibrated_predictions(pred: Predictions, cal: Calibration) -> Predictions:
    """``pred`` with each covariance scaled by ``cal`` as the engine scales it (position block by
    position_scale, orientation block by orientation_scale, cross terms by the geometric mean)."""
    scale = np.sqrt(np.array([cal.position_scale] * 3 + [cal.orientation_scale] * 3))
    return replace(pred, covariances=pred.covariances * np.outer(scale, scale))


def calibration_entry(cal: Calibration) -> dict[str, Any]:
    return {
        "position_scale": cal.position_scale,
        "orientation_scale": cal.orientation_scale,
        "reference_position_std": cal.reference_position_std,
        "frames": cal.frames,
    }


def _entry_calibration(entry: dict[str, Any]) -> Calibration:
    return Calibration(
        float(entry["position_scale"]),
        float(entry["orientation_scale"]),
        float(entry["reference_position_std"]),
        int(entry["frames"]),
    )


def read_contract_dict(model: str | Path) -> dict[str, Any]:
    """The contract of a TorchScript model file as stored (JSON object), keys the current
    ``Contract`` does not model (``calibration.crops.by_crops``) included."""
    import json

    import torch

    load_model(model)  # the file and its contract are valid (one-line errors otherwise)
    extra = {EXTRA_FILE_NAME: ""}
    torch.jit.load(str(model), map_location="cpu", _extra_files=extra)
    return json.loads(extra[EXTRA_FILE_NAME])


def write_contract_dict(src: str | Path, dst: str | Path, data: dict[str, Any]) -> Path:
    """Copy a TorchScript model with the contract ``data`` (validated by ``Contract`` first), atomically."""
    import json

    import torch

    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False)
    Contract.from_json(text)
    module = torch.jit.load(str(src), map_location="cpu")
    with atomic_path(dst) as tmp:
        torch.jit.save(module, str(tmp), _extra_files={EXTRA_FILE_NAME: text})
    return Path(dst)


def calibration_table(contract: dict[str, Any], mode: str) -> dict[int, Calibration]:
    """The per-crop-count calibrations stored for ``mode`` ({} when there are none)."""
    entry = contract.get("calibration", {}).get(mode, {})
    table = entry.get(BY_CROPS_KEY, {}) if isinstance(entry, dict) else {}
    return {int(n): _entry_calibration(table[n]) for n in sorted(table, key=int)}


def calibration_for_crops(contract: dict[str, Any], mode: str, crops: int) -> Calibration | None:
    """The calibration for a frame run with ``crops`` crops: the table's entry for that count, else
    the one nearest in log2 (a tie goes to the larger count), else the single entry (files without
    a table), else None. This is the rule the engine should apply per frame."""
    table = calibration_table(contract, mode)
    if table:
        best = min(table, key=lambda n: (abs(np.log2(n) - np.log2(max(crops, 1))), -n))
        return table[best]
    entry = contract.get("calibration", {}).get(mode)
    return _entry_calibration(entry) if entry else None


def calibrate(
    model: str | Path,
    dataset: str | Path,
    out: str | Path,
    split: str,
    mode: str,
    samples: int,
    crops: int | None,
    crop_counts: tuple[int, ...] | None = None,
    progress: bool = True,
    mc_sampling: str = "head",
) -> tuple[Calibration, dict[str, Any], dict[str, Any]]:
    """Fit on ``split`` and write ``out``: the model with the calibration in its contract.
    Returns the calibration and the split's figures before and after.

    In crops mode the calibration is also fitted at every count in ``crop_counts`` (default
    ``CALIBRATION_CROP_COUNTS``; ``()`` skips the table) and stored as ``by_crops``; the single
    entry stays the fit at ``crops`` (16 by default), which readers without the table use.
    ``mc_sampling``: the mc_dropout sampling fitted (the engine's choice by default); a calibration
    holds for the sampling it was fitted with, which is the engine's default for that file."""
    raw = predict(
        model, dataset, split, mode, samples, crops, calibrated=False, progress=progress, mc_sampling=mc_sampling
    )
    used = crops if crops is not None else 16  # predict()'s default in crops mode
    cal = fit_calibration(raw, trace_rule=mode == "crops" and used < 4)
    before = metrics(raw)
    data = read_contract_dict(model)  # predict() above already checked that the model runs this mode
    entry: dict[str, Any] = calibration_entry(cal)
    if mode == "crops":
        counts = CALIBRATION_CROP_COUNTS if crop_counts is None else crop_counts
        table = {}
        for n in sorted(set(counts)):
            if n < 2:
                raise ValueError(f"crop counts to calibrate must be >= 2 (one crop has no spread), got {n}")
            if n == used:
                fitted = cal
            else:
                pred_n = predict(model, dataset, split, mode, samples, n, calibrated=False, progress=progress)
                fitted = fit_calibration(pred_n, trace_rule=n < 4)
            table[str(n)] = calibration_entry(fitted)
        if table:
            entry[BY_CROPS_KEY] = table
    data["calibration"] = {**data.get("calibration", {}), mode: entry}
    write_contract_dict(model, out, data)
    after = metrics(
        predict(out, dataset, split, mode, samples, crops, calibrated=True, progress=progress, mc_sampling=mc_sampling)
    )
    return cal, before, after


def plot_std_against_error(pred: Predictions, path: Path, title: str) -> Path:
    """Predicted std against actual error, per block, log-log, with the y = x line."""
    from posenet_ros.report import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    pos_err = np.linalg.norm(pred.position_errors(), axis=1)
    rot_err = np.degrees(np.linalg.norm(pred.rotation_errors(), axis=1))
    for ax, std, err, unit in (
        (axes[0], pred.position_std(), pos_err, "m"),
        (axes[1], np.degrees(pred.orientation_std()), rot_err, "deg"),
    ):
        ax.loglog(std, err, ".", ms=3, alpha=0.6)
        lo, hi = min(std.min(), err[err > 0].min()), max(std.max(), err.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="error = std")
        ax.plot([lo, hi], [np.sqrt(3) * lo, np.sqrt(3) * hi], "k:", lw=1, label="error = sqrt(3) std (3-D mean)")
        ax.set_xlabel(f"predicted std ({unit})")
        ax.set_ylabel(f"actual error ({unit})")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    axes[0].set_title("position")
    axes[1].set_title("orientation")
    fig.suptitle(f"{title}: predicted uncertainty against error")
    return save_figure(plt, fig, path)


def format_metrics(m: dict[str, Any]) -> str:
    return (
        f"coverage 95%: position {m['coverage_position_95']:.3f}, orientation {m['coverage_orientation_95']:.3f}; "
        f"mean NEES: position {m['nees_position']:.2f}, orientation {m['nees_orientation']:.2f} (expected 3); "
        f"Spearman(std, error): position {m['spearman_position']:.2f}, orientation {m['spearman_orientation']:.2f}; "
        f"median std {m['median_position_std_m']:.3f} m / {m['median_orientation_std_deg']:.2f} deg"
    )
