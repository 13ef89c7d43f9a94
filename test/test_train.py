"""The training loop on a tiny rendered scene: exact resume after Ctrl-C, 2-process DDP, export to a
file the engine loads, evaluation with the nearest-neighbour baseline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_fit_config

from posenet_ros.engine import Engine, EngineConfig, load_model
from posenet_train.cli import main as train_main
from posenet_train.data import PositionNormalization
from posenet_train.datasets import read_poses_csv
from posenet_train.evaluate import evaluate, nearest_neighbour
from posenet_train.export_model import export_checkpoint, load_checkpoint
from posenet_train.scene_map import synth_intrinsics
from posenet_train.synth import SynthConfig
from posenet_train.train import CHECKPOINT_NAME, FitConfig, fit, lr_factor

REPO = Path(__file__).resolve().parents[1]


# The training tests' own settings on top of the shared tiny run (conftest.tiny_fit_config).
tiny_config = partial(
    tiny_fit_config,
    steps=6,
    lr=1e-3,
    color_jitter=0.2,
    learn_weighting=True,
    checkpoint_every=100,
    eval_every=3,
    eval_images=8,
)


def weights(path: Path) -> dict[str, torch.Tensor]:
    ckpt = load_checkpoint(path)
    return {**ckpt["model"], **{f"loss.{k}": v for k, v in ckpt["loss"].items()}}


def test_interrupted_and_resumed_run_equals_uninterrupted(tiny_room: Path, tmp_path: Path) -> None:
    full = fit(tiny_config(tiny_room, tmp_path / "full"))
    assert full.step == 6 and not full.interrupted

    def ctrl_c_at_3(step: int) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the real signal, handled by the loop

    part = fit(tiny_config(tiny_room, tmp_path / "part"), step_callback=ctrl_c_at_3)
    assert part.interrupted and part.step == 3
    assert load_checkpoint(part.checkpoint)["step"] == 3
    # A resume may only change the step budget and similar; the rest comes from the checkpoint.
    resumed = fit(tiny_config(tiny_room, tmp_path / "part", lr=0.5, seed=9), resume=True)
    assert resumed.step == 6 and not resumed.interrupted
    a, b = weights(full.checkpoint), weights(resumed.checkpoint)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # Training moved the weights, and nothing temporary is left behind.
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "part").iterdir())
    assert load_checkpoint(full.checkpoint)["history"][-1]["step"] == 6


def test_resume_without_checkpoint_is_a_clear_error(tiny_room: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        fit(tiny_config(tiny_room, tmp_path / "none"), resume=True)


# Each rank saves its own live weights (the checkpoint only holds rank 0's): a spy on PoseNet's
# constructor keeps a handle on the model fit builds.
DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
from posenet_ros.model import PoseNet
from posenet_train import train
cfg = train.FitConfig(data=sys.argv[1], out=sys.argv[2], input_size=32, resize_shortest_side=36, final_fc_dim=64,
                      batch_size=2, steps=3, eval_every=0, progress=False, threads=1, seed=5)
models = []
original_init = PoseNet.__init__
def spy_init(self, *args, **kwargs):
    original_init(self, *args, **kwargs)
    models.append(self)
PoseNet.__init__ = spy_init
result = train.fit(cfg)
PoseNet.__init__ = original_init
torch.manual_seed(cfg.seed)  # rank 0's initial weights, which DDP broadcasts to every rank
initial = PoseNet(cfg.model_config()).state_dict()
rank = dist.get_rank()
torch.save({"rank": rank, "world": dist.get_world_size(), "step": result.step, "initial": initial,
            "model": {k: v.detach().clone() for k, v in models[0].state_dict().items()}}, f"{cfg.out}/rank{rank}.pt")
"""


def test_two_process_ddp_ranks_hold_identical_weights(tiny_room: Path, tmp_path: Path) -> None:
    """torchrun, 2 CPU processes, gloo: after a few steps both ranks hold the same weights."""
    script = tmp_path / "ddp_fit.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, str(script), str(tiny_room), str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "run/rank0.pt")
    r1 = torch.load(tmp_path / "run/rank1.pt")
    assert (r0["rank"], r1["rank"], r0["world"]) == (0, 1, 2)
    assert r0["step"] == r1["step"] == 3
    for k in r0["model"]:
        assert torch.equal(r0["model"][k], r1["model"][k]), k
    assert any(not torch.equal(r0["initial"][k], r0["model"][k]) for k in r0["initial"]), "nothing trained"


