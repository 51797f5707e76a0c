"""``build_engine`` with TensorRT-RTX, which builds without a GPU: FP32, FP16 and INT8 engines from the
``--nms none`` export, their manifests, the calibration cache, and bad input (one clear error, no engine).

Without a GPU the engine cannot be deserialized, so the post-build inspection is skipped (recorded in
the manifest) and the network-level precision check is what fails a precision that did not take.
"""

from __future__ import annotations

import shutil

import onnx
import pytest
from testkit.export_helpers import BATCH

from retina_deploy.calib import int8 as int8_module
from retina_deploy.calib.int8 import CalibConfig
from retina_deploy.calib.quantize import Int8Config
from retina_deploy.core.errors import ConfigError, DatasetError, ModelFileError, RetinaDeployError
from retina_deploy.export.engine.builder import EngineBuildConfig, build_engine
from retina_deploy.export.engine.flavours import EngineBuildError
from retina_deploy.runtime.backends.ort import OnnxModel
from retina_deploy.runtime.contract.manifest import manifest_path, sha256_file, verify_engine_file

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install tensorrt-rtx-cu13)")

FAST = CalibConfig(method="percentile", num=4, batch=2)  # entropy: minutes of CPU per model


def int8_config(calib_dir, **kw) -> EngineBuildConfig:
    return EngineBuildConfig(precision="int8", int8=Int8Config(calib_images=calib_dir, calib=FAST), **kw)


@pytest.fixture(scope="module")
def engines(tmp_path_factory, none_export, calib_dir):
    out = tmp_path_factory.mktemp("engines")
    configs = {
        "fp32": EngineBuildConfig(batch=(1, 2, 2)),
        "fp16": EngineBuildConfig(precision="fp16", timing_cache=out / "timing.cache", workspace_gib=1),
        "int8": int8_config(calib_dir),
    }
    return {p: build_engine(none_export, out / f"r18_{p}.engine", cfg) for p, cfg in configs.items()}


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_and_manifest(engines, none_export, precision):
    result = engines[precision]
    manifest = verify_engine_file(result.engine_path, flavour="tensorrt-rtx", trt_version=trt.__version__)
    assert manifest == result.manifest and manifest.engine_sha256 == sha256_file(result.engine_path)
    assert manifest.precision == precision and manifest.flavour == "tensorrt-rtx"
    assert manifest.onnx_sha256 == sha256_file(result.onnx_path)
    assert manifest.extra["fp32_onnx_sha256"] == sha256_file(none_export)
    assert manifest.batch_range == ((1, 2, 2) if precision == "fp32" else BATCH)
    assert manifest.gpu_name is None and manifest.postprocess["nms"]["mode"] == "none"
    check = manifest.extra["precision_check"]
    assert check["network"]["result"] == "ok" and check["network"]["counts"]["conv"] > 0
    assert check["engine"]["result"].startswith(("ok", "skipped"))
    if precision == "fp32":
        assert result.onnx_path == none_export
    else:  # the baked file keeps our metadata (Detector / eval run it), with the precision key
        assert result.onnx_path.name == f"r18_none.{precision}.onnx"
        assert result.onnx_path.parent == result.engine_path.parent
        assert OnnxModel.load(result.onnx_path).metadata.precision == precision
    counts = check["network"]["counts"]
    assert counts["conv_half"] == (counts["conv"] if precision == "fp16" else 0)
    assert counts["conv_int8"] == (counts["conv"] if precision == "int8" else 0)


def test_rtx_notes_that_it_ignores_the_timing_cache(engines):
    assert any("timing cache not used" in n for n in engines["fp16"].notes)


def test_second_int8_build_skips_calibration(engines, none_export, calib_dir, monkeypatch):
    def no_calibration(*args, **kwargs):
        raise AssertionError("calibration ran although the cache matches")

    monkeypatch.setattr(int8_module, "create_calibrator", no_calibration)
    first = engines["int8"]
    again = build_engine(none_export, first.engine_path.with_name("again.engine"), int8_config(calib_dir))
    assert first.int8.calibrated and not again.int8.calibrated
    assert again.manifest.extra["calibration"]["calibrated"] is False
    assert again.manifest.onnx_sha256 == first.manifest.onnx_sha256  # same ranges, same Q/DQ file


def test_fp16_label_without_fp16_types_fails_before_the_build(none_export, tmp_path):
    model = onnx.load(str(none_export))
    for prop in model.metadata_props:
        if prop.key == "precision":
            prop.value = '"fp16"'
    fake = tmp_path / "claims_fp16.onnx"
    onnx.save(model, str(fake))
    with pytest.raises(EngineBuildError, match="FP16 did not take"):
        build_engine(fake, tmp_path / "out.engine")
    assert not (tmp_path / "out.engine").exists() and not manifest_path(tmp_path / "out.engine").exists()


def foreign_onnx(path):
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(graph), str(path))
    return path


@pytest.mark.parametrize(
    "case, error, match",
    [
        ("foreign", ModelFileError, "not a retina-deploy ONNX file"),
        ("empty_calib", DatasetError, "no JPEG or PNG images"),
        ("batch", ConfigError, r"batch range 1\.\.16 is outside"),
        ("unwritable", ModelFileError, "cannot write in"),
        ("suffix", ConfigError, "must end in .engine or .plan"),
        ("legacy", ConfigError, "--legacy-precision needs TensorRT < 11"),
        ("dla", ConfigError, "DLA core 0 does not exist"),
        ("no_calib", ConfigError, "needs calibration images"),
    ],
)
def test_bad_input_is_one_clear_error_and_leaves_no_engine(none_export, tmp_path, case, error, match):
    src, out, cfg = none_export, tmp_path / "out" / "model.engine", EngineBuildConfig()
    if case == "foreign":
        src = foreign_onnx(tmp_path / "foreign.onnx")
    elif case == "empty_calib":
        (tmp_path / "empty").mkdir()
        cfg = int8_config(tmp_path / "empty")
    elif case == "batch":
        cfg = EngineBuildConfig(batch=(1, 2, 16))
    elif case == "unwritable":
        (tmp_path / "a_file").write_text("x")
        out = tmp_path / "a_file" / "model.engine"
    elif case == "suffix":
        out = tmp_path / "model.onnx"
    elif case == "legacy":
        cfg = EngineBuildConfig(precision="fp16", legacy_precision=True)
    elif case == "dla":
        cfg = EngineBuildConfig(precision="fp16", dla_core=0)
    elif case == "no_calib":
        cfg = EngineBuildConfig(precision="int8")
    with pytest.raises(error, match=match) as info:
        build_engine(src, out, cfg)
    assert isinstance(info.value, RetinaDeployError) and "\n" not in str(info.value)
    leftovers = [p.name for p in tmp_path.rglob("*") if p.suffix in (".engine", ".json") or p.name.endswith(".onnx")]
    assert not [n for n in leftovers if n not in ("foreign.onnx",)], leftovers


def test_nothing_is_left_when_the_manifest_cannot_be_written(none_export, tmp_path, monkeypatch):
    from retina_deploy.export.engine import builder as engine_builder

    def fail(*args, **kwargs):
        raise ModelFileError("disk full (simulated)")

    monkeypatch.setattr(engine_builder, "write_manifest", fail)
    with pytest.raises(ModelFileError, match="simulated"):
        build_engine(none_export, tmp_path / "m.engine", EngineBuildConfig(batch=(1, 1, 1)))
    assert not (tmp_path / "m.engine").exists()
    shutil.rmtree(tmp_path)
