"""``serve``: a ``BatchingDetector`` over HTTP (Starlette + uvicorn, prometheus-client; torch-free).

Routes:

- ``POST /v1/detect``: one image (JPEG/PNG/BMP) as the body, or several as ``multipart/form-data``
  file parts. Query: ``score_threshold`` (0..1), ``max_detections`` (>= 0). Answer:
  ``{"results": [{"name", "detections": [{"box": [x1, y1, x2, y2], "score", "class_id",
  "class_name"}]}]}``, one entry per image in order, boxes in the image's original pixels.
- ``GET /health/live`` (the process answers), ``GET /health/ready`` (model loaded, warm-up batch
  run, not draining), ``GET /v1/model``, ``GET /metrics`` (Prometheus text format).

Admission is decided on the event loop before any decoding: a request whose images do not fit in
the queue gets 503 with ``Retry-After`` at once. Errors are JSON ``{"error": message}``: 400 for a
bad image or parameter (naming it), 404 unknown route, 413 body over the limit, 503 not ready,
draining or queue full, 504 no result in time. A client that leaves mid-body is counted as 499.
SIGTERM: see ``runner`` (new requests 503, in-flight ones finish until the drain timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from retina_deploy.core.errors import ConfigError, ImageError
from retina_deploy.core.fileio import sha256_file
from retina_deploy.runtime.batching import BatcherClosedError, BatchingDetector, QueueFullError
from retina_deploy.runtime.detector import Detector
from retina_deploy.runtime.serve.config import ServeConfig
from retina_deploy.runtime.serve.metrics import MeteredDetector, ServeMetrics
from retina_deploy.runtime.serve.request import Reject, filtered, query_options, request_images

log = logging.getLogger("retina_deploy.serve")
RETRY_AFTER_S = "1"
CLIENT_CLOSED_REQUEST = 499  # counted under this status (as nginx logs it); the client never sees it


class ServerState:
    """What the handlers share: the detector once loaded, the batcher, readiness, admission and drain state."""

    def __init__(self, load: Callable[[], Detector], cfg: ServeConfig, metrics: ServeMetrics) -> None:
        self.load, self.cfg, self.metrics = load, cfg, metrics
        self.batcher: BatchingDetector | None = None
        self.model_info: dict[str, Any] = {}
        self.ready = threading.Event()
        self.draining = False
        self.drain_deadline = math.inf  # time.monotonic() at which requests still running get 503
        self.drain_expired = asyncio.Event()  # set on the event loop at drain_deadline
        self.load_error: str | None = None
        self.load_exception: Exception | None = None
        self.on_fatal: Callable[[str], None] = lambda message: None
        self.reserved = 0  # images admitted and being preprocessed, not yet in the batcher's queue
        self.active = 0  # /v1/detect requests being handled
        self.pool = ThreadPoolExecutor(cfg.workers, thread_name_prefix="retina-preprocess")

    def start(self) -> None:
        """Unless ``open_model`` already ran: open it in a thread (the server answers live meanwhile)."""
        if self.ready.is_set():
            log.info("model ready: %s", self.model_info["backend"])
        else:
            threading.Thread(target=self._load, name="retina-load", daemon=True).start()

    def open_model(self) -> None:
        """Load the model, run a warm-up batch, open the batcher, become ready; raises what ``load`` raises,
        and ConfigError for a ``max_batch`` above the model's."""
        detector = self.load()
        info = describe_model(detector)
        cfg = self.cfg
        if cfg.max_batch is not None and cfg.max_batch > detector.max_batch:
            raise ConfigError(f"max_batch {cfg.max_batch} exceeds the model's maximum batch {detector.max_batch}")
        detector.run_batch(
            np.zeros((cfg.max_batch or detector.max_batch, 3, *detector.spec.preprocess.size), np.float32)
        )
        self.batcher = BatchingDetector(
            MeteredDetector(detector, self.metrics),
            max_batch=cfg.max_batch,
            max_delay_ms=cfg.max_delay_ms,
            max_queue=cfg.max_queue,
            timeout_s=cfg.timeout_s,
        )
        self.metrics.track_queue(lambda: self.batcher.queue_length)
        self.model_info = {**info, "batch_range": [1, self.batcher.max_batch]}
        self.ready.set()

    def _load(self) -> None:
        try:
            self.open_model()
            log.info("model ready: %s", self.model_info["backend"])
        except Exception as e:  # noqa: BLE001 - reported on /health/ready and ends the server
            self.load_error = f"{type(e).__name__}: {e}"
            self.load_exception = e
            log.error("model failed to load: %s", self.load_error)
            self.on_fatal(self.load_error)

    def begin_drain(self) -> None:
        """Refuse new requests (503); those running get until ``drain_timeout_s`` from now."""
        self.draining = True
        self.drain_deadline = min(self.drain_deadline, time.monotonic() + self.cfg.drain_timeout_s)

    def close(self) -> None:
        """Finish the accepted requests (until the drain deadline, else the drain timeout), then release
        the model. A batch stuck in the backend is left to its daemon thread, so closing is bounded."""
        wait_s = min(self.cfg.drain_timeout_s, max(0.0, self.drain_deadline - time.monotonic()))
        if self.batcher is not None:
            stopped = self.batcher.close(drain=True, timeout_s=wait_s) or self.batcher.close(drain=False, timeout_s=0.2)
            if stopped:
                self.batcher.detector.close()
            else:
                log.warning("the backend is still running a batch; exiting without waiting for it")
        self.pool.shutdown(wait=False, cancel_futures=True)


