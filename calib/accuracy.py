"""Accuracy per precision, measured with ONNX Runtime on the CPU before any GPU is involved.

``coco_metrics`` scores an ONNX file (any precision) through ``open_model`` and ``evaluate_detector``:
the same code path as ``retina-deploy eval``. ``ort_cpu_execution`` says what ONNX Runtime's CPU
provider actually ran for an FP16 graph: where it has no FP16 kernel (e.g. Conv on x86), its
InsertCastTransformer wraps the node in Casts and computes it in FP32, so an FP16 AP measured there
covers FP16 weights and FP16 tensors between those nodes, not FP16 arithmetic.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime as ort
from onnx import TensorProto

_SHAPE_OPS = {"Cast", "Shape", "Gather", "Unsqueeze", "Concat", "Reshape", "Squeeze", "Slice", "Constant"}


def coco_metrics(
    onnx_path: str | os.PathLike, images_dir: str | os.PathLike, annotations: str | os.PathLike, *, batch_size: int = 8
) -> dict[str, float | None]:
    """COCO box metrics (``AP``, ``AP50``, ... in [0, 1]) of an ONNX file run by ONNX Runtime on the CPU."""
    from retina_deploy.data.coco import load_coco
    from retina_deploy.evaluation.loop import evaluate_detector
    from retina_deploy.inference.open import open_model

    coco = load_coco(images_dir, annotations)
    with open_model(onnx_path, device="cpu") as detector:
        metrics, _ = evaluate_detector(detector, coco, batch_size=batch_size)
    return metrics


@dataclass(frozen=True)
class OrtExecution:
    """Op types (counts) ONNX Runtime's CPU provider ran with FP16 tensors, and those it ran in FP32
    although the graph typed them FP16 (it inserted Casts around them)."""

    fp16_ops: dict[str, int]
    upcast_ops: dict[str, int]

    def describe(self) -> str:
        def fmt(c: dict[str, int]) -> str:
            return ", ".join(f"{k} x{v}" for k, v in sorted(c.items(), key=lambda kv: -kv[1])) or "none"

        return f"FP16 kernels: {fmt(self.fp16_ops)}; upcast to FP32 by ONNX Runtime: {fmt(self.upcast_ops)}"


def _fp16_compute_ops(model: onnx.ModelProto) -> Counter:
    """Op types of compute nodes that read or write an FP16 tensor (shape plumbing and casts left out)."""
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    types.update({i.name: i.data_type for i in graph.initializer})
    return Counter(
        n.op_type
        for n in graph.node
        if n.op_type not in _SHAPE_OPS and any(types.get(t) == TensorProto.FLOAT16 for t in (*n.input, *n.output))
    )


def _ort_cpu_graph(path: str | os.PathLike, extended: bool = False) -> onnx.ModelProto:
    """The graph ONNX Runtime's CPU provider runs for ``path`` after its rewrites (basic level; extended:
    also the QDQ fusions; the layout rewrites of the "all" level are left out, they only reorder data)."""
    with tempfile.TemporaryDirectory(prefix="retina-ort-") as tmp:
        options = ort.SessionOptions()
        level = ort.GraphOptimizationLevel
        options.graph_optimization_level = level.ORT_ENABLE_EXTENDED if extended else level.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def ort_cpu_int8_convs(int8_path: str | os.PathLike) -> dict[str, int]:
    """How ONNX Runtime's CPU provider runs a Q/DQ graph's convolutions, e.g. {"Conv": 69, "FusedConv": 9}.

    QLinearConv: an INT8 kernel. Conv / FusedConv: FP32 math on the dequantized INT8 activations and
    weights (TensorRT's form leaves convolution outputs unquantized, so ONNX Runtime does not fuse):
    the INT8 rounding is exact, the accumulation is FP32 instead of INT32.
    """
    ops = Counter(n.op_type for n in _ort_cpu_graph(int8_path, extended=True).graph.node)
    return {op: ops[op] for op in ("QLinearConv", "Conv", "FusedConv") if ops[op]}


def ort_cpu_execution(fp16_path: str | os.PathLike) -> OrtExecution:
    """Compare the FP16 graph with the graph ONNX Runtime's CPU provider runs after its own rewrites."""
    source = onnx.load(str(fp16_path), load_external_data=False)
    wanted = _fp16_compute_ops(onnx.shape_inference.infer_shapes(source))
    ran = _fp16_compute_ops(_ort_cpu_graph(fp16_path))
    upcast = {op: n - ran.get(op, 0) for op, n in wanted.items() if n > ran.get(op, 0)}
    return OrtExecution(fp16_ops=dict(ran), upcast_ops=upcast)


def emulate_fp16_storage(fp32_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """An FP32 graph that rounds like an FP16 engine stores: body weights and every body activation go
    through FP16 (Cast pairs), the arithmetic stays FP32, the tail is untouched.

    ONNX Runtime's CPU provider computes an FP16 graph's convolutions in FP32 and may drop the FP16
    rounding between upcast nodes; this file keeps every rounding explicit, so its AP bounds what FP16
    storage costs (TensorRT's FP16 kernels also accumulate in FP32 or FP16; FP16 accumulation is not
    emulated). Metadata precision: "fp16-emulated".
    """
    from onnx import helper, numpy_helper

    from retina_deploy.calib.graph import load_graph, tail_node_names
    from retina_deploy.runtime.contract.onnx_files import save_onnx

    model, meta = load_graph(fp32_path)
    model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    tail = tail_node_names(graph)
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output, *graph.value_info)}
    tail_inputs = {i for n in graph.node if n.name in tail for i in n.input}
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and init.name not in tail_inputs:
            half = numpy_helper.to_array(init).astype("float16").astype("float32")
            init.CopyFrom(numpy_helper.from_array(half, init.name))
    nodes = []
    for node in graph.node:
        nodes.append(node)
        if node.name in tail:
            continue
        for i, out in enumerate(node.output):
            if types.get(out) == TensorProto.FLOAT:
                node.output[i] = f"{out}__raw"
                nodes.append(helper.make_node("Cast", [f"{out}__raw"], [f"{out}__h"], to=TensorProto.FLOAT16))
                nodes.append(helper.make_node("Cast", [f"{out}__h"], [out], to=TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    return save_onnx(model, meta, out_path, precision="fp16-emulated")


@dataclass(frozen=True)
class PrecisionRow:
    """One precision's accuracy. ap / ap50 in [0, 1]; executed_by: what ran the graph's arithmetic."""

    precision: str
    path: Path
    ap: float
    ap50: float
    executed_by: str


def precision_rows(
    files: dict[str, str | os.PathLike], images_dir: str | os.PathLike, annotations: str | os.PathLike
) -> list[PrecisionRow]:
    """AP and AP50 of each {precision: ONNX file} on a COCO set, with ONNX Runtime on the CPU."""
    rows = []
    for precision, path in files.items():
        metrics = coco_metrics(path, images_dir, annotations)
        executed = "ONNX Runtime CPU"
        if precision == "fp16":
            executed += f" ({ort_cpu_execution(path).describe()})"
        elif precision.startswith("int8"):
            convs = ", ".join(f"{op} x{n}" for op, n in ort_cpu_int8_convs(path).items())
            executed += f" (Q/DQ simulated: FP32 math on INT8-rounded inputs and weights; {convs})"
        elif precision == "fp16-emulated":
            executed += " (FP32 math on FP16-rounded weights and activations)"
        rows.append(PrecisionRow(precision, Path(path), metrics["AP"] or 0.0, metrics["AP50"] or 0.0, executed))
    return rows


def markdown_table(rows: list[PrecisionRow]) -> str:
    """The rows as a Markdown table, AP in points with the drop against the FP32 row."""
    ref = next((r for r in rows if r.precision == "fp32"), rows[0])
    lines = ["| precision | AP | AP50 | AP drop vs FP32 | file | executed by |", "|---|---|---|---|---|---|"]
    for r in rows:
        drop = 100 * (ref.ap - r.ap)
        lines.append(
            f"| {r.precision.upper()} | {100 * r.ap:.2f} | {100 * r.ap50:.2f} | {drop:+.2f} | {r.path.name} "
            f"({r.path.stat().st_size / 2**20:.1f} MiB) | {r.executed_by} |"
        )
    return "\n".join(lines)


__all__ = [
    "OrtExecution",
    "PrecisionRow",
    "coco_metrics",
    "markdown_table",
    "ort_cpu_execution",
    "ort_cpu_int8_convs",
    "precision_rows",
]
