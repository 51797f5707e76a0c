"""The network side of the ``fake_trt_builder`` stand-in: typed tensors, layers, the network, and the ONNX
parser that fills it (one layer per node; a convolution's initializers are its weights, other initializers
CONSTANT layers; tensor types follow ONNX type inference, as a strongly typed network sees them).
"""

from __future__ import annotations

import enum
import types
from typing import Any

import onnx


class PybindEnum(enum.IntEnum):
    def __str__(self) -> str:  # pybind11 enums print "DataType.HALF"
        return f"{type(self).__name__}.{self.name}"


DataType = PybindEnum(
    "DataType", {"FLOAT": 0, "HALF": 1, "INT8": 2, "INT32": 3, "BOOL": 4, "UINT8": 5, "BF16": 7, "INT64": 8}
)
LayerType = PybindEnum(
    "LayerType",
    "CONVOLUTION ACTIVATION POOLING ELEMENTWISE CONCATENATION SHUFFLE CONSTANT CAST GATHER UNSQUEEZE SQUEEZE"
    " SHAPE SLICE RESIZE UNARY REDUCE TOPK MATRIX_MULTIPLY QUANTIZE DEQUANTIZE NMS SELECT FILL IDENTITY SOFTMAX"
    " PLUGIN_V2 NON_ZERO SCATTER".split(),
    start=0,
)


ONNX_LAYER = {
    "Conv": "CONVOLUTION", "Relu": "ACTIVATION", "Sigmoid": "ACTIVATION", "Clip": "ACTIVATION", "MaxPool": "POOLING",
    "AveragePool": "POOLING", "Add": "ELEMENTWISE", "Sub": "ELEMENTWISE", "Mul": "ELEMENTWISE", "Div": "ELEMENTWISE",
    "Min": "ELEMENTWISE", "Max": "ELEMENTWISE", "Pow": "ELEMENTWISE", "Equal": "ELEMENTWISE", "Less": "ELEMENTWISE",
    "Greater": "ELEMENTWISE", "And": "ELEMENTWISE", "Concat": "CONCATENATION", "Reshape": "SHUFFLE",
    "Transpose": "SHUFFLE", "Flatten": "SHUFFLE", "Constant": "CONSTANT", "Cast": "CAST", "Gather": "GATHER",
    "Unsqueeze": "UNSQUEEZE", "Squeeze": "SQUEEZE", "Shape": "SHAPE", "Slice": "SLICE", "Resize": "RESIZE",
    "Exp": "UNARY", "Log": "UNARY", "Sqrt": "UNARY", "Not": "UNARY", "Floor": "UNARY", "ReduceMax": "REDUCE",
    "ReduceMin": "REDUCE", "ReduceSum": "REDUCE", "TopK": "TOPK", "MatMul": "MATRIX_MULTIPLY",
    "Gemm": "MATRIX_MULTIPLY",
    "QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DEQUANTIZE", "NonMaxSuppression": "NMS", "Where": "SELECT",
    "ConstantOfShape": "FILL", "Expand": "SLICE", "Identity": "IDENTITY", "Softmax": "SOFTMAX", "NonZero": "NON_ZERO",
    "Range": "FILL", "Mod": "ELEMENTWISE", "Xor": "ELEMENTWISE",
    "GreaterOrEqual": "ELEMENTWISE", "GatherElements": "GATHER", "ScatterND": "SCATTER",
    "Tile": "SLICE", "ArgMax": "TOPK", "EfficientNMS_TRT": "PLUGIN_V2",
}  # fmt: skip
ONNX_TYPES = {1: "FLOAT", 10: "HALF", 3: "INT8", 6: "INT32", 9: "BOOL", 2: "UINT8", 16: "BF16", 7: "INT64"}


class ITensor:
    def __init__(self, name: str, dtype: Any, shape: tuple[int, ...] = ()) -> None:
        self.name, self.dtype, self.shape = name, dtype, tuple(shape)
        self.is_network_input = self.is_network_output = False


class ILayer:
    """``get_output_type`` as documented per major version: 10.x "the output type, kFLOAT if no precision
    has been set" (a strongly typed network cannot set one), 11.x the type the network inferred."""

    _inferred_output_type = False  # 11.x parsers make layers with True

    def __init__(self, name: str, type_: Any, inputs: list, outputs: list) -> None:
        self.name, self.type, self._inputs, self._outputs = name, type_, inputs, outputs
        self._set_types: dict[int, Any] = {}

    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))

    def get_input(self, index: int) -> ITensor | None:
        return self._inputs[index]

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]

    def get_output_type(self, index: int) -> Any:
        if index in self._set_types:
            return self._set_types[index]
        return self._outputs[index].dtype if self._inferred_output_type else DataType.FLOAT

    def set_output_type(self, index: int, dtype: Any) -> None:
        self._set_types[index] = dtype


class INetworkDefinition:
    def __init__(self, flags: int, strongly_typed: bool) -> None:
        self.flags, self.strongly_typed = flags, strongly_typed
        self._layers: list[ILayer] = []
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []

    num_layers = property(lambda self: len(self._layers))
    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))

    def get_layer(self, index: int) -> ILayer:
        return self._layers[index]

    def get_input(self, index: int) -> ITensor:
        return self._inputs[index]

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]


