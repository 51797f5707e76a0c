"""``build_engine`` on regular TensorRT (10.x and 11.x), through the build-side stand-in ``fake_trt_builder``.

The stand-in replaces ``tensorrt`` in ``sys.modules`` and cuda-python's cudart (``FakeCudart`` from
tests/testkit/fake_trt.py, plus the synchronous ``cudaMemcpy`` the INT8 calibrator uses), so the default
strongly typed path, ``--legacy-precision`` (builder flags, TensorRT's INT8 calibrators and their cache),
DLA, the timing cache and the engine inspector checks run as they would on a GPU machine.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from fake_trt_builder import make_tensorrt
from testkit import fake_trt
from testkit.export_helpers import BATCH, SIZE

from retina_deploy.calib.int8 import CalibConfig
from retina_deploy.calib.quantize import Int8Config
from retina_deploy.calib.sampler import sample_calibration_images
from retina_deploy.core.errors import ConfigError, RetinaDeployError
from retina_deploy.export.engine.builder import EngineBuildConfig, build_engine
from retina_deploy.export.engine.flavours import EngineBuildError
from retina_deploy.export.engine.precision import network_precision
from retina_deploy.runtime.backends import cuda_mem
from retina_deploy.runtime.backends.tensorrt import check_io, describe_io
from retina_deploy.runtime.contract.manifest import manifest_path, sha256_file, verify_engine_file
from retina_deploy.runtime.contract.onnx_files import read_onnx_metadata

TRT10, TRT11 = "10.13.3.9", "11.1.0.5"
FAST = CalibConfig(method="percentile", num=4, batch=2)  # the default path's Q/DQ calibration (ONNX Runtime)
H, W = SIZE


class CalibCudart(fake_trt.FakeCudart):
    """FakeCudart plus the synchronous copy of cuda-python (``cudaMemcpy(dst, src, count, kind) -> (err,)``)."""

    def cudaMemcpy(self, dst, src, n, kind):  # noqa: N802 - cuda-python's name
        import ctypes

        ctypes.memmove(dst, src, n)
        return (self.cudaError_t.cudaSuccess,)


def install(monkeypatch, version=TRT10, **kw):
    """Make ``import tensorrt`` and cuda-python's cudart give the stand-ins; returns (tensorrt, cudart)."""
    cudart = CalibCudart()
    trt = make_tensorrt(version, cudart=cudart, **kw)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(cuda_mem, "import_cudart", lambda: cudart)
    return trt, cudart


@pytest.fixture(scope="module")
def default_builds(tmp_path_factory, none_export, calib_dir):
    """FP32, FP16 and INT8 engines on the default (strongly typed) path: {precision: (result, build record)}."""
    out = tmp_path_factory.mktemp("engines")
    configs = {
        "fp32": EngineBuildConfig(flavour="tensorrt", batch=(1, 2, 2)),
        "fp16": EngineBuildConfig(flavour="tensorrt", precision="fp16", workspace_gib=1, optimization_level=4),
        "int8": EngineBuildConfig(
            flavour="tensorrt", precision="int8", int8=Int8Config(calib_images=calib_dir, calib=FAST)
        ),
    }
    builds = {}
    with pytest.MonkeyPatch.context() as mp:
        trt, _ = install(mp)
        for precision, cfg in configs.items():
            result = build_engine(none_export, out / f"r18_{precision}.engine", cfg)
            builds[precision] = (result, trt.builds[-1])
    return builds


def legacy_int8(calib_dir, method="entropy", **kw) -> EngineBuildConfig:
    calib = CalibConfig(method=method, num=4, batch=2)
    return EngineBuildConfig(
        flavour="tensorrt",
        precision="int8",
        legacy_precision=True,
        int8=Int8Config(calib_images=calib_dir, calib=calib),
        **kw,
    )


