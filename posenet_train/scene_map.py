"""Building the 3D map that refinement localizes against (issue 17), from a canonical data set's
training images, their known poses and the camera intrinsics.

Stages (the file format and the query side live in ``posenet_ros.refine``):

1. SIFT features (OpenCV) of every map image, on the image resized so its longer side is
   ``features.max_size``; keypoints in the original image's pixels.
2. Pairs by pose: for each image the ``pairs_k`` nearest camera centres among the images whose
   viewing direction is within ``pair_max_angle_deg``.
3. Matching: mutual nearest neighbours with Lowe's ratio test, then the epipolar constraint of the
   known relative pose (Sampson distance <= ``epipolar_px``).
4. Tracks: connected components of the matches over all pairs.
5. Triangulation with the poses held fixed: linear multi-view DLT per track (batched in NumPy), the
   worst observation dropped while it reprojects worse than ``max_reproj_px``, at most one
   observation per image; a point is kept with ``min_track_length`` observations, in front of every
   camera, seen under at least ``min_triangulation_deg``.

pycolmap's own triangulator needs a COLMAP database of features and verified matches on disk; with
known poses and intrinsics the DLT above is the same estimate without that round trip.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from posenet_ros.camera import Camera
from posenet_ros.geometry import (
    Pose,
    quat_multiply,
    quat_to_matrix,
    rotation_vector_to_quat,
)
from posenet_ros.refine import (
    FeatureConfig,
    MapError,
    SceneMap,
    extract_features,
    match_descriptors,
    save_map,
)
from posenet_train.datasets import (
    CAMERAS_FILE,
    DatasetError,
    PoseRecord,
    dataset_camera,
    read_cameras_json,
    read_poses_csv,
    split_records,
)


@dataclass(frozen=True)
class MapConfig:
    features: FeatureConfig = field(default_factory=FeatureConfig)
    every: int = 1  # use every n-th training image (in poses.csv order)
    max_images: int = 0  # 0: no limit; else at most this many, evenly spread
    pairs_k: int = 8
    pair_max_angle_deg: float = 45.0
    ratio: float = 0.8
    epipolar_px: float = 3.0
    max_reproj_px: float = 2.0
    min_track_length: int = 2
    max_track_length: int = 50  # longer components are chains of wrong matches: dropped
    min_triangulation_deg: float = 1.0

    def check(self) -> None:
        self.features.check()
        if self.every < 1 or self.max_images < 0 or self.pairs_k < 1 or self.min_track_length < 2:
            raise MapError(
                f"map settings: every >= 1, max_images >= 0, pairs_k >= 1, min_track_length >= 2 needed "
                f"(got {self.every}, {self.max_images}, {self.pairs_k}, {self.min_track_length})"
            )


# -- intrinsics ---------------------------------------------------------------------------------


def synth_intrinsics(cfg) -> Camera:
    """Exact pinhole intrinsics of images rendered by ``posenet_train.synth.render_dataset`` with
    ``cfg`` (a ``SynthConfig``): the renderer's ``Camera(width, height, hfov_deg)``, focal length
    ``0.5 * width / tan(hfov / 2)`` on both axes, principal point at the image centre
    ``((width - 1) / 2, (height - 1) / 2)`` (OpenCV pixel centres), no distortion."""
    from posenet_train.synth import Camera as RenderCamera

    cam = RenderCamera(cfg.width, cfg.height, cfg.hfov_deg)
    k = cam.intrinsics()
    return Camera(cam.width, cam.height, float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]))


def dataset_intrinsics(folder: str | Path) -> Camera:
    """The camera of a data set folder (``datasets.dataset_camera``: its ``cameras.json``,
    written by ``posenet-train convert`` for 7-Scenes and COLMAP and ``from-bag`` from the
    recording's CameraInfo, else the synthetic renderer's ``scene.json``), else a one-line MapError.
    A lens distortion comes with it: the map undistorts its keypoints, and queries theirs, with it."""
    folder = Path(folder)
    try:
        cameras = read_cameras_json(folder)
        cam = dataset_camera(folder, cameras)
    except DatasetError as exc:
        raise MapError(f"{exc}; refinement needs the intrinsics") from None
    where = str(folder / CAMERAS_FILE)
    if cameras is not None and cam is None:
        raise MapError(
            f"{where}: {len(cameras.cameras)} different cameras; a map is built for one camera (convert "
            "each camera's images to a data set of its own)"
        )
    if cam is None:
        raise MapError(
            f"{folder}: no camera intrinsics (no {CAMERAS_FILE}, no scene.json), and a map needs them: "
            f"posenet-train convert writes {CAMERAS_FILE} for 7-Scenes and COLMAP (cameras.txt), from-bag "
            "where the recording has the camera's CameraInfo, synth writes scene.json"
        )
    return cam.check(where, MapError)


def dataset_scene_name(folder: str | Path) -> str:
    path = Path(folder) / "scene.json"
    if path.is_file():
        try:
            return str(json.loads(path.read_text())["scene"])
        except (KeyError, ValueError):
            pass
    return Path(folder).resolve().name


# -- pairs, matches, tracks ---------------------------------------------------------------------


def pairs_from_poses(poses: np.ndarray, k: int, max_angle_deg: float) -> np.ndarray:
    """Unordered image pairs (M, 2), i < j: each image with its ``k`` nearest camera centres among
    images whose optical axes are within ``max_angle_deg``."""
    centres = poses[:, :3]
    axes = quat_to_matrix(poses[:, 3:7])[:, :, 2]
    cos_max = np.cos(np.radians(max_angle_deg))
    out = set()
    for i in range(len(poses)):
        ok = axes @ axes[i] >= cos_max
        ok[i] = False
        cand = np.flatnonzero(ok)
        if not len(cand):
            continue
        d = np.linalg.norm(centres[cand] - centres[i], axis=1)
        for j in cand[np.argsort(d)[:k]]:
            out.add((min(i, int(j)), max(i, int(j))))
    return np.array(sorted(out), dtype=np.int64).reshape(-1, 2)


def projection(pose7: np.ndarray) -> np.ndarray:
    """World-to-camera 3x4 [R | t] of a camera-to-map pose row (x, y, z, qw, qx, qy, qz)."""
    r = quat_to_matrix(pose7[3:7]).T
    return np.concatenate([r, (-r @ pose7[:3])[:, None]], axis=1)


def sampson_px(kmat: np.ndarray, p1: np.ndarray, p2: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """Sampson distance (pixels) of matches x1 <-> x2 to the epipolar geometry of known [R|t]s."""
    r1, t1, r2, t2 = p1[:, :3], p1[:, 3], p2[:, :3], p2[:, 3]
    r = r2 @ r1.T
    t = t2 - r @ t1
    tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
    kinv = np.linalg.inv(kmat)
    f = kinv.T @ tx @ r @ kinv
    h1 = np.concatenate([x1, np.ones((len(x1), 1))], axis=1)
    h2 = np.concatenate([x2, np.ones((len(x2), 1))], axis=1)
    fx1 = h1 @ f.T
    ftx2 = h2 @ f
    num = np.sum(h2 * fx1, axis=1)
    den = fx1[:, 0] ** 2 + fx1[:, 1] ** 2 + ftx2[:, 0] ** 2 + ftx2[:, 1] ** 2
    return np.abs(num) / np.sqrt(np.maximum(den, 1e-300))


def tracks_from_matches(n_nodes: int, edges: np.ndarray) -> list[np.ndarray]:
    """Connected components (>= 2 nodes) of the match graph over global keypoint indices."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not len(edges):
        return []
    g = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n_nodes, n_nodes))
    _, labels = connected_components(g, directed=False)
    used = np.zeros(n_nodes, bool)
    used[edges.ravel()] = True
    nodes = np.flatnonzero(used)
    lab = labels[nodes]
    order = np.argsort(lab, kind="stable")
    nodes, lab = nodes[order], lab[order]
    cuts = np.flatnonzero(np.diff(lab)) + 1
    return [t for t in np.split(nodes, cuts) if len(t) >= 2]


