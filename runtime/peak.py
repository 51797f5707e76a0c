"""A device's peak arithmetic rate, for the "fraction of peak" of a benchmark (torch-free).

GPUs: NVIDIA's datasheet figures (dense, no sparsity) for a few common parts, by precision. CPUs: a
short measured probe, a large matrix product in ONNX Runtime (the MLAS kernels that also run the
model's convolutions) with the benchmark's thread count: FP32 ``MatMul``, and INT8 ``MatMulInteger``
(u8 x s8, the x86 VNNI path). A probe is the best rate seen over its time, a practical peak rather
than the vendor's theoretical one; it is labelled as measured.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

# Dense TFLOP/s (TOP/s for int8) from NVIDIA datasheets. Longest name first: "H100 PCIe" before "H100".
GPU_PEAKS_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H100 PCIe", {"fp32": 51.2, "fp16": 756.0, "int8": 1513.0}),
    ("H200", {"fp32": 66.9, "fp16": 989.4, "int8": 1978.9}),
    ("H100", {"fp32": 66.9, "fp16": 989.4, "int8": 1978.9}),
    ("A100", {"fp32": 19.5, "fp16": 312.0, "int8": 624.0}),
    ("A10", {"fp32": 31.2, "fp16": 125.0, "int8": 250.0}),
    ("L40S", {"fp32": 91.6, "fp16": 362.1, "int8": 733.0}),
    ("L4", {"fp32": 30.3, "fp16": 121.0, "int8": 242.0}),
    ("T4", {"fp32": 8.1, "fp16": 65.0, "int8": 130.0}),
    ("V100", {"fp32": 15.7, "fp16": 125.0, "int8": 62.8}),
)


@dataclass(frozen=True)
class Peak:
    """A peak rate in FLOP/s (ops/s for int8) and where it came from ("given", "datasheet ...", "measured ...")."""

    flops_per_s: float
    source: str


def gpu_datasheet_peak(gpu_name: str, precision: str) -> Peak | None:
    """The datasheet peak of a known GPU for "fp32", "fp16" or "int8"; None for an unknown part."""
    key = "fp32" if precision not in ("fp16", "int8") else precision
    for pattern, peaks in GPU_PEAKS_TFLOPS:
        if pattern.lower() in gpu_name.lower():
            return Peak(peaks[key] * 1e12, f"datasheet {pattern} {key} dense")
    return None


def _matmul_session(dtype: str, n: int, threads: int | None):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    if dtype == "fp32":
        a_type = b_type = TensorProto.FLOAT
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        y_type = TensorProto.FLOAT
    else:
        a_type, b_type, y_type = TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    graph = helper.make_graph(
        [node],
        "peak_probe",
        [helper.make_tensor_value_info("a", a_type, [n, n]), helper.make_tensor_value_info("b", b_type, [n, n])],
        [helper.make_tensor_value_info("y", y_type, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]), onnx


def cpu_peak_probe(precision: str = "fp32", *, threads: int | None = None, seconds: float = 1.0, n: int = 1024) -> Peak:
    """Measured CPU peak: the best rate of n x n x n products over ``seconds`` (2 * n^3 ops each).

    precision "int8" probes u8 x s8 ``MatMulInteger``; anything else FP32 ``MatMul``.
    """
    dtype = "int8" if precision == "int8" else "fp32"
    session, _ = _matmul_session(dtype, n, threads)
    rng = np.random.default_rng(0)
    if dtype == "fp32":
        feeds = {"a": rng.standard_normal((n, n), np.float32), "b": rng.standard_normal((n, n), np.float32)}
    else:
        feeds = {"a": rng.integers(0, 255, (n, n), np.uint8), "b": rng.integers(-127, 127, (n, n), np.int8)}
    session.run(None, feeds)  # first run: allocation and packing
    best = float("inf")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        session.run(None, feeds)
        best = min(best, time.perf_counter() - start)
    what = "MatMul fp32" if dtype == "fp32" else "MatMulInteger u8s8"
    return Peak(2 * n**3 / best, f"measured: ONNX Runtime {what} {n}^3, {threads or 'default'} threads")
