"""The YAML, the launch file and the node's declared parameters agree (the launch file and the
node are read with ast: neither launch nor rclpy is importable here)."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from posenet_ros.relocalizer.params import PARAMETERS, SPECS, check_parameter

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "relocalize.launch.py"
CONFIG = ROOT / "config" / "relocalize.yaml"
REQUIRED_ARGS = {
    "model",
    "map",
    "image_topic",
    "camera_info_topic",
    "compressed",
    "params_file",
    "use_sim_time",
    "namespace",
    "device",
    "precision",
    "tf_mode",
    "pose_frame",
    "log_level",
}


def launch_arguments() -> dict[str, str]:
    tree = ast.parse(LAUNCH.read_text())
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "ARGUMENTS" for t in stmt.targets):
            return {name: default for name, default, _ in ast.literal_eval(stmt.value)}
    raise AssertionError("launch file has no ARGUMENTS table")


def launch_overrides() -> set[str]:
    tree = ast.parse(LAUNCH.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "overrides" for t in node.targets):
            return {k.value for k in node.value.keys}
    raise AssertionError("launch file has no overrides dict")


def config_values() -> dict:
    data = yaml.safe_load(CONFIG.read_text())
    return data["/**"]["ros__parameters"]


def test_yaml_has_every_declared_parameter_with_its_default_and_type() -> None:
    values = config_values()
    assert set(values) == {p.name for p in PARAMETERS}
    for p in PARAMETERS:
        assert type(values[p.name]) is type(p.default), p.name  # ROS 2 parameters are statically typed
        assert values[p.name] == p.default, p.name
        assert check_parameter(p.name, values[p.name]) is None


def test_yaml_has_a_comment_on_every_parameter_line() -> None:
    lines = [ln for ln in CONFIG.read_text().splitlines() if ln.startswith("    ") and ":" in ln]
    assert len(lines) == len(PARAMETERS) and all("  # " in ln for ln in lines)


def test_launch_arguments_and_overrides_match_the_node() -> None:
    args = launch_arguments()
    assert set(args) == REQUIRED_ARGS
    assert args["model"] == SPECS["model_path"].default and args["map"] == SPECS["map_path"].default
    assert args["device"] == SPECS["device"].default and args["tf_mode"] == SPECS["tf_mode"].default
    assert launch_overrides() <= {p.name for p in PARAMETERS} | {"use_sim_time"}
    assert {"model_path", "compressed", "device", "tf_mode", "use_sim_time"} <= launch_overrides()


def test_node_declares_exactly_the_parameter_table() -> None:
    """node.py declares parameters only through PARAMETERS (so the checks above cover it)."""
    tree = ast.parse((ROOT / "posenet_ros" / "node.py").read_text())
    calls = [
        n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "declare_parameter"
    ]
    assert len(calls) == 1 and isinstance(calls[0].args[0], ast.Attribute) and calls[0].args[0].attr == "name"


def test_parameter_checks() -> None:
    assert check_parameter("crops", 0) and check_parameter("crops", 2.0) and check_parameter("crops", True)
    assert check_parameter("tf_mode", "map_to_base") is None and check_parameter("tf_mode", "x")
    assert check_parameter("device", "cuda:1") is None and check_parameter("device", "cuda:x")
    assert check_parameter("transform_tolerance", 1) is None  # ints widen here; rclpy itself refuses them
    assert check_parameter("position_variance", float("nan"))
    assert check_parameter("use_sim_time", True) is None  # not ours
