"""The calibration cache: activation ranges keyed by what produced them, so a rebuild skips calibration.

One JSON file holds ``key`` (the source ONNX sha256, the calibration set's sha256, the method and its
settings, the ONNX Runtime version) and ``ranges`` ({tensor name: [lowest, highest]}, scalars or
lists as the calibrator made them). A cache whose
key differs is recomputed and overwritten; a file that is not a calibration cache is never overwritten.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationMethod
from onnxruntime.quantization.calibrate import TensorData, TensorsData

from retina_deploy.core.errors import ConfigError
from retina_deploy.core.fileio import write_json_atomic

FORMAT = "retina-deploy/calib-cache"
FORMAT_VERSION = 1
METHODS = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
           "percentile": CalibrationMethod.Percentile}  # fmt: skip


def read_cache(path: str | os.PathLike, key: Mapping[str, Any]) -> TensorsData | None:
    """The cached ranges if ``path`` holds a cache made under ``key``; None if absent or made under another key.

    Raises ConfigError if ``path`` exists but is not a calibration cache (so it is not overwritten).
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not a calibration cache ({e}); remove it or pass another --calib-cache") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path}: not a retina-deploy calibration cache; remove it or pass another --calib-cache")
    if data.get("format_version") != FORMAT_VERSION or data.get("key") != dict(key):
        return None
    method = METHODS[key["method"]]
    try:
        ranges = {
            name: TensorData(lowest=np.asarray(lo, np.float32), highest=np.asarray(hi, np.float32))
            for name, (lo, hi) in data["ranges"].items()
        }
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{path}: malformed calibration cache ({e}); remove it") from e
    return TensorsData(method, ranges)


def write_cache(path: str | os.PathLike, key: Mapping[str, Any], ranges: TensorsData) -> None:
    """Write ``ranges`` (only each tensor's lowest / highest) under ``key``, atomically."""
    body = {
        name: [np.asarray(td.range_value[0], np.float64).tolist(), np.asarray(td.range_value[1], np.float64).tolist()]
        for name, td in ranges.data.items()
    }
    try:
        write_json_atomic(path, {"format": FORMAT, "format_version": FORMAT_VERSION, "key": dict(key), "ranges": body})
    except OSError as e:
        raise ConfigError(f"{path}: cannot write the calibration cache ({e.strerror or e})") from e


__all__ = ["METHODS", "read_cache", "write_cache"]
