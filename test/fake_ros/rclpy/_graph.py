"""The fake's in-process ROS graph: topics by resolved name, what each node published, logs."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any


class Graph:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.subscriptions: dict[str, list[Any]] = defaultdict(list)
        self.publishers: dict[str, list[Any]] = defaultdict(list)
        self.published: dict[str, list[Any]] = defaultdict(list)
        self.logs: list[tuple[str, str, str]] = []  # (logger, severity, message)
        self.initialized = False
        self.global_args: list[str] = []  # rclpy.init(args=...): --ros-args every node sees

    def deliver(self, topic: str, msg: Any) -> int:
        """Hand ``msg`` to every subscription on ``topic`` (as the executor would); returns how many."""
        with self.lock:
            subs = list(self.subscriptions.get(topic, []))
        for sub in subs:
            if not isinstance(msg, sub.msg_type):
                raise TypeError(f"{topic}: a {type(msg).__name__} delivered to a {sub.msg_type.__name__} subscription")
            sub.callback(msg)
        return len(subs)

    def record(self, topic: str, msg: Any, qos: Any) -> None:
        """A publisher's message: kept for the test, delivered to QoS-compatible subscriptions."""
        from rclpy.qos import compatible

        with self.lock:
            self.published[topic].append(msg)
            subs = [s for s in self.subscriptions.get(topic, []) if compatible(qos, s.qos)]
        for sub in subs:
            sub.callback(msg)


GRAPH = Graph()


def reset() -> Graph:
    global GRAPH
    GRAPH.__init__()  # type: ignore[misc]
    return GRAPH