def nothing_written(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.suffix in (".engine", ".json", ".cache") or p.name.endswith(".onnx")]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_default_path_is_strongly_typed_and_writes_engine_and_manifest(default_builds, none_export, precision):
    result, record = default_builds[precision]
    assert record["strongly_typed"] and not record["flags"] & {"FP16", "INT8"} and record["calibrator"] is None
    assert record["profiling_verbosity"] == "DETAILED" and record["conv_precisions"] == [precision]
    manifest = verify_engine_file(result.engine_path, flavour="tensorrt", trt_version=TRT10)
    assert manifest == result.manifest and manifest.engine_sha256 == sha256_file(result.engine_path)
    assert (manifest.flavour, manifest.trt_version, manifest.precision) == ("tensorrt", TRT10, precision)
    assert manifest.batch_range == ((1, 2, 2) if precision == "fp32" else BATCH)
    assert manifest.gpu_name == "Fake GPU" and tuple(manifest.compute_capabilities) == ("8.6",)
    assert manifest.onnx_sha256 == sha256_file(result.onnx_path)
    assert manifest.extra["fp32_onnx_sha256"] == sha256_file(none_export)
    check = manifest.extra["precision_check"]
    assert check["network"]["result"] == "ok"
    assert check["engine"] == {
        "counts": {precision: check["network"]["counts"]["conv"]},
        "result": "ok (EngineInspector)",
    }
    if precision == "fp16":
        assert record["workspace"] == 2**30 and record["optimization_level"] == 4
    # the engine reads back through the runtime's own I/O checks, with the manifest's batch range
    trt = make_tensorrt(TRT10)
    engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(result.engine_path.read_bytes())
    inp, outputs = check_io(describe_io(engine, trt), manifest, str(result.engine_path))
    assert inp.shape == (-1, 3, H, W) and inp.profile[0][0] == manifest.batch_range[0]
    assert [o.name for o in outputs] == ["boxes", "scores"]


def test_legacy_fp16_sets_the_builder_flag_on_a_weakly_typed_network(none_export, tmp_path, monkeypatch):
    trt, _ = install(monkeypatch)
    cfg = EngineBuildConfig(flavour="tensorrt", precision="fp16", legacy_precision=True)
    result = build_engine(none_export, tmp_path / "legacy_fp16.engine", cfg)
    record = trt.builds[-1]
    assert not record["strongly_typed"] and record["flags"] == {"FP16"} and record["conv_precisions"] == ["fp16"]
    assert result.onnx_path == none_export and result.manifest.precision == "fp16"
    check = result.precision_check
    assert (
        check["network"]["result"].startswith("not applicable") and check["engine"]["result"] == "ok (EngineInspector)"
    )


@pytest.mark.parametrize(
    "method, calibrator, header",
    [
        ("entropy", "IInt8EntropyCalibrator2", "EntropyCalibration2"),
        ("minmax", "IInt8MinMaxCalibrator", "MinMaxCalibration"),
    ],
)
def test_legacy_int8_calibrates_with_the_asked_calibrator(
    none_export, calib_dir, tmp_path, monkeypatch, method, calibrator, header
):
    trt, cudart = install(monkeypatch)
    result = build_engine(none_export, tmp_path / "legacy.engine", legacy_int8(calib_dir, method))
    record = trt.builds[-1]
    assert record["calibrator"] == calibrator and record["flags"] == {"FP16", "INT8"} and not record["strongly_typed"]
    # 4 images in full batches of 2, at the calibration profile's shape, copied to (fake) device memory
    assert record["calibration"]["source"] == "calibrated" and record["calibration"]["batches"] == 2
    assert record["calibration"]["batch_shape"] == (2, 3, H, W)
    calib = sample_calibration_images(calib_dir, read_onnx_metadata(none_export).preprocess, num=4)
    assert record["calibration"]["input_amax"] == max(float(abs(b).max()) for b in calib.batches(2))  # our images
    assert not cudart.buffers  # the calibrator's device buffer was freed
    cache = tmp_path / "legacy.engine.calib.cache"
    assert cache.read_text().splitlines()[0] == f"TRT-101303-{header}"
    key = json.loads((tmp_path / "legacy.engine.calib.cache.key.json").read_text())
    assert key["calibrator"] == calibrator and key["tensorrt"] == TRT10
    assert result.manifest.precision == "int8" and record["conv_precisions"] == ["int8"]
    assert result.precision_check["engine"]["result"] == "ok (EngineInspector)"


