"""The fake rclpy and the node's use of rclpy, checked against the real rclpy Python source.

rclpy is on no registry we reach, but the PyPI wheel ``rclpy-intellisense`` ships rclpy's Python
files; ``make setup`` downloads it (without installing: its ``rclpy`` would shadow nothing useful
and break the "ROS absent" checks). Here it is read as a zip and parsed with ``ast``, never imported.
"""

from __future__ import annotations

import ast
import inspect
import os
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fake_ros
import pytest

REPO = Path(__file__).resolve().parents[1]
NODE_SOURCE = REPO / "posenet_ros" / "node.py"


def find_wheel() -> Path:
    explicit = os.environ.get("RCLPY_INTELLISENSE_WHEEL")
    candidates = [Path(explicit)] if explicit else sorted((REPO / ".venv" / "wheels").glob("rclpy_intellisense-*.whl"))
    if not candidates or not candidates[-1].is_file():
        pytest.fail("rclpy-intellisense wheel not found in .venv/wheels: run `make setup`", pytrace=False)
    return candidates[-1]


@pytest.fixture(scope="module")
def real() -> dict[str, ast.Module]:
    """rclpy module name -> parsed source, for every .py file in the wheel."""
    modules = {}
    with zipfile.ZipFile(find_wheel()) as whl:
        for name in whl.namelist():
            if name.startswith("rclpy/") and name.endswith(".py"):
                mod = name[:-3].replace("/", ".").removesuffix(".__init__")
                modules[mod] = ast.parse(whl.read(name).decode())
    assert "rclpy.node" in modules and "rclpy.qos" in modules
    return modules


@pytest.fixture(scope="module")
def fake() -> Iterator[Any]:
    fake_ros.install()
    import rclpy
    import rclpy.clock
    import rclpy.duration
    import rclpy.exceptions
    import rclpy.node
    import rclpy.parameter
    import rclpy.qos
    import rclpy.time

    yield rclpy
    fake_ros.uninstall()


def top_level_names(tree: ast.Module) -> set[str]:
    names = set()
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.ClassDef)):
            names.add(stmt.name)
        elif isinstance(stmt, ast.Assign):
            names |= {t.id for t in stmt.targets if isinstance(t, ast.Name)}
        elif isinstance(stmt, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in stmt.names}
    return names


def find_class(tree: ast.Module, name: str) -> ast.ClassDef:
    for stmt in tree.body:
        if isinstance(stmt, ast.ClassDef) and stmt.name == name:
            return stmt
    raise AssertionError(f"class {name} not in the real rclpy")


def methods(cls: ast.ClassDef) -> dict[str, ast.FunctionDef]:
    return {s.name: s for s in cls.body if isinstance(s, ast.FunctionDef)}


def functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    return {s.name: s for s in tree.body if isinstance(s, ast.FunctionDef)}


def real_params(fn: ast.FunctionDef) -> list[tuple[str, str]]:
    """[(name, kind)] as inspect would report them, 'self'/'cls' dropped."""
    a = fn.args
    out = [(x.arg, "POSITIONAL_ONLY") for x in a.posonlyargs]
    out += [(x.arg, "POSITIONAL_OR_KEYWORD") for x in a.args]
    if a.vararg:
        out.append((a.vararg.arg, "VAR_POSITIONAL"))
    out += [(x.arg, "KEYWORD_ONLY") for x in a.kwonlyargs]
    if a.kwarg:
        out.append((a.kwarg.arg, "VAR_KEYWORD"))
    return [p for p in out if p[0] not in ("self", "cls")]


def fake_params(obj: Any) -> list[tuple[str, str]]:
    sig = inspect.signature(obj)
    return [(p.name, p.kind.name) for p in sig.parameters.values() if p.name not in ("self", "cls")]


def call_fits(fn: ast.FunctionDef, call: ast.Call) -> str | None:
    """None when ``call`` binds to ``fn``'s parameters; else why not."""
    params = real_params(fn)
    positional = [n for n, k in params if k in ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD")]
    has_var = any(k == "VAR_POSITIONAL" for _, k in params)
    has_kw = any(k == "VAR_KEYWORD" for _, k in params)
    keywords = {n for n, k in params if k in ("POSITIONAL_OR_KEYWORD", "KEYWORD_ONLY")}
    if len(call.args) > len(positional) and not has_var:
        return f"{len(call.args)} positional arguments, {fn.name} takes {len(positional)}"
    for kw in call.keywords:
        if kw.arg is not None and kw.arg not in keywords and not has_kw:
            return f"{fn.name} has no parameter {kw.arg!r}"
    return None


# -- what node.py uses -----------------------------------------------------------------------------


def node_tree() -> ast.Module:
    return ast.parse(NODE_SOURCE.read_text())


def test_every_rclpy_name_node_imports_exists(real: dict[str, ast.Module]) -> None:
    imported = 0
    for stmt in ast.walk(node_tree()):
        if isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.module.split(".")[0] == "rclpy":
            assert stmt.module in real, f"rclpy has no module {stmt.module}"
            for alias in stmt.names:
                assert alias.name in top_level_names(real[stmt.module]), f"{stmt.module} has no {alias.name}"
                imported += 1
    assert imported >= 6


def test_every_node_method_call_binds_to_the_real_signature(real: dict[str, ast.Module]) -> None:
    node_methods = methods(find_class(real["rclpy.node"], "Node"))
    own = {f.name for f in ast.walk(node_tree()) if isinstance(f, ast.FunctionDef)}
    checked = set()
    for call in ast.walk(node_tree()):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)):
            continue
        target = call.func.value
        name = call.func.attr
        if isinstance(target, ast.Name) and target.id == "self" and name not in own:
            assert name in node_methods, f"rclpy Node has no method {name}"
            problem = call_fits(node_methods[name], call)
            assert problem is None, f"self.{name}(...): {problem}"
            checked.add(name)
        elif isinstance(target, ast.Name) and target.id == "rclpy":
            init = real["rclpy"]
            assert name in top_level_names(init), f"rclpy has no {name}"
            if name in functions(init):
                assert call_fits(functions(init)[name], call) is None, name
            checked.add(f"rclpy.{name}")
    expected = {"declare_parameter", "add_on_set_parameters_callback", "create_subscription", "create_publisher"}
    assert expected | {"create_timer", "get_logger", "get_clock", "rclpy.init", "rclpy.spin"} <= checked