def test_export_runs_in_the_engine_with_the_full_contract(tiny_room: Path, tmp_path: Path) -> None:
    result = fit(tiny_config(tiny_room, tmp_path / "run", steps=4))
    model_path = export_checkpoint(result.checkpoint, tmp_path / "model.pt")
    _, contract = load_model(model_path)
    records = read_poses_csv(tiny_room)
    norm = PositionNormalization.fit([r for r in records if r.split == "train"])
    assert contract.output.position_offset == pytest.approx(norm.offset)
    assert contract.output.position_scale == pytest.approx(norm.scale)
    assert contract.preprocessing.input_height == 32 and contract.preprocessing.resize_shortest_side == 36
    assert contract.scene.name == tiny_room.name and max(contract.scene.extent) > 0.1
    assert contract.training["steps"] == 4 and contract.training["data"]["train_images"] == 24
    # The training camera (the renderer's, from scene.json): what the node checks live cameras against.
    assert contract.camera == synth_intrinsics(SynthConfig(width=64, height=48))
    engine = Engine(model_path, EngineConfig(device="cpu", warmup_iters=1))
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    loc = engine.localize(image, "rgb8")
    assert np.all(np.isfinite(loc.pose.position)) and abs(np.linalg.norm(loc.pose.quaternion) - 1) < 1e-9


