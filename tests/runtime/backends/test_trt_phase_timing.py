"""CUDA-event phase timing of the TensorRT backend (what ``bench`` reports as h2d / compute / d2h), with fakes."""

import numpy as np
import pytest
from testkit.fake_trt import FakeCudart, FakeEngine, FakeTrt

from retina_deploy.runtime.backends import tensorrt as trt_backend
from retina_deploy.runtime.backends.tensorrt import TrtBackend
from retina_deploy.runtime.bench.run import DetectorTarget
from retina_deploy.runtime.bench.stats import Stopwatch
from retina_deploy.runtime.contract.manifest import write_manifest
from retina_deploy.runtime.detector import Detector

POST = {
    "nms": {"mode": "none", "max_dets": 5, "score_thresh": 0.2, "iou_thresh": 0.5, "topk_per_level": 3},
    "anchors_per_level": [4, 2],
}


class EventCudart(FakeCudart):
    """FakeCudart with events: each record stamps the event with the count of calls so far, in ms x 2."""

    def __init__(self):
        super().__init__()
        self.stamps: dict[int, float] = {}
        self.records = 0
        self.destroyed = 0

    def cudaEventCreate(self):  # noqa: N802
        event = len(self.stamps) + 1000
        self.stamps[event] = 0.0
        return (self.cudaError_t.cudaSuccess, event)

    def cudaEventRecord(self, event, stream):  # noqa: N802
        self.records += 1
        self.stamps[event] = 2.0 * self.records
        return (self.cudaError_t.cudaSuccess,)

    def cudaEventElapsedTime(self, start, end):  # noqa: N802
        return (self.cudaError_t.cudaSuccess, self.stamps[end] - self.stamps[start])

    def cudaEventDestroy(self, event):  # noqa: N802
        self.destroyed += 1
        return (self.cudaError_t.cudaSuccess,)


@pytest.fixture
def engine_file(tmp_path, monkeypatch):
    cudart = EventCudart()
    FakeTrt.engine = FakeEngine(cudart)
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda flavour: FakeTrt)
    monkeypatch.setattr(trt_backend, "import_cudart", lambda: cudart)
    return _engine(tmp_path, "tensorrt-rtx"), cudart


def _engine(folder, flavour):
    path = folder / f"{flavour}.engine"
    path.write_bytes(b"fake serialized engine")
    write_manifest(
        path, flavour=flavour, trt_version=FakeTrt.__version__, precision="fp16", batch_range=(1, 2, 4),
        input_size=(128, 128), onnx_sha256="0" * 64, class_names=["a", "b"], preprocess={"size": [128, 128]},
        postprocess=POST,
    )  # fmt: skip
    return path


def test_events_split_each_run(engine_file):
    path, cudart = engine_file
    backend = TrtBackend.load(path)
    batch = np.zeros((2, 3, 128, 128), np.float32)
    backend.run(batch)
    assert backend.last_timings_s is None  # off unless asked for
    backend.enable_phase_timing()
    backend.run(batch)
    # four marks, 2 ms apart: h2d, compute, d2h of 2 ms each
    assert backend.last_timings_s == pytest.approx({"h2d": 0.002, "compute": 0.002, "d2h": 0.002})
    backend.close()
    assert cudart.destroyed == 4


def test_bench_target_reports_the_gpu_phases(engine_file):
    path, _ = engine_file
    target = DetectorTarget(
        Detector.load(path, backend="tensorrt-rtx"), label=path.name, kind="engine", device="cuda:0"
    )
    assert (target.kind, target.precision, target.batch_range) == ("engine", "fp16", (1, 4))
    sw = Stopwatch()
    target.step([np.zeros((100, 120, 3), np.uint8)], sw)
    assert set(sw.phases) == {"preprocess", "h2d", "compute", "d2h", "postprocess"}
    assert sw.phases["compute"] == pytest.approx(0.002)
    target.close()


@pytest.mark.parametrize("data_dependent", [False, True])
def test_bench_says_whether_each_batch_ran_as_a_cuda_graph(engine_file, tmp_path, data_dependent):
    from retina_deploy.runtime.bench.report import _graphs_label
    from retina_deploy.runtime.bench.run import RunLength, measure

    _, cudart = engine_file
    FakeTrt.engine.data_dependent = data_dependent  # capture breaks, as on an engine with an NMS layer
    detector = Detector.load(_engine(tmp_path, "tensorrt"), backend="tensorrt", cuda_graphs=True)
    target = DetectorTarget(detector, label="m.engine", kind="engine", device="cuda:0")
    images = [np.zeros((100, 120, 3), np.uint8)]
    record = measure(target, 2, images, RunLength(warmup_s=0.0, duration_s=None, iterations=3))
    target.close()
    if data_dependent:
        assert record["cuda_graphs"].startswith("not captured: execute_async_v3 failed during capture")
        assert any("ran without one" in w for w in record["warnings"]) and _graphs_label(record) == ", no CUDA graph"
    else:
        assert record["cuda_graphs"] == "captured" and _graphs_label(record) == ", CUDA graph"
        assert cudart.graph_launches > 0 and not any("CUDA graph" in w for w in record["warnings"])
