"""TensorRT backend: what runs without a GPU is tested here; real execution skips with its reason.

- flavour selection, I/O checks, the load order (sha256 before any TensorRT code), and the run
  loop (pinned buffers, addresses, shape changes, CUDA-graph replay) with fakes of tensorrt and cudart;
- a real TensorRT-RTX engine built (no GPU needed) from a ``--nms none`` export, its manifest and
  verification, and TensorRT's own refusal of a forged engine;
- execution of that engine, compared with ONNX Runtime: only where a CUDA device exists.
"""

import importlib.util
import subprocess
import sys
import threading

import numpy as np
import pytest
from testkit.fake_trt import FakeCudart, FakeEngine, FakeTrt, reference_outputs

from retina_deploy.core.errors import ConfigError, ModelFileError
from retina_deploy.runtime.backends import tensorrt as trt_backend
from retina_deploy.runtime.backends.cuda_mem import CudaError, NoCudaDeviceError, check, import_cudart, select_device
from retina_deploy.runtime.backends.tensorrt import (
    TensorRTUnavailableError,
    TrtBackend,
    UnsupportedGpuError,
    check_io,
    describe_io,
    import_tensorrt,
    installed_flavours,
)
from retina_deploy.runtime.contract.manifest import manifest_path, sha256_file, write_manifest
from retina_deploy.runtime.detector import Detector

HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
HAS_CUDART = importlib.util.find_spec("cuda") is not None
POST = {
    "nms": {"mode": "none", "max_dets": 5, "score_thresh": 0.2, "iou_thresh": 0.5, "topk_per_level": 3},
    "anchors_per_level": [4, 2],
}


def _cuda_device_count() -> int:
    if not HAS_CUDART:
        return 0
    cudart = import_cudart()
    err, count = cudart.cudaGetDeviceCount()
    return count if err == cudart.cudaError_t.cudaSuccess else 0


HAS_GPU = _cuda_device_count() > 0


def _fake_engine_file(tmp_path, **overrides):
    path = tmp_path / "fake.engine"
    path.write_bytes(b"fake serialized engine")
    kw = dict(
        flavour="tensorrt-rtx",
        trt_version=FakeTrt.__version__,
        precision="fp32",
        batch_range=(1, 2, 4),
        input_size=(128, 128),
        onnx_sha256="0" * 64,
        class_names=["a", "b"],
        preprocess={"size": [128, 128]},
        postprocess=POST,
    )
    kw.update(overrides)
    write_manifest(path, **kw)
    return path


@pytest.fixture
def fakes(monkeypatch):
    cudart = FakeCudart()
    FakeTrt.engine = FakeEngine(cudart)
    monkeypatch.setattr(FakeTrt, "plugins_initialised", False)
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda flavour: FakeTrt)
    monkeypatch.setattr(trt_backend, "import_cudart", lambda: cudart)
    return cudart


# ---------------------------------------------------------------- flavours and I/O checks


