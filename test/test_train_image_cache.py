"""Issue 18, defect 3: the decoded-image cache follows the files, not just their names."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from posenet_train import data as data_module
from posenet_train.data import Augmentation, PoseDataset, PositionNormalization, load_resized
from posenet_train.datasets import read_poses_csv, split_records
from posenet_train.synth import SynthConfig, render_dataset
from posenet_train.train import FitConfig


def _dataset(root: Path) -> PoseDataset:
    records = split_records(read_poses_csv(root), "train")
    spec = FitConfig(data=str(root), out="", input_size=32, resize_shortest_side=36).preprocessing()
    return PoseDataset(root, records, spec, PositionNormalization.fit(records), Augmentation(False))


def test_rewritten_images_are_decoded_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "scene"
    render_dataset(SynthConfig(train_sequences=1, test_sequences=1, frames_per_sequence=5, width=48, height=36), root)
    first = _dataset(root)
    assert list((root / ".cache").glob("images_*.npz")), "the first load writes the cache"

    # Unchanged files: the cache is used, nothing is decoded.
    def no_decoding(*args: object) -> None:
        raise AssertionError("decoded although the files did not change")

    with monkeypatch.context() as m:
        m.setattr(data_module, "load_resized", no_decoding)
        again = _dataset(root)
    for a, b in zip(first.cache.images, again.cache.images, strict=True):
        assert np.array_equal(a, b)

    # Rewrite every image under its own name with other pixels (as synth or convert would).
    for rec in first.records:
        path = root / rec.image
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        assert cv2.imwrite(str(path), 255 - image)
    rewritten = _dataset(root)
    spec = first.spec
    for rec, old, new in zip(first.records, first.cache.images, rewritten.cache.images, strict=True):
        assert np.array_equal(new, load_resized(root / rec.image, spec)), rec.image
        assert not np.array_equal(new, old), rec.image
    # The training input (a batch) is made of the new pixels.
    x_old, _ = first.batch([0, 1], None)
    x_new, _ = rewritten.batch([0, 1], None)
    assert not np.allclose(x_old.numpy(), x_new.numpy())
