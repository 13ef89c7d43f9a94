"""Refinement on real photographs (issue 17): a query held out of the map, localized against it.

    .venv/bin/python benchmarks/bench_real_photos.py IMAGE_FOLDER [--work DIR] [--hold-out N]
        [--map-poses reference|independent] [--json OUT]

1. Reference: ``posenet-train label-sfm`` (``posenet_train.sfm.label_sfm``, exhaustive matching,
   one camera) on every image of the folder. Its poses are the reference for every image; the
   camera it writes to ``cameras.json`` (SfM's estimate, OpenCV conventions, with its distortion)
   the intrinsics.
2. Folds: leave-one-out over the registered images (``--hold-out 0``, the default), or ``N`` queries
   evenly spread over them and one map from the rest.
3. Per fold a canonical data set: the photographs as taken, the map images as ``train``, the
   queries as ``test``, and label-sfm's ``cameras.json``. ``posenet_train.scene_map.build_map``
   (what ``posenet-train map`` runs) builds the map from the ``train`` images only, so the query is
   in no map; it undistorts the keypoints with the camera's distortion and keeps the distortion in
   the map, and ``refine_pose`` undistorts the query's keypoints with it (no image is resampled).
   - ``--map-poses reference`` (default): the map images' poses are the reference SfM's, so map and
     reference share one frame exactly. Caveat: that SfM saw the query too (its bundle adjustment
     used the query's features), so map poses and the query's reference pose are not independent.
   - ``--map-poses independent``: ``label-sfm`` again on the map images alone, aligned to the
     reference by ``--align-to`` (a similarity on the camera centres); its poses and its
     ``cameras.json`` build the map and refine the query. The map then never saw the query; the
     reference pose of the query still comes from the SfM of all images.
4. Coarse poses (no PoseNet is trained on a dozen photographs): ``nearest``, the pose of the map
   image whose centre is nearest the query's reference centre among those viewing within 60 deg of
   it (``SceneMap.nearest_images``; what image retrieval would give at best), and ``perturbed``,
   the reference pose moved ``--perturb-frac`` of the camera spread in a random direction and
   turned ``--perturb-deg`` about a random axis (a PoseNet-sized error).
5. ``posenet_ros.refine.refine_pose`` from each coarse pose. SfM units are arbitrary, so the
   acceptance gate ``max_shift_m`` is set to ``--max-shift-frac`` of the spread (and
   ``max_shift_deg`` to ``--max-shift-deg``); other settings are ``RefineConfig``'s defaults.

Camera spread: the largest distance between two reference camera centres (the diameter of the
centres, a rotation-free "largest extent"); position errors are printed as a percentage of it (the
summary also gives the largest as a percentage of the median distance of the centres to their
centroid, a stricter yardstick). The issue's target: within 1% of the spread. An image the
reference SfM did not register is neither query nor map image.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np

from posenet_ros.geometry import Pose, position_error, rotation_error_deg
from posenet_ros.refine import FeatureConfig, RefineConfig, refine_pose
from posenet_train.datasets import CAMERAS_FILE, PoseRecord, read_cameras_json, write_poses_csv
from posenet_train.scene_map import MapConfig, build_map, perturbed
from posenet_train.sfm import IMAGE_SUFFIXES, SfmConfig, label_sfm

COARSE_MODES = ("nearest", "perturbed")
TARGET_FRAC = 0.01  # issue 17: within 1% of the camera spread


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    hold_out: int = 0  # 0: leave-one-out; else this many queries and one map of the rest
    map_poses: str = "reference"  # or "independent"
    camera_model: str = "SIMPLE_RADIAL"
    max_size: int = 0  # feature detection size (longer side); 0: the images' own
    max_features: int = 2000
    perturb_frac: float = 0.05
    perturb_deg: float = 5.0
    max_shift_frac: float = 0.25
    max_shift_deg: float = 30.0
    seed: int = 0
    threads: int = 2


# -- structure from motion as the user runs it --------------------------------------------------


def sfm(source: Path, out: Path, cfg: BenchConfig, align_to: Path | None = None):
    """``label-sfm`` on a folder (exhaustive matching); returns {image name: PoseRecord}, the camera
    it wrote to ``out/cameras.json`` and its result."""
    result = label_sfm(
        SfmConfig(
            source,
            out,
            matcher="exhaustive",
            camera_model=cfg.camera_model,
            align_to=align_to,
            threads=cfg.threads,
        )
    )
    records = {Path(r.image).name: r for r in result.records}
    cameras = read_cameras_json(out)
    cam = cameras.single() if cameras is not None else None
    if cam is None:
        raise SystemExit(f"{out}: label-sfm wrote no single camera: {result.intrinsics}")
    return records, cam, result


# -- one fold: a data set, its map, the queries refined -----------------------------------------


def write_fold(images: Path, out: Path, cameras: Path, map_records: list[PoseRecord], query_records: list[PoseRecord]):
    """A canonical data set in ``out``: the images as taken, map images as train, queries as test,
    and the ``cameras.json`` label-sfm wrote in the folder ``cameras``."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for r, split in [(r, "train") for r in map_records] + [(r, "test") for r in query_records]:
        name = Path(r.image).name
        shutil.copy2(images / name, out / "images" / name)
        records.append(PoseRecord(f"images/{name}", split, r.position, r.quaternion))
    write_poses_csv(out / "poses.csv", records)
    shutil.copy2(cameras / CAMERAS_FILE, out / CAMERAS_FILE)


