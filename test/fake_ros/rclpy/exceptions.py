class ParameterException(Exception):
    pass


class ParameterNotDeclaredException(ParameterException):
    pass


class ParameterAlreadyDeclaredException(ParameterException):
    pass


class InvalidParameterTypeException(ParameterException):
    def __init__(self, parameter, expected_type):
        super().__init__(
            f"Trying to set parameter '{parameter.name}' of type '{parameter.type_}', expected '{expected_type}'"
        )


class InvalidParameterValueException(ParameterException):
    def __init__(self, parameter, value, reason):
        super().__init__(f"Invalid parameter value ({value}) for parameter. Reason: {reason}")


class ParameterImmutableException(ParameterException):
    pass


class InvalidTopicNameException(Exception):
    pass
