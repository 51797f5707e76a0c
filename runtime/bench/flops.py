"""FLOPs per image counted from an ONNX graph: convolutions and matrix products (torch-free; needs ``onnx``).

Convention: one multiply-accumulate = 2 FLOPs; bias additions, activations, normalisation, resize,
decode and NMS are not counted (they are a small share of a detector's arithmetic and not what a
device's peak measures). Per node, with N the batch:

- Conv / QLinearConv / ConvInteger: 2 * N * C_out * H_out * W_out * (C_in / group) * k_h * k_w
- ConvTranspose: 2 * N * C_in * H_in * W_in * (C_out / group) * k_h * k_w
- MatMul / MatMulInteger / QLinearMatMul: 2 * (product of batch dims) * M * K * N; Gemm: 2 * M * K * N

Shapes come from ONNX shape inference with the batch axis set to 1, so the count is per image.
FP16 casts and INT8 Q/DQ pairs change no count: a quantized convolution does the same arithmetic.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from retina_deploy.core.errors import ModelFileError

CONV_OPS = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3}  # op -> index of the weight input
MATMUL_OPS = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3), "Gemm": (0, 1)}


@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one image (batch 1).

    total: sum over the counted nodes. by_op: {op type: FLOPs}. nodes: how many nodes were counted.
    uncounted: names of conv / matmul nodes whose shapes could not be inferred (then total is a lower bound).
    """

    total: int
    by_op: dict[str, int] = field(default_factory=dict)
    nodes: int = 0
    uncounted: tuple[str, ...] = ()


def count_onnx_flops(model) -> FlopCount:
    """FlopCount of an ONNX model (a path or an ``onnx.ModelProto``; the graph's first input is batched).

    Raises ModelFileError when ``onnx`` is not installed or the file cannot be read.
    """
    try:
        import onnx
    except ImportError as e:
        raise ModelFileError(f"counting FLOPs needs the onnx package (pip install onnx): {e}") from e
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # protobuf raises several unrelated types for a foreign file
            raise ModelFileError(f"{path}: not a readable ONNX file ({e})") from e
    model = _with_batch_one(model, onnx)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    shapes = _known_shapes(inferred)
    by_op: dict[str, int] = {}
    counted, uncounted = 0, []
    for node in inferred.graph.node:
        if node.op_type not in CONV_OPS and node.op_type not in MATMUL_OPS and node.op_type != "ConvTranspose":
            continue
        flops = _node_flops(node, shapes)
        if flops is None:
            uncounted.append(node.name or node.op_type)
            continue
        by_op[node.op_type] = by_op.get(node.op_type, 0) + flops
        counted += 1
    return FlopCount(total=sum(by_op.values()), by_op=by_op, nodes=counted, uncounted=tuple(uncounted))


def _with_batch_one(model, onnx):
    """A copy whose graph inputs have batch 1 in place of a symbolic or other leading dimension."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    initializers = {t.name for t in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in initializers or not inp.type.tensor_type.HasField("shape"):
            continue
        dims = inp.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_value = 1
    del model.graph.value_info[:]  # stale shapes from export would pin the old batch
    return model


def _known_shapes(model) -> dict[str, tuple[int, ...]]:
    """{tensor name: fully known shape} from initializers, inputs, outputs and inferred value_info."""
    shapes = {t.name: tuple(int(d) for d in t.dims) for t in model.graph.initializer}
    for vi in (*model.graph.input, *model.graph.value_info, *model.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shapes[vi.name] = tuple(int(d.dim_value) for d in t.shape.dim)
    for node in model.graph.node:  # Constant nodes hold weights in some exports
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    shapes[node.output[0]] = tuple(int(d) for d in a.t.dims)
    return shapes


def _node_flops(node, shapes: dict[str, tuple[int, ...]]) -> int | None:
    if node.op_type in CONV_OPS or node.op_type == "ConvTranspose":
        w = shapes.get(node.input[CONV_OPS.get(node.op_type, 1)]) if len(node.input) > 1 else None
        x, y = shapes.get(node.input[0]), shapes.get(node.output[0])
        if w is None or x is None or y is None:
            return None
        if node.op_type == "ConvTranspose":  # w: [C_in, C_out / group, k...]; every input pixel scatters
            return 2 * math.prod(x) * math.prod(w[1:])
        # w: [C_out, C_in / group, k...]; y: [N, C_out, spatial...]: the group count is already in w[1]
        return 2 * math.prod(y) * math.prod(w[1:])
    a_index, b_index = MATMUL_OPS[node.op_type]
    a, b = shapes.get(node.input[a_index]), shapes.get(node.input[b_index])
    y = shapes.get(node.output[0])
    if a is None or b is None or y is None:
        return None
    if node.op_type == "Gemm":
        trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
        k = a[0] if trans_a else a[-1]
        return 2 * math.prod(y) * k
    k = a[-1] if len(a) > 1 else a[0]
    return 2 * math.prod(y) * k