def test_flavour_selection():
    assert installed_flavours() == [
        f
        for f in ("tensorrt", "tensorrt-rtx")
        if importlib.util.find_spec({"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}[f]) is not None
    ]
    with pytest.raises(ConfigError, match="flavour must be one of"):
        import_tensorrt("tensorrt-llm")
    for flavour in ("tensorrt", "tensorrt-rtx"):
        if flavour in installed_flavours():
            assert import_tensorrt(flavour).__version__
        else:
            with pytest.raises(TensorRTUnavailableError, match=f"{flavour} is not installed"):
                import_tensorrt(flavour)


def test_engine_of_a_missing_flavour_is_a_typed_error(tmp_path):
    path = _fake_engine_file(tmp_path, flavour="tensorrt", trt_version="10.13.0")
    if "tensorrt" in installed_flavours():
        pytest.skip("tensorrt is installed here")
    with pytest.raises(TensorRTUnavailableError, match="tensorrt is not installed.*rebuild"):
        TrtBackend.load(path)


def test_describe_and_check_io(tmp_path):
    from retina_deploy.runtime.contract.manifest import read_manifest

    manifest = read_manifest(_fake_engine_file(tmp_path))
    specs = describe_io(FakeEngine(FakeCudart()), FakeTrt)
    assert [(s.name, s.is_input, s.shape) for s in specs] == [
        ("images", True, (-1, 3, 128, 128)),
        ("boxes", False, (-1, 6, 4)),
        ("scores", False, (-1, 6, 2)),
    ]
    inp, outs = check_io(specs, manifest, "x.engine")
    assert inp.profile[2] == (4, 3, 128, 128) and [o.name for o in outs] == ["boxes", "scores"]
    wrong_size = describe_io(FakeEngine(FakeCudart(), input_shape=(-1, 3, 128, 256)), FakeTrt)
    with pytest.raises(ModelFileError, match="manifest says"):
        check_io(wrong_size, manifest, "x.engine")
    wrong_batch = describe_io(FakeEngine(FakeCudart(), batch_range=(1, 8)), FakeTrt)
    with pytest.raises(ModelFileError, match="batch profile"):
        check_io(wrong_batch, manifest, "x.engine")
    with pytest.raises(ModelFileError, match="expected 1 input"):
        check_io([s for s in specs if not s.is_input], manifest, "x.engine")


# ---------------------------------------------------------------- load order and run loop with fakes


def test_tampered_engine_is_refused_before_tensorrt_is_touched(tmp_path, monkeypatch):
    path = _fake_engine_file(tmp_path)
    path.write_bytes(b"fake serialized engine, but changed")

    def forbidden(*args):
        raise AssertionError("TensorRT was imported before the sha256 check")

    monkeypatch.setattr(trt_backend, "import_tensorrt", forbidden)
    monkeypatch.setattr(trt_backend, "deserialize", forbidden)
    with pytest.raises(ModelFileError, match="sha256 .* differs"):
        TrtBackend.load(path)
    with pytest.raises(ModelFileError, match="sha256 .* differs"):
        Detector.load(path)


def test_version_and_gpu_mismatch_refused(tmp_path, fakes):
    with pytest.raises(ModelFileError, match="installed is 1.7.1.116.*rebuild"):
        TrtBackend.load(_fake_engine_file(tmp_path, trt_version="1.6.0"))
    with pytest.raises(ModelFileError, match="compute capability 9.0, this GPU is 8.6.*rebuild"):
        TrtBackend.load(_fake_engine_file(tmp_path, compute_capabilities=["9.0"]))
    with pytest.raises(ModelFileError, match="built on a NVIDIA A100, this GPU is a Fake GPU"):
        TrtBackend.load(_fake_engine_file(tmp_path, gpu_name="NVIDIA A100"))
    with pytest.raises(ModelFileError, match="runtime asked for is tensorrt"):
        TrtBackend.load(_fake_engine_file(tmp_path), flavour="tensorrt")


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_run_loop_with_fake_engine(tmp_path, fakes, cuda_graphs):
    backend = TrtBackend.load(_fake_engine_file(tmp_path, flavour="tensorrt"), cuda_graphs=cuda_graphs)
    assert backend.batch_range == (1, 4) and backend.input_size == (128, 128)
    rng = np.random.default_rng(0)
    for b in (1, 3, 1, 4, 3, 3):  # shape changes back and forth; repeats replay graphs
        batch = rng.normal(size=(b, 3, 128, 128)).astype(np.float32)
        out = backend.run(batch)
        for name, expected in reference_outputs(batch).items():
            np.testing.assert_allclose(out[name], expected, rtol=1e-6)
    assert (fakes.graph_launches > 0) == cuda_graphs
    status = [backend.graph_status(b) for b in (1, 2, 3)]
    assert status == (["captured", "not captured yet", "captured"] if cuda_graphs else [None] * 3)
    # one context, plus one per captured batch size (1, 3, 4)
    assert FakeTrt.engine.contexts == (4 if cuda_graphs else 1)
    with pytest.raises(ValueError, match="batch must be"):
        backend.run(np.zeros((5, 3, 128, 128), np.float32))
    allocated = len(fakes.buffers)
    backend.close()
    backend.close()
    assert fakes.freed == allocated and not fakes.buffers


def test_failed_capture_falls_back_without_losing_results_and_says_so(tmp_path, fakes):
    FakeTrt.engine.data_dependent = True  # e.g. the NMS layer of --nms onnx engines: capture is invalidated
    backend = TrtBackend.load(_fake_engine_file(tmp_path, flavour="tensorrt"), cuda_graphs=True)
    batch = np.random.default_rng(1).normal(size=(2, 3, 128, 128)).astype(np.float32)
    assert backend.graph_status(2) == "not captured yet"
    for _ in range(3):
        np.testing.assert_allclose(backend.run(batch)["scores"], reference_outputs(batch)["scores"], rtol=1e-6)
    assert fakes.graph_launches == 0 and fakes.capturing is None
    assert backend.graph_status(2).startswith("not captured: execute_async_v3 failed during capture")
    backend.close()
    with pytest.raises(RuntimeError, match="closed"):
        backend.run(batch)


def test_detector_on_fake_engine_runs_host_nms(tmp_path, fakes):
    with Detector.load(_fake_engine_file(tmp_path)) as det:
        assert det.backend.name == "tensorrt-rtx" and det.class_names == ("a", "b")
        dets = det.detect([np.full((64, 128, 3), 100, np.uint8), np.full((256, 256, 3), 7, np.uint8)])
    assert [len(d) for d in dets] == [5, 5]  # max_dets of the manifest's NMS settings
    assert all(np.all(np.diff(d.scores) <= 0) and d.scores.min() > 0.2 for d in dets)
    assert dets[0].boxes[:, 3].max() <= 64 and dets[1].boxes.max() <= 256


def test_cuda_failures_are_typed(tmp_path, fakes):
    fakes.fail_malloc = True
    with pytest.raises(CudaError, match="cudaHostAlloc failed: cudaErrorMemoryAllocation"):
        TrtBackend.load(_fake_engine_file(tmp_path))
    fakes.device_count = 0
    with pytest.raises(NoCudaDeviceError, match="no CUDA device"):
        TrtBackend.load(_fake_engine_file(tmp_path))
    with pytest.raises(NoCudaDeviceError, match="device 3 does not exist"):
        select_device(FakeCudart(device_count=2), 3)


def test_stand_in_copies_are_asynchronous_and_devices_per_thread(fakes):
    # what the stand-in claims of CUDA: a pinned buffer read before the stream is synchronized is stale;
    # a kernel on a stream of another device than the thread's current one fails, a copy does not
    from retina_deploy.runtime.backends.cuda_mem import DeviceBuffer, PinnedArray, Stream

    src, dst = PinnedArray(fakes, (4,), np.float32), PinnedArray(fakes, (4,), np.float32)
    dev, stream = DeviceBuffer(fakes, 16), Stream(fakes)
    src.array[:], dst.array[:] = 7, 0
    stream.copy_to_device(dev.ptr, src.ptr, 16)
    stream.copy_to_host(dst.ptr, dev.ptr, 16)
    assert dst.array.tolist() == [0, 0, 0, 0]
    stream.synchronize()
    assert dst.array.tolist() == [7, 7, 7, 7]
    fakes.device_count = 2
    check(fakes, fakes.cudaSetDevice(1), "cudaSetDevice")
    assert fakes.enqueue(stream.ptr, lambda: None, kernel=False)  # the stream is device 0's
    assert not fakes.enqueue(stream.ptr, lambda: None, kernel=True)
    context = FakeEngine(fakes).create_execution_context()
    assert not context.set_tensor_address("no_such_tensor", dev.ptr) and context.set_tensor_address("images", dev.ptr)


def test_engine_with_a_plugin_layer_and_int32_outputs_runs(tmp_path, fakes):
    # an EfficientNMS_TRT engine: deserializes only from an initialised plugin registry; int32 outputs
    FakeTrt.engine = FakeEngine(fakes, plugin=True, outputs="nms")
    backend = TrtBackend.load(_fake_engine_file(tmp_path, flavour="tensorrt"))
    batch = np.random.default_rng(2).normal(size=(3, 3, 128, 128)).astype(np.float32)
    out, expected = backend.run(batch), reference_outputs(batch, "nms")
    assert {k: v.dtype for k, v in out.items()} == {k: v.dtype for k, v in expected.items()}
    for name, value in expected.items():
        np.testing.assert_array_equal(out[name], value)
    backend.close()


def test_tensorrt_rtx_on_a_gpu_it_does_not_support_is_not_a_rebuild(tmp_path, fakes):
    fakes.capability = (9, 0)  # H100 / H200: TensorRT-RTX 1.7 runs on 7.5, 8.0, 8.6, 8.9, 12.x
    path = _fake_engine_file(tmp_path)
    for load in (TrtBackend.load, Detector.load):
        with pytest.raises(UnsupportedGpuError, match="TensorRT-RTX 1.7.1.116 does not run on this GPU") as info:
            load(path)
        assert "compute capability 9.0" in str(info.value) and "--flavor tensorrt" in str(info.value)
        assert "rebuild" not in str(info.value)
    fakes.capability = (12, 0)
    TrtBackend.load(path).close()


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_runs_from_other_threads_select_the_backend_device(tmp_path, fakes, cuda_graphs):
    # the current device is per host thread: a batcher / server thread starts on device 0
    fakes.device_count = 2
    backend = TrtBackend.load(_fake_engine_file(tmp_path, flavour="tensorrt"), device=1, cuda_graphs=cuda_graphs)
    batch = np.random.default_rng(3).normal(size=(2, 3, 128, 128)).astype(np.float32)
    results = []
    for _ in range(3):
        worker = threading.Thread(target=lambda: results.append(backend.run(batch)))
        worker.start()
        worker.join()
    assert len(results) == 3
    for out in results:
        np.testing.assert_allclose(out["boxes"], reference_outputs(batch)["boxes"], rtol=1e-6)
    assert (fakes.graph_launches == 2) == cuda_graphs
    backend.close()


@pytest.mark.skipif(not HAS_CUDART, reason="cuda-python is not installed")
def test_real_cudart_errors_are_checked():
    cudart = import_cudart()
    if HAS_GPU:
        assert check(cudart, cudart.cudaGetDeviceCount(), "cudaGetDeviceCount") >= 1
    else:
        with pytest.raises(CudaError, match="cudaGetDeviceCount failed"):
            check(cudart, cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
        with pytest.raises(NoCudaDeviceError, match="no CUDA device"):
            select_device(cudart, 0)


# ---------------------------------------------------------------- a real TensorRT-RTX engine


@pytest.fixture(scope="module")
def rtx_engine(tmp_path_factory):
    if not HAS_RTX:
        pytest.skip("tensorrt_rtx is not installed")
    import tensorrt_rtx as trt
    from testkit.detector_models import exported

    from retina_deploy.runtime.contract.manifest import fields_from_onnx_metadata
    from retina_deploy.runtime.contract.onnx_files import read_onnx_metadata

    onnx_path = exported("none")  # TensorRT-RTX cannot build NonMaxSuppression: host NMS instead
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse_from_file(str(onnx_path)), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("images", (1, 3, 256, 256), (2, 3, 256, 256), (4, 3, 256, 256))
    config.add_optimization_profile(profile)
    data = builder.build_serialized_network(network, config)
    assert data is not None
    path = tmp_path_factory.mktemp("rtx") / "model.engine"
    path.write_bytes(bytes(data))
    write_manifest(
        path,
        flavour="tensorrt-rtx",
        trt_version=trt.__version__,
        onnx_sha256=sha256_file(onnx_path),
        **fields_from_onnx_metadata(read_onnx_metadata(onnx_path).to_dict()),
    )
    return path


def test_rtx_engine_manifest_and_verification(rtx_engine, tmp_path):
    import tensorrt_rtx as trt

    from retina_deploy.runtime.contract.manifest import verify_engine_file

    m = verify_engine_file(rtx_engine, flavour="tensorrt-rtx", trt_version=trt.__version__)
    assert m.batch_range == (1, 2, 4) and m.input_size == (256, 256) and m.postprocess["nms"]["mode"] == "none"
    tampered = tmp_path / "model.engine"
    data = bytearray(rtx_engine.read_bytes())
    data[len(data) // 2] ^= 1
    tampered.write_bytes(bytes(data))
    manifest_path(tampered).write_bytes(manifest_path(rtx_engine).read_bytes())
    with pytest.raises(ModelFileError, match="sha256 .* differs"):
        Detector.load(tampered)


@pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU error; a GPU is present")
def test_rtx_engine_without_gpu_is_a_typed_error(rtx_engine):
    with pytest.raises(NoCudaDeviceError, match="no CUDA device"):
        Detector.load(rtx_engine)


@pytest.mark.skipif(not HAS_RTX, reason="tensorrt_rtx is not installed")
def test_forged_engine_refused_by_tensorrt_in_a_subprocess(tmp_path):
    # A manifest whose sha256 matches garbage passes our check; TensorRT's validity check must refuse
    # it (run in a subprocess: a native crash would fail this test instead of killing the suite).
    code = """
import sys, tensorrt_rtx as trt
from retina_deploy.core.errors import ModelFileError
from retina_deploy.runtime.backends.tensorrt import deserialize
try:
    deserialize(trt, b"\\x00garbage" * 4096, "forged.engine", trt.Logger(trt.Logger.INTERNAL_ERROR))
except ModelFileError as e:
    print("refused:", e)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "refused: forged.engine: TensorRT refuses the engine (MALFORMED_ENGINE)" in result.stdout


@pytest.mark.skipif(not HAS_GPU, reason="no CUDA device: TensorRT engines only execute on a GPU")
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_rtx_engine_matches_onnxruntime_on_gpu(rtx_engine, cuda_graphs):
    from testkit.detector_models import exported, images, match_detections

    imgs = images()
    with Detector.load(exported("none"), backend="ort-cpu") as ref:
        expected = ref.detect(imgs)
    try:
        det = Detector.load(rtx_engine, cuda_graphs=cuda_graphs)
    except UnsupportedGpuError as e:  # e.g. an H100: TensorRT-RTX does not run on compute capability 9.0
        pytest.skip(f"TensorRT-RTX does not run on this GPU: {e}")
    with det:
        for _ in range(2):  # second round replays captured graphs
            got = det.detect(imgs)
            for a, b in zip(expected, got, strict=True):
                match_detections(a, b, box_tol=0.5, score_tol=1e-3)


def test_tensorrt_rtx_runtime_cache_spares_the_next_process_its_kernel_compilation(tmp_path, fakes):
    path = _fake_engine_file(tmp_path)
    batch = np.zeros((2, 3, 128, 128), np.float32)
    cache = tmp_path / "fake.engine.rtx-cache"  # beside the engine by default
    for compilations, note in ((1, "created"), (0, "reused")):
        FakeTrt.engine.compilations = 0
        backend = TrtBackend.load(path)
        backend.run(batch)
        backend.run(batch)
        assert FakeTrt.engine.compilations == compilations and backend.runtime_cache_note.endswith(note)
        backend.close()
        assert cache.read_bytes().startswith(b"retina-deploy/tensorrt-rtx-runtime-cache 1\n")
    fakes.capability = (8, 9)  # another GPU: TensorRT-RTX does not load it; the file is replaced
    FakeTrt.engine.compilations = 0
    backend = TrtBackend.load(path)
    backend.run(batch)
    assert FakeTrt.engine.compilations == 1 and "another GPU" in backend.runtime_cache_note
    backend.close()
    assert b"sm89" in cache.read_bytes()


def test_a_runtime_cache_file_that_is_not_ours_is_left_alone(tmp_path, fakes):
    foreign = tmp_path / "kernels.bin"
    foreign.write_bytes(b"someone else's file")
    backend = TrtBackend.load(_fake_engine_file(tmp_path), runtime_cache=foreign)
    backend.run(np.zeros((1, 3, 128, 128), np.float32))
    backend.close()
    assert foreign.read_bytes() == b"someone else's file" and "left alone" in backend.runtime_cache_note
    TrtBackend.load(_fake_engine_file(tmp_path), runtime_cache=False).close()
    assert not (tmp_path / "fake.engine.rtx-cache").exists()