def describe_model(detector: Detector) -> dict[str, Any]:
    """The ``/v1/model`` answer: classes, input size, batch range, precision, backend, source sha256."""
    backend = detector.backend
    metadata = getattr(getattr(backend, "model", None), "metadata", None)  # ONNX Runtime
    manifest = getattr(backend, "manifest", None)  # TensorRT
    precision = getattr(metadata, "precision", None) or getattr(manifest, "precision", None)
    return {
        "classes": list(detector.class_names),
        "input_size": list(detector.spec.preprocess.size),
        "model_batch_range": [detector.min_batch, detector.max_batch],
        "precision": precision or getattr(backend, "precision", "unknown"),
        "backend": backend.name,
        "nms": detector.spec.nms.mode,
        "source_sha256": _source_sha256(backend, manifest),
    }


def _source_sha256(backend, manifest) -> str | None:
    """sha256 of the served file: an engine's from its manifest, an ONNX file's hashed, Triton's from its config."""
    if manifest is not None:
        return manifest.engine_sha256
    path = getattr(getattr(backend, "model", None), "path", None)
    if path is not None:
        return sha256_file(path)
    return getattr(backend, "source_sha256", None)


# ---------------------------------------------------------------------------------------------- handlers


def _state(request: Request) -> ServerState:
    return request.app.state.retina


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _live(request: Request) -> Response:
    return JSONResponse({"status": "live"})


async def _ready(request: Request) -> Response:
    st = _state(request)
    if st.load_error is not None:
        return _error(503, f"model failed to load: {st.load_error}")
    if st.draining:
        return _error(503, "draining: shutting down", {"Retry-After": RETRY_AFTER_S})
    if not st.ready.is_set():
        return _error(503, "loading the model", {"Retry-After": RETRY_AFTER_S})
    return JSONResponse({"status": "ready"})


async def _model(request: Request) -> Response:
    st = _state(request)
    if not st.ready.is_set():
        return _error(503, "loading the model", {"Retry-After": RETRY_AFTER_S})
    return JSONResponse(st.model_info)