class ParserError:
    def __init__(self, desc: str, node: int = -1) -> None:
        self._desc, self._node = desc, node

    def desc(self) -> str:
        return self._desc

    def node(self) -> int:
        return self._node


class OnnxParser:
    _trt: types.ModuleType

    def __init__(self, network: INetworkDefinition, logger: Any) -> None:
        self.network, self.logger, self._errors = network, logger, []

    num_errors = property(lambda self: len(self._errors))

    def get_error(self, index: int) -> ParserError:
        return self._errors[index]

    def clear_errors(self) -> None:
        self._errors.clear()

    def parse(self, model: bytes, path: str | None = None) -> bool:
        try:
            proto = onnx.load_from_string(bytes(model))
        except Exception as e:  # protobuf's DecodeError and friends
            self._errors.append(ParserError(f"Failed to parse ONNX model: {e}"))
            return False
        trt = self._trt
        major = int(trt.__version__.split(".")[0])
        _import_graph(proto.graph, self.network, self._errors, plugins=trt._plugins, inferred_types=major >= 11)
        return not self._errors


def _dims(value_info: onnx.ValueInfoProto) -> tuple[int, ...]:
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim)


def _import_graph(
    graph: onnx.GraphProto, net: INetworkDefinition, errors: list, *, plugins: bool, inferred_types: bool
) -> None:
    """Layers and typed tensors of ``graph`` into ``net`` (see the module docstring).

    plugins: the plugin registry was initialised (``init_libnvinfer_plugins``): without it a plugin op
    such as EfficientNMS_TRT is "Plugin not found", as for any op the parser has no importer for.
    inferred_types: ``get_output_type`` returns the inferred type (11.x), else kFLOAT (10.x).
    """
    inits = {i.name: i for i in graph.initializer}
    tensors: dict[str, ITensor] = {}

    def constant(name: str) -> ITensor:
        if name not in tensors:
            tensors[name] = ITensor(name, DataType[ONNX_TYPES.get(inits[name].data_type, "FLOAT")])
            net._layers.append(ILayer(name, LayerType.CONSTANT, [], [tensors[name]]))
        return tensors[name]

    for vi in graph.input:
        if vi.name not in inits:
            tensors[vi.name] = ITensor(vi.name, DataType[ONNX_TYPES[vi.type.tensor_type.elem_type]], _dims(vi))
            tensors[vi.name].is_network_input = True
            net._inputs.append(tensors[vi.name])
    for index, node in enumerate(graph.node):
        kind = ONNX_LAYER.get(node.op_type)
        if kind == "PLUGIN_V2" and not plugins:
            kind = None
        if kind is None:
            errors.append(ParserError(
                f"In node {index} with name: {node.name} and operator: {node.op_type}: UNSUPPORTED_NODE: No importer"
                f" registered for op: {node.op_type}. Attempting to import as plugin. Plugin not found", index
            ))  # fmt: skip
            return
        inputs = []
        for j, name in enumerate(node.input):
            if not name or (node.op_type == "Conv" and j > 0 and name in inits):
                continue  # a convolution's initializers are its kernel and bias weights, not inputs
            inputs.append(constant(name) if name in inits else tensors.get(name))
        outputs = [ITensor(o, _output_type(node, j, inputs, inits)) for j, o in enumerate(node.output)]
        tensors.update((t.name, t) for t in outputs)
        net._layers.append(ILayer(node.name or node.output[0], LayerType[kind], inputs, outputs))
        net._layers[-1]._inferred_output_type = inferred_types
    for vi in graph.output:
        tensors[vi.name].shape, tensors[vi.name].is_network_output = _dims(vi), True
        net._outputs.append(tensors[vi.name])


def _output_type(node: onnx.NodeProto, index: int, inputs: list, inits: dict) -> Any:
    """The ONNX type inference a strongly typed network follows, for the ops our exports use."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    op, first = node.op_type, next((t.dtype for t in inputs if t is not None), DataType.FLOAT)
    if op == "Cast":
        return DataType[ONNX_TYPES[attrs["to"]]]
    if op == "QuantizeLinear":
        zero_point = node.input[2] if len(node.input) > 2 else ""
        return DataType[ONNX_TYPES[inits[zero_point].data_type]] if zero_point in inits else DataType.UINT8
    if op == "DequantizeLinear":
        return inputs[1].dtype
    if op in ("Shape", "NonZero", "NonMaxSuppression", "ArgMax") or (op == "TopK" and index == 1):
        return DataType.INT64
    if op in ("Equal", "Less", "Greater", "GreaterOrEqual", "And", "Xor", "Not"):
        return DataType.BOOL
    if op == "Constant":
        return DataType[ONNX_TYPES[attrs["value"].data_type]]
    if op == "ConstantOfShape":
        return DataType[ONNX_TYPES[attrs["value"].data_type]] if "value" in attrs else DataType.FLOAT
    if op == "Where":
        return inputs[1].dtype
    if op == "EfficientNMS_TRT":
        return (DataType.INT32, DataType.FLOAT, DataType.FLOAT, DataType.INT32)[index]
    return first
