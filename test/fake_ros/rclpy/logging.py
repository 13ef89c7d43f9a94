from __future__ import annotations

import time
from typing import Any

from rclpy._graph import GRAPH

# The filters rcutils_logger supports (checked against the real source in the conformance test).
SUPPORTED_FILTERS = ("throttle_duration_sec", "throttle_time_source_type", "skip_first", "once")


class FakeLogger:
    def __init__(self, name: str) -> None:
        self.name = name
        self._last: dict[tuple[str, str], float] = {}

    def log(self, message: str, severity: str, **kwargs: Any) -> bool:
        unknown = set(kwargs) - set(SUPPORTED_FILTERS)
        if unknown:
            raise TypeError(f"unsupported logging filter(s): {', '.join(sorted(unknown))}")
        if not isinstance(message, str):
            raise TypeError("log message must be a str")
        throttle = kwargs.get("throttle_duration_sec")
        if throttle is not None:
            key = (severity, message)  # the real one keys by call site; message is close enough here
            now = time.monotonic()
            if now - self._last.get(key, -1e9) < throttle:
                return False
            self._last[key] = now
        GRAPH.logs.append((self.name, severity, message))
        return True

    def debug(self, message: str, **kwargs: Any) -> bool:
        return self.log(message, "DEBUG", **kwargs)

    def info(self, message: str, **kwargs: Any) -> bool:
        return self.log(message, "INFO", **kwargs)

    def warning(self, message: str, **kwargs: Any) -> bool:
        return self.log(message, "WARN", **kwargs)

    def warn(self, message: str, **kwargs: Any) -> bool:
        return self.log(message, "WARN", **kwargs)

    def error(self, message: str, **kwargs: Any) -> bool:
        return self.log(message, "ERROR", **kwargs)

    def fatal(self, message: str, **kwargs: Any) -> bool:
        return self.log(message, "FATAL", **kwargs)


def get_logger(name: str) -> FakeLogger:
    if not name:
        raise ValueError("Logger name must not be empty.")
    return FakeLogger(name)
