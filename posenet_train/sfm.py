"""``posenet-train label-sfm``: camera poses for unlabelled video by structure from motion, the way the
PoseNet paper labelled Cambridge Landmarks.

pycolmap (COLMAP's Python bindings, CPU build from PyPI) extracts SIFT features, matches them
(sequentially along a video, exhaustively for a small unordered set) and runs incremental mapping.
The largest reconstruction's world-to-camera poses become camera-to-world poses in the canonical
layout. SfM has no metric scale and an arbitrary frame: ``--scale`` fixes the scale, ``--align-to``
fits a similarity (Umeyama) to known positions of the same images and reports its residual.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from posenet_ros.bagio import header_stamp_ns, open_bag, pick_image_topic, read_messages
from posenet_ros.camera import Camera
from posenet_ros.geometry import Pose, matrix_to_quat, quat_multiply, quat_unit, umeyama_similarity
from posenet_ros.image_codec import decode
from posenet_train.bags import time_block_splits, to_bgr
from posenet_train.datasets import (
    COLMAP_MODELS,
    DatasetCameras,
    DatasetError,
    PoseRecord,
    colmap_camera,
    read_poses_csv,
    write_dataset_cameras,
    write_poses_csv,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MATCHERS = ("auto", "sequential", "exhaustive")
EXHAUSTIVE_UP_TO = 60  # images; above this, pairs grow quadratically and video order is the better cue


class SfmError(RuntimeError):
    """Structure from motion could not produce poses; one line."""


@dataclass(frozen=True)
class SfmConfig:
    source: Path  # a folder of images (file-name order is time order) or a bag
    out: Path
    image_topic: str | None = None
    every: int = 1
    matcher: str = "auto"
    camera_model: str = "SIMPLE_RADIAL"
    scale: float | None = None
    align_to: Path | None = None  # poses.csv with known poses of (some of) the same image names
    test_fraction: float = 0.2
    block_frames: int = 20  # the train/test split assigns whole blocks of consecutive frames
    threads: int = -1


@dataclass(frozen=True)
class SfmResult:
    records: list[PoseRecord]
    images: int
    registered: int
    alignment_rms_m: float | None
    intrinsics: str = ""  # what was written to cameras.json, or why nothing was


def collect_images(cfg: SfmConfig) -> tuple[list[str], bool]:
    """Copy or extract the frames into OUT/images; returns their names in time order and whether
    they come from a video (a bag, or a long folder)."""
    images_dir = Path(cfg.out) / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    src = Path(cfg.source)
    names: list[str] = []
    if (
        src.is_dir()
        and not (src / "metadata.yaml").exists()
        and not any(src.glob("*.db3"))
        and not any(src.glob("*.mcap"))
    ):
        files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:: cfg.every]
        if not files:
            raise SfmError(f"{src}: no .png/.jpg images")
        for p in files:
            shutil.copy2(p, images_dir / p.name)
            names.append(p.name)
        return names, len(names) > EXHAUSTIVE_UP_TO
    with open_bag(src) as reader:
        topic = pick_image_topic(reader, cfg.image_topic)
        for i, m in enumerate(read_messages(reader, [topic])):
            if i % cfg.every or m.msg is None:
                continue
            try:
                image, encoding = decode(m.msg)
            except ValueError:
                continue
            name = f"{header_stamp_ns(m.msg)}.png"
            cv2.imwrite(str(images_dir / name), to_bgr(image, encoding))
            names.append(name)
    if len(names) < 3:
        raise SfmError(f"{src}: {len(names)} usable frames; structure from motion needs many more")
    return names, True


def run_colmap(cfg: SfmConfig, video: bool) -> tuple[dict[str, Pose], Camera | None, str]:
    """Camera-to-world pose per image name from the largest reconstruction, and its camera (one:
    ``CameraMode.SINGLE``) in OpenCV's conventions, or None and why (a model this cannot read)."""
    import pycolmap

    work = Path(cfg.out) / "sfm"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    database, images = work / "database.db", Path(cfg.out) / "images"
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = cfg.camera_model
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = cfg.threads
    pycolmap.extract_features(
        database,
        images,
        camera_mode=pycolmap.CameraMode.SINGLE,
        reader_options=reader,
        extraction_options=extraction,
        device=pycolmap.Device.cpu,
    )
    matcher = cfg.matcher if cfg.matcher != "auto" else ("sequential" if video else "exhaustive")
    if matcher == "sequential":
        pycolmap.match_sequential(database, device=pycolmap.Device.cpu)
    else:
        pycolmap.match_exhaustive(database, device=pycolmap.Device.cpu)
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = cfg.threads
    models = pycolmap.incremental_mapping(database, images, work / "models", options=options)
    if not models:
        raise SfmError("incremental mapping registered no images (too little texture or overlap?)")
    largest = max(models.values(), key=lambda r: r.num_reg_images())
    poses = {}
    for image in largest.images.values():
        if not image.has_pose:
            continue
        cam_from_world = image.cam_from_world().matrix()  # 3x4 [R | t], x_cam = R x_world + t
        rot, t = cam_from_world[:, :3], cam_from_world[:, 3]
        poses[image.name] = Pose(-rot.T @ t, matrix_to_quat(rot.T))
    cams = list(largest.cameras.values())
    model = cams[0].model.name if len(cams) == 1 else ""
    if model not in COLMAP_MODELS:
        return poses, None, f"the reconstruction has {len(cams)} cameras of models {[c.model.name for c in cams]}"
    cam = cams[0]
    where = f"label-sfm: the reconstruction's {model} camera"
    return poses, colmap_camera(model, cam.width, cam.height, list(cam.params), where), f"label-sfm ({where})"


