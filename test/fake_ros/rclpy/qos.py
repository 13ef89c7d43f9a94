from __future__ import annotations

from enum import IntEnum


class HistoryPolicy(IntEnum):
    SYSTEM_DEFAULT = 0
    KEEP_LAST = 1
    KEEP_ALL = 2
    UNKNOWN = 3


class ReliabilityPolicy(IntEnum):
    SYSTEM_DEFAULT = 0
    RELIABLE = 1
    BEST_EFFORT = 2
    UNKNOWN = 3


class DurabilityPolicy(IntEnum):
    SYSTEM_DEFAULT = 0
    TRANSIENT_LOCAL = 1
    VOLATILE = 2
    UNKNOWN = 3


class QoSProfile:
    __slots__ = ["_depth", "_durability", "_history", "_reliability"]

    def __init__(self, **kwargs):
        assert all("_" + key in self.__slots__ for key in kwargs), (
            f"Invalid arguments passed to constructor: {kwargs.keys()!r}"
        )
        if "history" not in kwargs and "depth" not in kwargs:
            raise TypeError("QoSProfile needs a history and/or depth setting")
        self._history = HistoryPolicy(kwargs.get("history", HistoryPolicy.KEEP_LAST))
        if self._history == HistoryPolicy.KEEP_LAST and not kwargs.get("depth"):
            raise ValueError("A QoSProfile with KEEP_LAST history needs depth >= 1")
        self._depth = kwargs.get("depth", 0)
        self._reliability = ReliabilityPolicy(kwargs.get("reliability", ReliabilityPolicy.RELIABLE))
        self._durability = DurabilityPolicy(kwargs.get("durability", DurabilityPolicy.VOLATILE))

    history = property(lambda self: self._history)
    depth = property(lambda self: self._depth)
    reliability = property(lambda self: self._reliability)
    durability = property(lambda self: self._durability)


qos_profile_sensor_data = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=5,
    reliability=ReliabilityPolicy.BEST_EFFORT,
    durability=DurabilityPolicy.VOLATILE,
)


def compatible(publisher: QoSProfile, subscription: QoSProfile) -> bool:
    """A best-effort publisher cannot feed a reliable subscription (DDS request/offer rule)."""
    return not (
        publisher.reliability == ReliabilityPolicy.BEST_EFFORT
        and subscription.reliability == ReliabilityPolicy.RELIABLE
    )
