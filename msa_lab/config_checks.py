"""Checks for the fields of config files (sweep configs, training configs).

A config error is a ``ValueError`` naming the field's path in the file (``methods[2].backend``,
``train.lr``) and, for a typo, the closest known name. The public functions' argument checks
are ``validation.py``'s: they raise ``TypeError`` for a wrong type, which a YAML file's reader
would not expect.
"""

from __future__ import annotations

import difflib
import math


def did_you_mean(value, choices) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_known_fields(keys, allowed, where: str) -> None:
    for key in keys:
        if key not in allowed:
            raise ValueError(f"{where}: unknown field {key!r}{did_you_mean(key, allowed)} (known: {', '.join(allowed)})")


def field_list(value, where: str) -> list:
    """A list field, where a single value stands for a list of one."""
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError(f"{where} must not be an empty list")
    return values


def field_int(value, where: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{where} must be an int >= {minimum}, got {value}")
    return value


def field_number(value, where: str, minimum: float, *, above: bool = False) -> float:
    """A finite number ``>= minimum`` (``> minimum`` with ``above=True``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} must be a number {'>' if above else '>='} {minimum}, got {value!r}")
    if not math.isfinite(value) or value < minimum or (above and value == minimum):
        raise ValueError(f"{where} must be a finite number {'>' if above else '>='} {minimum}, got {value}")
    return value


def field_bool(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{where} must be true or false, got {value!r}")
    return value


def field_choice(value, where: str, choices) -> str:
    if value not in choices:
        raise ValueError(f"{where} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value
