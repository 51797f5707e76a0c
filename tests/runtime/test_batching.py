"""BatchingDetector: own results for concurrent clients, batching limits, a bounded queue, timeouts, close.

A fake backend makes the scheduling tests fast and exact: it turns each image's first pixel value
into one detection, so every client can check it got its own result; a gate holds a batch in flight.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from retina_deploy.core.errors import ConfigError, ImageError
from retina_deploy.runtime.batching import (
    BatcherClosedError,
    BatchingDetector,
    QueueFullError,
    RequestTimeoutError,
)
from retina_deploy.runtime.contract.onnx_metadata import NmsSettings
from retina_deploy.runtime.contract.spec import ModelSpec
from retina_deploy.runtime.detector import Detector
from retina_deploy.runtime.image.preprocess import PreprocessConfig

PRE = PreprocessConfig(size=(128, 128), mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255))  # input = pixel


class FakeBackend:
    """Detection outputs from pixel values: one box per image, score = (first pixel + 1) / 256 (in (0, 1])."""

    name = "fake"
    input_size = (128, 128)

    def __init__(self, max_batch=4, gate=None, fail=False):
        self.batch_range = (1, max_batch)
        self.gate = gate
        self.fail = fail
        self.batch_sizes = []

    def run(self, batch):
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            raise RuntimeError("backend exploded")
        self.batch_sizes.append(batch.shape[0])
        b = batch.shape[0]
        v = batch[:, 0, 0, 0]
        boxes = np.zeros((b, 2, 4), np.float32)
        boxes[:, 0] = np.stack([np.zeros(b), np.zeros(b), np.full(b, 64.0), np.full(b, 64.0)], 1)
        return {
            "num_dets": np.ones((b, 1), np.int32),
            "boxes": boxes,
            "scores": np.stack([(v + 1) / 256.0, np.zeros(b)], 1).astype(np.float32),
            "classes": np.stack([v.astype(np.int32) % 2, np.zeros(b, np.int32)], 1),
        }

    def close(self):
        pass


def _detector(**kw):
    spec = ModelSpec(
        class_names=("even", "odd"),
        preprocess=PRE,
        nms=NmsSettings(mode="onnx", max_dets=2, score_thresh=0.05, iou_thresh=0.5, topk_per_level=10),
        anchors_per_level=(1,),
    )
    return Detector(FakeBackend(**kw), spec)


def _image(value, size=64):
    return np.full((size, size, 3), value, np.uint8)


def test_sixteen_concurrent_clients_get_their_own_results():
    det = _detector(max_batch=4)
    with BatchingDetector(det, max_batch=4, max_delay_ms=20, max_queue=64) as batcher:
        barrier = threading.Barrier(16)

        def client(k):
            barrier.wait()
            # distinct values and sizes: the score identifies the image, the box its scale
            size = 32 + 8 * k
            return k, size, [batcher.detect_one(_image(10 + k, size)) for _ in range(5)]

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(client, range(16)))
    for k, size, dets_list in results:
        for dets in dets_list:
            assert len(dets) == 1
            assert dets.scores[0] == pytest.approx((11 + k) / 256.0)
            assert dets.class_names == (("even", "odd")[(10 + k) % 2],)
            # box [0, 0, 64, 64] in input pixels of a size x size image scaled to 128: 64 * size / 128
            np.testing.assert_allclose(dets.boxes[0], [0, 0, size / 2, size / 2], rtol=1e-5)
    assert max(det.backend.batch_sizes) <= 4
    assert sum(det.backend.batch_sizes) == 80
    assert len(det.backend.batch_sizes) < 80  # requests were really grouped


def test_a_lone_request_waits_at_most_max_delay():
    with BatchingDetector(_detector(), max_delay_ms=50) as batcher:
        t0 = time.monotonic()
        batcher.detect_one(_image(3))
        assert time.monotonic() - t0 < 1.0


def test_full_queue_rejects_at_once():
    gate = threading.Event()
    det = _detector(max_batch=2, gate=gate)
    batcher = BatchingDetector(det, max_batch=2, max_delay_ms=0, max_queue=3)
    try:
        first = [batcher.submit(_image(1))]  # taken by the worker, held at the gate
        while batcher.queue_length:
            time.sleep(0.001)
        queued = [batcher.submit(_image(2)) for _ in range(3)]
        t0 = time.monotonic()
        with pytest.raises(QueueFullError, match="full"):
            batcher.submit(_image(9))
        assert time.monotonic() - t0 < 0.05
    finally:
        gate.set()
        batcher.close()
    assert all(len(f.result(5)) == 1 for f in first + queued)


def test_close_with_requests_in_flight_loses_none():
    gate = threading.Event()
    batcher = BatchingDetector(_detector(max_batch=4, gate=gate), max_delay_ms=1, max_queue=100)
    futures = [batcher.submit(_image(k)) for k in range(30)]
    closer = threading.Thread(target=batcher.close)
    closer.start()
    while not batcher.closed:
        time.sleep(0.001)
    with pytest.raises(BatcherClosedError):
        batcher.submit(_image(1))
    gate.set()
    closer.join(10)
    assert not closer.is_alive()
    for k, f in enumerate(futures):
        assert f.result(0).scores[0] == pytest.approx((k + 1) / 256.0)


def test_close_without_drain_fails_the_waiting_requests():
    gate = threading.Event()
    batcher = BatchingDetector(_detector(max_batch=2, gate=gate), max_delay_ms=0, max_queue=100)
    running = batcher.submit(_image(1))
    while batcher.queue_length:  # the worker holds it at the gate
        time.sleep(0.001)
    waiting = [batcher.submit(_image(k + 2)) for k in range(9)]
    closer = threading.Thread(target=batcher.close, kwargs={"drain": False})
    closer.start()
    while not batcher.closed:
        time.sleep(0.001)
    gate.set()
    closer.join(10)
    assert not closer.is_alive()
    assert len(running.result(0)) == 1  # the batch in flight finishes
    for f in waiting:  # the rest fail at once, none is left pending
        assert isinstance(f.exception(0), BatcherClosedError)


def test_request_timeout():
    gate = threading.Event()
    batcher = BatchingDetector(_detector(gate=gate), max_delay_ms=0, timeout_s=0.05)
    try:
        t0 = time.monotonic()
        with pytest.raises(RequestTimeoutError):
            batcher.detect_one(_image(5))
        assert time.monotonic() - t0 < 1.0
        with pytest.raises(TimeoutError):  # also a standard TimeoutError
            batcher.detect_one(_image(5), timeout_s=0.01)
    finally:
        gate.set()
    assert len(batcher.detect_one(_image(7), timeout_s=5)) == 1  # still serving afterwards
    batcher.close()


def test_backend_failure_reaches_every_request_of_the_batch():
    with BatchingDetector(_detector(fail=True), max_delay_ms=5) as batcher:
        futures = [batcher.submit(_image(k)) for k in range(3)]
        for f in futures:
            with pytest.raises(RuntimeError, match="exploded"):
                f.result(5)


def test_bad_image_fails_only_its_own_request():
    with BatchingDetector(_detector(), max_delay_ms=5) as batcher:
        with pytest.raises(ImageError):
            batcher.submit(np.zeros((4, 4), np.uint8))
        assert batcher.queue_length == 0
        assert len(batcher.detect_one(_image(4))) == 1


def test_settings_are_checked():
    det = _detector(max_batch=4)
    with pytest.raises(ConfigError, match="max_batch"):
        BatchingDetector(det, max_batch=8)
    with pytest.raises(ConfigError, match="max_queue"):
        BatchingDetector(det, max_queue=0)
    with pytest.raises(ConfigError, match="max_delay_ms"):
        BatchingDetector(det, max_delay_ms=-1)


def test_real_model_through_the_batcher():
    from testkit.detector_models import exported, images, match_detections

    with Detector.load(exported("onnx")) as det, BatchingDetector(det, max_delay_ms=10) as batcher:
        imgs = images()
        expected = det.detect(imgs)
        with ThreadPoolExecutor(6) as pool:
            got = list(pool.map(batcher.detect_one, imgs))
    for a, b in zip(expected, got, strict=True):
        match_detections(a, b, box_tol=1e-3, score_tol=1e-5)
