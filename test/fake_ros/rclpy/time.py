from __future__ import annotations

from rclpy.clock import ClockType
from rclpy.duration import Duration


class Time:
    def __init__(self, *, seconds=0, nanoseconds=0, clock_type: ClockType = ClockType.SYSTEM_TIME):
        if not isinstance(clock_type, ClockType):
            raise TypeError("Clock type must be a ClockType enum")
        if seconds < 0 or nanoseconds < 0:
            raise ValueError("Seconds and nanoseconds must not be negative")
        total = int(seconds * 1_000_000_000) + int(nanoseconds)
        if total >= 2**63:
            raise OverflowError("Total nanoseconds value is too large to store in C time point.")
        self._nanoseconds = total
        self._clock_type = clock_type

    @property
    def nanoseconds(self):
        return self._nanoseconds

    @property
    def clock_type(self):
        return self._clock_type

    def seconds_nanoseconds(self):
        return divmod(self._nanoseconds, 1_000_000_000)

    def __add__(self, other):
        if not isinstance(other, Duration):
            return NotImplemented
        return Time(nanoseconds=self._nanoseconds + other.nanoseconds, clock_type=self._clock_type)

    def __sub__(self, other):
        if isinstance(other, Time):
            if other.clock_type != self.clock_type:
                raise TypeError("Can't subtract times with different clock types")
            return Duration(nanoseconds=self._nanoseconds - other.nanoseconds)
        if isinstance(other, Duration):
            return Time(nanoseconds=self._nanoseconds - other.nanoseconds, clock_type=self._clock_type)
        return NotImplemented

    def __eq__(self, other):
        if not isinstance(other, Time):
            raise TypeError("Can't compare time with object of type: ", type(other))
        if other.clock_type != self.clock_type:
            raise TypeError("Can't compare times with different clock types")
        return self._nanoseconds == other.nanoseconds

    def to_msg(self):
        from builtin_interfaces.msg import Time as TimeMsg

        sec, nanosec = self.seconds_nanoseconds()
        return TimeMsg(sec=sec, nanosec=nanosec)

    @classmethod
    def from_msg(cls, msg, clock_type: ClockType = ClockType.ROS_TIME):
        from builtin_interfaces.msg import Time as TimeMsg

        if not isinstance(msg, TimeMsg):
            raise TypeError("Must pass a builtin_interfaces.msg.Time object")
        return cls(seconds=msg.sec, nanoseconds=msg.nanosec, clock_type=clock_type)
