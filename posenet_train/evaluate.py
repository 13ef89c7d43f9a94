"""``posenet-train eval MODEL DATASET``: accuracy of a model on a canonical data set, against the
paper's nearest-neighbour baseline (the pose of the training image whose final-layer feature vector
is closest), with a JSON summary and plots.

Images go through the node's own preprocessing (``posenet_ros.preprocess``, centre crop, from the
model's contract), so the figures are what the node would publish.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from posenet_ros.contract import Contract
from posenet_ros.engine import ModelLoadError, load_model
from posenet_ros.geometry import position_error, quat_unit, rotation_error_deg
from posenet_ros.preprocess import CpuPreprocessor
from posenet_ros.refine import SceneMap, check_map_scene, load_map, reason_kind, refine_pose
from posenet_ros.report import (
    THRESHOLDS,
    SceneBox,
    label_segments,
    plausibility_warnings,
    plot_error_cdf,
    plot_trajectory_top,
    threshold_fractions,
)
from posenet_train.bags import sequence_of
from posenet_train.datasets import DatasetError, PoseRecord, positions, quaternions, read_poses_csv, split_records

# Where eval writes without --out: under out/ of the working folder, never next to the model (a
# tracked models/ folder would collect evaluation output).
DEFAULT_OUT = Path("out") / "eval"


class Predictor:
    """A model with its contract: an exported TorchScript file or a training checkpoint."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such model file")
        try:
            self.module, self.contract = load_model(path)
            self.source = "torchscript"
        except ModelLoadError as script_error:
            from posenet_train.export_model import contract_from_checkpoint, load_checkpoint, model_from_checkpoint

            try:
                ckpt = load_checkpoint(path)
            except Exception:
                raise ValueError(f"{path}: neither an exported model ({script_error}) nor a checkpoint") from None
            self.module, self.contract = model_from_checkpoint(ckpt), contract_from_checkpoint(ckpt)
            self.source = "checkpoint"
        self.module.eval()
        self.has_features = hasattr(self.module, "features")
        self.preprocess = CpuPreprocessor(self.contract.preprocessing)

    def inputs(self, root: Path, records: list[PoseRecord]) -> torch.Tensor:
        batch = []
        for r in records:
            img = cv2.imread(str(root / r.image), cv2.IMREAD_COLOR)
            if img is None:
                raise DatasetError(f"{root / r.image}: cannot decode image")
            batch.append(self.preprocess(img, "bgr8", 1).clone())
        return torch.cat(batch).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def run(
        self, root: Path, records: list[PoseRecord], batch_size: int, features: bool, desc: str
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Poses (N, 7: metres + unit wxyz) and, if asked, feature vectors (N, D)."""
        from tqdm import tqdm

        out = self.contract.output
        poses, feats = [], []
        for k in tqdm(range(0, len(records), batch_size), desc=desc, unit="batch"):
            x = self.inputs(root, records[k : k + batch_size])
            raw = self.module(x).double().numpy()
            if not np.all(np.isfinite(raw)):
                raise ValueError(f"network output is not finite for images {k}..{k + len(x) - 1}")
            poses.append(np.concatenate([out.positions(raw[:, :3]), quat_unit(raw[:, 3:])], 1))
            if features:
                feats.append(self.module.features(x).double().numpy())
        return np.concatenate(poses), (np.concatenate(feats) if features else None)


@dataclass(frozen=True)
class Errors:
    position_m: np.ndarray
    rotation_deg: np.ndarray

    @staticmethod
    def of(pred: np.ndarray, records: list[PoseRecord]) -> Errors:
        return Errors(
            position_error(pred[:, :3], positions(records)), rotation_error_deg(pred[:, 3:], quaternions(records))
        )

    def summary(self) -> dict[str, Any]:
        s: dict[str, Any] = {
            "frames": len(self.position_m),
            "median_position_m": float(np.median(self.position_m)),
            "mean_position_m": float(np.mean(self.position_m)),
            "median_rotation_deg": float(np.median(self.rotation_deg)),
            "mean_rotation_deg": float(np.mean(self.rotation_deg)),
        }
        s.update(threshold_fractions(self.position_m, self.rotation_deg))
        return s


def nearest_neighbour(train_feats: np.ndarray, query_feats: np.ndarray) -> np.ndarray:
    """Index of the closest training feature (Euclidean) for every query."""
    d2 = (query_feats**2).sum(1)[:, None] - 2 * query_feats @ train_feats.T + (train_feats**2).sum(1)[None, :]
    return np.argmin(d2, axis=1)


def evaluate(
    model_path: str | Path,
    dataset: str | Path,
    split: str = "test",
    baseline: bool = True,
    batch_size: int = 32,
    baseline_data: str | Path | None = None,
    map_path: str | Path | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Summary dict and the arrays the plots need. The nearest-neighbour baseline searches the train
    split of ``baseline_data`` (a test-only data set's training set), else of ``dataset``. With
    ``map_path`` each PoseNet pose is also refined against the map (``refined``, beside it)."""
    root = Path(dataset)
    records = read_poses_csv(root)
    train_root = Path(baseline_data) if baseline_data else root
    train_records = read_poses_csv(train_root) if baseline_data else records
    query = sorted(split_records(records, split), key=lambda r: r.image)  # sequences in frame order
    predictor = Predictor(model_path)
    scene_map = None
    if map_path is not None:  # before the images are run: a bad map is one line, at once
        scene_map = load_map(map_path)
        check_map_scene(scene_map, predictor.contract.scene.name, str(map_path))
    notes = []
    if baseline and not predictor.has_features:
        notes.append("nearest-neighbour baseline skipped: the model has no feature output")
    if baseline and not any(r.split == "train" for r in train_records):
        notes.append(
            f"nearest-neighbour baseline skipped: {train_root} has no train images to search "
            "(give the data set the model was trained on, or --baseline-data TRAINING_SET, or --no-baseline)"
        )
    baseline = baseline and not notes
    pred, query_feats = predictor.run(root, query, batch_size, baseline, f"eval {split}")
    ours = Errors.of(pred, query)
    c: Contract = predictor.contract
    summary: dict[str, Any] = {
        "model": str(model_path),
        "dataset": str(root),
        "split": split,
        **({"baseline_data": str(train_root)} if baseline_data else {}),
        "scene": c.scene.name,
        "input": f"{c.preprocessing.input_width}x{c.preprocessing.input_height}",
        "posenet": ours.summary(),
    }
    warnings = plausibility_warnings(
        SceneBox.of(c), positions(query), ours.position_m, "the data set's poses are in another map frame"
    )
    if notes or warnings:
        summary["notes"], summary["warnings"] = notes, warnings
    arrays = {
        "sequence": np.array([sequence_of(r.image) for r in query]),
        "truth": positions(query),
        "posenet": pred[:, :3],
        "posenet_pos_err": ours.position_m,
        "posenet_rot_err": ours.rotation_deg,
    }
    if scene_map is not None:
        refined, result = refine_predictions(scene_map, str(map_path), root, query, pred)
        summary["refined"] = result
        errs = Errors.of(refined, query)
        arrays |= {"refined": refined[:, :3], "refined_pos_err": errs.position_m, "refined_rot_err": errs.rotation_deg}
    if baseline:
        train = split_records(train_records, "train")
        _, train_feats = predictor.run(train_root, train, batch_size, True, "features train")
        nn_idx = nearest_neighbour(train_feats, query_feats)
        nn_pred = np.concatenate([positions(train)[nn_idx], quaternions(train)[nn_idx]], 1)
        nn_err = Errors.of(nn_pred, query)
        summary["nearest_neighbour"] = nn_err.summary()
        arrays |= {
            "nearest_neighbour": nn_pred[:, :3],
            "nn_pos_err": nn_err.position_m,
            "nn_rot_err": nn_err.rotation_deg,
        }
    return summary, arrays


def refine_predictions(
    scene_map: SceneMap, map_name: str, root: Path, query: list[PoseRecord], pred: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]]:
    """Each prediction refined against the map as the engine does it (``refine_pose``), with the
    query images' camera from the data set (else the map's): the poses (refined where accepted,
    PoseNet's otherwise) and the summary: errors, rate, inliers, latency, why the rest were not."""
    import time
    from collections import Counter

    from posenet_ros.geometry import Pose
    from posenet_train.datasets import dataset_camera, read_cameras_json

    cameras = read_cameras_json(root)
    shared = dataset_camera(root, cameras)  # None for several cameras
    out, ms, inliers, reasons = pred.copy(), [], [], Counter()
    for i, r in enumerate(query):
        own = cameras.camera_for(r.image) if cameras is not None else None
        camera = own or shared or scene_map.intrinsics
        image = cv2.cvtColor(cv2.imread(str(root / r.image), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        t0 = time.perf_counter()
        result = refine_pose(image, camera, Pose(pred[i, :3], pred[i, 3:]), scene_map)
        ms.append((time.perf_counter() - t0) * 1000.0)
        if result.refined:
            out[i] = [*result.pose.position, *result.pose.quaternion]
            inliers.append(result.inliers)
        else:
            reasons[reason_kind(result.reason)] += 1
    summary = {
        "map": map_name,
        **Errors.of(out, query).summary(),
        "refined_frames": len(inliers),
        "rate": len(inliers) / len(query) if query else None,
        "inliers_median": float(np.median(inliers)) if inliers else None,
        "latency_ms": {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95))} if ms else {},
        "not_refined": dict(reasons.most_common()),
    }
    return out, summary


