from __future__ import annotations

from enum import Enum


class Parameter:
    class Type(Enum):
        NOT_SET = 0
        BOOL = 1
        INTEGER = 2
        DOUBLE = 3
        STRING = 4
        BYTE_ARRAY = 5
        BOOL_ARRAY = 6
        INTEGER_ARRAY = 7
        DOUBLE_ARRAY = 8
        STRING_ARRAY = 9

        @classmethod
        def from_parameter_value(cls, parameter_value):
            if parameter_value is None:
                return cls.NOT_SET
            if isinstance(parameter_value, bool):
                return cls.BOOL
            if isinstance(parameter_value, int):
                return cls.INTEGER
            if isinstance(parameter_value, float):
                return cls.DOUBLE
            if isinstance(parameter_value, str):
                return cls.STRING
            if isinstance(parameter_value, (list, tuple)):
                kinds = {type(v) for v in parameter_value}
                for kind, t in (
                    (bool, cls.BOOL_ARRAY),
                    (int, cls.INTEGER_ARRAY),
                    (float, cls.DOUBLE_ARRAY),
                    (str, cls.STRING_ARRAY),
                ):
                    if kinds <= {kind}:
                        return t
            raise TypeError(f"The given value is not one of the allowed types '{parameter_value}'.")

    def __init__(self, name, type_=None, value=None):
        if type_ is None:
            type_ = Parameter.Type.from_parameter_value(value)
        self._type_ = type_
        self._name = name
        self._value = value

    @property
    def name(self):
        return self._name

    @property
    def value(self):
        return self._value

    @property
    def type_(self):
        return self._type_