def test_legacy_int8_cache_is_reused_until_the_calibration_set_changes(none_export, calib_dir, tmp_path, monkeypatch):
    trt, _ = install(monkeypatch)
    cache = tmp_path / "shared.calib.cache"
    cfg = legacy_int8(calib_dir)
    cfg = replace(cfg, int8=replace(cfg.int8, cache=cache))
    build_engine(none_export, tmp_path / "a.engine", cfg)
    first, key_path = cache.read_bytes(), cache.with_name(cache.name + ".key.json")
    first_key = json.loads(key_path.read_text())
    build_engine(none_export, tmp_path / "b.engine", cfg)
    assert trt.builds[-1]["calibration"] == {"source": "cache", "batches": 0, "batch_size": 2}
    assert trt.builds[-1]["get_batch_calls"] == 0 and cache.read_bytes() == first
    # another calibration set: its key differs, so the cache is ignored, recalibrated and replaced
    other = tmp_path / "other_images"
    other.mkdir()
    for i, image in enumerate(sorted(calib_dir.glob("*.png"))[:2]):
        (other / f"copy_{i}.png").write_bytes(image.read_bytes())
    changed = replace(cfg, int8=replace(cfg.int8, calib_images=other))
    build_engine(none_export, tmp_path / "c.engine", changed)
    assert trt.builds[-1]["calibration"]["source"] == "calibrated" and trt.builds[-1]["calibration"]["batches"] == 1
    assert json.loads(key_path.read_text())["sampler_sha256"] != first_key["sampler_sha256"]


def test_legacy_percentile_is_refused_before_anything_is_written(none_export, calib_dir, tmp_path, monkeypatch):
    install(monkeypatch)
    with pytest.raises(ConfigError, match="calibrates with TensorRT's own calibrators") as info:
        build_engine(none_export, tmp_path / "p.engine", legacy_int8(calib_dir, "percentile"))
    assert "\n" not in str(info.value) and nothing_written(tmp_path)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_legacy_precision_is_refused_on_tensorrt_11(none_export, calib_dir, tmp_path, monkeypatch, precision):
    trt, _ = install(monkeypatch, TRT11)
    assert not hasattr(trt.BuilderFlag, "FP16") and not hasattr(trt, "IInt8EntropyCalibrator2")
    cfg = (
        legacy_int8(calib_dir)
        if precision == "int8"
        else EngineBuildConfig(flavour="tensorrt", precision="fp16", legacy_precision=True)
    )
    with pytest.raises(
        ConfigError, match=r"--legacy-precision needs TensorRT < 11; tensorrt 11\.1\.0\.5 builds strongly"
    ):
        build_engine(none_export, tmp_path / "l.engine", cfg)
    assert nothing_written(tmp_path) and not trt.builds


def test_tensorrt_11_builds_the_default_path(default_builds, tmp_path, monkeypatch):
    trt, _ = install(monkeypatch, TRT11)
    fp16_onnx = default_builds["fp16"][0].onnx_path
    result = build_engine(fp16_onnx, tmp_path / "r11.engine", EngineBuildConfig(flavour="tensorrt"))
    assert trt.builds[-1]["strongly_typed"] and result.manifest.trt_version == TRT11
    counts = result.precision_check["engine"]["counts"]  # 11.x inspector JSON: "Format" + "DataType"
    assert counts == {"fp16": result.precision_check["network"]["counts"]["conv"]}


@pytest.mark.parametrize("version", [TRT10, TRT11])
def test_dla_fp16_sets_device_core_and_gpu_fallback(default_builds, none_export, tmp_path, monkeypatch, version):
    # 11.x: DLA builds are strongly typed (the FP16 file); 10.x documents DLA with builder flags only
    trt, _ = install(monkeypatch, version, dla_cores=2)
    legacy = version == TRT10
    src = none_export if legacy else default_builds["fp16"][0].onnx_path
    cfg = EngineBuildConfig(flavour="tensorrt", dla_core=1, batch=(2, 2, 2), precision="fp16", legacy_precision=legacy)
    result = build_engine(src, tmp_path / "dla.engine", cfg)
    record = trt.builds[-1]
    assert record["device_type"] == "DLA" and record["dla_core"] == 1 and "GPU_FALLBACK" in record["flags"]
    assert record["strongly_typed"] != legacy and ("FP16" in record["flags"]) == legacy
    assert record["dla_layers"] > 0 and record["gpu_layers"] > 0  # shape/gather layers fall back to the GPU
    assert result.manifest.extra["build_config"]["dla_core"] == 1


