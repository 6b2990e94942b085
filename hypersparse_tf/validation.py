"""Argument checks shared by every module, with one wording for their errors.

Each check returns the value in its plain Python type, or raises with a message
that names the argument, says what was expected and shows what was received,
in the form of Keras' own checks:

    Invalid value for argument `eta`. Expected a float > 1. Received: eta=0.9

Bools are never accepted where a number is expected.
"""

import math
import numbers


def invalid(name, expected, received):
    """The message for a bad argument: `Invalid value for argument ...`."""
    return (
        f"Invalid value for argument `{name}`. Expected {expected}. "
        f"Received: {name}={received!r}"
    )


def is_int(value):
    """Whether `value` is an integer and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value):
    """Whether `value` is a real number and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(value, name, minimum=None, maximum=None, allow_none=False):
    """Returns `value` as an int after checking `minimum <= value <= maximum`.

    Args:
        value: The argument's value.
        name: String. The argument's name.
        minimum: Int or None. Smallest value allowed. Defaults to `None`.
        maximum: Int or None. Largest value allowed. Defaults to `None`.
        allow_none: Bool. Whether `None` is allowed (and returned). Defaults
            to `False`.
    """
    if value is None and allow_none:
        return None
    if (
        not is_int(value)
        or (minimum is not None and value < minimum)
        or (maximum is not None and value > maximum)
    ):
        expected = "an int"
        if minimum is not None and maximum is not None:
            expected = f"an int in [{minimum}, {maximum}]"
        elif minimum is not None:
            expected = f"an int >= {minimum}"
        elif maximum is not None:
            expected = f"an int <= {maximum}"
        if allow_none:
            expected = f"None or {expected}"
        raise ValueError(invalid(name, expected, value))
    return int(value)


def _interval(low, high, low_open, high_open):
    if low is not None and high is not None:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        return f"in {left}{low}, {high}{right}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return ""


def check_float(
    value,
    name,
    minimum=None,
    maximum=None,
    *,
    exclusive_minimum=False,
    exclusive_maximum=False,
    allow_none=False,
    meaning=None,
):
    """Returns `value` as a float after checking it is finite and in range.

    Args:
        value: The argument's value.
        name: String. The argument's name.
        minimum: Float or None. Lower bound. Defaults to `None`.
        maximum: Float or None. Upper bound. Defaults to `None`.
        exclusive_minimum: Bool. Whether `value` must exceed `minimum`.
            Defaults to `False`.
        exclusive_maximum: Bool. Whether `value` must stay below `maximum`.
            Defaults to `False`.
        allow_none: Bool. Whether `None` is allowed (and returned). Defaults
            to `False`.
        meaning: String or None. What the value means, added to the message.
            Defaults to `None`.
    """
    if value is None and allow_none:
        return None
    valid = is_real(value) and math.isfinite(value)
    if valid and minimum is not None:
        valid = value > minimum if exclusive_minimum else value >= minimum
    if valid and maximum is not None:
        valid = value < maximum if exclusive_maximum else value <= maximum
    if not valid:
        interval = _interval(minimum, maximum, exclusive_minimum, exclusive_maximum)
        expected = f"a finite float {interval}".rstrip()
        if meaning:
            expected = f"{expected}, {meaning}"
        if allow_none:
            expected = f"None or {expected}"
        raise ValueError(invalid(name, expected, value))
    return float(value)


def check_fraction(value, name="prune_rate", meaning="the fraction to remove"):
    """Returns `value` as a float after checking it lies in (0, 1)."""
    return check_float(
        value,
        name,
        0,
        1,
        exclusive_minimum=True,
        exclusive_maximum=True,
        meaning=meaning,
    )


def check_bool(value, name):
    """Returns `value` after checking it is a bool."""
    if not isinstance(value, bool):
        raise TypeError(invalid(name, "a bool", value))
    return value


def check_choice(value, name, choices):
    """Returns `value` after checking it is one of `choices`."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(invalid(name, f"one of {list(choices)}", value))
    return value


def check_callable(value, name, signature, allow_none=True):
    """Returns `value` after checking it is callable (or None if allowed).

    Args:
        value: The argument's value.
        name: String. The argument's name.
        signature: String. What the callable takes and returns, e.g.
            `"(layer, weight) -> bool"`.
        allow_none: Bool. Whether `None` is allowed. Defaults to `True`.
    """
    if (value is None and allow_none) or callable(value):
        return value
    expected = f"a callable {signature}" + (" or None" if allow_none else "")
    raise TypeError(invalid(name, expected, value))


def check_string(value, name, allow_none=True):
    """Returns `value` after checking it is a non-empty string (or None)."""
    if (value is None and allow_none) or (isinstance(value, str) and value):
        return value
    expected = "a non-empty string" + (" or None" if allow_none else "")
    raise TypeError(invalid(name, expected, value))
