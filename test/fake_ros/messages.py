"""ROS message classes generated from the real .msg definitions that rosbags ships (its typestore),
behaving like rclpy's generated classes: keyword-only constructor with ROS defaults, unknown fields
refused, every assignment type- and range-checked (a float field refuses an int, as rclpy does)."""

from __future__ import annotations

import array
import sys
import types
from typing import Any, ClassVar

from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.base import Nodetype

PACKAGES = (
    "builtin_interfaces",
    "std_msgs",
    "geometry_msgs",
    "sensor_msgs",
    "diagnostic_msgs",
    "rcl_interfaces",
    "tf2_msgs",
    "rosgraph_msgs",
)
INT_RANGES = {
    "int8": (-(2**7), 2**7 - 1),
    "uint8": (0, 2**8 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
    "char": (0, 255),
}
FLOATS = ("float32", "float64")


class FakeMessage:
    """Base of the generated classes; ``_fields`` maps name -> rosbags field spec."""

    _type = ""
    _fields: ClassVar[dict[str, Any]] = {}
    _classes: ClassVar[dict[str, type]] = {}

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(self._fields)
        if unknown:
            raise AssertionError(f"Invalid arguments passed to constructor: {', '.join(sorted(unknown))}")
        for name, spec in self._fields.items():
            object.__setattr__(self, name, _default(spec, self._classes))
        for name, value in kwargs.items():
            setattr(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._fields:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
        object.__setattr__(self, name, _checked(self._type, name, self._fields[name], value, self._classes))

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(_eq(getattr(self, f), getattr(other, f)) for f in self._fields)

    def __repr__(self) -> str:
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{self._type.replace('/msg/', '.msg.')}({inner})"

    @classmethod
    def get_fields_and_field_types(cls) -> dict[str, str]:
        return {name: str(spec) for name, spec in cls._fields.items()}


def _eq(a: Any, b: Any) -> bool:
    if isinstance(a, (list, array.array)):
        return list(a) == list(b)
    return a == b


def _base_default(typename: str) -> Any:
    if typename in INT_RANGES:
        return 0
    if typename in FLOATS:
        return 0.0
    return {"bool": False, "string": "", "wstring": "", "byte": b"\x00", "octet": b"\x00"}[typename]


def _default(spec: Any, classes: dict[str, type]) -> Any:
    kind, info = spec
    if kind == Nodetype.BASE:
        return _base_default(info[0])
    if kind == Nodetype.NAME:
        return classes[info]()
    inner, size = info
    if kind == Nodetype.ARRAY:
        return [_default(inner, classes) for _ in range(size)]
    if inner[0] == Nodetype.BASE and inner[1][0] == "uint8":
        return array.array("B")
    return []


def _check_base(where: str, typename: str, value: Any) -> Any:
    if typename in INT_RANGES:
        lo, hi = INT_RANGES[typename]
        if isinstance(value, bool) or not isinstance(value, int):
            raise AssertionError(f"The '{where}' field must be of type 'int'")
        if not lo <= value <= hi:
            raise AssertionError(f"The '{where}' field must be an integer in [{lo}, {hi}]")
        return value
    if typename in FLOATS:
        if not isinstance(value, float):
            raise AssertionError(f"The '{where}' field must be of type 'float'")
        return value
    if typename == "bool":
        if not isinstance(value, bool):
            raise AssertionError(f"The '{where}' field must be of type 'bool'")
        return value
    if typename in ("string", "wstring"):
        if not isinstance(value, str):
            raise AssertionError(f"The '{where}' field must be of type 'str'")
        return value
    if typename in ("byte", "octet"):
        if not (isinstance(value, bytes) and len(value) == 1):
            raise AssertionError(f"The '{where}' field must be of type 'bytes' with length 1")
        return value
    raise AssertionError(f"unsupported base type {typename}")


def _checked(msgtype: str, name: str, spec: Any, value: Any, classes: dict[str, type]) -> Any:
    where = name
    kind, info = spec
    if kind == Nodetype.BASE:
        return _check_base(where, info[0], value)
    if kind == Nodetype.NAME:
        if type(value) is not classes[info]:
            raise AssertionError(f"The '{where}' field must be a sub message of type '{info.split('/')[-1]}'")
        return value
    inner, size = info
    if inner[0] == Nodetype.BASE and inner[1][0] == "uint8" and isinstance(value, (bytes, bytearray, memoryview)):
        value = array.array("B", bytes(value))
    if isinstance(value, str) or not hasattr(value, "__len__") or not hasattr(value, "__iter__"):
        raise AssertionError(f"The '{where}' field must be a set or sequence")
    if kind == Nodetype.ARRAY and len(value) != size:
        raise AssertionError(f"The '{where}' field must be a sequence with length {size}")
    if kind == Nodetype.SEQUENCE and size and len(value) > size:
        raise AssertionError(f"The '{where}' field must be a sequence with length <= {size}")
    items = [_checked(msgtype, f"{name}[]", inner, v.item() if hasattr(v, "item") else v, classes) for v in value]
    if isinstance(value, array.array):
        return value
    if inner[0] == Nodetype.BASE and inner[1][0] == "uint8" and kind == Nodetype.SEQUENCE:
        return array.array("B", items)
    return items


def build_classes() -> dict[str, type]:
    store = get_typestore(Stores.ROS2_HUMBLE)
    classes: dict[str, type] = {}
    for msgtype, (consts, fields) in store.fielddefs.items():
        if msgtype.split("/")[0] not in PACKAGES or "/msg/" not in msgtype:
            continue
        attrs: dict[str, Any] = {"_type": msgtype, "_fields": dict(fields), "_classes": classes, "__slots__": ()}
        for cname, ctype, cvalue in consts:
            attrs[cname] = bytes([cvalue]) if ctype in ("byte", "octet") else cvalue
        classes[msgtype] = type(msgtype.split("/")[-1], (FakeMessage,), attrs)
    return classes


def install_message_modules() -> None:
    classes = build_classes()
    for package in PACKAGES:
        pkg = types.ModuleType(package)
        msg = types.ModuleType(f"{package}.msg")
        for msgtype, cls in classes.items():
            if msgtype.startswith(f"{package}/msg/"):
                setattr(msg, cls.__name__, cls)
        pkg.msg = msg  # type: ignore[attr-defined]
        pkg.__path__ = []  # a package, so "from pkg.msg import X" works
        sys.modules[package] = pkg
        sys.modules[f"{package}.msg"] = msg
