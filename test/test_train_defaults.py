"""Issue 18, "defaults that fit real data": no weight decay on biases, batch-norm or the learned
loss weights; the run's length scales with the data set; the literature's learning rate."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest
from conftest import tiny_fit_config

from posenet_train.export_model import load_checkpoint
from posenet_train.train import FitConfig, fit

tiny = partial(tiny_fit_config, steps=2, learn_weighting=True, eval_every=0)


def test_weight_decay_spares_biases_batch_norm_and_loss_weights(tiny_room: Path, tmp_path: Path) -> None:
    result = fit(tiny(tiny_room, tmp_path / "run", optimizer="sgd", weight_decay=0.01))
    ckpt = load_checkpoint(result.checkpoint)
    optimizer = ckpt["optimizer"]
    shapes = {}  # parameter index -> (shape, its group's decay); SGD's momentum buffer has the shape
    for group in optimizer["param_groups"]:
        for index in group["params"]:
            shapes[index] = (tuple(optimizer["state"][index]["momentum_buffer"].shape), group["weight_decay"])
    model_params = sum(1 for k in ckpt["model"] if not k.endswith(("running_mean", "running_var", "_tracked")))
    assert len(shapes) == model_params + 2  # the network's and s_x, s_q
    assert sum(1 for shape, _ in shapes.values() if shape == ()) == 2
    for shape, decay in shapes.values():
        assert decay == (0.01 if len(shape) >= 2 else 0.0), shape


def test_steps_scale_with_the_data_set(tiny_room: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = fit(tiny(tiny_room, tmp_path / "run", steps=0, epochs=2.0))
    assert result.step == math.ceil(2.0 * 24 / 4)  # 24 training images, batch 4
    assert load_checkpoint(result.checkpoint)["config"]["steps"] == result.step
    assert "training from random initialization" in capsys.readouterr().err


def test_literature_defaults() -> None:
    cfg = FitConfig(data="", out="")
    assert cfg.optimizer == "adam" and cfg.lr == 1e-4  # Kendall & Cipolla 2017
    assert cfg.steps == 0 and cfg.epochs > 0  # sized by the data set
