"""``ServeConfig``: how ``serve`` batches and protects itself, each setting checked and bounded (torch-free)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from retina_deploy.core.argcheck import int_at_least
from retina_deploy.core.errors import ConfigError

# name: (0 excluded?, largest value). A day-long batching delay or a request that waits for hours is a
# typo, not a setting: a minute of batching delay and an hour of waiting are far beyond any real use.
CONFIG_BOUNDS = {
    "max_delay_ms": (False, 60_000.0),
    "max_body_mb": (True, 4096.0),
    "timeout_s": (True, 3600.0),
    "drain_timeout_s": (False, 3600.0),
}


@dataclass(frozen=True)
class ServeConfig:
    """How ``serve`` batches and protects itself.

    max_batch: most images per model batch (None: the model's maximum).
    max_delay_ms: longest wait of the oldest queued image for others to join its batch.
    max_queue: most images waiting for a batch; more are refused with 503 at once.
    workers: threads that decode and preprocess images (the event loop never does).
    max_body_mb: largest request body in MiB (413 above).
    max_images: most images in one multipart request.
    timeout_s: longest wait for a result (504 after it).
    drain_timeout_s: on SIGTERM, longest wait for in-flight requests before they are cancelled.
    """

    max_batch: int | None = None
    max_delay_ms: float = 5.0
    max_queue: int = 64
    workers: int = 2
    max_body_mb: float = 16.0
    max_images: int = 16
    timeout_s: float = 30.0
    drain_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_queue", "workers", "max_images"):
            value = getattr(self, name)
            if value is None and name == "max_batch":
                continue
            object.__setattr__(self, name, int_at_least(name, value, 1))
        for name, (low_open, high) in CONFIG_BOUNDS.items():
            value = getattr(self, name)
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or not (value > 0 if low_open else value >= 0) or value > high:
                interval = f"{'(' if low_open else '['}0, {high:g}]"
                raise ConfigError(f"{name} must be a number in {interval}, got {value!r}")
            object.__setattr__(self, name, float(value))

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * (1 << 20))
