"""Helpers of the serve tests: a fake detector whose answers identify each image, and a server in a thread.

The fake backend turns an image's first pixel value v > 0 into one detection (score v/256, class v % 2,
box 0..64 input pixels; none for v = 0), so every client can check it got its own answer. A gate holds batches
in flight; ``delay_s`` makes each batch but the warm-up slow (the SIGTERM tests run this in a subprocess).
"""

from __future__ import annotations

import contextlib
import io
import socket
import threading
import time

import numpy as np
from PIL import Image

from retina_deploy.runtime.contract.onnx_metadata import NmsSettings
from retina_deploy.runtime.contract.spec import ModelSpec
from retina_deploy.runtime.detector import Detector
from retina_deploy.runtime.image.preprocess import PreprocessConfig

# input = pixel value: mean 0, std 1/255 on the 0-1 scale
PRE = PreprocessConfig(size=(128, 128), mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255))
CLASS_NAMES = ("even", "odd")


class FakeBackend:
    name = "fake"
    input_size = (128, 128)

    def __init__(self, max_batch: int = 4, gate: threading.Event | None = None, delay_s: float = 0.0) -> None:
        self.batch_range = (1, max_batch)
        self.gate = gate
        self.delay_s = delay_s
        self.batch_sizes: list[int] = []
        self.entered = threading.Event()
        self.fail = False
        self.runs = 0

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(30)
        if self.runs:  # the warm-up batch is never slow
            time.sleep(self.delay_s)
        self.runs += 1
        if self.fail:
            raise RuntimeError("backend exploded")
        self.batch_sizes.append(batch.shape[0])
        b = batch.shape[0]
        v = np.rint(batch[:, 0, 0, 0])
        boxes = np.zeros((b, 2, 4), np.float32)
        boxes[:, 0, 2:] = 64.0
        return {
            "num_dets": (v > 0).astype(np.int32)[:, None],  # a black image: no detection (scores are in (0, 1])
            "boxes": boxes,
            "scores": np.stack([v / 256.0, np.zeros(b)], 1).astype(np.float32),
            "classes": np.stack([v.astype(np.int32) % 2, np.zeros(b, np.int32)], 1),
        }

    def close(self) -> None:
        pass


def fake_detector(**kw) -> Detector:
    spec = ModelSpec(
        class_names=CLASS_NAMES,
        preprocess=PRE,
        nms=NmsSettings(mode="onnx", max_dets=2, score_thresh=0.05, iou_thresh=0.5, topk_per_level=10),
        anchors_per_level=(1,),
    )
    return Detector(FakeBackend(**kw), spec)


def png(value: int, size: int = 64) -> bytes:
    """A PNG of one grey value: the fake detector answers score value/256, class value % 2."""
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def expected(value: int) -> dict:
    """The fake detector's answer for ``png(value)`` (64 px image: scale 2, box 0..32 original px)."""
    return {
        "box": [0.0, 0.0, 32.0, 32.0],
        "score": round(value / 256.0, 5),
        "class_id": value % 2,
        "class_name": CLASS_NAMES[value % 2],
    }


@contextlib.contextmanager
def running(app):
    """Serve ``app`` with uvicorn on 127.0.0.1 (a free port) in a thread; yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=10))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()


def wait_ready(client, base: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if client.get(f"{base}/health/ready").status_code == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{base} not ready within {timeout_s} s")


def serve_fake_main(delay_s: float = 2.0, drain_timeout_s: float = 20.0) -> None:
    """``python -c 'from testkit import serve_fakes; serve_fakes.serve_fake_main()'``
    (from tests/): run_server with a slow fake model
    (each batch after the warm-up takes ``delay_s``); exits with run_server's return value."""
    import sys

    from retina_deploy.runtime.serve.app import ServeConfig
    from retina_deploy.runtime.serve.runner import run_server

    rc = run_server(
        lambda: fake_detector(max_batch=4, delay_s=delay_s),
        ServeConfig(max_batch=4, max_delay_ms=50, max_queue=16, drain_timeout_s=drain_timeout_s),
        port=0,
        announce=lambda line: print(line, flush=True),
    )
    sys.exit(rc)
