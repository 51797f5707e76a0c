"""backend="openvino": the same Detections as ONNX Runtime on every NMS variant and precision file, the same typed
errors for bad input, and the backend name through the CLI and ``bench``.

Tolerances. FP32 and FP16 (both run FP32 kernels on an AVX2 CPU): boxes within 0.01 px and scores within 1e-4
(measured: 1e-5 and below), through ``detection_compare``. INT8: the two runtimes use different integer kernels,
and one rounding difference early in a random-weight network reorders the near-tied detections of its head
(measured on this model: OpenVINO keeps 7-56% of ONNX Runtime's INT8 detections at IoU >= 0.85, ONNX Runtime's
INT8 keeps 14-37% of its own FP32 ones), so INT8 files are held to INT8 accuracy instead: every image's 20 best
scores within 0.1 of ONNX Runtime's (measured: up to 0.054 on TensorRT's form, OpenVINO's scores the lower).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image
from testkit.detector_models import exported, images, match_detections

from retina_deploy.core.errors import ConfigError, ModelFileError
from retina_deploy.runtime.backends import openvino as openvino_backend
from retina_deploy.runtime.detector import Detector

needs_openvino = pytest.mark.skipif(
    not openvino_backend.openvino_installed(),
    reason=f"openvino is not installed ({openvino_backend.INSTALL_HINT})",
)
FP_TOLERANCE = dict(box_tol=1e-2, score_tol=1e-4)


def _both(path, **kw) -> tuple[Detector, Detector]:
    return Detector.load(path, backend="openvino", **kw), Detector.load(path, backend="ort-cpu", **kw)


def _assert_same_detections(path) -> None:
    ov, ort = _both(path)
    with ov, ort:
        imgs = images()
        got, ref = ov.detect(imgs), ort.detect(imgs)  # 6 images, max batch 4: chunks of 4 and 2
        for a, b in zip(got, ref, strict=True):
            assert len(b) > 10  # the test model really detects
            match_detections(a, b, **FP_TOLERANCE)


@pytest.fixture(scope="module")
def precision_files(tmp_path_factory):
    """{"fp16", "int8" (TensorRT's Q/DQ form), "int8-cpu" (ONNX Runtime's)}: from the --nms onnx export,
    calibrated on the test images themselves."""
    from retina_deploy.calib.fp16 import write_fp16_onnx
    from retina_deploy.calib.int8 import CalibConfig
    from retina_deploy.calib.quantize import Int8Config, quantize_int8

    tmp = tmp_path_factory.mktemp("ov-precision")
    for i, img in enumerate(images()):
        Image.fromarray(img).save(tmp / f"{i}.png")
    src = exported("onnx")
    files = {"fp16": write_fp16_onnx(src, tmp / "model.fp16.onnx")[0]}
    calib = CalibConfig(method="minmax", num=6, batch=2)
    for form, key in (("tensorrt", "int8"), ("cpu", "int8-cpu")):
        cfg = Int8Config(calib_images=tmp, calib=calib, form=form)
        files[key] = quantize_int8(src, tmp / f"model.{key}.onnx", cfg).path
    return files


# ---------------------------------------------------------------- parity


@needs_openvino
@pytest.mark.parametrize("nms", ["onnx", "none", "efficient"])
def test_every_nms_variant_gives_onnx_runtimes_detections(nms):
    if nms == "efficient":  # OpenVINO cuts the plugin off and runs it on the host; ONNX Runtime needs its op
        pytest.importorskip("onnxruntime_extensions", reason="ONNX Runtime runs EfficientNMS_TRT through it")
    _assert_same_detections(exported(nms))


@needs_openvino
def test_fp16_file_gives_onnx_runtimes_detections(precision_files):
    _assert_same_detections(precision_files["fp16"])


@needs_openvino
@pytest.mark.parametrize("key", ["int8", "int8-cpu"])
def test_int8_files_run_with_int8_accuracy(precision_files, key):
    ov, ort = _both(precision_files[key])
    with ov, ort:
        assert ov.backend.metadata.precision == "int8"
        for a, b in zip(ov.detect(images()), ort.detect(images()), strict=True):
            assert len(a) >= 20 and len(b) >= 20
            assert np.abs(a.scores[:20] - b.scores[:20]).max() < 0.1
            assert a.class_ids.min() >= 0 and a.class_ids.max() < len(a.class_names)


@needs_openvino
def test_threads_hint_batch_range_and_name():
    with Detector.load(exported("onnx"), backend="openvino", num_threads=1) as det:
        compiled = det.backend.compiled
        assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
        assert str(compiled.get_property("PERFORMANCE_HINT")) == "LATENCY"
        assert compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
        assert (det.min_batch, det.max_batch) == (1, 4)
        assert det.backend.name == "openvino-cpu"


# ---------------------------------------------------------------- bad input


def _onnx_cases():
    from testkit.bad_onnx_files import ONNX_CASES

    return ONNX_CASES


@needs_openvino
@pytest.mark.parametrize("case", sorted(_onnx_cases()))
def test_bad_onnx_files_are_the_same_typed_errors(tmp_path, case):
    make, _ = _onnx_cases()[case]
    path = tmp_path / f"{case}.onnx"
    path.write_bytes(make())
    for backend in ("ort-cpu", "openvino"):
        with pytest.raises(ModelFileError) as info:
            Detector.load(path, backend=backend)
        assert str(path) in str(info.value), backend


@needs_openvino
def test_external_data_is_never_read(tmp_path):
    import onnx

    model = onnx.load(str(exported("onnx")))
    onnx.save(model, tmp_path / "ext.onnx", save_as_external_data=True, location="ext.data", size_threshold=1024)
    assert (tmp_path / "ext.data").is_file()
    with pytest.raises(ModelFileError, match="external data"):
        Detector.load(tmp_path / "ext.onnx", backend="openvino")


@needs_openvino
def test_batches_kinds_and_threads_are_checked(tmp_path):
    from retina_deploy.runtime.backends import backend_for_device

    ov, ort = _both(exported("onnx"))
    with ov, ort:
        batch = np.zeros((5, 3, 256, 256), np.float32)
        for det in (ov, ort):
            with pytest.raises(ValueError, match="outside 1..4"):
                det.run_batch(batch)
        assert [len(v) for v in ov.backend.run(batch).values()] == [5] * 4  # the backend itself chunks, as ORT's
        with pytest.raises(RuntimeError, match="closed"):
            ov.close()
            ov.backend.run(batch[:1])
    (tmp_path / "m.engine").write_bytes(b"engine")
    with pytest.raises(ConfigError, match="runs ONNX files"):
        Detector.load(tmp_path / "m.engine", backend="openvino")
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ModelFileError, match="expected .onnx or .engine"):
        Detector.load(tmp_path / "m.txt", backend="openvino")
    for threads in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="num_threads"):
            Detector.load(exported("onnx"), backend="openvino", num_threads=threads)
    with pytest.raises(ConfigError, match="runs on the CPU"):
        backend_for_device(exported("onnx"), "openvino", 0)


@needs_openvino
def test_outputs_of_the_wrong_batch_are_refused(monkeypatch):
    # OpenVINO 2026.4 returned boxes [N, N, 4] for [1, N, 4] on one --int8-form cpu --nms none file
    with Detector.load(exported("onnx"), backend="openvino") as det:
        infer = det.backend._request.infer

        def emptied(*args, **kwargs):
            return {o: v[:0] for o, v in infer(*args, **kwargs).items()}

        monkeypatch.setattr(det.backend._request, "infer", emptied)
        with pytest.raises(ModelFileError, match="shapes"):
            det.detect(images()[:2])


def test_missing_openvino_is_a_config_error_naming_the_install(monkeypatch, tmp_path, capsys):
    from retina_deploy.cli.main import main

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    openvino_backend._core.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"retina-deploy\[openvino\]"):
            Detector.load(exported("onnx"), backend="openvino")
        Image.fromarray(images()[0]).save(tmp_path / "a.png")
        rc = main(["predict", str(exported("onnx")), str(tmp_path / "a.png"), "--out", str(tmp_path / "out"),
                   "--backend", "openvino"])  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 1 and len(err) == 1 and "retina-deploy[openvino]" in err[0]
    finally:
        openvino_backend._core.cache_clear()


# ---------------------------------------------------------------- names through the CLI and bench


def test_every_verb_takes_the_backend_name():
    from retina_deploy.cli.main import build_parser
    from retina_deploy.inference.bench import BACKENDS as BENCH_BACKENDS
    from retina_deploy.runtime.backends import BACKENDS

    parser = build_parser()
    for argv in (["eval", "m.onnx", "--images", "i", "--annotations", "a.json"], ["predict", "m.onnx", "x.png",
                 "--out", "o"], ["serve", "m.onnx"], ["bench", "m.onnx"]):  # fmt: skip
        assert parser.parse_args([*argv, "--backend", "openvino"]).backend in ("openvino", ["openvino"])
    assert "openvino" in BACKENDS and set(BENCH_BACKENDS) == {"torch", *BACKENDS} - {"triton"}


@needs_openvino
def test_predict_and_bench_run_openvino(tmp_path, capsys):
    from retina_deploy.cli.main import main
    from retina_deploy.inference.bench import BenchConfig, run_bench
    from retina_deploy.runtime.bench.run import RunLength

    Image.fromarray(images()[0]).save(tmp_path / "a.png")
    argv = ["predict", str(exported("onnx")), str(tmp_path / "a.png"), "--out", str(tmp_path / "out")]
    assert main([*argv, "--backend", "openvino"]) == 0
    ov = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert main([*argv[:-1], str(tmp_path / "out-ort"), "--backend", "ort-cpu"]) == 0
    ort = json.loads((tmp_path / "out-ort" / "detections.json").read_text())
    assert len(ov) == len(ort) == 1 and len(ov[0]["detections"]) == len(ort[0]["detections"]) > 0
    cfg = BenchConfig(batches=(1,), length=RunLength(warmup_s=0, duration_s=None, iterations=1),
                      backends=("ort-cpu", "openvino"), threads=1, num_images=1, peak_probe=False)  # fmt: skip
    report = run_bench([exported("none")], cfg, log=lambda _: None)
    assert [(r["backend"], r["precision"]) for r in report["results"]] == [
        ("onnxruntime-cpu", "fp32"),
        ("openvino-cpu", "fp32"),
    ]