@pytest.mark.parametrize(
    "case, match",
    [
        ("core", "DLA core 2 does not exist: tensorrt sees 2 DLA cores"),
        ("fp32", "DLA runs FP16 or INT8 only"),
        ("dynamic", "DLA needs a fixed batch"),
        ("strongly_typed_10", "strongly typed network is not documented for tensorrt 10.*--legacy-precision"),
    ],
)
def test_dla_refusals(default_builds, none_export, tmp_path, monkeypatch, case, match):
    trt, _ = install(monkeypatch, TRT10 if case == "strongly_typed_10" else TRT11, dla_cores=2)
    src, cfg = default_builds["fp16"][0].onnx_path, EngineBuildConfig(flavour="tensorrt", dla_core=0, batch=(2, 2, 2))
    if case == "core":
        cfg = EngineBuildConfig(flavour="tensorrt", dla_core=2, batch=(2, 2, 2))
    elif case == "fp32":
        src = none_export
    elif case == "dynamic":
        cfg = EngineBuildConfig(flavour="tensorrt", dla_core=0, batch=(1, 2, 4))
    with pytest.raises(ConfigError, match=match):
        build_engine(src, tmp_path / "dla.engine", cfg)
    assert not trt.builds and nothing_written(tmp_path)


def test_dla_without_gpu_fallback_fails_on_layers_dla_cannot_run(default_builds, tmp_path, monkeypatch):
    install(monkeypatch, TRT11, dla_cores=1)
    cfg = EngineBuildConfig(flavour="tensorrt", dla_core=0, batch=(1, 1, 1), gpu_fallback=False)
    with pytest.raises(EngineBuildError, match="cannot run on DLA .* GPU fallback is not enabled"):
        build_engine(default_builds["fp16"][0].onnx_path, tmp_path / "dla.engine", cfg)
    assert nothing_written(tmp_path)


def test_timing_cache_is_written_then_reused(none_export, tmp_path, monkeypatch):
    trt, _ = install(monkeypatch)
    cache = tmp_path / "timing.cache"
    cfg = EngineBuildConfig(flavour="tensorrt", batch=(1, 1, 2), timing_cache=cache)
    first = build_engine(none_export, tmp_path / "a.engine", cfg)
    assert cache.is_file() and trt.builds[-1]["timing_cache_source"] == b"" and trt.builds[-1]["timing_cache_hits"] == 0
    assert any("created" in n for n in first.notes)
    written = cache.read_bytes()
    second = build_engine(none_export, tmp_path / "b.engine", cfg)
    assert trt.builds[-1]["timing_cache_source"] == written and trt.builds[-1]["timing_cache_hits"] > 0
    assert any("reused" in n for n in second.notes)
    # a cache made on another GPU is set aside and a fresh one written
    other, _ = install(monkeypatch, gpu="Other GPU")
    third = build_engine(none_export, tmp_path / "c.engine", cfg)
    assert any("another GPU" in n for n in third.notes) and other.builds[-1]["timing_cache_source"] == b""
    assert b"Other GPU" in cache.read_bytes()


@pytest.mark.parametrize("case", ["fp16_file", "legacy_fp16", "int8_file"])
def test_engine_check_fails_when_tensorrt_ran_fp32_convolutions(
    default_builds, none_export, tmp_path, monkeypatch, case
):
    trt, _ = install(monkeypatch)
    trt.force_conv_precision = "fp32"  # a TensorRT that built the request in FP32
    precision = {"fp16_file": "fp16", "legacy_fp16": "fp16", "int8_file": "int8"}[case]
    src = none_export if case == "legacy_fp16" else default_builds[precision][0].onnx_path
    cfg = EngineBuildConfig(flavour="tensorrt", precision=precision, legacy_precision=case == "legacy_fp16")
    with pytest.raises(EngineBuildError, match=f"{precision.upper()} did not take in the engine") as info:
        build_engine(src, tmp_path / "f.engine", cfg)
    assert isinstance(info.value, RetinaDeployError) and "\n" not in str(info.value)
    assert trt.builds[-1]["conv_precisions"] == ["fp32"]
    assert not (tmp_path / "f.engine").exists() and not manifest_path(tmp_path / "f.engine").exists()


def test_standin_network_matches_tensorrt_rtx(default_builds):
    """The stand-in's parser gives the network-level precision counts that TensorRT-RTX's real parser gives."""
    rtx = pytest.importorskip("tensorrt_rtx")
    fake = make_tensorrt(TRT10)
    for precision in ("fp32", "fp16", "int8"):
        data = default_builds[precision][0].onnx_path.read_bytes()
        counts = []
        for trt in (fake, rtx):
            logger = trt.Logger(trt.Logger.ERROR) if trt is rtx else trt.Logger()
            network = trt.Builder(logger).create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
            assert trt.OnnxParser(network, logger).parse(data)
            counts.append((network_precision(network), network.get_input(0).shape, network.num_outputs))
        assert counts[0] == counts[1], precision


