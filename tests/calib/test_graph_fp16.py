"""FP16 conversion on hand-built graphs (no torch): where the body ends, where the Casts go, what stays FP32."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from retina_deploy.calib.fp16 import FP16_MAX, convert_to_fp16
from retina_deploy.calib.graph import tail_node_names, weighted_node_names
from retina_deploy.core.errors import ModelFileError


def tiny_detector(big_weight: bool = False) -> onnx.ModelProto:
    """images [N,2,4,4] -> Conv -> Relu -> Resize(x2) -> Conv -> Reshape -> Sigmoid -> scores; Mul(2) -> boxes.

    Body: both Convs, Relu, Resize (it feeds the second Conv). Tail: Reshape, Sigmoid, Mul.
    """
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((3, 2, 1, 1)).astype(np.float32)
    if big_weight:
        w1[0, 0, 0, 0] = 1e5  # beyond FP16: clipped and reported
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(rng.standard_normal((2, 3, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([1.0, 1.0, 2.0, 2.0], np.float32), "scales"),
        numpy_helper.from_array(np.array([0, -1], np.int64), "shape"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
    ]
    nodes = [
        helper.make_node("Conv", ["images", "w1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Resize", ["r1", "", "scales"], ["up"], name="resize", mode="nearest"),
        helper.make_node("Conv", ["up", "w2"], ["c2"], name="conv2"),
        helper.make_node("Reshape", ["c2", "shape"], ["flat"], name="reshape"),
        helper.make_node("Sigmoid", ["flat"], ["scores"], name="sigmoid"),
        helper.make_node("Mul", ["flat", "two"], ["boxes"], name="decode"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", None]),
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", None]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def types_of(model: onnx.ModelProto) -> dict[str, int]:
    model = onnx.shape_inference.infer_shapes(model)
    g = model.graph
    out = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    out.update({i.name: i.data_type for i in g.initializer})
    return out


def test_tail_is_everything_after_the_last_convolutions():
    graph = tiny_detector().graph
    assert tail_node_names(graph) == {"reshape", "sigmoid", "decode"}
    assert weighted_node_names(graph) == ["conv1", "conv2"]


def test_fp16_body_fp32_tail_and_casts_only_at_the_boundary():
    model, summary = convert_to_fp16(tiny_detector())
    onnx.checker.check_model(model, full_check=True)
    types = types_of(model)
    nodes = {n.name: n for n in model.graph.node}
    # Body convolutions compute in FP16 on FP16 weights.
    for name in ("conv1", "conv2"):
        assert types[nodes[name].output[0]] == TensorProto.FLOAT16
        assert types[nodes[name].input[1]] == TensorProto.FLOAT16
    # Resize's scales stay FP32 as ONNX requires.
    assert types[nodes["resize"].input[2]] == TensorProto.FLOAT
    # The tail reads FP32 and writes FP32; graph I/O are FP32.
    for name in ("reshape", "sigmoid", "decode"):
        assert types[nodes[name].output[0]] == TensorProto.FLOAT
    assert types["images"] == types["scores"] == types["boxes"] == TensorProto.FLOAT
    # Two casts: the input into the body, conv2's output into the tail (shared by Sigmoid and Mul).
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert summary.casts == len(casts) == 2
    assert summary.fp32_nodes == 3 and summary.fp16_nodes == 4 and summary.clipped_initializers == ()


def test_fp16_graph_runs_and_matches_fp32_within_fp16_precision():
    fp32 = tiny_detector()
    fp16, _ = convert_to_fp16(fp32)
    x = np.random.default_rng(1).standard_normal((2, 2, 4, 4)).astype(np.float32)
    ref = ort.InferenceSession(fp32.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"images": x})
    got = ort.InferenceSession(fp16.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"images": x})
    for a, b in zip(ref, got, strict=True):
        assert b.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2)


def test_values_beyond_fp16_range_are_clipped_and_reported():
    model, summary = convert_to_fp16(tiny_detector(big_weight=True))
    assert summary.clipped_initializers == ("w1",)
    w = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}["w1__fp16"]
    assert w.dtype == np.float16 and float(w.max()) == FP16_MAX


def test_an_output_straight_from_the_body_is_refused():
    model = tiny_detector()
    model.graph.output.append(helper.make_tensor_value_info("c1", TensorProto.FLOAT, None))
    with pytest.raises(ModelFileError, match="straight from the network body"):
        convert_to_fp16(model)
