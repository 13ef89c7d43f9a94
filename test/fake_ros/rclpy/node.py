"""Fake rclpy.node.Node: parameters with descriptors enforced as rclpy enforces them (static types,
read-only, integer/floating point ranges, on-set callbacks), topic name resolution with remapping,
publishers and subscriptions on the in-process graph, timers driven by tests, sim time via /clock."""

from __future__ import annotations

import math
import re
import sys
from typing import Any

import yaml
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy._graph import GRAPH
from rclpy.clock import ROSClock
from rclpy.exceptions import (
    InvalidParameterTypeException,
    InvalidParameterValueException,
    InvalidTopicNameException,
    ParameterAlreadyDeclaredException,
    ParameterNotDeclaredException,
)
from rclpy.logging import get_logger
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from rclpy.time import Time

TOPIC_RE = re.compile(r"^(~/|/)?[A-Za-z_{][A-Za-z0-9_/{}]*$")


class Publisher:
    def __init__(self, node: Node, msg_type: type, topic: str, qos: QoSProfile) -> None:
        self.msg_type, self.topic, self.qos = msg_type, topic, qos
        self._node = node

    @property
    def topic_name(self) -> str:
        return self.topic

    def publish(self, msg: Any) -> None:
        if not isinstance(msg, self.msg_type):
            raise TypeError(f"Expected {self.msg_type.__name__}, got {type(msg).__name__}")
        if self._node._destroyed:
            raise RuntimeError("publisher's node was destroyed")
        GRAPH.record(self.topic, msg, self.qos)


class Subscription:
    def __init__(self, msg_type: type, topic: str, callback: Any, qos: QoSProfile) -> None:
        self.msg_type, self.topic, self.callback, self.qos = msg_type, topic, callback, qos


class Timer:
    def __init__(self, period: float, callback: Any) -> None:
        self.timer_period_ns = int(period * 1e9)
        self.callback = callback


def _ros_args(argv: list[str]) -> list[str]:
    """The part of a command line after --ros-args (up to a closing --)."""
    if "--ros-args" not in argv:
        return []
    rest = argv[argv.index("--ros-args") + 1 :]
    return rest[: rest.index("--")] if "--" in rest else rest


def _parse_cli(args: list[str] | None) -> tuple[dict[str, str], dict[str, Any], list[str]]:
    remaps: dict[str, str] = {}
    params: dict[str, Any] = {}
    files: list[str] = []
    if not args:
        return remaps, params, files
    it = iter(args)
    for a in it:
        if a == "--ros-args":
            continue
        if a in ("-r", "--remap"):
            src, dst = next(it).split(":=", 1)
            remaps[src] = dst
        elif a in ("-p", "--param"):
            name, value = next(it).split(":=", 1)
            params[name] = yaml.safe_load(value)
        elif a == "--params-file":
            files.append(next(it))
        else:
            raise ValueError(f"fake rclpy: unsupported argument {a!r}")
    return remaps, params, files


