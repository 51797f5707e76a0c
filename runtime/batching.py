"""Dynamic batching: many threads call ``detect_one``; one worker runs their images as batches.

Requests are grouped until ``max_batch`` images wait or ``max_delay_ms`` have passed since the
oldest one arrived, whichever comes first. Images are decoded and preprocessed in the calling
thread (in parallel, and a bad image fails only its own request), so the worker only stacks,
runs the backend and maps boxes back. The queue is bounded: a full queue rejects at once with
``QueueFullError`` instead of letting latency grow without bound. ``close()`` finishes (or, with
``drain=False``, fails) every accepted request, so no caller is left waiting.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
import time
from collections import deque
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass

from retina_deploy.core.argcheck import is_int
from retina_deploy.core.errors import ConfigError
from retina_deploy.runtime.detector import Detector, ImageInput, PreparedImage
from retina_deploy.runtime.post.detections import Detections


class BatcherError(RuntimeError):
    """Base class of the errors a BatchingDetector raises about its own state (not about images)."""


class QueueFullError(BatcherError):
    """The request queue holds ``max_queue`` requests; the request was rejected without waiting."""


class RequestTimeoutError(BatcherError, TimeoutError):
    """A request got no result within its timeout (it is dropped if it had not started yet)."""


class BatcherClosedError(BatcherError):
    """The batcher is closed: new requests are refused, and with ``close(drain=False)`` pending ones fail."""


log = logging.getLogger(__name__)
_MAX_SECONDS = 86400.0


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class _Request:
    prepared: PreparedImage
    future: Future
    arrived: float  # time.monotonic() at submission


class BatchingDetector:
    """A thread-safe front of one ``Detector`` that groups concurrent single-image requests.

    Args:
        detector: the Detector that runs the batches.
        max_batch: most images per batch; default and upper bound: the detector's maximum batch.
        max_delay_ms: longest time the oldest waiting request is held for others to join it.
        max_queue: most requests waiting (not counting the batch being run); more are refused.
        timeout_s: default per-request timeout of ``detect_one`` (None: wait indefinitely).

    Use as a context manager or call ``close()``; results are ``Detections`` in original pixels.
    """

    def __init__(
        self,
        detector: Detector,
        *,
        max_batch: int | None = None,
        max_delay_ms: float = 5.0,
        max_queue: int = 256,
        timeout_s: float | None = 30.0,
    ) -> None:
        if not isinstance(detector, Detector):
            raise ConfigError(f"BatchingDetector needs a Detector (see Detector.load), got {type(detector).__name__}")
        limit = detector.max_batch
        if max_batch is not None and not is_int(max_batch):
            raise ConfigError(f"max_batch must be an integer, got {max_batch!r}")
        max_batch = limit if max_batch is None else int(max_batch)
        if not 1 <= max_batch <= limit:
            raise ConfigError(f"max_batch must be in [1, {limit}] (the model's maximum batch), got {max_batch}")
        # A NaN or infinite delay would spin the worker or overflow its wait; a day is the longest sensible wait.
        if not (_is_number(max_delay_ms) and 0 <= max_delay_ms <= _MAX_SECONDS * 1000):
            raise ConfigError(f"max_delay_ms must be a number in [0, {_MAX_SECONDS * 1000:g}], got {max_delay_ms!r}")
        if not (is_int(max_queue) and max_queue >= 1):
            raise ConfigError(f"max_queue must be an integer >= 1, got {max_queue!r}")
        if timeout_s is not None and not (_is_number(timeout_s) and 0 < timeout_s <= _MAX_SECONDS):
            raise ConfigError(f"timeout_s must be a number in (0, {_MAX_SECONDS}] or None, got {timeout_s!r}")
        self.detector = detector
        self.max_batch = max_batch
        self.max_delay_s = max_delay_ms / 1000.0
        self.max_queue = int(max_queue)
        self.timeout_s = timeout_s
        self._pending: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._drain = True
        self.batches_run = 0
        self.images_run = 0
        self._worker = threading.Thread(target=self._work, name="retina-batcher", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ clients

    def submit(self, image: ImageInput, *, channel_order: str = "rgb") -> Future:
        """Validate and preprocess ``image`` here, queue it; return a Future of its ``Detections``.

        Raises ImageError/ConfigError for a bad image, QueueFullError when the queue is full and
        BatcherClosedError after ``close()``, all without waiting.
        """
        prepared = self.detector.prepare(image, channel_order=channel_order)
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise BatcherClosedError("the BatchingDetector is closed; no new requests are accepted")
            if len(self._pending) >= self.max_queue:
                raise QueueFullError(f"request queue is full ({self.max_queue} waiting); retry later")
            self._pending.append(_Request(prepared, future, time.monotonic()))
            self._cond.notify_all()
        return future

    def detect_one(
        self, image: ImageInput, *, channel_order: str = "rgb", timeout_s: float | None | str = "default"
    ) -> Detections:
        """Detections of one image (uint8 [h, w, 3] array or path), in its original pixels.

        ``timeout_s``: seconds to wait for the result ("default": the batcher's ``timeout_s``; None:
        forever). On timeout the request is dropped if it has not started and RequestTimeoutError is
        raised.
        """
        timeout = self.timeout_s if isinstance(timeout_s, str) and timeout_s == "default" else timeout_s
        if timeout is not None and not (_is_number(timeout) and timeout > 0):
            raise ConfigError(f"timeout_s must be a number > 0, None or 'default', got {timeout_s!r}")
        future = self.submit(image, channel_order=channel_order)
        try:
            return future.result(timeout=timeout)
        except FutureTimeoutError:
            future.cancel()  # the worker skips it if it has not started; a running batch still finishes
            raise RequestTimeoutError(f"no result within {timeout} s (queue length {len(self._pending)})") from None
        except CancelledError:
            raise RequestTimeoutError("request was cancelled") from None

    @property
    def queue_length(self) -> int:
        with self._cond:
            return len(self._pending)

    # ------------------------------------------------------------------ worker

    def _work(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    break
                self._run(batch)
        except Exception:  # noqa: BLE001 - logged; the requests fail below instead of waiting forever
            log.exception("the batching worker stopped; pending and new requests fail with BatcherClosedError")
        finally:
            # Closed with drain=False, or the worker itself failed: refuse new requests and fail what is
            # left, so that no accepted request waits forever.
            with self._cond:
                self._closed = True
            self._fail_pending()

    def _next_batch(self) -> list[_Request] | None:
        """Block until a batch is due; None once closed with nothing left to do."""
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if not self._pending or (self._closed and not self._drain):
                return None
            deadline = self._pending[0].arrived + self.max_delay_s
            while len(self._pending) < self.max_batch and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            take = min(self.max_batch, len(self._pending))
            return [self._pending.popleft() for _ in range(take)]

    def _run(self, batch: list[_Request]) -> None:
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results = self.detector.run_prepared([r.prepared for r in live])
        except BaseException as e:  # noqa: BLE001 - every accepted request must get an outcome
            for r in live:
                r.future.set_exception(e)
            return
        for r, dets in zip(live, results, strict=True):
            r.future.set_result(dets)
        self.batches_run += 1
        self.images_run += len(live)

    # ------------------------------------------------------------------ lifecycle

    def close(self, *, drain: bool = True, timeout_s: float | None = None) -> bool:
        """Refuse new requests; finish the accepted ones (``drain``) or fail them with BatcherClosedError.

        Returns when the worker has stopped (True) or ``timeout_s`` passed first (False: a batch is
        still running; calling again with ``drain=False`` fails what is queued once it ends). Idempotent.
        """
        with self._cond:
            self._closed = True
            self._drain = self._drain and drain
            self._cond.notify_all()
        self._worker.join(timeout_s)
        if self._worker.is_alive():
            return False
        self._fail_pending()
        return True

    def _fail_pending(self) -> None:
        with self._cond:
            left = list(self._pending)
            self._pending.clear()
        for r in left:
            if r.future.set_running_or_notify_cancel():
                r.future.set_exception(BatcherClosedError("the BatchingDetector was closed before this request ran"))

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> BatchingDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