def test_constructor_calls_bind(real: dict[str, ast.Module]) -> None:
    """QoSProfile(**kwargs) accepts only its slots; Time/Duration take keyword-only arguments."""
    qos = find_class(real["rclpy.qos"], "QoSProfile")
    slots = next(
        ast.literal_eval(s.value)
        for s in qos.body
        if isinstance(s, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__slots__" for t in s.targets)
    )
    inits = {
        "Time": methods(find_class(real["rclpy.time"], "Time"))["__init__"],
        "Duration": methods(find_class(real["rclpy.duration"], "Duration"))["__init__"],
    }
    seen = set()
    for call in ast.walk(node_tree()):
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name):
            if call.func.id == "QoSProfile":
                assert not call.args
                for kw in call.keywords:
                    assert f"_{kw.arg}" in slots, f"QoSProfile has no setting {kw.arg}"
                seen.add("QoSProfile")
            elif call.func.id in inits:
                assert call_fits(inits[call.func.id], call) is None, call.func.id
                seen.add(call.func.id)
    assert seen == {"QoSProfile", "Time", "Duration"}


def test_logger_filters_the_node_uses_exist(real: dict[str, ast.Module], fake: Any) -> None:
    tree = real["rclpy.impl.rcutils_logger"]
    filters = set()
    for cls in (s for s in tree.body if isinstance(s, ast.ClassDef)):
        for stmt in cls.body:
            if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "params" for t in stmt.targets):
                filters |= {k.value for k in stmt.value.keys if isinstance(k, ast.Constant)}
    severities = set(methods(find_class(tree, "RcutilsLogger")))
    used = set()
    for call in ast.walk(node_tree()):
        if (
            isinstance(call, ast.Call)
            and isinstance(call.func, ast.Attribute)
            and call.func.attr in ("info", "warning", "error", "debug")
        ):
            assert call.func.attr in severities
            used |= {kw.arg for kw in call.keywords}
    assert used == {"throttle_duration_sec"} and used <= filters
    assert set(sys.modules["rclpy.logging"].SUPPORTED_FILTERS) <= filters


# -- the fake against the real ---------------------------------------------------------------------


FAKE_CLASSES = [
    ("rclpy.node", "Node"),
    ("rclpy.time", "Time"),
    ("rclpy.duration", "Duration"),
    ("rclpy.parameter", "Parameter"),
]


@pytest.mark.parametrize(("module", "cls"), FAKE_CLASSES)
def test_fake_methods_have_the_real_signatures(real: dict[str, ast.Module], fake: Any, module: str, cls: str) -> None:
    fake_cls = getattr(sys.modules[module], cls)
    real_methods = methods(find_class(real[module], cls))
    shared = [m for m in vars(fake_cls) if not m.startswith("_") or m == "__init__"]
    compared = 0
    for name in shared:
        attr = getattr(fake_cls, name)
        if name not in real_methods or not callable(attr) or isinstance(attr, type):
            assert (
                name in real_methods
                or name in ("PARAM_REL_TOL", "Type")
                or not callable(attr)
                or name.startswith("resolve")
            ), f"fake {cls}.{name} does not exist in rclpy"
            continue
        assert fake_params(attr) == real_params(real_methods[name]), f"{cls}.{name}"
        compared += 1
    assert compared >= 1


def test_fake_module_functions_have_the_real_signatures(real: dict[str, ast.Module], fake: Any) -> None:
    import rclpy

    real_fns = functions(real["rclpy"])
    for name in ("init", "shutdown", "spin"):
        assert fake_params(getattr(rclpy, name)) == real_params(real_fns[name]), name
    utilities = functions(real["rclpy.utilities"])
    for name in ("ok", "try_shutdown"):
        assert fake_params(getattr(rclpy, name)) == real_params(utilities[name]), name


def test_fake_qos_enums_match(real: dict[str, ast.Module], fake: Any) -> None:
    import rclpy.qos as fake_qos

    tree = real["rclpy.qos"]
    for enum in ("HistoryPolicy", "ReliabilityPolicy", "DurabilityPolicy"):
        real_members = {
            t.id
            for s in find_class(tree, enum).body
            if isinstance(s, ast.Assign)
            for t in s.targets
            if isinstance(t, ast.Name)
        }
        fake_members = set(getattr(fake_qos, enum).__members__)
        assert fake_members <= real_members, enum


def test_fake_refuses_what_rclpy_refuses(fake: Any) -> None:
    """A few behaviours the node relies on rclpy to enforce, which the fake must enforce too."""
    from geometry_msgs.msg import PoseStamped
    from rclpy.qos import QoSProfile

    msg = PoseStamped()
    with pytest.raises(AssertionError):
        msg.pose.position.x = 1  # int into a float64 field
    with pytest.raises(AttributeError):
        msg.pose.nonexistent = 1.0  # type: ignore[attr-defined]
    with pytest.raises(AssertionError):
        QoSProfile(depth=1, reliable=True)  # no such setting
    from geometry_msgs.msg import PoseWithCovarianceStamped

    with pytest.raises(AssertionError):
        PoseWithCovarianceStamped().pose.covariance = [0.0] * 35
