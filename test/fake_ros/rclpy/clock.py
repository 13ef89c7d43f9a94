from __future__ import annotations

import time as _time
from enum import IntEnum


class ClockType(IntEnum):
    UNINITIALIZED = 0
    ROS_TIME = 1
    SYSTEM_TIME = 2
    STEADY_TIME = 3


class Clock:
    def __init__(self, *, clock_type=ClockType.SYSTEM_TIME):
        if not isinstance(clock_type, ClockType):
            raise TypeError("Clock type must be a ClockType enum")
        self._clock_type = clock_type

    @property
    def clock_type(self):
        return self._clock_type

    def now(self):
        from rclpy.time import Time

        return Time(nanoseconds=_time.time_ns(), clock_type=self._clock_type)


class ROSClock(Clock):
    """ROS time: wall time, or the last /clock message while sim time is active."""

    def __init__(self):
        super().__init__(clock_type=ClockType.ROS_TIME)
        self._active = False
        self._override_ns = 0

    @property
    def ros_time_is_active(self):
        return self._active

    def _set_ros_time_is_active(self, enabled):
        self._active = bool(enabled)

    def set_ros_time_override(self, time):
        self._override_ns = time.nanoseconds

    def now(self):
        from rclpy.time import Time

        if self._active:
            return Time(nanoseconds=self._override_ns, clock_type=self._clock_type)
        return super().now()
