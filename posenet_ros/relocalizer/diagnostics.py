"""Counters, latency and rate windows for /diagnostics, and the level they give."""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

from posenet_ros.engine import Localization


def window_rate(times: deque[float] | list[float], now: float, window_s: float) -> tuple[float, int]:
    """(events per second, event count) over the last ``window_s`` seconds; the rate needs two events."""
    recent = [t for t in times if now - t <= window_s]
    if len(recent) < 2 or recent[-1] <= recent[0]:
        return 0.0, len(recent)
    return (len(recent) - 1) / (recent[-1] - recent[0]), len(recent)


class NodeStats:
    """Counters, a latency window and receive/publish times for /diagnostics. Thread-safe
    (subscription callback vs inference worker vs diagnostics timer)."""

    def __init__(self, window: int = 200, window_s: float = 10.0) -> None:
        self._lock = threading.Lock()
        self.window_s = window_s  # what "recent" means for rates and levels
        self.received = 0
        self.published = 0
        self.dropped_stale = 0
        self.rejected = 0
        self.non_finite = 0
        self.errors = 0  # unexpected failures the worker survived (CUDA OOM, a converter bug, ...)
        self.overruns = 0
        self.tf_failures = 0
        self.tf_conflicts = 0
        self.refine_attempts = 0  # frames refined against a map, or tried
        self.refined = 0
        self.position_std_last: float | None = None
        self.uncertainty_score_last: float | None = None  # position std / the model's calibrated reference
        self.last_drop_reason = ""
        self._latency_ms: deque[float] = deque(maxlen=window)
        # The recent refinements: their time, and the inliers of the accepted ones.
        self._refine_ms: deque[float] = deque(maxlen=window)
        self._refine_inliers: deque[int] = deque(maxlen=window)
        self._crops: deque[int] = deque(maxlen=window)
        self._publish_times: deque[float] = deque(maxlen=window)
        self._receive_times: deque[float] = deque(maxlen=max(window, 600))

    def count(self, name: str, n: int = 1, reason: str = "") -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)
            if reason:
                self.last_drop_reason = reason

    def received_frame(self, wall_time: float | None = None) -> None:
        with self._lock:
            self.received += 1
            self._receive_times.append(time.monotonic() if wall_time is None else wall_time)

    def record(self, loc: Localization, position_std_m: float, wall_time: float | None = None) -> None:
        with self._lock:
            self.published += 1
            self.refine_attempts += int(loc.refine_attempted)
            self.refined += int(loc.refined)
            if loc.refine_attempted:
                self._refine_ms.append(loc.refine_ms)
            if loc.refined:
                self._refine_inliers.append(loc.inliers)
            self.position_std_last = position_std_m
            self.uncertainty_score_last = loc.uncertainty_score
            self.overruns += int(loc.overrun)
            self._latency_ms.append(loc.latency.total_ms)
            self._crops.append(loc.crops)
            self._publish_times.append(time.monotonic() if wall_time is None else wall_time)

    def summary(self, skipped: int, now: float | None = None) -> dict[str, float | int]:
        with self._lock:
            now = time.monotonic() if now is None else now
            rate, recent_published = window_rate(self._publish_times, now, self.window_s)
            input_rate, recent_received = window_rate(self._receive_times, now, self.window_s)
            last_input = self._receive_times[-1] if self._receive_times else None
            lat = np.asarray(self._latency_ms) if self._latency_ms else np.zeros(1)
            return {
                "window_s": self.window_s,
                "rate_hz": rate,
                "input_rate_hz": input_rate,
                "recent_published": recent_published,
                "recent_received": recent_received,
                "seconds_since_input": (now - last_input) if last_input is not None else float("nan"),
                "latency_p50_ms": float(np.percentile(lat, 50)),
                "latency_p95_ms": float(np.percentile(lat, 95)),
                "crops_last": self._crops[-1] if self._crops else 0,
                "received": self.received,
                "published": self.published,
                "skipped": skipped,
                "dropped_stale": self.dropped_stale,
                "rejected": self.rejected,
                "non_finite": self.non_finite,
                "errors": self.errors,
                "overruns": self.overruns,
                "tf_failures": self.tf_failures,
                "tf_conflicts": self.tf_conflicts,
                "refine_attempts": self.refine_attempts,
                "refined": self.refined,
                # Over the last refinements (NaN: none yet).
                "refine_latency_p50_ms": _percentile(self._refine_ms, 50),
                "refine_latency_p95_ms": _percentile(self._refine_ms, 95),
                "refine_inliers_median": _percentile(self._refine_inliers, 50),
                "position_std_last_m": self.position_std_last if self.position_std_last is not None else float("nan"),
                "uncertainty_score_last": (
                    self.uncertainty_score_last if self.uncertainty_score_last is not None else float("nan")
                ),
            }


def _percentile(values: deque, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


OK, WARN, ERROR = 0, 1, 2  # diagnostic_msgs/DiagnosticStatus levels


def diagnostic_level(
    summary: dict[str, float | int],
    budget_ms: float,
    worker_error: str = "",
    last_drop_reason: str = "",
    camera_warning: str = "",
) -> tuple[int, str]:
    """Level and a short message from the recent publish rate against the input rate.

    A ``camera_warning`` (the live camera's field of view differs from the training camera's and
    cropping could not fix it) makes an otherwise good state a WARN: the poses are biased.

    A node that receives frames but has published nothing in the last window is an ERROR whatever
    it published before; publishing at less than half of what it could (the input rate, or what
    inference keeps up with when the camera is faster) is a WARN: frames are being refused.
    """
    if worker_error:
        return ERROR, f"inference stopped: {worker_error}"
    why = f" (last: {last_drop_reason})" if last_drop_reason else ""
    if summary["received"] == 0:
        return WARN, "no image received yet"
    if summary["recent_received"] == 0:
        return WARN, f"no image for {summary['seconds_since_input']:.0f} s"
    if summary["recent_published"] == 0:
        return (
            ERROR,
            f"receiving {summary['input_rate_hz']:.1f} Hz but no pose published in {summary['window_s']:g} s{why}",
        )
    capacity = 1000.0 / summary["latency_p50_ms"] if summary["latency_p50_ms"] > 0 else float("inf")
    expected = min(summary["input_rate_hz"], capacity)
    if summary["recent_published"] >= 3 and summary["rate_hz"] < 0.5 * expected:
        return WARN, f"publishing {summary['rate_hz']:.1f} Hz of {summary['input_rate_hz']:.1f} Hz input{why}"
    if budget_ms > 0 and summary["latency_p95_ms"] > budget_ms:
        return WARN, f"p95 latency {summary['latency_p95_ms']:.1f} ms over the {budget_ms:.1f} ms budget"
    if camera_warning:
        return WARN, camera_warning
    return OK, "localizing"
