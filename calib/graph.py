"""Where precision may change in an exported graph: the network body, and the FP32 post-processing tail.

The body is every convolution and everything upstream of one (backbone, FPN, head towers, the last
classification / regression convolutions). The tail is everything after the last convolutions: the
reshapes of the head outputs, the sigmoid, box decoding, top-k and NMS. Reduced precision (FP16
casts, INT8 Q/DQ) only ever applies to the body; the tail stays FP32, so scores near the threshold
and box coordinates in input pixels keep full precision.
"""

from __future__ import annotations

import os
from collections import defaultdict

import onnx

from retina_deploy.runtime.contract.onnx_files import load_onnx_with_metadata
from retina_deploy.runtime.contract.onnx_metadata import OnnxMetadata

WEIGHTED_OPS = ("Conv",)


def load_graph(path: str | os.PathLike) -> tuple[onnx.ModelProto, OnnxMetadata]:
    """One of our ONNX files and its metadata, every node named (``<op_type>_<index>`` where it had no name):
    quantization and the precision reports address nodes by name. ModelFileError for a foreign file."""
    model, meta = load_onnx_with_metadata(path)
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)
    return model, meta


def consumers_of(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it."""
    out: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            if name:
                out[name].append(node)
    return out


def tail_node_names(graph: onnx.GraphProto) -> set[str]:
    """Names of the nodes that are not a convolution and have no convolution downstream.

    ONNX graphs are topologically sorted, so one pass in reverse order decides every node.
    """
    consumers = consumers_of(graph)
    feeds_conv: dict[str, bool] = {}
    for node in reversed(graph.node):
        feeds_conv[node.name] = any(
            c.op_type in WEIGHTED_OPS or feeds_conv.get(c.name, False) for out in node.output for c in consumers[out]
        )
    return {n.name for n in graph.node if n.op_type not in WEIGHTED_OPS and not feeds_conv[n.name]}


def weighted_node_names(graph: onnx.GraphProto) -> list[str]:
    """Names of the convolutions, in graph order (the layers INT8 quantizes)."""
    return [n.name for n in graph.node if n.op_type in WEIGHTED_OPS]


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor name -> ONNX element type, from inputs, outputs, value_info, initializers and Constant nodes.

    ``model`` should have been through shape inference so that every intermediate tensor is typed.
    """
    graph = model.graph
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in (*graph.input, *graph.output, *graph.value_info)
        if v.type.HasField("tensor_type")
    }
    types.update({init.name: init.data_type for init in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


__all__ = ["WEIGHTED_OPS", "consumers_of", "elem_types", "tail_node_names", "weighted_node_names"]