def coarse_pose(mode: str, ref: Pose, scene_map, spread: float, cfg: BenchConfig, rng) -> Pose:
    if mode == "nearest":
        # The map image refinement itself would rank first for the reference pose: nearest centre
        # among those viewing within RefineConfig's max_view_angle_deg.
        i = int(scene_map.nearest_images(ref, 1, RefineConfig().max_view_angle_deg)[0])
        return Pose(scene_map.poses[i, :3].copy(), scene_map.poses[i, 3:7].copy())
    return perturbed(ref, cfg.perturb_frac * spread, cfg.perturb_deg, rng)


def spread_of(centres: np.ndarray) -> tuple[float, float]:
    """(diameter: largest distance between two centres, median distance to the centroid)."""
    d = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    return float(d.max()), float(np.median(np.linalg.norm(centres - centres.mean(0), axis=1)))


def folds(names: list[str], hold_out: int) -> list[list[str]]:
    if hold_out <= 0:
        return [[n] for n in names]
    if hold_out >= len(names) - 1:
        raise SystemExit(f"--hold-out {hold_out} leaves fewer than 2 of {len(names)} images for the map")
    pick = np.unique(np.linspace(0, len(names) - 1, hold_out + 2)[1:-1].round().astype(int))
    return [[names[i] for i in pick]]


