"""Deterministic synthetic scenes with exact ground truth: a textured room with furniture boxes (for
parallax), smooth hand-held-like camera trajectories, ray-cast rendering in NumPy.

Geometry is a set of axis-aligned rectangles (box faces), so a ray-plane test per face is exact and
vectorizes over all pixels at once; a 320x240 frame renders in a few tens of milliseconds on one core.
World frame: metres, z up (ROS ``map``). Camera: OpenCV optical axes (x right, y down, z forward);
poses are camera-to-world, as everywhere in this project (docs/architecture.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from posenet_ros.geometry import Pose, matrix_to_quat, quat_to_matrix
from posenet_train.datasets import PoseRecord, write_poses_csv

TEXTURE_SIZE = 256
PHOTO_FILES = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "hubble_deep_field.jpg",
    "retina.jpg", "ihc.png", "brick.png", "grass.png", "gravel.png", "camera.png", "moon.png", "page.png",
    "coins.png", "color.png",
)  # fmt: skip
# Camera optical axes expressed in a body frame (x forward, y left, z up): z_cam = x_body,
# x_cam = -y_body, y_cam = -z_body. Columns are the camera axes.
OPTICAL_IN_BODY = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class Face:
    """An axis-aligned rectangle: ``axis`` is its normal axis (0, 1, 2) at ``coord``; it spans
    ``lo``..``hi`` on the other two axes (in increasing axis order). The texture covers it once."""

    axis: int
    coord: float
    lo: tuple[float, float]
    hi: tuple[float, float]
    texture: int
    shade: float = 1.0


@dataclass
class Scene:
    name: str
    faces: list[Face]
    textures: np.ndarray  # (T, S, S, 3) float32 RGB in [0, 255]
    bounds: tuple[tuple[float, float, float], tuple[float, float, float]]  # geometry bounding box
    walk_lo: tuple[float, float, float]  # camera centres stay inside this box
    walk_hi: tuple[float, float, float]

    @property
    def extent(self) -> tuple[float, float, float]:
        lo, hi = self.bounds
        return tuple(float(h - lo_) for lo_, h in zip(lo, hi, strict=True))


@dataclass(frozen=True)
class Camera:
    width: int = 320
    height: int = 240
    hfov_deg: float = 65.0

    @property
    def fx(self) -> float:
        return 0.5 * self.width / np.tan(np.radians(self.hfov_deg) / 2)

    def intrinsics(self) -> np.ndarray:
        f = self.fx
        return np.array([[f, 0.0, (self.width - 1) / 2], [0.0, f, (self.height - 1) / 2], [0.0, 0.0, 1.0]])


# -- textures ----------------------------------------------------------------------------------


def photo_textures() -> list[np.ndarray]:
    """The room's photographs (``PHOTO_FILES``), RGB uint8, resized to TEXTURE_SIZE squared."""
    return skimage_pictures(PHOTO_FILES)


