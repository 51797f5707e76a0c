"""FP16 and INT8 files from a real ``--nms none`` export: TensorRT's Q/DQ form, the FP32 tail, metadata,
the calibration cache, and that ONNX Runtime / Detector run them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from calib_helpers import SIZE
from onnx import numpy_helper

from retina_deploy.calib import int8 as int8_module
from retina_deploy.calib.accuracy import emulate_fp16_storage, ort_cpu_execution
from retina_deploy.calib.fp16 import write_fp16_onnx
from retina_deploy.calib.graph import tail_node_names
from retina_deploy.calib.int8 import CalibConfig
from retina_deploy.calib.quantize import Int8Config, quantize_int8
from retina_deploy.core.errors import ConfigError, ModelFileError
from retina_deploy.runtime.backends.ort import OnnxModel

FAST = CalibConfig(method="minmax", num=4, batch=2)


@pytest.fixture(scope="module")
def int8_file(tmp_path_factory, r18_none, calib_images):
    out = tmp_path_factory.mktemp("int8") / "model.int8.onnx"
    return quantize_int8(r18_none, out, Int8Config(calib_images=calib_images, calib=FAST))


def test_int8_is_tensorrt_form(int8_file, r18_none):
    model = onnx.load(str(int8_file.path))
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and all(producers[c.input[0]].op_type == "DequantizeLinear" for c in convs)
    for conv in convs:
        weight_dq = producers[conv.input[1]]
        assert weight_dq.op_type == "DequantizeLinear"
        scale, zero = inits[weight_dq.input[1]], inits[weight_dq.input[2]]
        assert inits[weight_dq.input[0]].dtype == np.int8
        assert scale.shape == (inits[weight_dq.input[0]].shape[0],)  # per output channel
        assert not zero.any()
        if len(conv.input) > 2:  # bias stays FP32: TensorRT takes no INT32 Q/DQ
            assert conv.input[2] in inits and inits[conv.input[2]].dtype == np.float32
    for q in (n for n in graph.node if n.op_type == "QuantizeLinear"):
        assert inits[q.input[2]].dtype == np.int8 and not inits[q.input[2]].any()  # symmetric
    tail = tail_node_names(onnx.load(str(r18_none)).graph)
    assert all(n.op_type not in ("QuantizeLinear", "DequantizeLinear") for n in graph.node if n.name in tail)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["precision"] == '"int8"' and props["class_names"]
    assert int8_file.calibrated and int8_file.images == 4


def test_int8_and_fp16_run_in_onnx_runtime_like_the_fp32_file(int8_file, r18_none, tmp_path):
    fp16_path, summary = write_fp16_onnx(r18_none, tmp_path / "model.fp16.onnx")
    assert summary.casts > 0 and summary.fp32_nodes > 0
    images = np.random.default_rng(0).standard_normal((2, 3, *SIZE)).astype(np.float32)
    ref = OnnxModel.load(r18_none).run(images)
    for path, score_tol in ((fp16_path, 0.02), (int8_file.path, 0.25)):
        model = OnnxModel.load(path)
        assert model.metadata.precision == path.suffixes[0][1:]
        out = model.run(images)
        assert out["scores"].dtype == np.float32 and out["boxes"].dtype == np.float32
        assert np.abs(out["scores"] - ref["scores"]).max() < score_tol
    described = ort_cpu_execution(fp16_path).describe()
    assert "upcast to FP32 by ONNX Runtime" in described
    emulated = OnnxModel.load(emulate_fp16_storage(r18_none, tmp_path / "model.emu.onnx"))
    assert emulated.metadata.precision == "fp16-emulated"
    diff = np.abs(emulated.run(images)["scores"] - ref["scores"]).max()
    assert 0 < diff < 0.02  # FP16 rounding, and nothing more


def test_second_run_takes_ranges_from_the_cache(int8_file, r18_none, calib_images, tmp_path, monkeypatch):
    def no_calibration(*args, **kwargs):
        raise AssertionError("calibration ran although the cache matches")

    monkeypatch.setattr(int8_module, "create_calibrator", no_calibration)
    cfg = Int8Config(calib_images=calib_images, calib=FAST, cache=int8_file.cache_path)
    again = quantize_int8(r18_none, tmp_path / "again.int8.onnx", cfg)
    assert not again.calibrated
    assert again.path.read_bytes() == int8_file.path.read_bytes()


def test_cache_key_follows_images_and_method(int8_file, r18_none, calib_images, tmp_path):
    other_subset = Int8Config(calib_images=calib_images, calib=CalibConfig(method="minmax", num=3, batch=2),
                              cache=tmp_path / "c.json")  # fmt: skip
    other_subset.cache.write_bytes(int8_file.cache_path.read_bytes())
    assert quantize_int8(r18_none, tmp_path / "a.int8.onnx", other_subset).calibrated
    with pytest.raises(ConfigError, match="not a retina-deploy calibration cache"):
        (tmp_path / "foreign.json").write_text('{"hello": 1}')
        quantize_int8(r18_none, tmp_path / "b.int8.onnx", Int8Config(calib_images=calib_images, calib=FAST,
                                                                      cache=tmp_path / "foreign.json"))  # fmt: skip
    assert (tmp_path / "foreign.json").read_text() == '{"hello": 1}'


def test_baked_files_are_not_baked_again(int8_file, tmp_path, calib_images):
    with pytest.raises(ModelFileError, match="already int8"):
        write_fp16_onnx(int8_file.path, tmp_path / "x.onnx")
    with pytest.raises(ModelFileError, match="already int8"):
        quantize_int8(int8_file.path, tmp_path / "y.onnx", Int8Config(calib_images=calib_images, calib=FAST))


def test_foreign_onnx_is_refused(tmp_path, calib_images):
    foreign = Path(tmp_path / "foreign.onnx")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(graph), str(foreign))
    with pytest.raises(ModelFileError, match="not a retina-deploy ONNX file"):
        write_fp16_onnx(foreign, tmp_path / "f16.onnx")
    with pytest.raises(ModelFileError, match="not a retina-deploy ONNX file"):
        quantize_int8(foreign, tmp_path / "i8.onnx", Int8Config(calib_images=calib_images, calib=FAST))
    assert not (tmp_path / "f16.onnx").exists() and not (tmp_path / "i8.onnx").exists()
