"""Strict config loading: a frozen dataclass from a JSON object, where an unknown key is an error."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from retina_deploy.core.errors import ConfigError


def from_dict_strict(cls, d: Mapping[str, Any], what: str):
    """Build dataclass ``cls`` from ``d``; an unknown key is a ConfigError naming it."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"{what} config must be a JSON object, got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown {what} config key(s) {unknown}; known keys: {sorted(known)}")
    try:
        return cls(**d)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # a value of the wrong type, e.g. a string compared with a number
        raise ConfigError(f"bad {what} config: {e}") from e
