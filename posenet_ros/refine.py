"""Refining a coarse (PoseNet) pose against a 3D map of the scene: local features and PnP (issue 17).

ROS-free and free of ``posenet_train`` (it runs on the robot): NumPy and OpenCV only. The map is
built offline by ``posenet_train.scene_map``; this module owns its file format (written and read
here, so the builder and the robot agree) and the query side:

1. SIFT features of the query, on the image resized as the map's images were (``max_size``);
   keypoints are kept in the original image's pixel coordinates, so the intrinsics never change.
2. The ``k`` map images nearest the coarse pose: viewing directions within ``max_view_angle_deg``,
   nearest camera centres first.
3. Query descriptors matched against each of them (Lowe's ratio test and mutual nearest
   neighbours); a match to a keypoint with a 3D point is a 2D-3D correspondence.
4. PnP in RANSAC (OpenCV, AP3P minimal solver), Levenberg-Marquardt refinement on the inliers,
   inliers re-collected at the refined pose and refined once more.
5. Accepted when there are ``min_inliers`` inliers and the refined pose is within the shift limit
   (``max_shift_frac`` of the map's scale, so SfM units and large scenes scale with it, or
   ``max_shift_m``) and ``max_shift_deg`` of the coarse one; otherwise the coarse pose comes back
   with ``refined`` False and a one-line ``reason``.

Poses follow docs/architecture.md: camera-to-map, OpenCV optical axes, quaternions (w, x, y, z),
w >= 0. PnP solves the world-to-camera transform and is inverted here. Pixel coordinates follow
OpenCV: the centre of the top-left pixel is (0, 0) (COLMAP puts it at (0.5, 0.5)).

The covariance is the Gauss-Newton one of the reprojection residuals at the refined pose,
``sigma^2 (J^T J)^-1`` with ``sigma^2`` their variance (sum of squares over 2N - 6), for the
perturbation (dx, dy, dz, rotX, rotY, rotZ): position in the map and a rotation vector about the
map axes applied on the left (q' = exp(r) q), the layout of the engine's 6x6 covariance. It accounts
for pixel noise only, not for the map points' own error, so it is a lower bound.
"""

from __future__ import annotations

import json
import time
import zipfile
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np

from posenet_ros.atomic import atomic_path
from posenet_ros.camera import Camera
from posenet_ros.geometry import (
    Pose,
    matrix_to_quat,
    position_error,
    quat_to_matrix,
    rotation_error_deg,
)

MAP_FORMAT = "posenet_ros.scene_map"
MAP_VERSION = 1
FEATURE_TYPES = ("sift",)
MAP_ARRAYS = (
    "header",
    "image_names",
    "poses",
    "points",
    "point_errors",
    "kp_offsets",
    "keypoints",
    "descriptors",
    "point_ids",
)


class MapError(ValueError):
    """A map file is missing, unreadable or inconsistent; the message is one line naming the file."""


# -- intrinsics and features --------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureConfig:
    """How features are extracted; the map records it and queries use the same."""

    feature_type: str = "sift"
    max_size: int = 640  # longer image side the detector sees (images are resized to it, up or down)
    max_features: int = 2000

    def check(self, where: str = "features") -> None:
        if self.feature_type not in FEATURE_TYPES:
            raise MapError(f"{where}: feature type {self.feature_type!r} is not one of {FEATURE_TYPES}")
        if self.max_size < 16 or self.max_features < 8:
            raise MapError(
                f"{where}: max_size >= 16 and max_features >= 8 needed, got {self.max_size}, {self.max_features}"
            )


_SIFT: dict[int, cv2.SIFT] = {}


