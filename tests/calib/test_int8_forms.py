"""The two INT8 forms: TensorRT's (default, unchanged) and ONNX Runtime's CPU form (``--int8-form cpu``).

What decides speed on a CPU is whether ONNX Runtime fuses each DQ -> Conv -> Q group into QLinearConv:
checked here on the graph ONNX Runtime optimises, not on timings (too noisy for a test).
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from retina_deploy.calib.int8 import CalibConfig
from retina_deploy.calib.quantize import Int8Config, quantize_int8
from retina_deploy.cli.main import main
from retina_deploy.core.errors import ConfigError

CALIB = CalibConfig(method="minmax", num=4)


def _optimised_op_counts(path, tmp_path) -> dict[str, int]:
    """Op types of the graph after ONNX Runtime's CPU graph optimisations (QDQ fusion included)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / f"{path.stem}.optimised.onnx")
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    counts: dict[str, int] = {}
    for node in onnx.load(opts.optimized_model_filepath).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _zero_point_types(path) -> set[int]:
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    return {inits[n.input[2]].data_type for n in model.graph.node if n.op_type == "QuantizeLinear"}


@pytest.fixture(scope="module")
def forms(r18_none, calib_images, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("forms")
    trt = quantize_int8(r18_none, tmp / "model.int8.onnx", Int8Config(calib_images=calib_images, calib=CALIB))
    cpu = quantize_int8(
        r18_none, tmp / "model.int8-cpu.onnx", Int8Config(calib_images=calib_images, calib=CALIB, form="cpu")
    )
    return trt.path, cpu.path


def test_cpu_form_fuses_every_convolution(forms, r18_none, tmp_path):
    _, cpu = forms
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(r18_none)).graph.node)
    counts = _optimised_op_counts(cpu, tmp_path)
    assert counts.get("QLinearConv", 0) == convs and counts.get("Conv", 0) == 0
    assert _zero_point_types(cpu) == {onnx.TensorProto.UINT8}  # u8 activations: x86's VNNI path


def test_tensorrt_form_is_unchanged(forms, tmp_path):
    trt, _ = forms
    assert _zero_point_types(trt) == {onnx.TensorProto.INT8}  # symmetric s8, zero-point 0
    model = onnx.load(str(trt))
    conv_inputs = {i for n in model.graph.node if n.op_type == "Conv" for i in n.input}
    assert conv_inputs & {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    # ONNX Runtime cannot fuse this form: it runs FP32 convolutions on dequantized values (simulated INT8)
    assert _optimised_op_counts(trt, tmp_path).get("QLinearConv", 0) == 0


def test_cpu_form_stays_close_to_fp32(forms, r18_none):
    _, cpu = forms
    x = np.random.default_rng(1).standard_normal((1, 3, 128, 128)).astype(np.float32)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"images": x})  # noqa: E731
    ref, got = run(r18_none), run(cpu)
    scores_ref, scores_got = ref[1], got[1]
    assert np.corrcoef(scores_ref.ravel(), scores_got.ravel())[0, 1] > 0.9


def test_form_validation(calib_images):
    with pytest.raises(ConfigError, match="INT8 form must be one of"):
        Int8Config(calib_images=calib_images, form="gpu")
    with pytest.raises(ConfigError, match="--max-map-drop searches the TensorRT form only"):
        Int8Config(calib_images=calib_images, form="cpu", max_map_drop=1.0, val_images="v", val_annotations="a")


def test_cli_cpu_form_writes_onnx_not_engine(r18_none, calib_images, tmp_path, capsys):
    engine = tmp_path / "m.engine"
    args = ["build-engine", str(r18_none), "--int8", "--int8-form", "cpu", "--calib-images", str(calib_images)]
    assert main([args[0], args[1], str(engine), *args[2:]]) == 1
    assert "give OUT as a .onnx path" in capsys.readouterr().err and not engine.exists()
    out = tmp_path / "m.int8-cpu.onnx"
    assert main([args[0], args[1], str(out), *args[2:], "--calib-num", "2", "--calib-method", "minmax"]) == 0
    assert out.is_file() and "no engine built" in capsys.readouterr().out
