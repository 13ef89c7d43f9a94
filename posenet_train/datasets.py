"""Data sets in one canonical layout (docs/architecture.md, "Poses") and converters from the real formats.

Canonical: a folder with ``poses.csv``, columns ``image,split,x,y,z,qw,qx,qy,qz``: camera-to-world,
OpenCV optical axes, image path relative to the CSV. Training and evaluation read nothing else.

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
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from posenet_ros.atomic import atomic_path
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


def read_colmap_images(path: Path, test_every: int = 8) -> list[PoseRecord]:
    """COLMAP ``images.txt``: two lines per image, the first ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID
    NAME``; the second (2D points) is skipped. Every ``test_every``-th image by name is test."""
    if path.is_dir():
        for candidate in (path / "images.txt", path / "sparse" / "0" / "images.txt"):
            if candidate.is_file():
                path = candidate
                break
    if not path.is_file():
        raise DatasetError(f"{path}: no COLMAP images.txt")
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
        entries.append((fields[9].strip(), centre, quat_canonical(q_cam_to_world), where))
        i += 2  # the POINTS2D line follows every image line (possibly empty)
    if not entries:
        raise DatasetError(f"{path}: no images")
    entries.sort(key=lambda e: e[0])
    root = path.parent
    images_dir = next(
        (d for d in (root / "images", root.parent / "images", root.parent.parent / "images") if d.is_dir()), None
    )
    records = []
    for k, (name, centre, q, where) in enumerate(entries):
        if images_dir is None or not (images_dir / name).is_file():
            raise DatasetError(f"{where}: image {name!r} not found in an images/ folder next to the model")
        split = "test" if test_every > 0 and k % test_every == test_every - 1 else "train"
        records.append(PoseRecord(str(images_dir / name), split, centre, q))
    return records


READERS = {"7scenes": read_seven_scenes, "cambridge": read_cambridge, "colmap": read_colmap_images}


@dataclass(frozen=True)
class ConvertReport:
    path: Path  # the poses.csv written
    read: dict[str, int]  # frames per split as the format gave them
    kept: dict[str, int]  # frames per split written
    dropped_gap: int  # training frames dropped next to a held-out val block

    def lines(self, src: str | Path) -> list[str]:
        read = ", ".join(f"{n} {s}" for s, n in self.read.items() if n or s != "val")
        kept = ", ".join(f"{n} {s}" for s, n in self.kept.items())
        out = [f"read {sum(self.read.values())} frames from {src} ({read})", f"kept {kept}"]
        if self.dropped_gap:
            out.append(
                f"dropped {self.dropped_gap} training frames beside the val blocks (a gap of "
                f"{VAL_GAP_FRAMES} frames each side, so no val frame neighbours a training frame)"
            )
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
    return ConvertReport(path, split_counts(records), split_counts(held.records), held.dropped_gap)


def positions(records: list[PoseRecord]) -> np.ndarray:
    return np.stack([r.position for r in records])


def quaternions(records: list[PoseRecord]) -> np.ndarray:
    return np.stack([r.quaternion for r in records])


def camera_extent(records: list[PoseRecord]) -> tuple[float, float, float]:
    p = positions(records)
    return tuple(max(float(x), 1e-3) for x in p.max(0) - p.min(0))
