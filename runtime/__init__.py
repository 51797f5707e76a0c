"""Torch-free inference: preprocessing, backends and the Detector.

The public API::

    from retina_deploy.runtime import Detector, BatchingDetector, Detections, QueueFullError

Never import torch here (tests run this package with torch made unimportable). Names are resolved
on first use, so ``import retina_deploy.runtime`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_PUBLIC = {
    "Detector": "retina_deploy.runtime.detector",
    "Detections": "retina_deploy.runtime.post.detections",
    "BatchingDetector": "retina_deploy.runtime.batching",
    "QueueFullError": "retina_deploy.runtime.batching",
    "RequestTimeoutError": "retina_deploy.runtime.batching",
    "BatcherClosedError": "retina_deploy.runtime.batching",
    "Backend": "retina_deploy.runtime.contract.spec",
    "ModelSpec": "retina_deploy.runtime.contract.spec",
}
__all__ = [
    "Backend",
    "BatcherClosedError",
    "BatchingDetector",
    "Detections",
    "Detector",
    "ModelSpec",
    "QueueFullError",
    "RequestTimeoutError",
]

if TYPE_CHECKING:
    from retina_deploy.runtime.batching import (
        BatcherClosedError,
        BatchingDetector,
        QueueFullError,
        RequestTimeoutError,
    )
    from retina_deploy.runtime.contract.spec import Backend, ModelSpec
    from retina_deploy.runtime.detector import Detector
    from retina_deploy.runtime.post.detections import Detections


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'retina_deploy.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