def test_eval_summary_plots_and_nearest_neighbour(tiny_room: Path, tmp_path: Path) -> None:
    result = fit(tiny_config(tiny_room, tmp_path / "run", steps=3))
    model_path = export_checkpoint(result.checkpoint, tmp_path / "model.pt")
    # On the training split the nearest neighbour of each image is itself: zero error, exactly.
    summary, _ = evaluate(model_path, tiny_room, split="train")
    nn = summary["nearest_neighbour"]
    assert nn["median_position_m"] == 0.0 and nn["median_rotation_deg"] < 1e-3 and nn["within_0.25m_2deg"] == 1.0
    out = tmp_path / "eval"
    code = train_main(["eval", str(model_path), str(tiny_room), "--out", str(out)])
    assert code == 0
    data = json.loads((out / "summary.json").read_text())
    assert data["posenet"]["frames"] == 12 and "nearest_neighbour" in data
    for key in ("median_position_m", "mean_position_m", "median_rotation_deg", "within_0.5m_5deg"):
        assert np.isfinite(data["posenet"][key])
    for name in ("error_cdf.png", "trajectory_top.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A checkpoint evaluates to the same figures as its export.
    from_ckpt, _ = evaluate(result.checkpoint, tiny_room, baseline=False)
    assert from_ckpt["posenet"]["median_position_m"] == pytest.approx(data["posenet"]["median_position_m"], rel=1e-4)


def test_nearest_neighbour_picks_the_closest_feature() -> None:
    train = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    query = np.array([[9.0, 1.0], [1.0, 8.0], [0.1, -0.1]])
    assert nearest_neighbour(train, query).tolist() == [1, 2, 0]


def test_lr_schedules() -> None:
    cfg = FitConfig(data="", out="", steps=100, schedule="cosine", warmup_steps=10)
    assert lr_factor(cfg, 0) == pytest.approx(0.1, rel=0.05)
    assert lr_factor(cfg, 50) == pytest.approx(0.51, abs=0.01)
    assert lr_factor(cfg, 100) == pytest.approx(0.02)
    step = replace(cfg, schedule="step", lr_step_every=30, warmup_steps=0)
    assert [lr_factor(step, s) for s in (0, 29, 30, 65)] == pytest.approx([1, 1, 0.1, 0.01])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--optimizer", "rmsprop"], "invalid choice"),
        (["--input-size", "300"], "resize_shortest_side must be >= input_size"),
        (["--lr", "-1"], "lr must be a positive number"),
    ],
)
def test_fit_refuses_bad_parameters(
    tiny_room: Path, tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = train_main(["fit", str(tiny_room), "--out", str(tmp_path / "r"), *args])
    except SystemExit as exc:  # argparse choices
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert not (tmp_path / "r" / CHECKPOINT_NAME).exists()


@pytest.mark.parametrize("command", ["convert", "synth", "fit", "eval", "export", "to-bag", "from-bag", "label-sfm"])
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        train_main([command, "--help"])
    assert exc.value.code == 0 and "usage: posenet-train" in capsys.readouterr().out


def test_fit_starts_from_pretrained_backbone_weights(tiny_room: Path, tmp_path: Path) -> None:
    """--pretrained PATH: the torchvision-layout file's backbone tensors are the starting point."""
    from test_model import torchvision_googlenet_state_dict

    weights_file = tmp_path / "googlenet.pth"
    state = torchvision_googlenet_state_dict(seed=3)
    torch.save(state, weights_file)
    result = fit(tiny_config(tiny_room, tmp_path / "run", steps=1, lr=1e-12, pretrained=str(weights_file)))
    ckpt = load_checkpoint(result.checkpoint)
    assert "backbone tensors" in ckpt["pretrained"]
    # One step at a negligible learning rate: the convolution weights are still the loaded ones.
    assert torch.allclose(ckpt["model"]["conv1.conv.weight"], state["conv1.conv.weight"], atol=1e-6)
    assert torch.allclose(
        ckpt["model"]["inception5b.branch1.conv.weight"], state["inception5b.branch1.conv.weight"], atol=1e-6
    )


def test_imagenet_weights_are_the_default_where_cached_and_their_absence_is_loud(
    tiny_room: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    """--pretrained auto (the default): torch.hub's cached GoogLeNet weights where they are (nothing
    is downloaded); without them, random initialization with a warning that says what to do."""
    from test_model import torchvision_googlenet_state_dict

    from posenet_train.train import FitConfig, imagenet_cache_path

    assert FitConfig(data="d", out="o").pretrained == "auto"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    result = fit(tiny_config(tiny_room, tmp_path / "scratch", steps=1, pretrained="auto"))
    assert load_checkpoint(result.checkpoint)["pretrained"] == "none (random init)"
    err = capsys.readouterr().err
    assert "WARNING: training from random initialization (no ImageNet weights at" in err
    assert "--pretrained imagenet" in err
    cached = imagenet_cache_path()
    assert cached.is_relative_to(tmp_path)
    cached.parent.mkdir(parents=True)
    state = torchvision_googlenet_state_dict(seed=5)
    torch.save(state, cached)
    result = fit(tiny_config(tiny_room, tmp_path / "imagenet", steps=1, lr=1e-12, pretrained="auto"))
    ckpt = load_checkpoint(result.checkpoint)
    assert str(cached) in ckpt["pretrained"] and "backbone tensors" in ckpt["pretrained"]
    assert torch.allclose(ckpt["model"]["conv1.conv.weight"], state["conv1.conv.weight"], atol=1e-6)
    assert "random initialization" not in capsys.readouterr().err


def test_training_watches_the_val_split_and_leaves_test_unseen(tiny_room: Path, tmp_path: Path, capsys) -> None:
    """The figures watched during training (which a user tunes by) come from val; a data set without
    val rows falls back to test with a one-line note."""
    import shutil

    with_val = tmp_path / "with_val"
    shutil.copytree(tiny_room, with_val)
    lines = (with_val / "poses.csv").read_text().splitlines()
    train_rows = [i for i, ln in enumerate(lines) if ",train," in ln]
    for i in train_rows[-6:]:  # the last frames of the second walk: a held-out time block
        lines[i] = lines[i].replace(",train,", ",val,")
    (with_val / "poses.csv").write_text("\n".join(lines) + "\n")
    for data, split in ((with_val, "val"), (tiny_room, "test")):
        result = fit(tiny_config(data, tmp_path / f"run_{split}", steps=3, eval_every=3))
        history = load_checkpoint(result.checkpoint)["history"]
        assert history and {h["split"] for h in history} == {split}
        note = [ln for ln in capsys.readouterr().err.splitlines() if "no 'val' frames" in ln]
        assert len(note) == (1 if split == "test" else 0)
