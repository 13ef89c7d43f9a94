"""Package metadata and the dependency rule of docs/architecture.md."""

from __future__ import annotations

import ast
import configparser
import re
from pathlib import Path

from catkin_pkg.package import parse_package

import posenet_ros

ROOT = Path(__file__).resolve().parents[1]
ROS_MODULES = {
    "rclpy",
    "tf2_ros",
    "cv_bridge",
    "sensor_msgs",
    "geometry_msgs",
    "diagnostic_msgs",
    "launch",
    "launch_ros",
    "std_msgs",
    "builtin_interfaces",
    "rosidl_runtime_py",
    "rcl_interfaces",
    "ament_index_python",
    "tf2_msgs",
    "rosgraph_msgs",
    "std_srvs",
}


def test_package_xml_parses_with_catkin_pkg_as_format_3_ament_python() -> None:
    pkg = parse_package(str(ROOT / "package.xml"))
    pkg.validate()
    assert pkg.name == "posenet_ros"
    assert pkg.package_format == 3
    assert pkg.get_build_type() == "ament_python"
    assert pkg.version == posenet_ros.__version__
    exec_deps = {d.name for d in pkg.exec_depends}
    assert exec_deps >= {
        "rclpy",
        "sensor_msgs",
        "geometry_msgs",
        "tf2_ros_py",
        "cv_bridge",
        "diagnostic_msgs",
        "launch",
        "launch_ros",
        "rcl_interfaces",
        "ament_index_python",
        "python3-numpy",
        "python3-opencv",
        "python3-yaml",
        "std_srvs",
    }
    # No rosdep key for torch resolves on Ubuntu 24.04 (Jazzy, Kilted): declaring one breaks rosdep install.
    assert not {d.name for d in pkg.exec_depends} & {"python3-torch", "python3-pytorch", "torch"}
    assert {"python3-pytest", "launch_testing"} <= {d.name for d in pkg.test_depends}


def test_setup_cfg_installs_executables_where_ros2_run_looks() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["install"]["install_scripts"] == "$base/lib/posenet_ros"
    assert cfg["develop"]["script_dir"] == "$base/lib/posenet_ros"
    assert (ROOT / "resource" / "posenet_ros").is_file()


def test_top_level_layout_of_the_design_card() -> None:
    for name in (
        "posenet_ros",
        "posenet_train",
        "launch",
        "config",
        "models",
        "test",
        "benchmarks",
        "resource",
        "docs",
    ):
        assert (ROOT / name).is_dir(), name
    for name in ("package.xml", "setup.py", "setup.cfg", "README.md", "Makefile", ".ci/run"):
        assert (ROOT / name).is_file(), name


def test_setup_py_reads_its_version_from_package_xml() -> None:
    text = (ROOT / "setup.py").read_text()
    assert re.search(r"<version>", text), "setup.py must take the version from package.xml"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _top(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names}


def test_only_node_py_and_live_py_import_ros() -> None:
    for path in sorted((ROOT / "posenet_ros").rglob("*.py")) + sorted((ROOT / "posenet_train").rglob("*.py")):
        if path.name in ("node.py", "live.py") and path.parent.name == "posenet_ros":
            continue
        assert not (_top(_imports(path)) & ROS_MODULES), f"{path.relative_to(ROOT)} imports ROS"


def test_dependencies_point_one_way() -> None:
    for path in sorted((ROOT / "posenet_ros").rglob("*.py")):
        assert "posenet_train" not in _top(_imports(path)), f"{path.relative_to(ROOT)} imports the training package"
    lower = {"geometry", "contract", "model", "preprocess", "export"}
    for name in lower:
        imported = {
            n.split(".")[1] for n in _imports(ROOT / "posenet_ros" / f"{name}.py") if n.startswith("posenet_ros.")
        }
        assert not imported & {"engine", "node", "cli", "bench"}, f"{name}.py imports a higher layer: {imported}"


def _documents() -> list[Path]:
    return [ROOT / "README.md", ROOT / "models" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_documentation_links_resolve_inside_the_repository() -> None:
    for doc in _documents():
        for target in re.findall(r"\]\(([^)#\s]+)", doc.read_text(encoding="utf-8")):
            if not target.startswith(("http://", "https://")):
                assert (doc.parent / target).exists(), f"{doc.relative_to(ROOT)} links to missing {target}"


def test_nothing_cites_a_design_document_the_repository_does_not_have() -> None:
    sources = [*ROOT.glob("posenet_*/**/*.py"), *ROOT.glob("test/**/*.py"), ROOT / "setup.cfg", *_documents()]
    for path in (p for p in sources if p != Path(__file__).resolve()):
        assert "DESIGN.md" not in path.read_text(encoding="utf-8"), f"{path.relative_to(ROOT)} cites DESIGN.md"
