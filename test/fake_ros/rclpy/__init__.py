"""Fake rclpy: module-level functions with the real signatures (see test_rclpy_conformance.py)."""

from __future__ import annotations

from typing import Any

from rclpy import logging  # noqa: F401  (rclpy.logging.get_logger is used as an attribute)
from rclpy._graph import GRAPH


def init(
    *,
    args: list[str] | None = None,
    context: Any = None,
    domain_id: int | None = None,
    signal_handler_options: Any = None,
) -> None:
    if GRAPH.initialized:
        raise RuntimeError("Context.init() must only be called once")
    GRAPH.initialized = True
    GRAPH.global_args = list(args or [])


def ok(*, context: Any = None) -> bool:
    return GRAPH.initialized


def shutdown(*, context: Any = None, uninstall_handlers: bool | None = None) -> None:
    if not GRAPH.initialized:
        raise RuntimeError("Context must be initialized before it can be shutdown")
    GRAPH.initialized = False


def try_shutdown(*, context: Any = None) -> None:
    GRAPH.initialized = False


def spin(node: Any, executor: Any = None) -> None:
    """The fake has no executor loop: tests drive callbacks. A test may set ``spin_hook``."""
    if not GRAPH.initialized:
        raise RuntimeError("rclpy.init() has not been called")
    hook = getattr(node, "_fake_spin_hook", None) or SPIN_HOOK[0]
    if hook is not None:
        hook(node)


SPIN_HOOK: list[Any] = [None]
