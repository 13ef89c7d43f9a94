"""Shared fixtures: small real models exported to real TorchScript files, and a real colcon build
of this package (its install space and the environment that sources it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import settings
from torch import nn

from posenet_ros.contract import Contract, OutputSpec, Preprocessing, SceneInfo
from posenet_ros.export import export_torchscript
from posenet_ros.model import PoseNet, normalize_pose_output
from posenet_train.synth import SynthConfig, render_dataset
from posenet_train.train import FitConfig

ROOT = Path(__file__).resolve().parents[1]
# What a colcon build of the checkout must not copy (caches, outputs, the venv with its ROS build).
COLCON_SKIP = {".venv", ".git", "build", "install", "log", "__pycache__", ".pytest_cache", ".ruff_cache"}
COLCON_SKIP |= {".hypothesis", "out"}

# Property tests check maths, not speed: no per-example deadline on shared, noisy CI machines.
settings.register_profile("ci", deadline=None)
settings.load_profile("ci")
# rclpy in this process (the ROS tests' probe) logs here, not into ~/.ros on a shared machine.
os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="posenet_test_ros_log_"))


@pytest.fixture(scope="session")
def colcon_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout built with the real `colcon build` into a fresh workspace; returns the workspace."""
    colcon = shutil.which("colcon") or str(Path(sys.executable).parent / "colcon")
    if not Path(colcon).exists():
        pytest.fail("colcon is not installed in this environment (make setup installs it)")
    ws = tmp_path_factory.mktemp("ws")
    shutil.copytree(
        ROOT,
        ws / "src" / "posenet_ros",
        ignore=lambda d, names: [n for n in names if n in COLCON_SKIP or n.endswith(".egg-info")],
    )
    env = {**os.environ, "COLCON_HOME": str(ws / ".colcon"), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [colcon, "--log-base", "log", "build", "--base-paths", "src", "--event-handlers", "console_direct+"],
        cwd=ws,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return ws


@pytest.fixture(scope="session")
def ros_env(colcon_ws: Path) -> dict[str, str]:
    """This process's environment (ROS 2 sourced) with the built package's install space sourced on top."""
    setup = colcon_ws / "install" / "local_setup.bash"
    out = subprocess.run(
        ["bash", "-c", f'source "{setup}" && env -0'], capture_output=True, check=True, timeout=60, env=dict(os.environ)
    ).stdout
    return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)


def randomized_posenet(seed: int = 0) -> PoseNet:
    """A PoseNet whose outputs are O(1) and input-dependent (fresh initialization gives ~1e-5),
    so agreement tests compare meaningful numbers."""
    torch.manual_seed(seed)
    model = PoseNet()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.8, 1.2)
                m.bias.uniform_(-0.1, 0.1)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0.0, 1.0 / m.in_features**0.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


class TinyPoseNet(nn.Module):
    """A few-millisecond stand-in with PoseNet's output contract, for engine logic tests."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 5, stride=4)
        self.fc = nn.Linear(8, 7)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return normalize_pose_output(self.fc(f))


class NaNPoseNet(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 7), float("nan"), device=x.device)


def small_contract(**output: object) -> Contract:
    return Contract(
        preprocessing=Preprocessing(input_height=64, input_width=64, resize_shortest_side=72),
        output=OutputSpec(**output),  # type: ignore[arg-type]
        scene=SceneInfo(name="test_scene", extent=(4.0, 3.0, 2.0)),
        training={"dataset": "none (test fixture)"},
        code_version="test",
    )


@pytest.fixture(scope="session")
def posenet_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PoseNet]:
    model = randomized_posenet(0)
    path = export_torchscript(
        model, Contract(scene=SceneInfo("fixture", (10.0, 5.0, 3.0))), tmp_path_factory.mktemp("m") / "posenet.pt"
    )
    return path, model


@pytest.fixture(scope="session")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TinyPoseNet]:
    torch.manual_seed(1)
    model = TinyPoseNet().eval()
    contract = small_contract(position_offset=(10.0, -5.0, 1.0), position_scale=3.0)
    return export_torchscript(model, contract, tmp_path_factory.mktemp("m") / "tiny.pt"), model


@pytest.fixture
def bed(ros_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    """A private ROS 2 graph for one test (``ros_harness.RosTestbed``), closed whatever the outcome:
    every process it started is ended."""
    from ros_harness import RosTestbed  # imports rclpy: only for the tests that ask for it

    testbed = RosTestbed(ros_env, tmp_path)
    try:
        yield testbed
    finally:
        testbed.close()


@pytest.fixture(scope="session")
def tiny_room(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rendered room small enough to train on in seconds: two training walks and one test walk of
    12 frames at 64x48. Shared by the training tests; a test that changes it works on a copy."""
    root = tmp_path_factory.mktemp("synth")
    render_dataset(
        SynthConfig(train_sequences=2, test_sequences=1, frames_per_sequence=12, width=64, height=48), root, False
    )
    return root


def tiny_fit_config(data: Path, out: Path, **kw: object) -> FitConfig:
    """A run that trains a 32-pixel PoseNet in seconds; ``kw`` sets any other field."""
    base = FitConfig(
        data=str(data),
        out=str(out),
        input_size=32,
        resize_shortest_side=36,
        final_fc_dim=64,
        batch_size=4,
        progress=False,
        threads=1,
        pretrained="none",  # hermetic: not the machine's torch hub cache
    )
    return replace(base, **kw)  # type: ignore[arg-type]