def plot(arrays: dict[str, np.ndarray], out: Path, title: str) -> list[Path]:
    series = {
        label: (arrays[f"{name}_pos_err"], arrays[f"{name}_rot_err"])
        for name, label in (("posenet", "PoseNet"), ("refined", "PoseNet + map"), ("nn", "nearest neighbour"))
        if f"{name}_pos_err" in arrays
    }
    estimates = {"PoseNet": arrays["posenet"]}
    if "refined" in arrays:
        estimates["PoseNet + map"] = arrays["refined"]
    if "nearest_neighbour" in arrays:
        estimates["nearest neighbour"] = arrays["nearest_neighbour"]
    segments = label_segments(list(arrays["sequence"]))
    return [
        plot_error_cdf(series, out / "error_cdf.png", title),
        plot_trajectory_top(arrays["truth"], estimates, out / "trajectory_top.png", title, segments),
    ]


def format_summary(summary: dict[str, Any]) -> str:
    rows = [("PoseNet", summary["posenet"])]
    if "refined" in summary:
        rows.append(("PoseNet + map", summary["refined"]))
    if "nearest_neighbour" in summary:
        rows.append(("nearest neighbour", summary["nearest_neighbour"]))
    head = f"{'':<18} {'median m':>9} {'mean m':>8} {'median deg':>10} {'mean deg':>9}" + "".join(
        f" {f'<{m}m,{d:g}deg':>12}" for m, d in THRESHOLDS
    )
    lines = [
        f"{summary['scene']} ({summary['split']}, {summary['posenet']['frames']} frames, input {summary['input']})",
        head,
    ]
    for name, s in rows:
        line = f"{name:<18} {s['median_position_m']:>9.3f} {s['mean_position_m']:>8.3f}"
        line += f" {s['median_rotation_deg']:>10.2f} {s['mean_rotation_deg']:>9.2f}"
        line += "".join(f" {s[f'within_{m}m_{d:g}deg']:>12.1%}" for m, d in THRESHOLDS)
        lines.append(line)
    ref = summary.get("refined")
    if ref is not None:
        lat = ref["latency_ms"]
        lines.append(
            f"refinement ({ref['map']}): {ref['refined_frames']} of {ref['frames']} frames refined, median "
            f"{ref['inliers_median'] or 0:.0f} inliers, {lat.get('p50', 0):.0f} ms p50 / {lat.get('p95', 0):.0f} ms p95"
            + (f"; not refined: {ref['not_refined']}" if ref["not_refined"] else "")
        )
    lines += summary.get("notes", [])
    lines += [f"warning: {w}" for w in summary.get("warnings", [])]
    return "\n".join(lines)