# -- triangulation ------------------------------------------------------------------------------


def _dlt(norm_xy: np.ndarray, projs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Batched linear triangulation: norm_xy (T, L, 2) normalized image coordinates, projs (T, L, 3, 4),
    mask (T, L) observations in use. Returns (T, 3)."""
    a0 = norm_xy[..., 0:1] * projs[..., 2, :] - projs[..., 0, :]
    a1 = norm_xy[..., 1:2] * projs[..., 2, :] - projs[..., 1, :]
    a = np.concatenate([a0, a1], axis=1) * np.concatenate([mask, mask], axis=1)[..., None]
    _, _, vt = np.linalg.svd(a, full_matrices=False)
    x = vt[:, -1, :]
    w = np.where(np.abs(x[:, 3]) < 1e-12, 1e-12, x[:, 3])
    return x[:, :3] / w[:, None]


def _reprojection(x: np.ndarray, pr: np.ndarray, px: np.ndarray, kmat: np.ndarray) -> np.ndarray:
    """(T, L) pixel reprojection errors of points x (T, 3) in cameras pr (T, L, 3, 4); inf behind."""
    xc = np.einsum("tlij,tj->tli", pr[..., :3], x) + pr[..., 3]
    z = xc[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = np.stack([xc[..., 0] / z, xc[..., 1] / z], axis=-1) @ kmat[:2, :2].T + kmat[:2, 2]
        err = np.linalg.norm(uv - px, axis=-1)
    return np.where(z > 1e-6, err, np.inf)


def triangulate_tracks(
    tracks: list[np.ndarray],
    node_image: np.ndarray,
    keypoints: np.ndarray,
    projs: np.ndarray,
    centres: np.ndarray,
    kmat: np.ndarray,
    cfg: MapConfig,
    chunk: int = 4096,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Points (P, 3), their mean reprojection error (P,) and the kept observations (global keypoint
    indices) of each, for the tracks that pass the filters."""
    kinv = np.linalg.inv(kmat)
    order = np.argsort([len(t) for t in tracks], kind="stable")
    pts_out, err_out, obs_out = [], [], []
    cos_min = np.cos(np.radians(cfg.min_triangulation_deg))
    for s in range(0, len(order), chunk):
        batch = [tracks[i] for i in order[s : s + chunk]]
        n_t, n_l = len(batch), max(len(t) for t in batch)
        idx = np.zeros((n_t, n_l), np.int64)
        mask = np.zeros((n_t, n_l), bool)
        for r, t in enumerate(batch):
            idx[r, : len(t)] = t
            mask[r, : len(t)] = True
        img = node_image[idx]
        px = keypoints[idx].astype(np.float64)
        nxy = px @ kinv[:2, :2].T + kinv[:2, 2]
        pr = projs[img]
        for it in range(n_l):
            x = _dlt(nxy, pr, mask.astype(np.float64))
            err = _reprojection(x, pr, px, kmat)
            if it == 0:
                # Two observations of one image in a track: keep the one that reprojects best.
                r, c = np.nonzero(mask)
                o = np.lexsort((err[r, c], img[r, c], r))
                r, c = r[o], c[o]
                first = np.ones(len(r), bool)
                first[1:] = (r[1:] != r[:-1]) | (img[r[1:], c[1:]] != img[r[:-1], c[:-1]])
                if not first.all():
                    mask[r[~first], c[~first]] = False
                    continue
            err = np.where(mask, err, -1.0)
            worst = np.argmax(err, axis=1)
            bad = (err[np.arange(n_t), worst] > cfg.max_reproj_px) & (mask.sum(1) > 2)
            if not bad.any():
                break
            mask[np.flatnonzero(bad), worst[bad]] = False
        x = _dlt(nxy, pr, mask.astype(np.float64))
        err = _reprojection(x, pr, px, kmat)
        n_obs = mask.sum(1)
        front = np.all(np.isfinite(err) | ~mask, axis=1)
        max_err = np.max(np.where(mask, err, 0.0), axis=1)
        rays = x[:, None, :] - centres[img]
        rays /= np.maximum(np.linalg.norm(rays, axis=-1, keepdims=True), 1e-12)
        dots = np.einsum("tli,tmi->tlm", rays, rays)
        dots = np.where(mask[:, :, None] & mask[:, None, :], dots, 1.0)
        wide = dots.min(axis=(1, 2)) <= cos_min
        keep = (n_obs >= cfg.min_track_length) & front & (max_err <= cfg.max_reproj_px) & wide
        keep &= np.all(np.isfinite(x), axis=1)
        for r in np.flatnonzero(keep):
            pts_out.append(x[r])
            err_out.append(float(err[r, mask[r]].mean()))
            obs_out.append(idx[r, mask[r]])
    points = np.array(pts_out, dtype=np.float64).reshape(-1, 3)
    return points, np.array(err_out, dtype=np.float32), obs_out


# -- the whole build ----------------------------------------------------------------------------


def select_records(records: list[PoseRecord], cfg: MapConfig) -> list[PoseRecord]:
    chosen = records[:: cfg.every]
    if cfg.max_images and len(chosen) > cfg.max_images:
        pick = np.unique(np.linspace(0, len(chosen) - 1, cfg.max_images).round().astype(int))
        chosen = [chosen[i] for i in pick]
    return chosen


def read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise MapError(f"{path}: image unreadable")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def build_map(
    dataset: str | Path,
    out: str | Path | None = None,
    cfg: MapConfig | None = None,
    intrinsics: Camera | None = None,
    scene: str | None = None,
    progress: bool = False,
) -> SceneMap:
    """Map of the training split of a canonical data set folder; written to ``out`` when given."""
    cfg = cfg or MapConfig()
    cfg.check()
    dataset = Path(dataset)
    t_start = time.perf_counter()
    intr = intrinsics or dataset_intrinsics(dataset)
    intr.check("intrinsics", MapError)
    records = select_records(split_records(read_poses_csv(dataset / "poses.csv"), "train"), cfg)
    if len(records) < 2:
        raise MapError(f"{dataset}: need at least 2 training images for a map, got {len(records)}")
    poses = np.array([[*r.position, *r.quaternion] for r in records], dtype=np.float64)
    kmat = intr.matrix()

    def bar(it, desc, total=None):
        if not progress:
            return it
        from tqdm import tqdm

        return tqdm(it, desc=desc, total=total, unit="it")

    kps, descs = [], []
    t0 = time.perf_counter()
    for r in bar(records, "features"):
        img = read_rgb(dataset / r.image)
        if img.shape[:2] != (intr.height, intr.width):
            raise MapError(
                f"{dataset / r.image}: image is {img.shape[1]}x{img.shape[0]}, the intrinsics are for "
                f"{intr.width}x{intr.height}"
            )
        k, d = extract_features(img, cfg.features)
        kps.append(intr.undistort_pixels(k))  # matching and triangulation work in the ideal pinhole
        descs.append(d)
    t_feat = time.perf_counter() - t0
    offsets = np.concatenate([[0], np.cumsum([len(k) for k in kps])]).astype(np.int64)
    keypoints = np.concatenate(kps) if kps else np.zeros((0, 2), np.float32)
    descriptors = np.concatenate(descs) if descs else np.zeros((0, 128), np.uint8)
    node_image = np.repeat(np.arange(len(records)), np.diff(offsets))
    projs = np.stack([projection(p) for p in poses])

    t0 = time.perf_counter()
    pairs = pairs_from_poses(poses, cfg.pairs_k, cfg.pair_max_angle_deg)
    edges, n_raw = [], 0
    for i, j in bar(pairs, "match", total=len(pairs)):
        m = match_descriptors(descs[i], descs[j], cfg.ratio)
        n_raw += len(m)
        if not len(m):
            continue
        d = sampson_px(kmat, projs[i], projs[j], kps[i][m[:, 0]].astype(np.float64), kps[j][m[:, 1]].astype(np.float64))
        m = m[d <= cfg.epipolar_px]
        edges.append(np.stack([m[:, 0] + offsets[i], m[:, 1] + offsets[j]], axis=1))
    edges = np.concatenate(edges) if edges else np.zeros((0, 2), np.int64)
    t_match = time.perf_counter() - t0

    t0 = time.perf_counter()
    tracks = tracks_from_matches(len(keypoints), edges)
    n_long = sum(len(t) > cfg.max_track_length for t in tracks)
    tracks = [t for t in tracks if len(t) <= cfg.max_track_length]
    points, errors, observations = triangulate_tracks(tracks, node_image, keypoints, projs, poses[:, :3], kmat, cfg)
    point_ids = np.full(len(keypoints), -1, np.int32)
    for pid, obs in enumerate(observations):
        point_ids[obs] = pid
    t_tri = time.perf_counter() - t0
    lengths = np.array([len(o) for o in observations]) if observations else np.zeros(0)
    build = {
        "dataset": str(dataset.resolve()),
        "config": {**asdict(cfg), "features": asdict(cfg.features)},
        "images": len(records),
        "pairs": len(pairs),
        "matches_raw": int(n_raw),
        "matches_verified": len(edges),
        "tracks": len(tracks),
        "tracks_too_long": int(n_long),
        "points": len(points),
        "mean_track_length": float(lengths.mean()) if len(lengths) else 0.0,
        "mean_reprojection_px": float(errors.mean()) if len(errors) else 0.0,
        "seconds": {
            "features": round(t_feat, 2),
            "matching": round(t_match, 2),
            "triangulation": round(t_tri, 2),
            "total": round(time.perf_counter() - t_start, 2),
        },
    }
    scene_map = SceneMap(
        scene=scene or dataset_scene_name(dataset),
        intrinsics=intr,
        features=cfg.features,
        image_names=[r.image for r in records],
        poses=poses,
        points=points,
        point_errors=errors,
        kp_offsets=offsets,
        keypoints=keypoints,
        descriptors=descriptors,
        point_ids=point_ids,
        build=build,
    )
    if not len(points):
        raise MapError(f"{dataset}: no 3D point survived triangulation ({len(edges)} verified matches)")
    if out is not None:
        save_map(scene_map, out)
    return scene_map


# -- for measuring refinement: coarse poses with a known error ---------------------------------


def perturbed(pose: Pose, metres: float, degrees: float, rng: np.random.Generator) -> Pose:
    """``pose`` moved ``metres`` and turned ``degrees`` (about a random map axis) in random directions."""
    d = rng.normal(size=3)
    a = rng.normal(size=3)
    turn = rotation_vector_to_quat(a / np.linalg.norm(a) * np.radians(degrees))
    return Pose(pose.position + d / np.linalg.norm(d) * metres, quat_multiply(turn, pose.quaternion))
