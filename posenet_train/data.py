"""Training inputs: decoded-once image cache, the paper's augmentation and position normalization.

Images are decoded with OpenCV and resized to the contract's shortest side once, then cached next to
the data set (``.cache/``), so an epoch never re-decodes full-size photos. The cache is keyed by
each file's name, size and modification time (ns) as well as the resize settings, so a folder that
``synth`` or ``convert`` rewrote is decoded again instead of pairing the old pixels with new poses.
Every random choice of a sample is drawn from a generator seeded by (seed, epoch, index): batches
are the same whatever the process count or a resume, which is what makes ``--resume`` exact.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from posenet_ros.atomic import atomic_path
from posenet_ros.contract import Preprocessing
from posenet_ros.preprocess import normalization_affine, resize_shortest_side
from posenet_train.datasets import DatasetError, PoseRecord, positions, quaternions


@dataclass(frozen=True)
class PositionNormalization:
    """network_xyz = (position - offset) / scale; the contract stores it to undo at inference."""

    offset: tuple[float, float, float]
    scale: float

    @staticmethod
    def fit(records: list[PoseRecord]) -> PositionNormalization:
        p = positions(records)
        # One isotropic scale keeps the metric shape of the scene (errors stay comparable per axis).
        scale = max(float(np.abs(p - p.mean(0)).max()), 1e-3)
        return PositionNormalization(tuple(float(x) for x in p.mean(0)), scale)

    def apply(self, p: np.ndarray) -> np.ndarray:
        return (p - np.asarray(self.offset)) / self.scale

    def undo(self, p: np.ndarray) -> np.ndarray:
        return p * self.scale + np.asarray(self.offset)


def load_resized(path: Path, spec: Preprocessing) -> np.ndarray:
    """RGB uint8, the whole frame resized by the shared rule (``resize_shortest_side``, which the
    node's CPU and torch paths reproduce unrounded); crops are cut from it."""
    data = np.fromfile(path, dtype=np.uint8) if path.is_file() else None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data is not None and data.size else None
    if img is None:
        raise DatasetError(f"{path}: cannot decode image")
    return cv2.cvtColor(resize_shortest_side(img, spec), cv2.COLOR_BGR2RGB)


class ImageCache:
    """All images of ``records`` resized per ``spec``, kept in memory and on disk (npz)."""

    def __init__(self, root: Path, records: list[PoseRecord], spec: Preprocessing, progress: bool = False) -> None:
        from tqdm import tqdm

        shortest_side = spec.resize_shortest_side
        key = cache_key(root, records, spec)
        cache_file = root / ".cache" / f"images_s{shortest_side}_{key[:16]}.npz"
        if cache_file.is_file():
            with np.load(cache_file) as z:
                self.images = [z[f"i{k}"] for k in range(len(records))]
            return
        self.images = [
            load_resized(root / r.image, spec)
            for r in tqdm(records, desc=f"decode+resize to {shortest_side}", unit="img", disable=not progress)
        ]
        cache_file.parent.mkdir(exist_ok=True)
        with atomic_path(cache_file, suffix=".npz") as tmp:  # np.savez appends .npz to other names
            np.savez(tmp, **{f"i{k}": im for k, im in enumerate(self.images)})


def cache_key(root: Path, records: list[PoseRecord], spec: Preprocessing) -> str:
    """sha1 of the resize settings and, per image, its name, size and st_mtime_ns: any rewrite of
    a file (same name, new pixels) changes the key. A missing file keeps its name in the key, and
    decoding then reports it."""
    lines = [f"{spec.resize_shortest_side} {spec.interpolation}"]
    for r in records:
        try:
            st = (root / r.image).stat()
            lines.append(f"{r.image}\t{st.st_size}\t{st.st_mtime_ns}")
        except OSError:
            lines.append(f"{r.image}\t-\t-")
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()


@dataclass(frozen=True)
class Augmentation:
    random_crop: bool = True  # the paper: random crops of the resized image, no flips
    color_jitter: float = 0.0  # max relative change of brightness, contrast and saturation


class PoseDataset:
    """(image tensor CHW float32, target 7-vector: normalized xyz + wxyz) per index."""

    def __init__(
        self,
        root: Path,
        records: list[PoseRecord],
        spec: Preprocessing,
        norm: PositionNormalization,
        augment: Augmentation,
        progress: bool = False,
    ) -> None:
        self.records = records
        self.spec = spec
        self.augment = augment
        self.cache = ImageCache(root, records, spec, progress)
        alpha, beta = normalization_affine(spec)
        self._alpha = np.asarray(alpha, dtype=np.float32)
        self._beta = np.asarray(beta, dtype=np.float32)
        targets = np.concatenate([norm.apply(positions(records)), quaternions(records)], 1)
        self.targets = torch.from_numpy(targets.astype(np.float32))

    def __len__(self) -> int:
        return len(self.records)

    def image(self, index: int, rng: np.random.Generator | None) -> np.ndarray:
        img = self.cache.images[index]
        s = self.spec
        h, w = img.shape[:2]
        if h < s.input_height or w < s.input_width:
            raise DatasetError(f"{self.records[index].image}: resized image {w}x{h} is smaller than the crop")
        if rng is not None and self.augment.random_crop:
            y = int(rng.integers(0, h - s.input_height + 1))
            x = int(rng.integers(0, w - s.input_width + 1))
        else:
            y, x = (h - s.input_height) // 2, (w - s.input_width) // 2
        crop = img[y : y + s.input_height, x : x + s.input_width].astype(np.float32)
        if rng is not None and self.augment.color_jitter > 0:
            crop = color_jitter(crop, rng, self.augment.color_jitter)
        if s.channel_order == "bgr":
            crop = crop[..., ::-1]
        return crop * self._alpha + self._beta

    def batch(self, indices: list[int], rngs: list[np.random.Generator] | None) -> tuple[torch.Tensor, torch.Tensor]:
        images = np.stack(
            [
                self.image(i, None if rngs is None else r)
                for i, r in zip(indices, rngs or [None] * len(indices), strict=True)
            ]
        )
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        return x, self.targets[indices]


def color_jitter(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast and saturation scaled by factors in [1 - strength, 1 + strength]."""
    b, c, s = (float(v) for v in rng.uniform(1 - strength, 1 + strength, 3))  # Python floats keep float32
    img = img * b
    mean = img.mean()
    img = (img - mean) * c + mean
    grey = img.mean(axis=2, keepdims=True)
    img = (img - grey) * s + grey
    return np.clip(img, 0, 255)


def sample_rngs(seed: int, epoch: int, indices: list[int]) -> list[np.random.Generator]:
    return [np.random.default_rng([seed, epoch, i]) for i in indices]


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)