def align(poses: dict[str, Pose], scale: float | None, align_to: Path | None) -> tuple[dict[str, Pose], float | None]:
    """Apply ``scale``, or a similarity fitted to the known positions in ``align_to`` (matched by
    file name); returns the poses and the RMS position residual of the fit."""
    if scale is not None:
        if not scale > 0:
            raise ValueError(f"--scale must be > 0, got {scale}")
        return {n: Pose(scale * p.position, p.quaternion) for n, p in poses.items()}, None
    if align_to is None:
        return poses, None
    known = {Path(r.image).name: r for r in read_poses_csv(align_to, check_images=False)}
    shared = sorted(n for n in poses if n in known)
    if len(shared) < 3:
        raise SfmError(f"only {len(shared)} reconstructed images have a pose in {align_to}; alignment needs 3")
    src = np.array([poses[n].position for n in shared])
    dst = np.array([known[n].position for n in shared])
    s, rot, t = umeyama_similarity(src, dst)
    q_rot = matrix_to_quat(rot)
    aligned = {
        n: Pose(s * rot @ p.position + t, quat_unit(quat_multiply(q_rot, p.quaternion))) for n, p in poses.items()
    }
    residual = np.array([aligned[n].position for n in shared]) - dst
    return aligned, float(np.sqrt((residual**2).sum(1).mean()))


def label_sfm(cfg: SfmConfig) -> SfmResult:
    if cfg.matcher not in MATCHERS:
        raise ValueError(f"matcher must be one of {', '.join(MATCHERS)}, got {cfg.matcher!r}")
    if cfg.every < 1:
        raise ValueError(f"--every must be >= 1, got {cfg.every}")
    names, video = collect_images(cfg)
    reconstructed, camera, camera_source = run_colmap(cfg, video)
    poses, rms = align(reconstructed, cfg.scale, cfg.align_to)
    ordered = [n for n in names if n in poses]
    if not ordered:
        raise SfmError("no image was registered")
    splits = time_block_splits([i * 1_000_000_000 for i in range(len(ordered))], cfg.test_fraction, cfg.block_frames)
    records = [
        PoseRecord(f"images/{n}", split, poses[n].position, poses[n].quaternion)
        for n, split in zip(ordered, splits, strict=True)
    ]
    try:
        write_poses_csv(Path(cfg.out) / "poses.csv", records)
    except DatasetError as exc:
        raise SfmError(str(exc)) from None
    # The intrinsics SfM estimated (refinement's map needs them; alignment changes no pixel).
    cameras = DatasetCameras({"camera": camera}, {}, camera_source) if camera is not None else None
    note = write_dataset_cameras(Path(cfg.out), cameras, camera_source)
    return SfmResult(records, len(names), len(ordered), rms, note)
