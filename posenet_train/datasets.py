"""Data sets in one canonical layout (docs/architecture.md, "Poses") and converters from the real formats.

Canonical: a folder with ``poses.csv``, columns ``image,split,x,y,z,qw,qx,qy,qz``: camera-to-world,
OpenCV optical axes, image path relative to the CSV. Training and evaluation read nothing else.
Beside it, where the format has them, ``cameras.json``: the cameras' intrinsics (``DatasetCameras``;
docs/refinement.md, "Intrinsics"), which only refinement's map needs; a data set without it loads.

Converters (each checks what it reads and names file and line on any problem):
- 7-Scenes: ``seq-NN/frame-XXXXXX.color.png`` + ``frame-XXXXXX.pose.txt`` (4x4 camera-to-world),
  splits from ``TrainSplit.txt`` / ``TestSplit.txt`` (``sequenceN`` -> ``seq-0N``).
- Cambridge Landmarks: ``dataset_train.txt`` / ``dataset_test.txt``, 3 header lines, then
  ``seqK/frameNNNNN.png X Y Z W P Q R``: camera centre and the NVM world-to-camera quaternion.
- COLMAP text model: ``images.txt`` (world-to-camera ``qvec``, ``tvec``; centre = -R^T t).

Splits: ``train``, ``val`` and ``test``. ``val`` is for every choice made from data (calibration,
tuning); ``test`` is looked at once, for the figures. None of the three formats has a validation
split, so ``convert`` holds one out of the training sequences by time (``hold_out_val``): contiguous
blocks of consecutive frames, with a gap of dropped frames either side so no val frame is a near
duplicate of a training frame. Files written before ``val`` existed (train/test only) still load.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from posenet_ros.atomic import atomic_path
from posenet_ros.camera import Camera
from posenet_ros.geometry import Pose, matrix_to_quat, quat_canonical, quat_conjugate, quat_rotate

CSV_COLUMNS = ("image", "split", "x", "y", "z", "qw", "qx", "qy", "qz")
SPLITS = ("train", "val", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
UNIT_TOLERANCE = 1e-3  # stored quaternions are printed with ~6 digits in some data sets
# A norm this close to 1 is rounding in whoever normalized it: the quaternion is kept bit for bit, so
# normalizing is idempotent and a CSV round trip exact (dividing by a norm one ulp off 1 changes every
# component, and which ulp depends on the CPU's BLAS/SIMD kernel).
UNIT_EXACT = 1e-12
# The validation split converters hold out of the training sequences (``hold_out_val``): about this
# share of each sequence's training frames, in blocks of this many consecutive frames (shorter in a
# sequence too short for one cycle of blocks; a sequence with fewer training frames than
# VAL_MIN_BLOCK_FRAMES per block of a cycle has none), with this many training frames dropped on
# each side of a block.
VAL_FRACTION = 0.1
VAL_BLOCK_FRAMES = 50
VAL_MIN_BLOCK_FRAMES = 10
VAL_GAP_FRAMES = 5


class DatasetError(ValueError):
    """A data set file is malformed; the message names the file and line."""


@dataclass(frozen=True)
class PoseRecord:
    image: str  # relative to the data set folder
    split: str
    position: np.ndarray  # camera centre in the world, metres
    quaternion: np.ndarray  # camera-to-world (w, x, y, z), unit, w >= 0

    def pose(self) -> Pose:
        return Pose(self.position, self.quaternion)


def exact_norm(values: Iterable[float]) -> float:
    """Euclidean norm with every step correctly rounded (IEEE products, ``math.fsum``, ``math.sqrt``):
    the same bits on every CPU, unlike ``np.linalg.norm``, whose summation order and FMA use follow
    the BLAS/SIMD kernel picked for the machine (AVX2 and AVX-512 differ in the last bit)."""
    return math.sqrt(math.fsum(float(v) * float(v) for v in values))


def checked_quaternion(q: Iterable[float], where: str) -> np.ndarray:
    """A finite, unit-norm (within tolerance) quaternion, normalized and made canonical. Idempotent on
    every CPU: a quaternion that is already unit to rounding (``UNIT_EXACT``) comes back unchanged."""
    q = np.asarray(list(q), dtype=np.float64)
    if q.shape != (4,) or not np.all(np.isfinite(q)):
        raise DatasetError(f"{where}: quaternion is not 4 finite numbers: {q.tolist()}")
    norm = exact_norm(q)
    if abs(norm - 1.0) > UNIT_TOLERANCE:
        raise DatasetError(f"{where}: quaternion is not unit length (norm {norm:.6f})")
    return quat_canonical(q if abs(norm - 1.0) <= UNIT_EXACT else q / norm)


def checked_floats(fields: list[str], n: int, where: str) -> np.ndarray:
    if len(fields) != n:
        raise DatasetError(f"{where}: expected {n} numbers, got {len(fields)}")
    try:
        values = np.array([float(f) for f in fields])
    except ValueError:
        raise DatasetError(f"{where}: not a number in {' '.join(fields)!r}") from None
    if not np.all(np.isfinite(values)):
        raise DatasetError(f"{where}: non-finite value in {' '.join(fields)!r}")
    return values


def read_text(path: Path) -> str:
    """UTF-8 whatever the locale says (a UTF-8 BOM, as Windows editors write, is dropped); bytes that
    are not text are a DatasetError naming the file, not a UnicodeDecodeError."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None


