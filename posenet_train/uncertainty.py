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
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from posenet_ros.contract import Calibration
from posenet_ros.engine import Engine, EngineConfig, load_model
from posenet_ros.export import rewrite_contract
from posenet_ros.geometry import quat_conjugate, quat_multiply, quat_to_rotation_vector
from posenet_train.datasets import DatasetError, PoseRecord, positions, quaternions, read_poses_csv, split_records

CHI2_3DOF_95 = 7.814727903251178  # chi-square quantile, 3 degrees of freedom, p = 0.95
CHI2_3DOF_50 = 2.365973884375338  # its median
CALIBRATED_MODES = ("mc_dropout", "crops")


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
) -> Predictions:
    """Run every ``split`` image of ``dataset`` through the engine in uncertainty ``mode``;
    ``calibrated=False`` ignores a calibration stored in the model (what calibrate needs). Dropout
    draws come from torch's generator seeded with ``seed``, so the figures are reproducible."""
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
    config = EngineConfig(device=device, uncertainty=mode, mc_samples=samples, crops=crops, max_crops=max(crops, 1))
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


def fit_calibration(pred: Predictions) -> Calibration:
    """Variance factors that make each block's median NEES the chi-square median."""
    scales = {}
    for name, (err, cov) in blocks(pred).items():
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


def calibrate(
    model: str | Path, dataset: str | Path, out: str | Path, split: str, mode: str, samples: int, crops: int | None
) -> tuple[Calibration, dict[str, Any], dict[str, Any]]:
    """Fit on ``split`` and write ``out``: the model with the calibration in its contract.
    Returns the calibration and the split's figures before and after."""
    raw = predict(model, dataset, split, mode, samples, crops, calibrated=False)
    cal = fit_calibration(raw)
    before = metrics(raw)
    contract = load_model(model)[1]  # predict() above already checked that the model runs this mode
    contract = replace(contract, calibration={**contract.calibration, mode: cal})
    rewrite_contract(model, out, contract)
    after = metrics(predict(out, dataset, split, mode, samples, crops, calibrated=True))
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
