"""A real `colcon build` of the package into a temporary workspace, then a check of the layout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(colcon_ws: Path) -> Path:
    return colcon_ws / "install" / "posenet_ros"


def test_ament_layout(installed: Path) -> None:
    share = installed / "share"
    assert (share / "ament_index" / "resource_index" / "packages" / "posenet_ros").is_file()
    assert (share / "posenet_ros" / "package.xml").read_text() == (ROOT / "package.xml").read_text()
    for folder in ("launch", "config", "models"):
        for src in (ROOT / folder).glob("*"):
            if src.is_file() and not src.name.startswith("."):  # glob in setup.py skips dotfiles
                assert (share / "posenet_ros" / folder / src.name).is_file(), f"{folder}/{src.name} not installed"
    assert any((share / "posenet_ros" / "models").iterdir())


def test_executables_in_lib_and_python_package_installed(installed: Path) -> None:
    lib = installed / "lib" / "posenet_ros"
    for name in ("posenet-ros", "posenet-train", "relocalize_node"):  # ros2 run / ros2 launch find them here
        assert (lib / name).is_file() and os.access(lib / name, os.X_OK), name
    exe = lib / "posenet-ros"
    site = list(installed.glob("lib/python3*/site-packages"))
    assert site, "no site-packages in the install space"
    assert (site[0] / "posenet_ros" / "engine.py").is_file()
    assert (site[0] / "posenet_train" / "__init__.py").is_file()
    env = {**os.environ, "PYTHONPATH": str(site[0])}
    proc = subprocess.run([sys.executable, str(exe), "--version"], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "posenet_ros" in proc.stdout, proc.stderr