def run_bench(folder: str | Path, work: str | Path, cfg: BenchConfig, log=print) -> dict:
    """Every step above; returns the figures (what ``--json`` writes)."""
    folder, work = Path(folder), Path(work)
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    n_images = sum(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.iterdir())
    ref, ref_cam, _ = sfm(folder, work / "reference", cfg)
    names = sorted(ref)
    centres = np.array([ref[n].position for n in names])
    spread, radius = spread_of(centres)
    shift = ref_cam.distortion_shift_px()
    log(
        f"reference: label-sfm registered {len(ref)} of {n_images} images; camera {ref_cam.width}x{ref_cam.height} "
        f"fx={ref_cam.fx:.1f} fy={ref_cam.fy:.1f} cx={ref_cam.cx:.1f} cy={ref_cam.cy:.1f} "
        f"distortion {tuple(round(v, 4) for v in ref_cam.distortion)} (moves the corners {shift:.1f} px)"
    )
    log(f"camera spread: diameter {spread:.3f} SfM units, median distance to centroid {radius:.3f}")
    max_size = cfg.max_size or max(ref_cam.width, ref_cam.height)
    map_cfg = MapConfig(features=FeatureConfig(max_size=max_size, max_features=cfg.max_features))
    refine_cfg = RefineConfig(max_shift_m=cfg.max_shift_frac * spread, max_shift_deg=cfg.max_shift_deg)
    rng = np.random.default_rng(cfg.seed)
    rows, maps = [], []
    for fold_i, queries in enumerate(folds(names, cfg.hold_out)):
        fold = work / "folds" / (Path(queries[0]).stem if len(queries) == 1 else f"fold{fold_i}")
        map_names = [n for n in names if n not in queries]
        map_records, cam, sfm_out = [ref[n] for n in map_names], ref_cam, work / "reference"
        info: dict = {"queries": queries, "map_images": len(map_names)}
        if cfg.map_poses == "independent":
            only = fold / "map_only_photos"
            only.mkdir(parents=True)
            for n in map_names:
                shutil.copy2(folder / n, only / n)
            write_poses_csv(work / "reference.csv", [ref[n] for n in names])
            sfm_out = fold / "map_sfm"
            own, cam, result = sfm(only, sfm_out, cfg, align_to=work / "reference.csv")
            map_records = [own[n] for n in map_names if n in own]
            info.update(map_sfm_registered=len(own), alignment_rms_frac=result.alignment_rms_m / spread)
            log(
                f"{fold.name}: map-only label-sfm registered {len(own)} of {len(map_names)}, aligned to the "
                f"reference with RMS {100 * result.alignment_rms_m / spread:.2f}% of the spread, fx={cam.fx:.1f}, "
                f"distortion {tuple(round(v, 4) for v in cam.distortion)}"
            )
        data = fold / "data"
        write_fold(folder, data, sfm_out, map_records, [ref[n] for n in queries])
        scene_map = build_map(data, data / "map.npz", map_cfg, scene="real_photos")
        b = scene_map.build
        map_cam = scene_map.intrinsics  # cameras.json's, distortion included
        info.update(
            map_images=b["images"],  # what the map was built from
            points=b["points"],
            mean_reprojection_px=b["mean_reprojection_px"],
            map_distortion=list(map_cam.distortion),
        )
        maps.append(info)
        log(
            f"{fold.name}: map of {b['images']} images (query not in it), {b['points']} points, "
            f"mean reprojection {b['mean_reprojection_px']:.2f} px, map camera fx={map_cam.fx:.1f} "
            f"distortion {tuple(round(v, 4) for v in map_cam.distortion)}"
        )
        for q in queries:
            rgb = cv2.cvtColor(cv2.imread(str(data / "images" / q), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            truth = ref[q].pose()
            for mode in COARSE_MODES:
                coarse = coarse_pose(mode, truth, scene_map, spread, cfg, rng)
                res = refine_pose(rgb, map_cam, coarse, scene_map, refine_cfg)
                pose = res.pose if res.refined else res.pnp_pose
                row = {
                    "query": q,
                    "coarse": mode,
                    "coarse_pos_frac": float(position_error(coarse.position, truth.position)) / spread,
                    "coarse_rot_deg": float(rotation_error_deg(coarse.quaternion, truth.quaternion)),
                    "refined": bool(res.refined),
                    "reason": res.reason,
                    "inliers": int(res.inliers),
                    "correspondences": int(res.correspondences),
                    "rms_px": res.rms_px,
                    "pos_frac": None if pose is None else float(position_error(pose.position, truth.position)) / spread,
                    "rot_deg": None if pose is None else float(rotation_error_deg(pose.quaternion, truth.quaternion)),
                    "refine_ms": res.timings.total_ms,
                }
                row["pos_frac_radius"] = None if row["pos_frac"] is None else row["pos_frac"] * spread / radius
                rows.append(row)
                log(format_row(row))
    summary = {mode: summarize([r for r in rows if r["coarse"] == mode]) for mode in COARSE_MODES}
    for mode, s in summary.items():
        log(format_summary(mode, s))
    return {
        "folder": str(folder.resolve()),
        "images": n_images,
        "registered": len(ref),
        "camera": dataclasses.asdict(ref_cam),
        "distortion_shift_px": shift,
        "spread_diameter": spread,
        "spread_median_radius": radius,
        "config": dataclasses.asdict(cfg),
        "refine_config": dataclasses.asdict(refine_cfg),
        "maps": maps,
        "rows": rows,
        "summary": summary,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def summarize(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["refined"]]
    pos = np.array([r["pos_frac"] for r in ok]) if ok else np.zeros(0)
    rot = np.array([r["rot_deg"] for r in ok]) if ok else np.zeros(0)
    return {
        "queries": len(rows),
        "refined": len(ok),
        "within_target": int(np.sum(pos <= TARGET_FRAC)),
        "pos_frac_median": float(np.median(pos)) if len(pos) else None,
        "pos_frac_max": float(pos.max()) if len(pos) else None,
        "pos_frac_radius_max": max((r["pos_frac_radius"] for r in ok), default=None),
        "rot_deg_median": float(np.median(rot)) if len(rot) else None,
        "rot_deg_max": float(rot.max()) if len(rot) else None,
        "inliers_median": float(np.median([r["inliers"] for r in ok])) if ok else None,
    }


def format_row(r: dict) -> str:
    err = "no PnP pose" if r["pos_frac"] is None else f"{100 * r['pos_frac']:.3f}% / {r['rot_deg']:.3f} deg"
    state = "refined" if r["refined"] else f"NOT refined ({r['reason']})"
    coarse = f"{100 * r['coarse_pos_frac']:5.1f}% / {r['coarse_rot_deg']:4.1f} deg"
    return (
        f"  {r['query']:<24} coarse {r['coarse']:<9} ({coarse}) -> {err}, "
        f"{r['inliers']} inliers of {r['correspondences']}, {state}"
    )


def format_summary(mode: str, s: dict) -> str:
    if not s["refined"]:
        return f"summary [{mode}]: 0 of {s['queries']} refined"
    met = "met" if s["within_target"] == s["queries"] else "NOT met"
    return (
        f"summary [{mode}]: {s['refined']} of {s['queries']} refined; position error median "
        f"{100 * s['pos_frac_median']:.3f}%, max {100 * s['pos_frac_max']:.3f}% of the spread "
        f"(max {100 * s['pos_frac_radius_max']:.3f}% of the median radius); rotation median "
        f"{s['rot_deg_median']:.3f} deg, max {s['rot_deg_max']:.3f} deg; median {s['inliers_median']:.0f} inliers; "
        f"{s['within_target']} of {s['queries']} within 1% of the spread (target {met})"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="photographs of one scene, one camera (.jpg/.png)")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_real_photos"), help="scratch folder (replaced)")
    p.add_argument("--hold-out", type=int, default=0, help="queries held out of one map (0: leave-one-out)")
    p.add_argument("--map-poses", choices=("reference", "independent"), default="reference")
    p.add_argument("--camera-model", default="SIMPLE_RADIAL", help="COLMAP camera model for label-sfm")
    p.add_argument("--max-size", type=int, default=0, help="feature detection size (0: the images' own)")
    p.add_argument("--max-features", type=int, default=2000)
    p.add_argument("--perturb-frac", type=float, default=0.05, help="perturbed coarse pose: share of the spread")
    p.add_argument("--perturb-deg", type=float, default=5.0)
    p.add_argument("--max-shift-frac", type=float, default=0.25, help="refinement's gate: share of the spread")
    p.add_argument("--max-shift-deg", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="pycolmap threads")
    p.add_argument("--json", type=Path, help="write the figures here")
    a = p.parse_args(argv)
    cfg = BenchConfig(
        a.hold_out,
        a.map_poses,
        a.camera_model,
        a.max_size,
        a.max_features,
        a.perturb_frac,
        a.perturb_deg,
        a.max_shift_frac,
        a.max_shift_deg,
        a.seed,
        a.threads,
    )
    out = run_bench(a.folder, a.work, cfg)
    print(f"{out['seconds']:.0f} s")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