async def _metrics(request: Request) -> Response:
    return Response(generate_latest(_state(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def _detect_route(request: Request) -> Response:
    st = _state(request)
    st.active += 1
    try:
        return JSONResponse({"results": await _unless_drain_expires(st, _detect(request, st))})
    except Reject as r:
        st.metrics.rejections.labels(reason=r.reason).inc()
        return _error(r.status, r.message, r.headers)
    except ClientDisconnect:  # the client left while sending its body: nobody to answer, nothing failed
        st.metrics.rejections.labels(reason="client_disconnected").inc()
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    finally:
        st.active -= 1


async def _unless_drain_expires(st: ServerState, work: Coroutine[Any, Any, Any]) -> Any:
    """``await work``, unless the drain deadline passes first: then it is cancelled and the answer is 503."""
    task = asyncio.ensure_future(work)
    expired = asyncio.ensure_future(st.drain_expired.wait())
    try:
        await asyncio.wait({task, expired}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        expired.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)  # let it unwind before answering
    if not task.cancelled():
        return task.result()
    raise Reject(
        503, f"shutting down: no result within the drain timeout ({st.cfg.drain_timeout_s:g} s)", "draining", _closing()
    )


async def _detect(request: Request, st: ServerState) -> list[dict[str, Any]]:
    if st.draining:
        raise Reject(503, "draining: shutting down", "draining", _closing())
    if not st.ready.is_set():
        raise Reject(503, "loading the model", "not_ready", _retry())
    score_threshold, max_detections = query_options(request)
    images = await request_images(request, max_bytes=st.cfg.max_body_bytes, max_images=st.cfg.max_images)
    batcher = st.batcher
    if len(images) > batcher.max_queue:
        raise Reject(
            400, f"{len(images)} images in one request; this server queues at most {batcher.max_queue}", "bad_request"
        )
    if batcher.queue_length + st.reserved + len(images) > batcher.max_queue:
        raise Reject(503, f"queue is full ({batcher.max_queue} images); retry later", "queue_full", _retry())
    st.reserved += len(images)
    loop = asyncio.get_running_loop()
    try:
        submitting = [loop.run_in_executor(st.pool, batcher.submit, data) for _, data in images]
        await _wait_all(submitting)
    finally:
        st.reserved -= len(images)
    failed = [(i, f.exception()) for i, f in enumerate(submitting) if f.exception() is not None]
    if failed:
        for f in submitting:
            if f.exception() is None:
                f.result().cancel()  # not run if still queued: the request is answered once, with the error
        raise _submit_error(images[failed[0][0]][0], failed[0][1])
    results = [asyncio.wrap_future(f.result()) for f in submitting]
    if not await _wait_all(results, st.cfg.timeout_s):
        raise Reject(504, f"no result within {st.cfg.timeout_s} s", "timeout")
    errors = [f.exception() for f in results]  # every one retrieved: none is logged as never retrieved
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    dets = [f.result() for f in results]
    return [
        {"name": name, **filtered(d, score_threshold, max_detections).to_dict()}
        for (name, _), d in zip(images, dets, strict=True)
    ]


async def _wait_all(futures: list[asyncio.Future], timeout_s: float | None = None) -> bool:
    """Wait for every future, at most ``timeout_s``; True if all are done. Those left (on timeout, or when
    this wait is cancelled) are cancelled: a queued request then never runs, and nothing is left unretrieved."""
    try:
        _, pending = await asyncio.wait(futures, timeout=timeout_s)
    finally:
        for f in futures:
            f.cancel()  # no-op on the done ones
    return not pending


def _retry() -> dict[str, str]:
    return {"Retry-After": RETRY_AFTER_S}


def _closing() -> dict[str, str]:
    """A draining server's 503: retry (elsewhere), and do not reuse this connection."""
    return {"Retry-After": RETRY_AFTER_S, "Connection": "close"}


def _submit_error(name: str, e: BaseException) -> Reject:
    if isinstance(e, QueueFullError):
        return Reject(503, str(e), "queue_full", _retry())
    if isinstance(e, BatcherClosedError):
        return Reject(503, "draining: shutting down", "draining", _closing())
    if isinstance(e, (ImageError, ConfigError)):
        return Reject(400, f"{name}: {e}", "bad_request")
    raise e


# ---------------------------------------------------------------------------------------------- app


async def _not_found(request: Request, exc: HTTPException) -> Response:
    return _error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    return _error(500, f"{type(exc).__name__}: {exc}")


class _Metered:
    """ASGI middleware: counts every HTTP answer by route and status, and its latency."""

    def __init__(self, app, metrics: ServeMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.observe_request(scope["path"], status, time.perf_counter() - start)


def create_app(load: Callable[[], Detector], cfg: ServeConfig | None = None) -> Starlette:
    """The ASGI app. ``load()`` opens the Detector; it runs in a thread after startup, so the server
    answers (live, not ready) while the model loads. ``app.state.retina`` is the ``ServerState``."""
    cfg = cfg or ServeConfig()
    metrics = ServeMetrics()
    state = ServerState(load, cfg, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state.start()
        yield
        await asyncio.to_thread(state.close)

    app = Starlette(
        routes=[
            Route("/v1/detect", _detect_route, methods=["POST"]),
            Route("/v1/model", _model, methods=["GET"]),
            Route("/health/live", _live, methods=["GET"]),
            Route("/health/ready", _ready, methods=["GET"]),
            Route("/metrics", _metrics, methods=["GET"]),
        ],
        exception_handlers={404: _not_found, 405: _not_found, Exception: _server_error},
        lifespan=lifespan,
    )
    app.state.retina = state
    app.add_middleware(_Metered, metrics=metrics)
    return app
