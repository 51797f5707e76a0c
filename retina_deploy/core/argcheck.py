"""Checks of the library's numeric arguments, one rule everywhere: integers are Python or numpy integers
(never bools, floats or strings), refused with a ``ConfigError`` naming the argument and the value."""

from __future__ import annotations

import numbers

from retina_deploy.core.errors import ConfigError


def is_int(value) -> bool:
    """True for a Python or numpy integer, False for bools and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def int_at_least(name: str, value, low: int) -> int:
    """``value`` as a Python int if it is an integer >= ``low``; ConfigError naming ``name`` otherwise."""
    if not is_int(value) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r} ({type(value).__name__})")
    return int(value)