def skimage_pictures(names: tuple[str, ...]) -> list[np.ndarray]:
    """Photographs shipped inside scikit-image's wheel (read from its data folder: never a download),
    RGB uint8, resized to TEXTURE_SIZE squared."""
    import skimage

    folder = Path(skimage.__file__).parent / "data"
    out = []
    for name in names:
        img = cv2.imread(str(folder / name), cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(f"scikit-image sample image {folder / name} is missing")
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        out.append(cv2.resize(img, (TEXTURE_SIZE, TEXTURE_SIZE), interpolation=cv2.INTER_AREA))
    return out


def tint(texture: np.ndarray, rgb: tuple[float, float, float]) -> np.ndarray:
    return np.clip(texture.astype(np.float32) * np.asarray(rgb, dtype=np.float32), 0, 255)


# -- scenes ------------------------------------------------------------------------------------


def box_faces(lo: tuple[float, float, float], hi: tuple[float, float, float], textures: list[int]) -> list[Face]:
    """The five visible faces of a box standing on the floor (no bottom): -x, +x, -y, +y, top."""
    faces = []
    shades = (0.8, 0.9, 0.85, 0.95, 1.05)
    sides = ((0, lo[0]), (0, hi[0]), (1, lo[1]), (1, hi[1]), (2, hi[2]))
    for (axis, coord), tex, shade in zip(sides, textures, shades, strict=True):
        others = [a for a in range(3) if a != axis]
        faces.append(Face(axis, coord, (lo[others[0]], lo[others[1]]), (hi[others[0]], hi[others[1]]), tex, shade))
    return faces


def room_scene(seed: int = 0) -> Scene:
    """A 10 m x 8 m x 3 m room: each wall split into two photo panels, a procedural floor, a ceiling,
    and furniture boxes along the walls that occlude the walls differently from every viewpoint."""
    rng = np.random.default_rng(seed)
    photos = photo_textures()
    order = rng.permutation(len(photos))
    textures = [tint(photos[i], rng.uniform(0.8, 1.2, 3)) for i in order]
    floor = np.kron(np.indices((8, 8)).sum(0) % 2, np.ones((32, 32)))[..., None] * np.array([60.0, 50.0, 40.0])
    floor += 100 + rng.normal(0, 12, floor.shape)
    textures.append(np.clip(floor, 0, 255))
    ceiling = np.linspace(170, 230, TEXTURE_SIZE)[:, None, None] * np.ones((1, TEXTURE_SIZE, 3))
    textures.append(ceiling)
    floor_tex, ceiling_tex = len(textures) - 2, len(textures) - 1
    sx, sy, sz = 10.0, 8.0, 3.0
    faces = [
        Face(2, 0.0, (0.0, 0.0), (sx, sy), floor_tex, 0.9),
        Face(2, sz, (0.0, 0.0), (sx, sy), ceiling_tex, 1.0),
    ]
    t = iter(range(len(order)))
    # Walls as two panels each, so no two viewing directions see the same picture.
    for axis, coord, span in ((0, 0.0, sy), (0, sx, sy), (1, 0.0, sx), (1, sy, sx)):
        half = span / 2
        for a, b in ((0.0, half), (half, span)):
            faces.append(Face(axis, coord, (a, 0.0), (b, sz), next(t), 1.0))
    furniture = [
        ((0.4, 0.5, 0.0), (1.6, 2.0, 1.1)),
        ((4.0, 0.3, 0.0), (5.5, 1.0, 1.6)),
        ((8.6, 5.5, 0.0), (9.6, 7.4, 0.8)),
        ((2.5, 7.0, 0.0), (3.5, 7.7, 2.0)),
        ((8.4, 0.4, 0.0), (9.5, 1.4, 1.3)),
    ]
    for lo, hi in furniture:
        faces += box_faces(lo, hi, [int(x) for x in rng.integers(0, len(order), 5)])
    return Scene(
        name="synthetic_room",
        faces=faces,
        textures=np.stack(textures).astype(np.float32),
        bounds=((0.0, 0.0, 0.0), (sx, sy, sz)),
        walk_lo=(2.2, 2.0, 1.1),
        walk_hi=(7.8, 6.0, 1.9),
    )


# -- rendering ---------------------------------------------------------------------------------


class Renderer:
    """Ray caster for one scene and camera; per-pixel ray directions are computed once."""

    def __init__(self, scene: Scene, camera: Camera) -> None:
        self.scene = scene
        self.camera = camera
        k_inv = np.linalg.inv(camera.intrinsics())
        v, u = np.mgrid[0 : camera.height, 0 : camera.width]
        pix = np.stack([u.ravel(), v.ravel(), np.ones(u.size)], 0).astype(np.float64)
        self._rays_cam = (k_inv @ pix).T  # (N, 3), z = 1
        self._faces = FaceArrays.of(scene.faces)

    def render(self, pose: Pose) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 image (H, W, 3) and z-depth (H, W) in metres (inf where nothing was hit)."""
        cam = self.camera
        rot = quat_to_matrix(pose.quaternion)
        dirs = self._rays_cam @ rot.T  # world directions, not unit: t is then the optical z-depth
        best_t, best_face, best_uv = cast_rays(self._faces, pose.position, dirs)
        rgb = sample_textures(self.scene.textures, self._faces, best_face, best_uv)
        image = np.clip(rgb, 0, 255).astype(np.uint8).reshape(cam.height, cam.width, 3)
        return image, best_t.reshape(cam.height, cam.width)


@dataclass(frozen=True)
class FaceArrays:
    """A face list as arrays, for the ray caster."""

    axis: np.ndarray
    coord: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    tex: np.ndarray
    shade: np.ndarray
    others: np.ndarray

    @staticmethod
    def of(faces: list[Face]) -> FaceArrays:
        return FaceArrays(
            axis=np.array([x.axis for x in faces]),
            coord=np.array([x.coord for x in faces]),
            lo=np.array([x.lo for x in faces]),
            hi=np.array([x.hi for x in faces]),
            tex=np.array([x.texture for x in faces]),
            shade=np.array([x.shade for x in faces], dtype=np.float32),
            others=np.array([[a for a in range(3) if a != x.axis] for x in faces]),
        )


def cast_rays(f: FaceArrays, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit per ray (``dirs`` (N, 3), world): parameter t (the optical z-depth where the
    rays have z = 1 in the camera), face index (-1: none) and the face coordinates in [0, 1]^2."""
    n = len(dirs)
    best_t = np.full(n, np.inf)
    best_face = np.full(n, -1)
    best_uv = np.zeros((n, 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(len(f.axis)):
            a = f.axis[i]
            t = (f.coord[i] - origin[a]) / dirs[:, a]
            o0, o1 = f.others[i]
            p0 = origin[o0] + t * dirs[:, o0]
            p1 = origin[o1] + t * dirs[:, o1]
            lo, hi = f.lo[i], f.hi[i]
            hit = (t > 1e-6) & (t < best_t) & (p0 >= lo[0]) & (p0 <= hi[0]) & (p1 >= lo[1]) & (p1 <= hi[1])
            best_t = np.where(hit, t, best_t)
            best_face = np.where(hit, i, best_face)
            best_uv[hit, 0] = (p0[hit] - lo[0]) / (hi[0] - lo[0])
            best_uv[hit, 1] = (p1[hit] - lo[1]) / (hi[1] - lo[1])
    return best_t, best_face, best_uv


def sample_textures(textures: np.ndarray, f: FaceArrays, face: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear texture lookup times the face's shade, float32 (N, 3); pixels that hit nothing are
    black."""
    hit = face >= 0
    out = np.zeros((len(face), 3), dtype=np.float32)
    fh = face[hit]
    s = textures.shape[1]
    # Texture rows run top-down while the face's second coordinate (usually z) runs upwards.
    x = np.clip(uv[hit, 0] * (s - 1), 0, s - 1)
    y = np.clip((1.0 - uv[hit, 1]) * (s - 1), 0, s - 1)
    x0 = np.minimum(x.astype(np.int64), s - 2)
    y0 = np.minimum(y.astype(np.int64), s - 2)
    wx = (x - x0)[:, None].astype(np.float32)
    wy = (y - y0)[:, None].astype(np.float32)
    t = f.tex[fh]
    top = textures[t, y0, x0] * (1 - wx) + textures[t, y0, x0 + 1] * wx
    bottom = textures[t, y0 + 1, x0] * (1 - wx) + textures[t, y0 + 1, x0 + 1] * wx
    out[hit] = (top * (1 - wy) + bottom * wy) * f.shade[fh][:, None]
    return out


def project(pose: Pose, camera: Camera, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (N, 2) and optical depth (N,) of world points seen from ``pose``."""
    in_cam = pose.inverse().transform_points(np.atleast_2d(points))
    uvw = in_cam @ camera.intrinsics().T
    return uvw[:, :2] / uvw[:, 2:3], in_cam[:, 2]


# -- trajectories ------------------------------------------------------------------------------


def body_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-to-world rotation of an optical camera whose body has this yaw (about world z),
    pitch (positive looks up) and roll."""
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(-pitch), np.sin(-pitch), np.cos(roll), np.sin(roll)
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    return rz @ ry @ rx @ OPTICAL_IN_BODY


def smooth_trajectory(scene: Scene, n_frames: int, seed: int, heading_spread_deg: float = 0.0) -> list[Pose]:
    """A hand-held-like walk: sums of random sinusoids keep position and heading smooth while
    covering the walkable box. The heading turns through all directions over the sequence, or, with
    ``heading_spread_deg`` > 0, sways within that many degrees of +x (a camera facing one end of
    the room, as in a facade data set)."""
    return trajectory_curve(scene, seed, heading_spread_deg)(np.linspace(0.0, 1.0, n_frames))


def trajectory_curve(scene: Scene, seed: int, heading_spread_deg: float = 0.0):
    """``smooth_trajectory``'s walk as a function of time t in [0, 1] (an array; the sequence's
    frames are at ``linspace(0, 1, n_frames)``), so sub-frame poses (motion blur) lie on it."""
    rng = np.random.default_rng(seed)
    lo, hi = np.asarray(scene.walk_lo), np.asarray(scene.walk_hi)

    def wave(n_terms: int, max_freq: float):
        freqs = rng.uniform(0.5, max_freq, n_terms)
        phases = rng.uniform(0, 2 * np.pi, n_terms)
        amps = rng.uniform(0.5, 1.0, n_terms)

        def at(t: np.ndarray) -> np.ndarray:
            w = (amps[:, None] * np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None])).sum(0)
            return w / amps.sum()  # in [-1, 1]

        return at

    pos_waves = [wave(3, 4), wave(3, 4), wave(2, 3)]
    turns = rng.choice([-1.0, 1.0]) * rng.uniform(1.0, 2.0)
    yaw0 = rng.uniform(0, 2 * np.pi)
    yaw_wave = wave(3, 6)
    spread_wave = wave(3, 4) if heading_spread_deg > 0 else None
    pitch_wave = wave(2, 5)
    roll_wave = wave(2, 5)

    def poses(t: np.ndarray) -> list[Pose]:
        t = np.asarray(t, dtype=np.float64)
        pos = (lo + hi) / 2 + (hi - lo) / 2 * np.stack([w(t) for w in pos_waves], axis=1)
        if spread_wave is not None:
            yaw = np.radians(heading_spread_deg) * spread_wave(t)
        else:
            yaw = yaw0 + 2 * np.pi * turns * t + 0.6 * yaw_wave(t)
        pitch = np.radians(12.0) * pitch_wave(t)
        roll = np.radians(4.0) * roll_wave(t)
        return [Pose(pos[i], matrix_to_quat(body_rotation(yaw[i], pitch[i], roll[i]))) for i in range(len(t))]

    return poses


# -- writing data sets -------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthConfig:
    scene_seed: int = 0
    train_sequences: int = 4
    test_sequences: int = 2
    # Validation trajectories: rendered after the test ones (folders and seeds of train and test do
    # not move with this count, so adding val leaves every train and test frame as it was).
    val_sequences: int = 0
    frames_per_sequence: int = 250
    width: int = 320
    height: int = 240
    hfov_deg: float = 65.0
    seed: int = 0
    image_ext: str = "png"
    heading_spread_deg: float = 0.0  # 0: headings turn all the way round; else sway within +-spread of +x
    seven_scenes: bool = False

    def validate(self) -> None:
        """One-line refusals (worded as the command's options) of settings that would render nothing
        or record nonsense."""
        checks = [
            (self.train_sequences >= 0, f"--train-sequences must be >= 0, got {self.train_sequences}"),
            (self.test_sequences >= 0, f"--test-sequences must be >= 0, got {self.test_sequences}"),
            (self.val_sequences >= 0, f"--val-sequences must be >= 0, got {self.val_sequences}"),
            (
                self.train_sequences + self.test_sequences + self.val_sequences >= 1,
                "give at least one train, test or val sequence",
            ),
            # Trajectory seeds: train seed*1000 + i, val + 250 + i, test + 500 + i; none may repeat.
            (
                self.train_sequences <= 250 and self.val_sequences <= 250 and self.test_sequences <= 500,
                "at most 250 train, 250 val and 500 test sequences (their trajectory seeds would repeat)",
            ),
            (self.frames_per_sequence >= 2, f"--frames must be >= 2 per sequence, got {self.frames_per_sequence}"),
            (
                self.width >= 16 and self.height >= 16,
                f"--width and --height must be >= 16, got {self.width}x{self.height}",
            ),
            (0 < self.hfov_deg < 180, f"--hfov must be in (0, 180) degrees, got {self.hfov_deg}"),
            (
                0 <= self.heading_spread_deg <= 180,
                f"--heading-spread must be in [0, 180], got {self.heading_spread_deg}",
            ),
            (self.image_ext in ("png", "jpg"), f"image_ext must be png or jpg, got {self.image_ext!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def scene_description(scene: Scene, camera: Camera) -> dict:
    """What ``scene.json`` says of the scene and the camera (``datasets.dataset_camera`` reads it)."""
    return {
        "scene": scene.name,
        "bounds": scene.bounds,
        "extent": scene.extent,
        "largest_dimension": max(scene.extent),
        "camera": {**asdict(camera), "intrinsics": camera.intrinsics().tolist()},
    }


def render_dataset(cfg: SynthConfig, out: Path, progress: bool = True) -> list[PoseRecord]:
    """Render train, test and val sequences into ``out`` in the canonical layout (``poses.csv``), plus
    a ``scene.json`` describing the scene, and optionally the 7-Scenes layout next to it (which has
    no validation list: val sequences are in neither split file)."""
    from tqdm import tqdm

    cfg.validate()
    out = Path(out)
    scene = room_scene(cfg.scene_seed)
    camera = Camera(cfg.width, cfg.height, cfg.hfov_deg)
    renderer = Renderer(scene, camera)
    sequences = [("train", cfg.seed * 1000 + i) for i in range(cfg.train_sequences)]
    sequences += [("test", cfg.seed * 1000 + 500 + i) for i in range(cfg.test_sequences)]
    sequences += [("val", cfg.seed * 1000 + 250 + i) for i in range(cfg.val_sequences)]
    records: list[PoseRecord] = []
    total = len(sequences) * cfg.frames_per_sequence
    bar = tqdm(total=total, desc="render", unit="frame", disable=not progress)
    for k, (split, seq_seed) in enumerate(sequences, start=1):
        seq_dir = out / f"seq-{k:02d}"
        seq_dir.mkdir(parents=True, exist_ok=True)
        for j, pose in enumerate(smooth_trajectory(scene, cfg.frames_per_sequence, seq_seed, cfg.heading_spread_deg)):
            image, _ = renderer.render(pose)
            name = f"seq-{k:02d}/frame-{j:06d}.color.{cfg.image_ext}"
            cv2.imwrite(str(out / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            if cfg.seven_scenes:
                np.savetxt(seq_dir / f"frame-{j:06d}.pose.txt", pose.matrix(), fmt="%.10e")
            records.append(PoseRecord(name, split, pose.position, pose.quaternion))
            bar.update()
    bar.close()
    write_poses_csv(out / "poses.csv", records)
    if cfg.seven_scenes:
        for split, fname in (("train", "TrainSplit.txt"), ("test", "TestSplit.txt")):
            ids = [k for k, (s, _) in enumerate(sequences, start=1) if s == split]
            (out / fname).write_text("".join(f"sequence{k}\n" for k in ids))
    info = {**scene_description(scene, camera), "config": asdict(cfg)}
    (out / "scene.json").write_text(json.dumps(info, indent=2))
    return records


# -- the benchmark -----------------------------------------------------------------------------

BENCHMARK_FOLDERS = ("train", "test-clean", "test-perturbed", "test-unseen")


@dataclass(frozen=True)
class BenchmarkConfig:
    """``posenet-train synth --preset room-benchmark``: training data with the nuisances of real
    recordings and three test sets that each ask one question (docs/training.md, "A synthetic
    benchmark"). Sizes are the demo model's (Makefile ``demo-model``)."""

    name: str = "room-benchmark"
    scene_seed: int = 0
    seed: int = 0
    train_sequences: int = 16
    val_sequences: int = 2
    test_sequences: int = 2  # per test set
    frames_per_sequence: int = 200
    width: int = 256
    height: int = 192
    hfov_deg: float = 65.0
    heading_spread_deg: float = 50.0
    supersample: int = 2  # samples per pixel along each axis, everywhere (anti-aliasing)
    label_noise_m: float = 0.015  # RMS of the train labels' position error (norm)
    label_noise_deg: float = 0.5  # RMS of the train labels' rotation error (angle)
    # The unseen region: camera centres with y >= unseen_from_y (to the walk box's end); train,
    # val, clean and perturbed test trajectories keep y <= seen_to_y. Both None: nothing is
    # withheld, every set walks the whole box and there is no test-unseen (preset room-demo).
    seen_to_y: float | None = 4.8
    unseen_from_y: float | None = 5.2

    @property
    def folders(self) -> tuple[str, ...]:
        return BENCHMARK_FOLDERS if self.seen_to_y is not None else BENCHMARK_FOLDERS[:3]

    def validate(self) -> None:
        SynthConfig(
            scene_seed=self.scene_seed,
            train_sequences=self.train_sequences,
            test_sequences=self.test_sequences,
            val_sequences=self.val_sequences,
            frames_per_sequence=self.frames_per_sequence,
            width=self.width,
            height=self.height,
            hfov_deg=self.hfov_deg,
            seed=self.seed,
            heading_spread_deg=self.heading_spread_deg,
        ).validate()
        checks = [
            (self.train_sequences >= 1, f"--train-sequences must be >= 1 for a benchmark, got {self.train_sequences}"),
            (self.test_sequences >= 1, f"--test-sequences must be >= 1 for a benchmark, got {self.test_sequences}"),
            (self.test_sequences <= 100, "at most 100 sequences per test set (their seeds would repeat)"),
            (1 <= self.supersample <= 4, f"supersample must be 1..4, got {self.supersample}"),
            (self.label_noise_m >= 0 and self.label_noise_deg >= 0, "label noise must be >= 0"),
            ((self.seen_to_y is None) == (self.unseen_from_y is None), "seen_to_y and unseen_from_y: both or neither"),
            (
                None in (self.seen_to_y, self.unseen_from_y) or self.seen_to_y < self.unseen_from_y,
                f"the unseen region must start after the seen one: {self.seen_to_y} < {self.unseen_from_y}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


PRESETS = {
    "room-benchmark": BenchmarkConfig(),
    # The bundled demo model's training data: the benchmark's nuisances and label noise over the
    # whole walk box (its train trajectories are plain synth's, as make demo's test ones are).
    "room-demo": BenchmarkConfig(name="room-demo", seen_to_y=None, unseen_from_y=None),
}


@dataclass(frozen=True)
class SequenceJob:
    folder: str  # one of BENCHMARK_FOLDERS
    index: int  # seq-NN in its folder
    split: str
    trajectory_seed: int
    nuisance_seed: int
    ranges: str  # "clean", "training" or "perturbed" (posenet_train.perturb)
    walk: tuple[tuple[float, float, float], tuple[float, float, float]]
    label_noise: bool


def benchmark_jobs(cfg: BenchmarkConfig, scene: Scene) -> list[SequenceJob]:
    """Every sequence of the benchmark. Seeds: trajectories as ``synth``'s (train seed*1000 + i, val
    + 250 + i, test + 500 + i; unseen + 700 + i); the clean and perturbed test sets share their
    trajectories (paired frames), the perturbed ones' nuisances have seeds of their own (+ 600 + i)."""
    base = cfg.seed * 1000
    lo, hi = scene.walk_lo, scene.walk_hi
    seen = (lo, hi) if cfg.seen_to_y is None else (lo, (hi[0], cfg.seen_to_y, hi[2]))
    unseen = (lo, hi) if cfg.unseen_from_y is None else ((lo[0], cfg.unseen_from_y, lo[2]), hi)
    jobs = [
        SequenceJob("train", i + 1, "train", base + i, base + i, "training", seen, True)
        for i in range(cfg.train_sequences)
    ]
    jobs += [
        SequenceJob(
            "train", cfg.train_sequences + i + 1, "val", base + 250 + i, base + 250 + i, "training", seen, False
        )
        for i in range(cfg.val_sequences)
    ]
    for folder, ranges, walk, traj, nuis in (
        ("test-clean", "clean", seen, 500, 500),
        ("test-perturbed", "perturbed", seen, 500, 600),
        ("test-unseen", "clean", unseen, 700, 700),
    ):
        if folder not in cfg.folders:
            continue
        jobs += [
            SequenceJob(folder, i + 1, "test", base + traj + i, base + nuis + i, ranges, walk, False)
            for i in range(cfg.test_sequences)
        ]
    return jobs


_SCENES: dict[int, Scene] = {}


def _scene(seed: int) -> Scene:
    if seed not in _SCENES:
        _SCENES[seed] = room_scene(seed)
    return _SCENES[seed]


def render_sequence(cfg: BenchmarkConfig, job: SequenceJob, out: Path) -> tuple[list[PoseRecord], dict]:
    """One benchmark sequence into ``out/job.folder/seq-NN``: its records (train labels with label
    noise) and what was drawn for it."""
    from dataclasses import replace

    from posenet_train import perturb

    scene = replace(_scene(cfg.scene_seed), walk_lo=job.walk[0], walk_hi=job.walk[1])
    camera = Camera(cfg.width, cfg.height, cfg.hfov_deg)
    ranges = {"clean": perturb.CLEAN, "training": perturb.TRAINING, "perturbed": perturb.PERTURBED}[job.ranges]
    curve = trajectory_curve(scene, job.trajectory_seed, cfg.heading_spread_deg)
    poses = smooth_trajectory(scene, cfg.frames_per_sequence, job.trajectory_seed, cfg.heading_spread_deg)
    seen = perturb.most_seen_panels(scene, poses, cfg.hfov_deg) if ranges.posters else None
    nuisance = replace(perturb.draw_nuisance(ranges, job.nuisance_seed, scene, seen), supersample=cfg.supersample)
    renderer = perturb.PerturbedRenderer(scene, camera, nuisance, job.nuisance_seed, curve, cfg.frames_per_sequence)
    label_rng = np.random.default_rng([job.trajectory_seed, 4])
    seq = f"seq-{job.index:02d}"
    (out / job.folder / seq).mkdir(parents=True, exist_ok=True)
    records = []
    for j, pose in enumerate(poses):
        image = renderer.render(pose, j)
        name = f"{seq}/frame-{j:06d}.color.png"
        cv2.imwrite(str(out / job.folder / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        label = pose
        if job.label_noise and (cfg.label_noise_m > 0 or cfg.label_noise_deg > 0):
            label = perturb.noisy_label(pose, cfg.label_noise_m, cfg.label_noise_deg, label_rng)
        records.append(PoseRecord(name, job.split, label.position, label.quaternion))
    drawn = {"sequence": seq, "split": job.split, "ranges": job.ranges, **asdict(job), **asdict(nuisance)}
    return records, drawn


def _render_job(args: tuple[BenchmarkConfig, SequenceJob, Path]) -> tuple[SequenceJob, list[PoseRecord], dict]:
    cfg, job, out = args
    records, drawn = render_sequence(cfg, job, out)
    return job, records, drawn


def render_benchmark(
    cfg: BenchmarkConfig, out: Path, jobs: int = 0, progress: bool = True, folders: list[str] | None = None
) -> dict[str, list[PoseRecord]]:
    """The benchmark into ``out``: ``train`` (train and val splits) and the test-only sets
    ``test-clean``, ``test-perturbed`` and ``test-unseen``, each a canonical data set (poses.csv,
    cameras.json, scene.json), plus ``benchmark.json``. ``jobs`` processes (0: one per CPU)."""
    import os
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    from posenet_train import perturb
    from posenet_train.datasets import DatasetCameras, write_cameras_json

    cfg.validate()
    folders = list(folders or cfg.folders)  # ``folders``: only these (make demo-model renders two)
    unknown = [f for f in folders if f not in cfg.folders]
    if unknown:
        raise ValueError(f"{cfg.name} has no folder {', '.join(unknown)}; its folders are {', '.join(cfg.folders)}")
    out = Path(out)
    scene = _scene(cfg.scene_seed)
    camera = Camera(cfg.width, cfg.height, cfg.hfov_deg)
    all_jobs = [j for j in benchmark_jobs(cfg, scene) if j.folder in folders]
    workers = min(jobs or os.cpu_count() or 1, len(all_jobs))
    results: dict[SequenceJob, tuple[list[PoseRecord], dict]] = {}
    bar = tqdm(total=len(all_jobs), desc=f"render {cfg.name}", unit="sequence", disable=not progress)
    tasks = [(cfg, job, out) for job in all_jobs]
    if workers <= 1:
        for task in tasks:
            job, records, drawn = _render_job(task)
            results[job] = (records, drawn)
            bar.update()
    else:
        with ProcessPoolExecutor(workers) as pool:
            for job, records, drawn in pool.map(_render_job, tasks):
                results[job] = (records, drawn)
                bar.update()
    bar.close()
    written: dict[str, list[PoseRecord]] = {}
    for folder in folders:
        mine = [j for j in all_jobs if j.folder == folder]
        records = [r for j in mine for r in results[j][0]]
        write_poses_csv(out / folder / "poses.csv", records)
        lenses = {}
        for j in mine:
            drawn = results[j][1]
            lens = perturb.Nuisance(k1=drawn["k1"], k2=drawn["k2"]).lens(camera)
            lenses |= {r.image: lens for r in results[j][0]}
        source = f"synthetic room ({cfg.name}): pinhole {camera.hfov_deg:g} deg, OpenCV radial distortion as rendered"
        write_cameras_json(out / folder, DatasetCameras.per_image(lenses, source))
        info = {
            **scene_description(scene, camera),
            "benchmark": asdict(cfg),
            "sequences": [results[j][1] for j in mine],
        }
        (out / folder / "scene.json").write_text(json.dumps(info, indent=2))
        written[folder] = records
    summary = {
        "preset": cfg.name,
        "config": asdict(cfg),
        "folders": {f: {"frames": len(r), "splits": sorted({x.split for x in r})} for f, r in written.items()},
        "unseen_region": None
        if cfg.seen_to_y is None
        else {"y_from": cfg.unseen_from_y, "training_y_to": cfg.seen_to_y},
    }
    (out / "benchmark.json").write_text(json.dumps(summary, indent=2))
    return written