# -- canonical format --------------------------------------------------------------------------


def write_poses_csv(path: str | Path, records: list[PoseRecord]) -> Path:
    """Write atomically what ``read_poses_csv`` will return: the quaternion through the reader's own
    ``checked_quaternion`` (a fixed point of it), every float in repr, so a round trip is exact."""
    path = Path(path)
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for i, r in enumerate(records):
            q = checked_quaternion(r.quaternion, f"{path}: record {i} ({r.image})")
            w.writerow([r.image, r.split, *map(repr, map(float, r.position)), *map(repr, map(float, q))])
    return path


def read_poses_csv(path: str | Path, check_images: bool = True) -> list[PoseRecord]:
    """Read and validate ``poses.csv`` (or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "poses.csv"
    if not path.is_file():
        raise DatasetError(f"{path}: no such file (a canonical data set needs poses.csv)")
    records = []
    with io.StringIO(read_text(path), newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != CSV_COLUMNS:
            raise DatasetError(f"{path}:1: header must be {','.join(CSV_COLUMNS)}, got {header}")
        for line_no, row in enumerate(reader, start=2):
            where = f"{path}:{line_no}"
            if not row:
                continue
            if len(row) != len(CSV_COLUMNS):
                raise DatasetError(f"{where}: expected {len(CSV_COLUMNS)} columns, got {len(row)}")
            image, split = row[0].strip(), row[1].strip()
            if split not in SPLITS:
                raise DatasetError(f"{where}: split must be one of {SPLITS}, got {split!r}")
            if check_images and not (path.parent / image).is_file():
                raise DatasetError(f"{where}: image {image!r} not found next to the CSV")
            pos = checked_floats(row[2:5], 3, where)
            q = checked_quaternion(checked_floats(row[5:9], 4, where), where)
            records.append(PoseRecord(image, split, pos, q))
    if not records:
        raise DatasetError(f"{path}: no poses")
    return records


def split_records(records: list[PoseRecord], split: str) -> list[PoseRecord]:
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {SPLITS}, got {split!r}")
    chosen = [r for r in records if r.split == split]
    if not chosen:
        raise DatasetError(f"data set has no {split!r} images")
    return chosen


def split_counts(records: list[PoseRecord]) -> dict[str, int]:
    """Frames per split, every split named (0 where there are none)."""
    return {s: sum(r.split == s for r in records) for s in SPLITS}


# -- camera intrinsics (cameras.json) ----------------------------------------------------------

CAMERAS_FILE = "cameras.json"
CAMERAS_FORMAT = "posenet_train.cameras"
CAMERAS_VERSION = 1
# 7-Scenes' Kinect colour camera as the 7-Scenes literature uses it (the data set's page gives only
# the depth camera's; PoseNet-era and structure-based papers, hloc's 7-Scenes pipeline among them,
# take fx = fy = 585, principal point (320, 240) at 640x480, no distortion). The data set's images
# are all 640x480; a resized copy gets intrinsics of the wrong size, which ``build_map`` refuses.
SEVEN_SCENES_CAMERA_SOURCE = "7-Scenes: the Kinect colour intrinsics commonly used (fx = fy = 585, cx = 320, cy = 240)"


@dataclass(frozen=True)
class DatasetCameras:
    """The cameras of a data set: ``images`` maps image-path prefixes (relative to poses.csv: a
    folder ending in ``/`` or one image's path; the longest match wins) to a camera's name; empty
    when one camera took every image."""

    cameras: dict[str, Camera]
    images: dict[str, str] = field(default_factory=dict)
    source: str = ""  # where the numbers came from, for people

    def camera_for(self, image: str) -> Camera | None:
        if not self.images:
            return next(iter(self.cameras.values())) if len(self.cameras) == 1 else None
        keys = [k for k in self.images if image == k or (k.endswith("/") and image.startswith(k))]
        return self.cameras[self.images[max(keys, key=len)]] if keys else None

    def single(self) -> Camera | None:
        """The camera every image shares, or None where there are different ones."""
        distinct = set(self.cameras.values())
        return next(iter(distinct)) if len(distinct) == 1 else None

    @staticmethod
    def per_image(cameras: dict[str, Camera], source: str, images: Iterable[str] = ()) -> DatasetCameras | None:
        """From one camera per image path: one shared camera where they agree (and every one of
        ``images``, the data set's, has one), else a camera per distinct one, keyed by folder where
        all images directly in a folder share it (and none of ``images`` there lacks one)."""
        if not cameras:
            return None
        distinct = list(dict.fromkeys(cameras.values()))
        without = [i for i in images if i not in cameras]
        if len(distinct) == 1 and not without:
            return DatasetCameras({"camera": distinct[0]}, {}, source)
        names = {cam: f"camera{i + 1}" for i, cam in enumerate(distinct)}
        by_folder: dict[str, set[Camera | None]] = {}
        for image, cam in [*cameras.items(), *((i, None) for i in without)]:
            by_folder.setdefault(os.path.dirname(image), set()).add(cam)
        prefixes = {}
        for image, cam in cameras.items():
            folder = os.path.dirname(image)
            if len(by_folder[folder]) == 1 and folder:
                prefixes[folder + "/"] = names[cam]
            else:
                prefixes[image] = names[cam]
        return DatasetCameras({n: c for c, n in names.items()}, prefixes, source)


def write_cameras_json(folder: str | Path, cameras: DatasetCameras) -> Path:
    """``folder/cameras.json``, atomically; ``read_cameras_json`` returns the same."""
    path = Path(folder) / CAMERAS_FILE
    doc: dict = {
        "format": CAMERAS_FORMAT,
        "version": CAMERAS_VERSION,
        "pixel_convention": "opencv: the top-left pixel's centre is (0, 0)",
        "source": cameras.source,
        "cameras": {name: cam.to_dict() for name, cam in cameras.cameras.items()},
    }
    if cameras.images:
        doc["images"] = cameras.images
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    return path


def read_cameras_json(folder: str | Path) -> DatasetCameras | None:
    """The data set's cameras, or None for a data set without ``cameras.json`` (it still loads; only
    refinement needs intrinsics). Bad content is one DatasetError line naming the file."""
    path = Path(folder) / CAMERAS_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from None
    if not isinstance(doc, dict) or doc.get("format") != CAMERAS_FORMAT:
        raise DatasetError(f"{path}: not a cameras file (format must be {CAMERAS_FORMAT!r})")
    if doc.get("version") != CAMERAS_VERSION:
        raise DatasetError(f"{path}: version {doc.get('version')!r} not supported (this code reads {CAMERAS_VERSION})")
    raw = doc.get("cameras")
    if not isinstance(raw, dict) or not raw:
        raise DatasetError(f"{path}: 'cameras' must be a non-empty object of named cameras")
    cameras = {str(name): Camera.from_dict(cam, f"{path}: camera {name!r}", DatasetError) for name, cam in raw.items()}
    images = doc.get("images", {})
    if not isinstance(images, dict) or not all(isinstance(v, str) for v in images.values()):
        raise DatasetError(f"{path}: 'images' must map image-path prefixes to camera names")
    unknown = sorted({v for v in images.values() if v not in cameras})
    if unknown:
        raise DatasetError(f"{path}: 'images' names cameras not in 'cameras': {', '.join(unknown)}")
    if len(cameras) > 1 and not images:
        raise DatasetError(f"{path}: {len(cameras)} cameras but no 'images' saying which image is whose")
    return DatasetCameras(cameras, dict(images), str(doc.get("source", "")))


def dataset_camera(folder: str | Path, cameras: DatasetCameras | None = None) -> Camera | None:
    """The one camera of a data set folder: ``cameras.json``'s where every image shares it, else the
    synthetic renderer's ``scene.json`` (width, height and the 3x3 matrix); None where neither says
    (or the images have different cameras). A broken file is one DatasetError line. ``cameras``:
    the folder's ``cameras.json`` where the caller has read it already."""
    folder = Path(folder)
    cameras = cameras if cameras is not None else read_cameras_json(folder)
    if cameras is not None:
        return cameras.single()
    path = folder / "scene.json"
    if not path.is_file():
        return None
    try:
        cam = json.loads(read_text(path))["camera"]
        k = np.asarray(cam["intrinsics"], dtype=np.float64)
        width, height = int(cam["width"]), int(cam["height"])
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: camera intrinsics unreadable ({exc!s})") from None
    if k.shape != (3, 3):
        raise DatasetError(f"{path}: camera intrinsics are not a 3x3 matrix")
    camera = Camera(width, height, float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]))
    return camera.check(str(path), DatasetError)