def test_legacy_int8_with_fewer_images_than_one_batch_is_one_clear_error(none_export, calib_dir, tmp_path, monkeypatch):
    trt, _ = install(monkeypatch)
    cfg = legacy_int8(calib_dir)  # 4 images
    cfg = replace(cfg, int8=replace(cfg.int8, calib=CalibConfig(method="entropy", batch=8)))
    with pytest.raises(ConfigError, match="calibrates in full batches of 8 images: found 4") as info:
        build_engine(none_export, tmp_path / "few.engine", cfg)
    assert "\n" not in str(info.value) and not trt.builds and nothing_written(tmp_path)


# ---------------------------------------------------------------- what a first GPU run would hit


@pytest.mark.parametrize("version", [TRT10, TRT11])
def test_efficient_nms_builds_once_the_plugin_registry_is_initialised(r18_exports, tmp_path, monkeypatch, version):
    # the parser finds EfficientNMS_TRT only in an initialised registry, and so does deserialization
    # (the engine check deserializes the engine through the stand-in Runtime)
    trt, _ = install(monkeypatch, version)
    result = build_engine(r18_exports["efficient"], tmp_path / "e.engine", EngineBuildConfig(flavour="tensorrt"))
    assert trt._plugins and trt.builds[-1]["conv_precisions"] == ["fp32"]
    assert result.precision_check["engine"]["counts"] == {"fp32": result.precision_check["network"]["counts"]["conv"]}
    engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(result.engine_path.read_bytes())
    types = [s.dtype.name for s in describe_io(engine, trt) if not s.is_input]
    assert types == ["int32", "float32", "float32", "int32"]  # num_dets, boxes, scores, classes


def test_missing_plugin_library_hint_speaks_of_tensorrt_not_rtx(r18_exports, tmp_path, monkeypatch):
    trt, _ = install(monkeypatch)
    trt.init_libnvinfer_plugins = lambda logger, namespace: False  # a runtime without libnvinfer_plugin
    with pytest.raises(EngineBuildError, match="Plugin not found.*libnvinfer_plugin") as info:
        build_engine(r18_exports["efficient"], tmp_path / "e.engine", EngineBuildConfig(flavour="tensorrt"))
    assert "RTX" not in str(info.value) and not (tmp_path / "e.engine").exists()


@pytest.mark.parametrize("garbage", [b"not a timing cache", b"FAKE-TRT-TIMING-CACHE\n{truncated"])
def test_unreadable_timing_cache_is_refused_and_left_alone(none_export, tmp_path, monkeypatch, garbage):
    trt, _ = install(monkeypatch)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(garbage)
    cfg = EngineBuildConfig(flavour="tensorrt", batch=(1, 1, 2), timing_cache=cache)
    with pytest.raises(ConfigError, match="timing.cache: not a TensorRT timing cache"):
        build_engine(none_export, tmp_path / "a.engine", cfg)
    assert cache.read_bytes() == garbage and not trt.builds and not (tmp_path / "a.engine").exists()


def test_nms_box_limit_of_tensorrt_is_refused_at_build_time(r18_exports, tmp_path, monkeypatch):
    from retina_deploy.export.engine.flavours import Flavour
    from retina_deploy.export.engine.steps import NMS_TOPK_BOX_LIMIT, check_nms_box_limit, nms_candidates

    trt, _ = install(monkeypatch)
    meta = read_onnx_metadata(r18_exports["onnx"])
    assert meta.anchors_per_level == (4608, 1152, 288, 72, 18)  # 128 x 256: strides 8..128, 9 anchors
    k, classes = meta.nms.topk_per_level, len(meta.class_names)
    assert nms_candidates(meta) == sum(min(k, a * classes) for a in meta.anchors_per_level) <= NMS_TOPK_BOX_LIMIT
    check_nms_box_limit(Flavour("tensorrt", trt), meta, Path("m.onnx"))  # the default fits
    assert classes == 4
    big = replace(meta, nms=replace(meta.nms, topk_per_level=2000))
    assert nms_candidates(big) == 2000 + 2000 + 288 * 4 + 72 * 4 + 18 * 4 == 5512  # P5..P7 hold fewer than k
    with pytest.raises(ConfigError, match="5512 candidates enter NonMaxSuppression .* at most 5000"):
        check_nms_box_limit(Flavour("tensorrt", trt), big, Path("m.onnx"))
    none_meta = replace(big, nms=replace(big.nms, mode="none"))
    check_nms_box_limit(Flavour("tensorrt", trt), none_meta, Path("m.onnx"))  # host NMS has no such limit
