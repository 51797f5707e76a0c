"""FP32 -> FP16 graph conversion for strongly typed TensorRT builds (``build-engine --fp16``).

The semantics are ModelOpt AutoCast's with ``keep_io_types``: the network body (see ``calib.graph``)
computes in FP16; the graph inputs and outputs, the final sigmoid, box decoding and NMS stay FP32,
with one Cast at each boundary. Float initializers used by the body are stored as FP16 (values
beyond +-65504 are clipped and counted). Inputs that ONNX requires in FP32 (Resize's roi and scales)
keep their type.

Why not a maintained converter: ModelOpt AutoCast needs torch, which this stage must not import;
ONNX Runtime's ``float16.convert_float_to_float16`` (the onnxconverter-common code) retypes every
tensor between two blocked nodes to FP16 and casts around each blocked node, so the "FP32" decode
would be rounded to FP16 between every op. This converter casts only at the body/tail boundary.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from retina_deploy.calib.graph import elem_types, load_graph, tail_node_names
from retina_deploy.core.errors import ModelFileError
from retina_deploy.runtime.contract.onnx_files import save_onnx

FP16_MAX = 65504.0
# Inputs that stay FP32 whatever the data type (ONNX types them tensor(float) or they are parameters).
ALWAYS_FP32_INPUTS = {"Resize": (1, 2), "Upsample": (1,)}


@dataclass(frozen=True)
class Fp16Summary:
    """What the conversion did.

    fp16_nodes / fp32_nodes: nodes computing in the body (FP16 for float tensors) / in the FP32 tail.
    casts: Cast nodes inserted at the boundaries. clipped_initializers: initializers with values beyond
    the FP16 range (clipped to +-65504).
    """

    fp16_nodes: int
    fp32_nodes: int
    casts: int
    clipped_initializers: tuple[str, ...]


class _Rewriter:
    """State of one conversion: the FP16 copies of initializers and the Cast nodes made so far."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.types = elem_types(model)
        self.inits = {i.name: i for i in model.graph.initializer}
        self.body_float: set[str] = set()  # FP32 tensors of the source that become FP16
        self.casts: dict[tuple[str, int], str] = {}  # (tensor, to) -> cast output
        self.half_inits: dict[str, str] = {}  # FP32 initializer -> its FP16 copy
        self.body_nodes = 0
        self.new_inits: list[onnx.TensorProto] = []
        self.clipped: list[str] = []
        self.nodes: list[onnx.NodeProto] = []

    def is_float(self, name: str) -> bool:
        return self.types.get(name) == TensorProto.FLOAT

    def cast(self, name: str, to: int) -> str:
        """The name of ``name`` cast to ``to``; emits the Cast node before the current node the first time."""
        key = (name, to)
        if key not in self.casts:
            suffix = "fp16" if to == TensorProto.FLOAT16 else "fp32"
            out = f"{name}__{suffix}"
            self.nodes.append(helper.make_node("Cast", [name], [out], to=to, name=f"{out}/Cast"))
            self.casts[key] = out
        return self.casts[key]

    def fp16_initializer(self, name: str) -> str:
        """The name of an FP16 copy of initializer ``name`` (the FP32 one stays if the tail uses it)."""
        if name not in self.half_inits:
            array = numpy_helper.to_array(self.inits[name])
            if np.abs(array).max(initial=0.0) > FP16_MAX:
                self.clipped.append(name)
            half = np.clip(array, -FP16_MAX, FP16_MAX).astype(np.float16)
            self.new_inits.append(numpy_helper.from_array(half, f"{name}__fp16"))
            self.half_inits[name] = f"{name}__fp16"
        return self.half_inits[name]

    def body_node(self, node: onnx.NodeProto) -> None:
        """Retype one body node: float inputs become FP16 (except ALWAYS_FP32_INPUTS), float outputs FP16."""
        keep = ALWAYS_FP32_INPUTS.get(node.op_type, ())
        for i, name in enumerate(node.input):
            if not name or not self.is_float(name):
                continue
            if i in keep:
                if name in self.body_float:
                    node.input[i] = self.cast(name, TensorProto.FLOAT)
            elif name in self.inits:
                node.input[i] = self.fp16_initializer(name)
            elif name not in self.body_float:  # a graph input
                node.input[i] = self.cast(name, TensorProto.FLOAT16)
        _retype_attributes(node)
        self.body_float.update(o for o in node.output if self.is_float(o))
        self.body_nodes += 1
        self.nodes.append(node)

    def tail_node(self, node: onnx.NodeProto) -> None:
        """A tail node reads FP32: FP16 body tensors it reads are cast back once."""
        for i, name in enumerate(node.input):
            if name in self.body_float:
                node.input[i] = self.cast(name, TensorProto.FLOAT)
        self.nodes.append(node)


def _retype_attributes(node: onnx.NodeProto) -> None:
    """FP32 constants and casts inside the body produce FP16."""
    for attr in node.attribute:
        if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
            attr.i = TensorProto.FLOAT16
        elif node.op_type in ("Constant", "ConstantOfShape") and attr.name == "value":
            if attr.t.data_type == TensorProto.FLOAT:
                half = np.clip(numpy_helper.to_array(attr.t), -FP16_MAX, FP16_MAX).astype(np.float16)
                attr.t.CopyFrom(numpy_helper.from_array(half, attr.t.name))


def convert_to_fp16(model: onnx.ModelProto) -> tuple[onnx.ModelProto, Fp16Summary]:
    """The FP16 version of an FP32 exported graph (a new ModelProto) and a summary of the change.

    Raises ModelFileError if a graph output comes straight from the body (not one of our exports).
    """
    model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    graph = model.graph
    tail = tail_node_names(graph)
    rw = _Rewriter(model)
    for node in graph.node:
        (rw.tail_node if node.name in tail else rw.body_node)(node)
    direct = [o.name for o in graph.output if o.name in rw.body_float]
    if direct:
        raise ModelFileError(f"graph outputs {direct} come straight from the network body; not a retina-deploy export")
    del graph.node[:]
    graph.node.extend(rw.nodes)
    graph.initializer.extend(rw.new_inits)
    _drop_unused_initializers(graph)
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    summary = Fp16Summary(
        fp16_nodes=rw.body_nodes,
        fp32_nodes=len(tail),
        casts=len(rw.casts),
        clipped_initializers=tuple(rw.clipped),
    )
    return model, summary


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def write_fp16_onnx(onnx_path: str | os.PathLike, out_path: str | os.PathLike) -> tuple[Path, Fp16Summary]:
    """Convert our FP32 ONNX file to FP16 (see the module docstring) and write it atomically.

    The result keeps the source's metadata with ``precision`` "fp16". Raises ModelFileError for a
    foreign file or one that is not FP32.
    """
    model, meta = load_graph(onnx_path)
    if meta.precision != "fp32":
        raise ModelFileError(f"{onnx_path}: precision is already {meta.precision}; convert the FP32 export")
    converted, summary = convert_to_fp16(model)
    onnx.checker.check_model(converted, full_check=True)
    return save_onnx(converted, meta, out_path, precision="fp16"), summary


__all__ = ["Fp16Summary", "convert_to_fp16", "write_fp16_onnx"]