# -- the validation split ------------------------------------------------------------------------


def hold_out_val(
    ticks: list[int], fraction: float, block: int, gap_frames: int, min_block_frames: int = VAL_MIN_BLOCK_FRAMES
) -> list[str]:
    """``'val'``, ``'gap'`` (to drop) or ``'train'`` for the training frames of one sequence at
    ``ticks`` (ascending: frame indices, or stamps). Time is cut into blocks of ``block`` ticks and
    every k-th block (k = round(1 / fraction)), starting with the middle one of the first k, is val;
    a sequence shorter than k blocks gets shorter blocks. A sequence of fewer than
    k * ``min_block_frames`` training frames has no val (its blocks would be a few frames). The
    ``gap_frames`` training frames on either side of each val block are ``'gap'``: neighbouring
    frames are near-duplicates, and a val frame next to a training frame would measure memory, not
    generalization. Deterministic."""
    if not 0 <= fraction < 1:
        raise ValueError(f"val fraction must be in [0, 1), got {fraction}")
    if block < 1 or min_block_frames < 1 or gap_frames < 0:
        raise ValueError(
            f"val blocks need block >= 1, min_block_frames >= 1, gap >= 0; "
            f"got {block}, {min_block_frames}, {gap_frames}"
        )
    if any(b < a for a, b in itertools.pairwise(ticks)):
        raise ValueError("hold_out_val needs ticks in ascending order")
    out = ["train"] * len(ticks)
    if fraction == 0 or not ticks:
        return out
    k = max(2, round(1 / fraction))
    if len(ticks) < k * min_block_frames:
        return out
    size = min(block, -(-(ticks[-1] - ticks[0] + 1) // k))
    val = [((t - ticks[0]) // size) % k == k // 2 for t in ticks]
    for i, is_val in enumerate(val):
        if is_val:
            out[i] = "val"
        elif any(val[max(0, i - gap_frames) : i + gap_frames + 1]):
            out[i] = "gap"
    return out


def natural_key(name: str) -> list[object]:
    """Sort key that orders ``frame2`` before ``frame10`` (digit runs compared as numbers)."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


@dataclass(frozen=True)
class ValHoldOut:
    records: list[PoseRecord]  # what is kept, in the input order
    dropped_gap: int  # training frames dropped next to a val block


def hold_out_val_records(
    records: list[PoseRecord],
    fraction: float = VAL_FRACTION,
    block_frames: int = VAL_BLOCK_FRAMES,
    gap_frames: int = VAL_GAP_FRAMES,
    min_block_frames: int = VAL_MIN_BLOCK_FRAMES,
) -> ValHoldOut:
    """Hold out ``val`` blocks (``hold_out_val``) of each sequence's training frames, a sequence being
    an image folder, its frames in (natural) name order; the tick of a frame is its index among all
    the sequence's frames, so frames of other splits interleaved with the training ones (COLMAP's
    every-8th test image) count as time passing. A data set that already has val rows is returned as
    it is (the format's own validation split wins)."""
    if any(r.split == "val" for r in records):
        return ValHoldOut(list(records), 0)
    by_sequence: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_sequence.setdefault(str(Path(r.image).parent), []).append(i)
    label: dict[int, str] = {}
    for members in by_sequence.values():
        ordered = sorted(members, key=lambda i: natural_key(Path(records[i].image).name))
        train = [(tick, i) for tick, i in enumerate(ordered) if records[i].split == "train"]
        splits = hold_out_val([t for t, _ in train], fraction, block_frames, gap_frames, min_block_frames)
        label.update({i: s for (_, i), s in zip(train, splits, strict=True)})
    kept = [
        r if label.get(i, r.split) == r.split else PoseRecord(r.image, "val", r.position, r.quaternion)
        for i, r in enumerate(records)
        if label.get(i) != "gap"
    ]
    return ValHoldOut(kept, len(records) - len(kept))


# -- 7-Scenes ----------------------------------------------------------------------------------


def read_seven_scenes(root: Path) -> list[PoseRecord]:
    records = []
    for split, fname in (("train", "TrainSplit.txt"), ("test", "TestSplit.txt")):
        split_file = root / fname
        if not split_file.is_file():
            raise DatasetError(f"{split_file}: missing (7-Scenes lists its sequences there)")
        for line_no, line in enumerate(read_text(split_file).splitlines(), start=1):
            if not line.strip():
                continue
            m = re.fullmatch(r"\s*sequence(\d+)\s*", line)
            if not m:
                raise DatasetError(f"{split_file}:{line_no}: expected 'sequenceN', got {line.strip()!r}")
            seq = root / f"seq-{int(m.group(1)):02d}"
            if not seq.is_dir():
                raise DatasetError(f"{split_file}:{line_no}: folder {seq.name} does not exist")
            records += _seven_scenes_sequence(root, seq, split)
    return records


def _seven_scenes_sequence(root: Path, seq: Path, split: str) -> list[PoseRecord]:
    records = []
    pose_files = sorted(seq.glob("frame-*.pose.txt"))
    if not pose_files:
        raise DatasetError(f"{seq}: no frame-XXXXXX.pose.txt files")
    for pose_file in pose_files:
        stem = pose_file.name[: -len(".pose.txt")]
        image = next(
            (seq / f"{stem}.color{ext}" for ext in IMAGE_EXTENSIONS if (seq / f"{stem}.color{ext}").is_file()), None
        )
        if image is None:
            raise DatasetError(f"{pose_file}: no image {stem}.color.<png|jpg|...> next to it")
        rows = [ln.split() for ln in read_text(pose_file).splitlines() if ln.strip()]
        if len(rows) != 4:
            raise DatasetError(f"{pose_file}: expected a 4x4 matrix, got {len(rows)} rows")
        m = np.stack([checked_floats(r, 4, f"{pose_file}:{i}") for i, r in enumerate(rows, start=1)])
        if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-6):
            raise DatasetError(f"{pose_file}:4: last row must be 0 0 0 1, got {m[3].tolist()}")
        rot = m[:3, :3]
        if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-3) or np.linalg.det(rot) < 0:
            raise DatasetError(f"{pose_file}: rotation block is not a rotation matrix")
        records.append(PoseRecord(str(image), split, m[:3, 3], matrix_to_quat(rot)))
    return records


# -- Cambridge Landmarks -----------------------------------------------------------------------


def read_cambridge(root: Path) -> list[PoseRecord]:
    records = []
    for split, fname in (("train", "dataset_train.txt"), ("test", "dataset_test.txt")):
        path = root / fname
        if not path.is_file():
            raise DatasetError(f"{path}: missing (Cambridge Landmarks lists its images there)")
        lines = read_text(path).splitlines()
        for line_no, line in enumerate(lines[3:], start=4):
            fields = line.split()
            if not fields:
                continue
            where = f"{path}:{line_no}"
            if len(fields) != 8:
                raise DatasetError(f"{where}: expected 'image X Y Z W P Q R', got {len(fields)} fields")
            if not (root / fields[0]).is_file():
                raise DatasetError(f"{where}: image {fields[0]!r} not found")
            centre = checked_floats(fields[1:4], 3, where)
            q_world_to_cam = checked_quaternion(checked_floats(fields[4:8], 4, where), where)
            # NVM stores the world-to-camera rotation; our pose is camera-to-world, its inverse.
            records.append(PoseRecord(str(root / fields[0]), split, centre, quat_conjugate(q_world_to_cam)))
    return records


# -- COLMAP ------------------------------------------------------------------------------------


def _colmap_images_txt(path: Path) -> Path:
    if path.is_dir():
        for candidate in (path / "images.txt", path / "sparse" / "0" / "images.txt"):
            if candidate.is_file():
                return candidate
    if not path.is_file():
        raise DatasetError(f"{path}: no COLMAP images.txt")
    return path


def _colmap_images_dir(images_txt: Path) -> Path | None:
    root = images_txt.parent
    return next(
        (d for d in (root / "images", root.parent / "images", root.parent.parent / "images") if d.is_dir()), None
    )


def _colmap_entries(path: Path) -> list[tuple[str, np.ndarray, np.ndarray, str, str]]:
    """(name, centre, camera-to-world quaternion, camera id, where) per image of ``images.txt``."""
    lines = read_text(path).splitlines()
    entries = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            i += 1
            continue
        where = f"{path}:{i + 1}"
        fields = line.split(maxsplit=9)
        if len(fields) != 10:
            raise DatasetError(f"{where}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME'")
        q_world_to_cam = checked_quaternion(checked_floats(fields[1:5], 4, where), where)
        t = checked_floats(fields[5:8], 3, where)
        # Camera-to-world is the inverse: rotation q^-1, centre -R^T t.
        q_cam_to_world = quat_conjugate(q_world_to_cam)
        centre = -quat_rotate(q_cam_to_world, t)
        entries.append((fields[9].strip(), centre, quat_canonical(q_cam_to_world), fields[8], where))
        i += 2  # the POINTS2D line follows every image line (possibly empty)
    if not entries:
        raise DatasetError(f"{path}: no images")
    return sorted(entries, key=lambda e: e[0])


def read_colmap_images(path: Path, test_every: int = 8) -> list[PoseRecord]:
    """COLMAP ``images.txt``: two lines per image, the first ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID
    NAME``; the second (2D points) is skipped. Every ``test_every``-th image by name is test."""
    path = _colmap_images_txt(path)
    entries = _colmap_entries(path)
    images_dir = _colmap_images_dir(path)
    records = []
    for k, (name, centre, q, _, where) in enumerate(entries):
        if images_dir is None or not (images_dir / name).is_file():
            raise DatasetError(f"{where}: image {name!r} not found in an images/ folder next to the model")
        split = "test" if test_every > 0 and k % test_every == test_every - 1 else "train"
        records.append(PoseRecord(str(images_dir / name), split, centre, q))
    return records


# COLMAP camera models this reads, and how their parameters map to (fx, fy, cx, cy, k1, k2, p1, p2).
COLMAP_MODELS = {
    "SIMPLE_PINHOLE": (3, lambda f, cx, cy: (f, f, cx, cy)),
    "PINHOLE": (4, lambda fx, fy, cx, cy: (fx, fy, cx, cy)),
    "SIMPLE_RADIAL": (4, lambda f, cx, cy, k: (f, f, cx, cy, k)),
    "RADIAL": (5, lambda f, cx, cy, k1, k2: (f, f, cx, cy, k1, k2)),
    "OPENCV": (8, lambda fx, fy, cx, cy, k1, k2, p1, p2: (fx, fy, cx, cy, k1, k2, p1, p2)),
}


def read_colmap_cameras(path: Path) -> dict[str, Camera | str]:
    """COLMAP ``cameras.txt`` (``CAMERA_ID MODEL WIDTH HEIGHT PARAMS...``): per camera id its
    ``Camera``, or the model's name where it is one this does not read (fisheye, FULL_OPENCV, ...).
    COLMAP's principal point counts the top-left pixel's centre as (0.5, 0.5): moved by half a pixel
    to OpenCV's convention."""
    cameras: dict[str, Camera | str] = {}
    for line_no, line in enumerate(read_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        where = f"{path}:{line_no}"
        if len(fields) < 4 or not fields[2].isdigit() or not fields[3].isdigit():
            raise DatasetError(f"{where}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...'")
        model = fields[1].upper()
        if model not in COLMAP_MODELS:
            cameras[fields[0]] = model
            continue
        params = checked_floats(fields[4:], COLMAP_MODELS[model][0], f"{where} ({model} parameters)")
        cameras[fields[0]] = colmap_camera(model, int(fields[2]), int(fields[3]), params, where)
    return cameras


def colmap_camera(model: str, width: int, height: int, params: list[float], where: str) -> Camera:
    """A COLMAP camera (one of ``COLMAP_MODELS``, its parameters) in OpenCV's conventions: the
    principal point moved by half a pixel, the distortion as OpenCV's coefficients."""
    n, to_opencv = COLMAP_MODELS[model]
    if len(params) != n:
        raise DatasetError(f"{where}: {model} has {n} parameters, got {len(params)}")
    values = to_opencv(*(float(v) for v in params))
    fx, fy, cx, cy = values[:4]
    if fx <= 0 or fy <= 0 or width < 1 or height < 1:
        raise DatasetError(f"{where}: size and focal lengths must be positive")
    return Camera(width, height, fx, fy, cx - 0.5, cy - 0.5, tuple(values[4:]))


def colmap_cameras(src: Path, records: list[PoseRecord]) -> tuple[dict[str, Camera], str]:
    images_txt = _colmap_images_txt(src)
    cameras_txt = images_txt.with_name("cameras.txt")
    if not cameras_txt.is_file():
        return {}, f"no cameras.txt next to {images_txt.name}"
    cameras = read_colmap_cameras(cameras_txt)
    images_dir = _colmap_images_dir(images_txt)
    by_image: dict[str, Camera] = {}
    for name, _, _, camera_id, where in _colmap_entries(images_txt):
        cam = cameras.get(camera_id)
        if cam is None:
            raise DatasetError(f"{where}: camera {camera_id} is not in {cameras_txt}")
        if isinstance(cam, str):
            models = ", ".join(COLMAP_MODELS)
            return {}, f"camera {camera_id} in {cameras_txt} is a {cam} camera (read: {models})"
        by_image[str(images_dir / name)] = cam
    return by_image, f"COLMAP {cameras_txt}"


def seven_scenes_cameras(src: Path, records: list[PoseRecord]) -> tuple[dict[str, Camera], str]:
    camera = Camera(640, 480, 585.0, 585.0, 320.0, 240.0)
    return {r.image: camera for r in records}, SEVEN_SCENES_CAMERA_SOURCE


NVM_FILE = "reconstruction.nvm"


def read_nvm_cameras(path: Path) -> dict[str, tuple[float, float]]:
    """VisualSFM's NVM_V3 cameras: image path without its extension -> (focal length in pixels,
    radial distortion). Cambridge's NVM names the original .jpg frames its dataset_*.txt list as .png."""
    lines = read_text(path).splitlines()
    if not lines or not lines[0].startswith("NVM_V3"):
        raise DatasetError(f"{path}: not an NVM_V3 file")
    rows = [(n, line) for n, line in enumerate(lines[1:], start=2) if line.strip()]
    if not rows:
        raise DatasetError(f"{path}: no camera count")
    line_no, line = rows[0]
    try:
        count = int(line.split()[0])
    except ValueError:
        raise DatasetError(f"{path}:{line_no}: expected the camera count, got {line.strip()[:40]!r}") from None
    if count > len(rows) - 1:
        raise DatasetError(f"{path}: {count} cameras announced, {len(rows) - 1} lines follow")
    cameras = {}
    for line_no, line in rows[1 : count + 1]:
        fields = line.split()
        if len(fields) < 10:
            raise DatasetError(f"{path}:{line_no}: expected 'image focal qw qx qy qz cx cy cz radial 0'")
        focal, radial = checked_floats([fields[1], fields[9]], 2, f"{path}:{line_no}")
        if focal <= 0:
            raise DatasetError(f"{path}:{line_no}: focal length must be positive, got {focal}")
        cameras[os.path.splitext(fields[0].replace("\\", "/"))[0]] = (focal, radial)
    return cameras


def cambridge_cameras(src: Path, records: list[PoseRecord]) -> tuple[dict[str, Camera], str]:
    """Per image from ``reconstruction.nvm``: its focal length, the principal point at the image
    centre (NVM has none), and VisualSFM's radial term (undistorted = distorted * (1 + r |x_d|^2),
    pixels) as OpenCV's k1 to first order (k1 = -r f^2). The size is the image file's."""
    from PIL import Image

    nvm = (src if src.is_dir() else src.parent) / NVM_FILE
    if not nvm.is_file():
        return {}, f"dataset_train.txt / dataset_test.txt carry none, and there is no {NVM_FILE}"
    focals = read_nvm_cameras(nvm)
    cameras: dict[str, Camera] = {}
    for r in records:
        known = focals.get(os.path.splitext(os.path.relpath(r.image, nvm.parent))[0].replace(os.sep, "/"))
        if known is None:
            continue
        with Image.open(r.image) as im:
            width, height = im.size
        f, radial = known
        cameras[r.image] = Camera(width, height, f, f, (width - 1) / 2, (height - 1) / 2, (-radial * f * f, 0, 0, 0))
    if not cameras:
        return {}, f"{NVM_FILE} names none of the images in dataset_train.txt / dataset_test.txt"
    missing = len(records) - len(cameras)
    note = f" ({missing} images it does not name have none)" if missing else ""
    return cameras, f"Cambridge {NVM_FILE}: focal length per image, principal point at the centre{note}"


READERS = {"7scenes": read_seven_scenes, "cambridge": read_cambridge, "colmap": read_colmap_images}
# Per format: the intrinsics per image (absolute image path -> Camera; empty where the format has
# none) and where they came from, or why there are none.
CAMERA_READERS = {"7scenes": seven_scenes_cameras, "cambridge": cambridge_cameras, "colmap": colmap_cameras}


@dataclass(frozen=True)
class ConvertReport:
    path: Path  # the poses.csv written
    read: dict[str, int]  # frames per split as the format gave them
    kept: dict[str, int]  # frames per split written
    dropped_gap: int  # training frames dropped next to a held-out val block
    intrinsics: str = ""  # what was written to cameras.json, or why nothing was

    def lines(self, src: str | Path) -> list[str]:
        read = ", ".join(f"{n} {s}" for s, n in self.read.items() if n or s != "val")
        kept = ", ".join(f"{n} {s}" for s, n in self.kept.items())
        out = [f"read {sum(self.read.values())} frames from {src} ({read})", f"kept {kept}"]
        if self.dropped_gap:
            out.append(
                f"dropped {self.dropped_gap} training frames beside the val blocks (a gap of "
                f"{VAL_GAP_FRAMES} frames each side, so no val frame neighbours a training frame)"
            )
        if self.intrinsics:
            out.append(self.intrinsics)
        return out


def convert(
    src: str | Path,
    fmt: str,
    out: str | Path,
    val_fraction: float = VAL_FRACTION,
    val_block_frames: int = VAL_BLOCK_FRAMES,
) -> Path:
    """Read ``src`` in ``fmt`` and write ``out/poses.csv`` (``convert_dataset`` without the report)."""
    return convert_dataset(src, fmt, out, val_fraction, val_block_frames).path


def convert_dataset(
    src: str | Path,
    fmt: str,
    out: str | Path,
    val_fraction: float = VAL_FRACTION,
    val_block_frames: int = VAL_BLOCK_FRAMES,
) -> ConvertReport:
    """Read ``src`` in ``fmt``, hold out a val split of the training sequences (``hold_out_val_records``;
    ``val_fraction`` 0: none) and write ``out/poses.csv``. Images are not copied: the CSV points at
    the originals by relative path. Readers return absolute image paths."""
    if fmt not in READERS:
        raise DatasetError(f"unknown format {fmt!r}; use one of {', '.join(READERS)}")
    src, out = Path(src).resolve(), Path(out).resolve()
    if not src.exists():
        raise DatasetError(f"{src}: no such file or folder")
    records = READERS[fmt](src)
    held = hold_out_val_records(records, val_fraction, val_block_frames)
    out.mkdir(parents=True, exist_ok=True)
    rebased = [PoseRecord(os.path.relpath(r.image, out), r.split, r.position, r.quaternion) for r in held.records]
    path = write_poses_csv(out / "poses.csv", rebased)
    per_image, source = CAMERA_READERS[fmt](src, records)
    kept = {os.path.relpath(r.image, out): per_image[r.image] for r in held.records if r.image in per_image}
    cameras = DatasetCameras.per_image(kept, source, (os.path.relpath(r.image, out) for r in held.records))
    note = write_dataset_cameras(out, cameras, source)
    return ConvertReport(path, split_counts(records), split_counts(held.records), held.dropped_gap, note)


def write_dataset_cameras(out: Path, cameras: DatasetCameras | None, why_none: str) -> str:
    """Write ``out/cameras.json`` (or remove a stale one where there are no intrinsics); the line
    saying what was written, or why nothing was and what that means."""
    path = Path(out) / CAMERAS_FILE
    if cameras is None:
        path.unlink(missing_ok=True)
        return (
            f"no camera intrinsics ({why_none}): no {CAMERAS_FILE}; poses train as they are, "
            "refinement (posenet-train map) will need the intrinsics"
        )
    write_cameras_json(out, cameras)
    one = cameras.single()
    what = (
        f"{one.width}x{one.height}, fx {one.fx:.6g}, fy {one.fy:.6g}, cx {one.cx:.6g}, cy {one.cy:.6g}"
        + (", with distortion" if one.distortion else "")
        if one
        else f"{len(cameras.cameras)} cameras"
    )
    return f"camera intrinsics ({what}) from {cameras.source} -> {path}"


def positions(records: list[PoseRecord]) -> np.ndarray:
    return np.stack([r.position for r in records])


def quaternions(records: list[PoseRecord]) -> np.ndarray:
    return np.stack([r.quaternion for r in records])


def camera_extent(records: list[PoseRecord]) -> tuple[float, float, float]:
    p = positions(records)
    return tuple(max(float(x), 1e-3) for x in p.max(0) - p.min(0))