def extract_features(image: np.ndarray, cfg: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """SIFT keypoints (N, 2) float32 in the input image's pixels and descriptors (N, 128) uint8 of an
    RGB (H, W, 3) or grey (H, W) uint8 image, detected on it resized so its longer side is
    ``cfg.max_size``."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    h, w = grey.shape[:2]
    scale = cfg.max_size / max(h, w)
    if abs(scale - 1.0) > 1e-9:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        grey = cv2.resize(grey, size, interpolation=interp)
        sx, sy = w / size[0], h / size[1]
    else:
        sx = sy = 1.0
    sift = _SIFT.get(cfg.max_features)
    if sift is None:
        sift = _SIFT[cfg.max_features] = cv2.SIFT_create(nfeatures=cfg.max_features)
    kps, desc = sift.detectAndCompute(grey, None)
    if desc is None or not kps:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8)
    xy = np.array([k.pt for k in kps], dtype=np.float64)
    # Pixel centres at integer coordinates: x = (x' + 0.5) * s - 0.5.
    xy[:, 0] = (xy[:, 0] + 0.5) * sx - 0.5
    xy[:, 1] = (xy[:, 1] + 0.5) * sy - 0.5
    return xy.astype(np.float32), np.clip(np.rint(desc), 0, 255).astype(np.uint8)


_MATCHER = cv2.BFMatcher(cv2.NORM_L2)


def match_descriptors(d1: np.ndarray, d2: np.ndarray, ratio: float = 0.8) -> np.ndarray:
    """Index pairs (M, 2) of mutual nearest neighbours that pass Lowe's ratio test both ways."""
    if len(d1) < 2 or len(d2) < 2:
        return np.zeros((0, 2), np.int64)
    a, b = d1.astype(np.float32), d2.astype(np.float32)

    def one_way(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        best = np.full(len(x), -1, np.int64)
        for m in _MATCHER.knnMatch(x, y, k=2):
            if len(m) == 2 and m[0].distance < ratio * m[1].distance:
                best[m[0].queryIdx] = m[0].trainIdx
        return best

    fwd, bwd = one_way(a, b), one_way(b, a)
    i = np.flatnonzero(fwd >= 0)
    j = fwd[i]
    keep = bwd[j] == i
    return np.stack([i[keep], j[keep]], axis=1)


# -- the map ------------------------------------------------------------------------------------


@dataclass
class SceneMap:
    """A 3D map: points in map coordinates, and per map image its camera-to-map pose, keypoints,
    descriptors and the 3D point each keypoint observes (-1: none). Keypoints of image i are rows
    ``kp_offsets[i]:kp_offsets[i + 1]``."""

    scene: str
    intrinsics: Camera
    features: FeatureConfig
    image_names: list[str]
    poses: np.ndarray  # (N, 7): x, y, z, qw, qx, qy, qz, camera-to-map
    points: np.ndarray  # (P, 3) float64
    point_errors: np.ndarray  # (P,) mean reprojection error, pixels
    kp_offsets: np.ndarray  # (N + 1,) int64
    keypoints: np.ndarray  # (K, 2) float32
    descriptors: np.ndarray  # (K, 128) uint8
    point_ids: np.ndarray  # (K,) int32
    build: dict = field(default_factory=dict)  # how it was built (settings, counts, seconds)

    def __post_init__(self) -> None:
        rot = quat_to_matrix(self.poses[:, 3:7]) if len(self.poses) else np.zeros((0, 3, 3))
        self._centres = self.poses[:, :3]
        self._view_dirs = rot[:, :, 2]  # optical axis (camera z) in the map

    @cached_property
    def camera_spread(self) -> float:
        """The diameter of the map's camera centres (the largest distance between two), in the
        map's units: the scale refinement's acceptance gate follows."""
        c = self._centres
        return max(
            (float(np.linalg.norm(c[i : i + 256, None] - c[None], axis=2).max()) for i in range(0, len(c), 256)),
            default=0.0,
        )

    @cached_property
    def scale(self) -> float:
        """The map's size for the acceptance gate: its camera spread, or where the cameras barely
        move (a camera turning on the spot) the median distance of its points from them."""
        if not len(self.points):
            return self.camera_spread
        depth = float(np.median(np.linalg.norm(self.points - self._centres.mean(axis=0), axis=1)))
        return max(self.camera_spread, depth)

    def image_slice(self, i: int) -> slice:
        return slice(int(self.kp_offsets[i]), int(self.kp_offsets[i + 1]))

    def header(self) -> dict:
        return {
            "format": MAP_FORMAT,
            "version": MAP_VERSION,
            "scene": self.scene,
            "feature_type": self.features.feature_type,
            "features": asdict(self.features),
            "image_size": [self.intrinsics.width, self.intrinsics.height],
            "intrinsics": self.intrinsics.to_dict(),
            "counts": {"images": len(self.image_names), "points": len(self.points), "keypoints": len(self.keypoints)},
            "build": self.build,
        }

    def nearest_images(self, pose: Pose, k: int, max_view_angle_deg: float = 60.0) -> np.ndarray:
        """Indices of up to ``k`` map images nearest ``pose`` by camera centre among those whose
        viewing direction is within ``max_view_angle_deg``; if fewer pass, the rest by a combined
        score (distance in metres + angle in radians)."""
        if not len(self.image_names):
            return np.zeros(0, np.int64)
        view = quat_to_matrix(pose.quaternion)[:, 2]
        cos = np.clip(self._view_dirs @ view, -1.0, 1.0)
        angle = np.arccos(cos)
        dist = np.linalg.norm(self._centres - pose.position, axis=1)
        ok = angle <= np.radians(max_view_angle_deg)
        order = np.lexsort((dist, ~ok))  # passing ones first, each group by distance
        n_ok = int(ok.sum())
        if n_ok >= k:
            return order[:k]
        rest = np.flatnonzero(~ok)
        rest = rest[np.argsort(dist[rest] + angle[rest])]
        return np.concatenate([order[:n_ok], rest[: k - n_ok]])


def save_map(scene_map: SceneMap, path: str | Path) -> Path:
    """Write the map as one ``.npz`` file, atomically (a temporary file next to it, then replaced)."""
    path = Path(path)
    arrays = {
        "header": np.array(json.dumps(scene_map.header(), sort_keys=True)),
        "image_names": np.array(scene_map.image_names, dtype=np.str_),
        "poses": np.asarray(scene_map.poses, np.float64),
        "points": np.asarray(scene_map.points, np.float64),
        "point_errors": np.asarray(scene_map.point_errors, np.float32),
        "kp_offsets": np.asarray(scene_map.kp_offsets, np.int64),
        "keypoints": np.asarray(scene_map.keypoints, np.float32),
        "descriptors": np.asarray(scene_map.descriptors, np.uint8),
        "point_ids": np.asarray(scene_map.point_ids, np.int32),
    }
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def load_map(path: str | Path) -> SceneMap:
    """Read and check a map file; any problem is a one-line ``MapError`` naming the file."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise MapError(f"{where}: no such map file (build one with posenet-train map DATASET --out FILE)")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in MAP_ARRAYS if k not in z.files]
            if missing:
                raise MapError(f"{where}: not a scene map, missing {', '.join(missing)}")
            a = {k: z[k] for k in MAP_ARRAYS}
    except MapError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise MapError(f"{where}: not a readable map file ({reason})") from None
    try:
        header = json.loads(str(a["header"]))
    except (json.JSONDecodeError, TypeError) as exc:
        raise MapError(f"{where}: header is not JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None
    if not isinstance(header, dict) or header.get("format") != MAP_FORMAT:
        raise MapError(f"{where}: header format is not {MAP_FORMAT!r}")
    if header.get("version") != MAP_VERSION:
        raise MapError(
            f"{where}: map format version {header.get('version')!r}, this code reads {MAP_VERSION}; rebuild the map"
        )
    if not isinstance(header.get("scene"), str):
        raise MapError(f"{where}: header has no scene name")
    intr = Camera.from_dict(header.get("intrinsics") or {}, f"{where}: intrinsics", MapError)
    fdict = header.get("features") or {}
    try:
        features = FeatureConfig(str(fdict["feature_type"]), int(fdict["max_size"]), int(fdict["max_features"]))
    except (KeyError, TypeError, ValueError):
        raise MapError(f"{where}: header features need feature_type, max_size, max_features") from None
    features.check(f"{where}: features")
    n_img, n_pts, n_kp = len(a["image_names"]), len(a["points"]), len(a["keypoints"])
    checks = [
        (a["poses"].shape == (n_img, 7), f"poses shape {a['poses'].shape}, expected ({n_img}, 7)"),
        (a["points"].ndim == 2 and a["points"].shape[1:] == (3,), f"points shape {a['points'].shape}"),
        (a["point_errors"].shape == (n_pts,), f"point_errors shape {a['point_errors'].shape}"),
        (a["kp_offsets"].shape == (n_img + 1,), f"kp_offsets shape {a['kp_offsets'].shape}"),
        (a["keypoints"].ndim == 2 and a["keypoints"].shape[1:] == (2,), f"keypoints shape {a['keypoints'].shape}"),
        (a["descriptors"].shape == (n_kp, 128), f"descriptors shape {a['descriptors'].shape}"),
        (a["point_ids"].shape == (n_kp,), f"point_ids shape {a['point_ids'].shape}"),
        (a["descriptors"].dtype == np.uint8, f"descriptors dtype {a['descriptors'].dtype}, expected uint8"),
    ]
    for ok, message in checks:
        if not ok:
            raise MapError(f"{where}: {message}")
    off = a["kp_offsets"]
    if n_img and (off[0] != 0 or off[-1] != n_kp or np.any(np.diff(off) < 0)):
        raise MapError(f"{where}: kp_offsets do not split the {n_kp} keypoints")
    for name in ("poses", "points", "keypoints"):
        if not np.all(np.isfinite(a[name])):
            raise MapError(f"{where}: {name} are not all finite")
    pid = a["point_ids"]
    if n_kp and (pid.min() < -1 or pid.max() >= n_pts):
        raise MapError(f"{where}: point ids outside [-1, {n_pts})")
    if n_img and np.any(np.abs(np.linalg.norm(a["poses"][:, 3:], axis=1) - 1.0) > 1e-6):
        raise MapError(f"{where}: pose quaternions are not unit length")
    if n_pts == 0:
        raise MapError(f"{where}: the map has no 3D points")
    return SceneMap(
        scene=header["scene"],
        intrinsics=intr,
        features=features,
        image_names=[str(s) for s in a["image_names"]],
        poses=a["poses"],
        points=a["points"],
        point_errors=a["point_errors"],
        kp_offsets=off,
        keypoints=a["keypoints"],
        descriptors=a["descriptors"],
        point_ids=pid,
        build=header.get("build", {}),
    )


def check_map_scene(scene_map: SceneMap, scene: str, where: str = "map") -> None:
    """One-line refusal of a map built for another scene than the model's."""
    if scene_map.scene != scene:
        raise MapError(f"{where}: the map is of scene {scene_map.scene!r}, the model of {scene!r}")


# -- refinement ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefineConfig:
    k_images: int = 6  # map images matched against the query
    max_view_angle_deg: float = 60.0  # their viewing direction within this of the coarse one
    ratio: float = 0.8  # Lowe's ratio test
    ransac_px: float = 3.0  # inlier threshold in full-resolution pixels
    ransac_iterations: int = 1000
    ransac_confidence: float = 0.9999
    min_inliers: int = 20
    min_inlier_ratio: float = 0.0  # inliers / correspondences below this: refused
    # The refined pose within this of the coarse one: max_shift_m (map units) where set, else
    # max_shift_frac of the map's scale (SceneMap.scale: 0.91 m for make demo's map, whose cameras
    # span 6.05 m; a label-sfm map has no metres, and on a 100 m street the coarse poses are metres off).
    max_shift_m: float | None = None
    max_shift_frac: float = 0.15
    max_shift_deg: float = 15.0

    def shift_limit(self, scene_map: SceneMap) -> float:
        return self.max_shift_m if self.max_shift_m is not None else self.max_shift_frac * scene_map.scale


@dataclass(frozen=True)
class RefineTimings:
    features_ms: float
    match_ms: float
    pnp_ms: float
    total_ms: float


@dataclass(frozen=True)
class Refinement:
    """``pose`` is the refined pose when ``refined``, else the coarse pose (``reason`` says why)."""

    pose: Pose
    refined: bool
    reason: str
    inliers: int
    correspondences: int
    rms_px: float | None
    covariance: np.ndarray | None  # 6x6 (x, y, z, rotX, rotY, rotZ about the map axes), when refined
    timings: RefineTimings
    map_images: tuple[int, ...] = ()
    pnp_pose: Pose | None = None  # PnP's pose even when refused for disagreeing with the coarse one


# Why a frame was not refined, as a fixed set of kinds (the reasons themselves carry figures).
REASON_KINDS = (
    ("too few 2D-3D matches", "too few 2D-3D matches"),
    ("PnP failed", "PnP failed"),
    ("PnP RANSAC found no pose", "PnP RANSAC found no pose"),
    ("too few PnP inliers", "too few PnP inliers"),
    ("inlier ratio", "inlier ratio too low"),
    ("refined pose is", "too far from the coarse pose"),
)


def reason_kind(reason: str) -> str:
    """The kind of a ``Refinement.reason`` without its figures ("too few PnP inliers", "too far
    from the coarse pose", ...), for counting; "" for "" (refined)."""
    for prefix, kind in REASON_KINDS:
        if reason.startswith(prefix):
            return kind
    return reason.split(" (")[0]


def world_to_camera(pose: Pose) -> tuple[np.ndarray, np.ndarray]:
    """(R_cw, t_cw) of a camera-to-map pose: x_cam = R_cw @ x_map + t_cw."""
    r = quat_to_matrix(pose.quaternion).T
    return r, -r @ pose.position


def pose_from_pnp(rvec: np.ndarray, tvec: np.ndarray) -> Pose:
    """Camera-to-map pose of OpenCV's world-to-camera (rvec, tvec)."""
    r_cw, _ = cv2.Rodrigues(np.asarray(rvec, np.float64).reshape(3, 1))
    t = np.asarray(tvec, np.float64).reshape(3)
    return Pose(-r_cw.T @ t, matrix_to_quat(r_cw.T))


def reprojection_residuals(pose: Pose, k: np.ndarray, points: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """(N, 2) projected minus observed pixels; points behind the camera give inf."""
    r, t = world_to_camera(pose)
    xc = points @ r.T + t
    z = xc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = np.stack([k[0, 0] * xc[:, 0] / z + k[0, 2], k[1, 1] * xc[:, 1] / z + k[1, 2]], axis=1)
    res = uv - pixels
    res[z <= 1e-9] = np.inf
    return res


def pose_covariance(pose: Pose, k: np.ndarray, points: np.ndarray, pixels: np.ndarray) -> np.ndarray | None:
    """Gauss-Newton covariance sigma^2 (J^T J)^-1 of (position, left rotation vector about the map
    axes) from the reprojection residuals of inlier correspondences; None if not determined."""
    n = len(points)
    if n < 4:
        return None
    rot = quat_to_matrix(pose.quaternion)  # camera-to-map
    rt = rot.T
    d = points - pose.position  # X - C in the map
    xc = d @ rt.T  # R^T (X - C)
    x, y, z = xc[:, 0], xc[:, 1], xc[:, 2]
    if np.any(z <= 1e-9):
        return None
    fx, fy = k[0, 0], k[1, 1]
    dproj = np.zeros((n, 2, 3))
    dproj[:, 0, 0] = fx / z
    dproj[:, 0, 2] = -fx * x / z**2
    dproj[:, 1, 1] = fy / z
    dproj[:, 1, 2] = -fy * y / z**2
    # x_c(dp, dr) = R^T exp(-[dr]x) (X - C - dp): d/dp = -R^T, d/dr = R^T [X - C]x
    skew = np.zeros((n, 3, 3))
    skew[:, 0, 1], skew[:, 0, 2] = -d[:, 2], d[:, 1]
    skew[:, 1, 0], skew[:, 1, 2] = d[:, 2], -d[:, 0]
    skew[:, 2, 0], skew[:, 2, 1] = -d[:, 1], d[:, 0]
    dxc = np.concatenate([np.broadcast_to(-rt, (n, 3, 3)), rt @ skew], axis=2)  # (n, 3, 6)
    jac = (dproj @ dxc).reshape(2 * n, 6)
    res = reprojection_residuals(pose, k, points, pixels).reshape(-1)
    dof = 2 * n - 6
    if dof <= 0 or not np.all(np.isfinite(res)):
        return None
    sigma2 = float(res @ res) / dof
    jtj = jac.T @ jac
    if np.linalg.cond(jtj) > 1e12:
        return None
    cov = sigma2 * np.linalg.inv(jtj)
    return 0.5 * (cov + cov.T)


def _not_refined(coarse: Pose, reason: str, t0: float, tf: float, tm: float, tp: float, **kw) -> Refinement:
    end = time.perf_counter()
    timings = RefineTimings((tf - t0) * 1e3, (tm - tf) * 1e3, (tp - tm) * 1e3, (end - t0) * 1e3)
    return Refinement(
        coarse,
        False,
        reason,
        kw.pop("inliers", 0),
        kw.pop("correspondences", 0),
        kw.pop("rms_px", None),
        None,
        timings,
        **kw,
    )


def refine_pose(
    image: np.ndarray,
    intrinsics: Camera,
    coarse: Pose,
    scene_map: SceneMap,
    cfg: RefineConfig | None = None,
) -> Refinement:
    """Refine ``coarse`` (camera-to-map) for ``image`` (H, W, 3) RGB uint8 against ``scene_map``.
    Never raises on bad luck (too few matches, PnP failure, disagreement): the coarse pose comes back
    with ``refined`` False and the reason. Wrong inputs (image size vs intrinsics) raise ValueError."""
    cfg = cfg or RefineConfig()
    t0 = time.perf_counter()
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"expected an (H, W, 3) or (H, W) uint8 image, got {image.shape} {image.dtype}")
    if image.shape[:2] != (intrinsics.height, intrinsics.width):
        raise ValueError(
            f"image is {image.shape[1]}x{image.shape[0]}, the intrinsics are for {intrinsics.width}x{intrinsics.height}"
        )
    kq, dq = extract_features(image, scene_map.features)
    tf = time.perf_counter()
    images = scene_map.nearest_images(coarse, cfg.k_images, cfg.max_view_angle_deg)
    # One descriptor per 3D point seen in those images (from the nearest image that sees it), so the
    # ratio test compares different points, not two views of one point.
    slices = [scene_map.image_slice(int(i)) for i in images]
    ids = np.concatenate([scene_map.point_ids[s] for s in slices]) if slices else np.zeros(0, np.int32)
    rows = np.concatenate([np.arange(s.start, s.stop) for s in slices]) if slices else np.zeros(0, np.int64)
    seen = ids >= 0
    point_list, first = np.unique(ids[seen], return_index=True)
    m = match_descriptors(dq, scene_map.descriptors[rows[seen][first]], cfg.ratio)
    tm = time.perf_counter()
    used = tuple(int(i) for i in images)
    n_corr = len(m)
    if n_corr < max(cfg.min_inliers, 6):
        return _not_refined(
            coarse,
            f"too few 2D-3D matches ({n_corr}, need {max(cfg.min_inliers, 6)})",
            t0,
            tf,
            tm,
            tm,
            correspondences=n_corr,
            map_images=used,
        )
    pixels = kq[m[:, 0]].astype(np.float64)
    points = scene_map.points[point_list[m[:, 1]]]
    kmat = intrinsics.matrix()
    pixels = intrinsics.undistort_pixels(pixels)  # PnP and its covariance work in the ideal pinhole
    try:
        ok, rvec, tvec, inl = cv2.solvePnPRansac(
            points,
            pixels,
            kmat,
            None,
            iterationsCount=cfg.ransac_iterations,
            reprojectionError=cfg.ransac_px,
            confidence=cfg.ransac_confidence,
            flags=cv2.SOLVEPNP_AP3P,
        )
    except cv2.error as exc:
        tp = time.perf_counter()
        reason = f"PnP failed ({' '.join(str(exc).split())[:120]})"
        return _not_refined(coarse, reason, t0, tf, tm, tp, correspondences=n_corr, map_images=used)
    if not ok or inl is None or len(inl) < 4:
        tp = time.perf_counter()
        return _not_refined(coarse, "PnP RANSAC found no pose", t0, tf, tm, tp, correspondences=n_corr, map_images=used)
    inliers = inl.reshape(-1)
    for _ in range(2):  # refine on the inliers, re-collect them at the refined pose
        rvec, tvec = cv2.solvePnPRefineLM(points[inliers], pixels[inliers], kmat, None, rvec, tvec)
        pose = pose_from_pnp(rvec, tvec)
        res = reprojection_residuals(pose, kmat, points, pixels)
        err = np.linalg.norm(res, axis=1)
        new = np.flatnonzero(err <= cfg.ransac_px)
        if len(new) < 4:
            break
        inliers = new
    tp = time.perf_counter()
    pose = pose_from_pnp(rvec, tvec)
    res = reprojection_residuals(pose, kmat, points[inliers], pixels[inliers])
    rms = float(np.sqrt(np.mean(np.sum(res**2, axis=1)))) if np.all(np.isfinite(res)) else float("inf")
    n_in = len(inliers)
    shift_m = float(position_error(pose.position, coarse.position))
    shift_deg = float(rotation_error_deg(pose.quaternion, coarse.quaternion))
    common = {"inliers": n_in, "correspondences": n_corr, "rms_px": rms, "map_images": used, "pnp_pose": pose}
    if n_in < cfg.min_inliers:
        return _not_refined(coarse, f"too few PnP inliers ({n_in}, need {cfg.min_inliers})", t0, tf, tm, tp, **common)
    if n_in < cfg.min_inlier_ratio * n_corr:
        return _not_refined(
            coarse, f"inlier ratio {n_in / n_corr:.2f} below {cfg.min_inlier_ratio}", t0, tf, tm, tp, **common
        )
    limit = cfg.shift_limit(scene_map)
    if shift_m > limit or shift_deg > cfg.max_shift_deg:
        how = "" if cfg.max_shift_m is not None else f" = {cfg.max_shift_frac:g} x the map's scale"
        reason = (
            f"refined pose is {shift_m:.3g} (map units) / {shift_deg:.1f} deg from the coarse one "
            f"(limits {limit:.3g}{how} / {cfg.max_shift_deg:g} deg)"
        )
        return _not_refined(coarse, reason, t0, tf, tm, tp, **common)
    cov = pose_covariance(pose, kmat, points[inliers], pixels[inliers])
    end = time.perf_counter()
    timings = RefineTimings((tf - t0) * 1e3, (tm - tf) * 1e3, (tp - tm) * 1e3, (end - t0) * 1e3)
    return Refinement(pose, True, "", n_in, n_corr, rms, cov, timings, used, pose)