def default_out(model: str | Path, split: str) -> Path:
    return DEFAULT_OUT / f"{Path(model).stem}_{split}"


def main_eval(args: argparse.Namespace) -> None:
    summary, arrays = evaluate(
        args.model,
        args.dataset,
        args.split,
        not args.no_baseline,
        args.batch_size,
        getattr(args, "baseline_data", "") or None,
        getattr(args, "map", "") or None,
    )
    out = Path(args.out) if args.out else default_out(args.model, args.split)
    out.mkdir(parents=True, exist_ok=True)
    summary["plots"] = [str(p) for p in plot(arrays, out, summary["scene"])]
    if args.uncertainty:
        summary.update(evaluate_uncertainty(args, out, summary["scene"]))
        summary["plots"].append(str(out / "uncertainty.png"))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(format_summary(summary))
    if args.uncertainty:
        print(format_uncertainty(summary))
    print(f"wrote {out / 'summary.json'} and plots in {out}")


def evaluate_uncertainty(args: argparse.Namespace, out: Path, title: str) -> dict[str, Any]:
    """The calibration figures (coverage, NEES, Spearman) on the split, the std-against-error plot,
    and with ``--ood`` the predicted std on a data set far from the training poses."""
    from posenet_train.uncertainty import metrics, plot_std_against_error, predict

    pred = predict(args.model, args.dataset, args.split, args.mode, args.samples, args.crops)
    result: dict[str, Any] = {"uncertainty_mode": args.mode, **metrics(pred)}
    if args.mode == "mc_dropout":
        result["mc_samples"] = args.samples
    plot_std_against_error(pred, out / "uncertainty.png", title)
    if args.ood:
        ood = predict(args.model, args.ood, "test", args.mode, args.samples, args.crops)
        result["ood_dataset"] = str(args.ood)
        result["ood_median_position_std_m"] = float(np.median(ood.position_std()))
        result["ood_median_position_error_m"] = float(np.median(np.linalg.norm(ood.position_errors(), axis=1)))
        result["ood_std_ratio"] = result["ood_median_position_std_m"] / result["median_position_std_m"]
    return result


def format_uncertainty(s: dict[str, Any]) -> str:
    from posenet_train.uncertainty import format_metrics

    lines = [f"uncertainty ({s['uncertainty_mode']}): {format_metrics(s)}"]
    if "ood_std_ratio" in s:
        lines.append(
            f"far from the training poses ({s['ood_dataset']}): median position std "
            f"{s['ood_median_position_std_m']:.3f} m = {s['ood_std_ratio']:.2f}x in-distribution "
            f"(median error {s['ood_median_position_error_m']:.3f} m)"
        )
    return "\n".join(lines)
