"""FLOPs counted from a tiny ONNX graph against a hand count (1 multiply-accumulate = 2 FLOPs)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from retina_deploy.core.errors import ModelFileError
from retina_deploy.runtime.bench.flops import count_onnx_flops


def _tiny_graph(quantized_first_conv: bool = False) -> onnx.ModelProto:
    """x [N, 3, 8, 8] -> Conv 3x3 pad 1 (4 out) -> Conv 1x1 stride 2 group 2 -> Relu -> Flatten -> MatMul -> Gemm."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 2, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal((64, 10)).astype(np.float32), "m"),
        numpy_helper.from_array(rng.standard_normal((10, 5)).astype(np.float32), "g"),
    ]
    nodes = []
    if quantized_first_conv:  # Q/DQ weights as the INT8 step writes them: the arithmetic is the same
        inits += [
            numpy_helper.from_array(np.round(w1 * 20).astype(np.int8), "w1_q"),
            numpy_helper.from_array(np.full(4, 0.05, np.float32), "w1_scale"),
            numpy_helper.from_array(np.zeros(4, np.int8), "w1_zp"),
        ]
        nodes.append(helper.make_node("DequantizeLinear", ["w1_q", "w1_scale", "w1_zp"], ["w1"], axis=0))
    else:
        inits.append(numpy_helper.from_array(w1, "w1"))
    nodes += [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], strides=[2, 2], group=2, name="conv2"),
        helper.make_node("Relu", ["c2"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("MatMul", ["f", "m"], ["mm"], name="matmul"),
        helper.make_node("Gemm", ["mm", "g"], ["y"], name="gemm"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# conv1: 2 * C_out 4 * 8 * 8 outputs * (C_in 3 * 3 * 3)           = 13,824
# conv2: 2 * C_out 4 * 4 * 4 outputs * (C_in / group = 2 * 1 * 1)  =    256
# matmul: 2 * M 1 * K 64 * N 10                                   =  1,280
# gemm:   2 * M 1 * K 10 * N 5                                    =    100
HAND_COUNT = 13_824 + 256 + 1_280 + 100


@pytest.mark.parametrize("quantized", [False, True])
def test_tiny_graph_hand_count(tmp_path, quantized):
    model = _tiny_graph(quantized)
    count = count_onnx_flops(model)
    assert count.total == HAND_COUNT
    assert count.by_op == {"Conv": 13_824 + 256, "MatMul": 1_280, "Gemm": 100}
    assert count.nodes == 4 and count.uncounted == ()
    path = tmp_path / "tiny.onnx"
    onnx.save(model, path)
    assert count_onnx_flops(path).total == HAND_COUNT  # per image, whatever the batch axis says


def test_foreign_file_is_a_model_file_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01not an onnx file")
    with pytest.raises(ModelFileError):
        count_onnx_flops(bad)
