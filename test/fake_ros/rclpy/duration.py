from __future__ import annotations


class Duration:
    def __init__(self, *, seconds=0, nanoseconds=0):
        total = int(seconds * 1e9) + int(nanoseconds)
        if not -(2**63) <= total < 2**63:
            raise OverflowError("Total nanoseconds value is too large to store in C time point.")
        self._nanoseconds = total

    @property
    def nanoseconds(self):
        return self._nanoseconds

    def __eq__(self, other):
        return isinstance(other, Duration) and other.nanoseconds == self.nanoseconds