class Node:
    PARAM_REL_TOL = 1e-6

    def __init__(
        self,
        node_name: str,
        *,
        context: Any = None,
        cli_args: list[str] | None = None,
        namespace: str | None = None,
        use_global_arguments: bool = True,
        enable_rosout: bool = True,
        start_parameter_services: bool = True,
        parameter_overrides: list[Parameter] | None = None,
        allow_undeclared_parameters: bool = False,
        automatically_declare_parameters_from_overrides: bool = False,
    ) -> None:
        if not GRAPH.initialized:
            raise RuntimeError("rclpy.init() has not been called")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", node_name):
            raise ValueError(f"invalid node name {node_name!r}")
        self._name = node_name
        ns = namespace or "/"
        self._namespace = ns if ns.startswith("/") else "/" + ns
        global_args = [a for a in GRAPH.global_args if a != sys.argv[0]] if use_global_arguments else []
        self._remaps, cli_params, files = _parse_cli(_ros_args(global_args) + list(cli_args or []))
        self._overrides: dict[str, Parameter] = {}
        for path in files:
            with open(path) as f:
                data = yaml.safe_load(f) or {}
            for key, section in data.items():
                if key in ("/**", node_name, f"{self._namespace.rstrip('/')}/{node_name}"):
                    for name, value in (section or {}).get("ros__parameters", {}).items():
                        self._overrides[name] = Parameter(name, value=value)
        for name, value in cli_params.items():
            self._overrides[name] = Parameter(name, value=value)
        for p in parameter_overrides or []:
            self._overrides[p.name] = p
        self._parameters: dict[str, Parameter] = {}
        self._descriptors: dict[str, ParameterDescriptor] = {}
        self._callbacks: list[Any] = []
        self._logger = get_logger(node_name)
        self._clock = ROSClock()
        self.publishers: list[Publisher] = []
        self.subscriptions: list[Subscription] = []
        self.timers: list[Timer] = []
        self._destroyed = False
        use_sim_time = self.declare_parameter("use_sim_time", False).value
        if use_sim_time:
            from rosgraph_msgs.msg import Clock as ClockMsg

            self._clock._set_ros_time_is_active(True)
            self.create_subscription(ClockMsg, "/clock", self._on_clock, 10)

    def _on_clock(self, msg: Any) -> None:
        self._clock.set_ros_time_override(Time.from_msg(msg.clock))

    # -- names -------------------------------------------------------------------------------------

    def get_name(self) -> str:
        return self._name

    def get_namespace(self) -> str:
        return self._namespace

    def get_clock(self):
        return self._clock

    def get_logger(self):
        return self._logger

    def resolve_topic_name(self, topic: str, *, only_expand: bool = False) -> str:
        if not isinstance(topic, str) or not TOPIC_RE.match(topic) or "//" in topic or topic.endswith("/"):
            raise InvalidTopicNameException(f"invalid topic name {topic!r}")
        ns = self._namespace.rstrip("/")
        if topic.startswith("~/"):
            full = f"{ns}/{self._name}/{topic[2:]}"
        elif topic.startswith("/"):
            full = topic
        else:
            full = f"{ns}/{topic}"
        if only_expand:
            return full
        for src in (topic, full):
            if src in self._remaps:
                dst = self._remaps[src]
                return dst if dst.startswith("/") else f"{ns}/{dst}"
        return full

    # -- parameters --------------------------------------------------------------------------------

    def declare_parameter(
        self, name: str, value: Any = None, descriptor: ParameterDescriptor | None = None, ignore_override: bool = False
    ) -> Parameter:
        if name in self._parameters:
            raise ParameterAlreadyDeclaredException([name])
        descriptor = ParameterDescriptor() if descriptor is None else descriptor
        if not isinstance(descriptor, ParameterDescriptor):
            raise TypeError("descriptor is not a ParameterDescriptor")
        if value is None:
            raise TypeError(f"fake rclpy: declare {name!r} with a default value (rclpy deprecates name-only)")
        descriptor.type = Parameter.Type.from_parameter_value(value).value
        descriptor.name = name
        if not ignore_override and name in self._overrides:
            value = self._overrides[name].value
        param = Parameter(name, value=value)
        result = self._check(param, descriptor, check_read_only=False)
        if not result.successful:
            if result.reason.startswith("Wrong parameter type"):
                raise InvalidParameterTypeException(param, Parameter.Type(descriptor.type).name)
            raise InvalidParameterValueException(name, value, result.reason)
        self._parameters[name] = param
        self._descriptors[name] = descriptor
        return param

    def get_parameter(self, name: str) -> Parameter:
        if name not in self._parameters:
            raise ParameterNotDeclaredException(name)
        return self._parameters[name]

    def describe_parameter(self, name: str) -> ParameterDescriptor:
        if name not in self._descriptors:
            raise ParameterNotDeclaredException(name)
        return self._descriptors[name]

    def add_on_set_parameters_callback(self, callback: Any) -> None:
        self._callbacks.insert(0, callback)

    def set_parameters(self, parameter_list: list[Parameter]) -> list[SetParametersResult]:
        results = []
        for param in parameter_list:
            if param.name not in self._parameters:
                raise ParameterNotDeclaredException(param.name)
            result = self._check(param, self._descriptors[param.name], check_read_only=True)
            if result.successful:
                self._parameters[param.name] = param
            results.append(result)
        return results

    def _check(self, param: Parameter, descriptor: ParameterDescriptor, check_read_only: bool) -> SetParametersResult:
        if check_read_only and descriptor.read_only:
            return SetParametersResult(successful=False, reason=f"Trying to set a read-only parameter: {param.name}.")
        if param.type_.value != descriptor.type:
            return SetParametersResult(
                successful=False,
                reason=f"Wrong parameter type, expected '{Parameter.Type(descriptor.type)}' got '{param.type_}'",
            )
        if param.type_ == Parameter.Type.INTEGER and descriptor.integer_range:
            r = descriptor.integer_range[0]
            lo, hi = min(r.from_value, r.to_value), max(r.from_value, r.to_value)
            if not lo <= param.value <= hi or (r.step and (param.value - lo) % r.step):
                return SetParametersResult(
                    successful=False,
                    reason=f"Parameter {param.name} out of range. Min: {lo}, Max: {hi}, value: {param.value}",
                )
        if param.type_ == Parameter.Type.DOUBLE and descriptor.floating_point_range:
            r = descriptor.floating_point_range[0]
            lo, hi = min(r.from_value, r.to_value), max(r.from_value, r.to_value)
            edge = math.isclose(param.value, lo, rel_tol=self.PARAM_REL_TOL) or math.isclose(
                param.value, hi, rel_tol=self.PARAM_REL_TOL
            )
            if not edge and not lo < param.value < hi:
                return SetParametersResult(
                    successful=False,
                    reason=f"Parameter {param.name} out of range Min: {lo}, Max: {hi}, value: {param.value}",
                )
        for callback in self._callbacks:
            result = callback([param])
            if not isinstance(result, SetParametersResult):
                raise TypeError("on-set-parameters callback must return a SetParametersResult")
            if not result.successful:
                return result
        return SetParametersResult(successful=True)

    # -- communication -----------------------------------------------------------------------------

    def create_publisher(
        self,
        msg_type,
        topic: str,
        qos_profile,
        *,
        callback_group=None,
        event_callbacks=None,
        qos_overriding_options=None,
        publisher_class=None,
    ):
        qos = self._qos(qos_profile)
        _check_msg_type(msg_type)
        pub = Publisher(self, msg_type, self.resolve_topic_name(topic), qos)
        self.publishers.append(pub)
        with GRAPH.lock:
            GRAPH.publishers[pub.topic].append(pub)
        return pub

    def create_subscription(
        self,
        msg_type,
        topic: str,
        callback,
        qos_profile,
        *,
        callback_group=None,
        event_callbacks=None,
        qos_overriding_options=None,
        raw: bool = False,
    ):
        qos = self._qos(qos_profile)
        _check_msg_type(msg_type)
        if not callable(callback):
            raise TypeError("subscription callback must be callable")
        sub = Subscription(msg_type, self.resolve_topic_name(topic), callback, qos)
        self.subscriptions.append(sub)
        with GRAPH.lock:
            for pub in GRAPH.publishers.get(sub.topic, []):
                if pub.msg_type is not msg_type:
                    raise TypeError(f"{sub.topic}: type mismatch {pub.msg_type.__name__} vs {msg_type.__name__}")
            GRAPH.subscriptions[sub.topic].append(sub)
        return sub

    def create_timer(self, timer_period_sec: float, callback, callback_group=None, clock=None):
        if not timer_period_sec > 0:
            raise ValueError("timer period must be > 0")
        timer = Timer(timer_period_sec, callback)
        self.timers.append(timer)
        return timer

    def destroy_node(self):
        self._destroyed = True
        with GRAPH.lock:
            for sub in self.subscriptions:
                GRAPH.subscriptions[sub.topic].remove(sub)

    @staticmethod
    def _qos(qos_profile: Any) -> QoSProfile:
        if isinstance(qos_profile, QoSProfile):
            return qos_profile
        if isinstance(qos_profile, int) and not isinstance(qos_profile, bool) and qos_profile > 0:
            from rclpy.qos import HistoryPolicy

            return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=qos_profile)
        raise TypeError(f"Expected QoSProfile or int, but received {type(qos_profile)!r}")


def _check_msg_type(msg_type: Any) -> None:
    if not isinstance(msg_type, type) or not hasattr(msg_type, "_fields"):
        raise TypeError(f"{msg_type!r} is not a message type")
