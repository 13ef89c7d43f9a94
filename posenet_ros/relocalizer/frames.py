"""The frame path, as the node and the offline replay both run it: the newest-frame slot, the
stale check, image conversion, inference and the covariance, with the outcome counted."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from posenet_ros.engine import Engine, ImageError, Localization, NonFiniteOutputError, position_std
from posenet_ros.image_codec import ImageDecodeError
from posenet_ros.relocalizer.diagnostics import NodeStats
from posenet_ros.relocalizer.params import NodeSettings


@dataclass(frozen=True)
class Frame:
    msg: Any
    stamp_ns: int
    frame_id: str


class LatestFrameSlot:
    """One pending frame: a new frame replaces the waiting one (counted as skipped), so inference
    always works on the newest image and nothing queues behind it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._closed = False
        self.skipped = 0

    def put(self, frame: Frame) -> bool:
        """Store ``frame``; True when it replaced one that was never processed."""
        with self._cond:
            replaced = self._frame is not None
            self.skipped += int(replaced)
            self._frame = frame
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> Frame | None:
        with self._cond:
            if self._frame is None and not self._closed:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            return frame

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


def stamp_to_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def frame_age_ms(stamp_ns: int, now_ns: int) -> float:
    return (now_ns - stamp_ns) / 1e6


def is_stale(stamp_ns: int, now_ns: int, max_age_ms: float) -> bool:
    """Older than the limit by the node's clock (sim time under bag replay). 0 disables it."""
    return max_age_ms > 0 and frame_age_ms(stamp_ns, now_ns) > max_age_ms


# -- one frame, as the node and the offline replay both handle it ---------------------------------

# What happened to a frame; the counter of the same name in NodeStats counts it.
PUBLISHED, DROPPED_STALE, REJECTED, NON_FINITE = "published", "dropped_stale", "rejected", "non_finite"


@dataclass(frozen=True)
class FrameOutcome:
    status: str
    loc: Localization | None = None
    covariance: np.ndarray | None = None  # 6x6, ready for covariance_list
    reason: str = ""
    position_std: float | None = None  # of ``covariance`` (m), what max_position_std gates on


class RefineGate:
    """Refinement about ``rate_hz`` times per second of image time, never more than 1/SLACK times
    that (the node's ``refine_rate_hz``; 0: every frame). The slack keeps a camera's stamps, which
    fall a little short of a whole period, from skipping a frame more (30 Hz images at 10 Hz refined
    at 7.5 Hz without it). Time running backwards (a bag looping) restarts it."""

    SLACK = 0.9

    def __init__(self) -> None:
        self.last_ns: int | None = None

    def due(self, stamp_ns: int, rate_hz: float) -> bool:
        if rate_hz <= 0 or self.last_ns is None or stamp_ns < self.last_ns:
            return True
        return stamp_ns - self.last_ns >= self.SLACK * 1e9 / rate_hz

    def ran(self, stamp_ns: int) -> None:
        self.last_ns = stamp_ns


def localize_frame(
    engine: Engine,
    settings: NodeSettings,
    decode: Callable[[Any], tuple[np.ndarray, str]],
    frame: Frame,
    now_ns: int,
    stats: NodeStats,
    refine_gate: RefineGate | None = None,
) -> FrameOutcome:
    """Stale check, image conversion, inference (refined against the map where ``refine_gate``
    says it is due) and covariance for one frame, counted in ``stats``. Nothing here raises for a
    bad frame: the outcome says why it produced no pose."""
    if is_stale(frame.stamp_ns, now_ns, settings.max_frame_age_ms):
        reason = f"frame older than max_frame_age_ms={settings.max_frame_age_ms}"
        stats.count(DROPPED_STALE, reason=reason)
        return FrameOutcome(DROPPED_STALE, reason=reason)
    try:
        image, encoding = decode(frame.msg)
        crops = None if settings.latency_budget_ms > 0 else settings.crops
        refine = refine_gate is None or refine_gate.due(frame.stamp_ns, settings.refine_rate_hz)
        loc = engine.localize(image, encoding, crops=crops, refine=refine)
        if loc.refine_attempted and refine_gate is not None:
            refine_gate.ran(frame.stamp_ns)
    except (ImageDecodeError, ImageError) as exc:
        reason = f"rejected image: {exc}"
        stats.count(REJECTED, reason=reason)
        return FrameOutcome(REJECTED, reason=reason)
    except NonFiniteOutputError as exc:
        stats.count(NON_FINITE, reason=str(exc))
        return FrameOutcome(NON_FINITE, reason=str(exc))
    cov = pose_covariance(loc, settings.position_variance, settings.orientation_variance, settings.min_variance)
    std = position_std(cov)
    if 0 < settings.max_position_std < std:
        reason = f"position std {std:.3f} m above max_position_std={settings.max_position_std}"
        stats.count(REJECTED, reason=reason)
        return FrameOutcome(REJECTED, loc, cov, reason, std)
    stats.record(loc, std)
    return FrameOutcome(PUBLISHED, loc, cov, position_std=std)


def pose_covariance(
    loc: Localization, position_variance: float, orientation_variance: float, min_variance: float
) -> np.ndarray:
    """6x6 (x, y, z, rotX, rotY, rotZ). From the crop spread when several crops ran, else the
    configured variances. A spread of fewer than 7 samples is singular (rank <= n - 1), and a
    singular covariance claims certainty along some direction: every eigenvalue is floored at
    ``min_variance`` so the matrix is positive definite, whatever the sample count."""
    fixed = np.diag([position_variance] * 3 + [orientation_variance] * 3)
    cov = loc.covariance
    if cov is None or cov.shape != (6, 6) or not np.all(np.isfinite(cov)):
        return fixed
    values, vectors = np.linalg.eigh(0.5 * (cov + cov.T))
    cov = (vectors * np.maximum(values, min_variance)) @ vectors.T
    return 0.5 * (cov + cov.T)
