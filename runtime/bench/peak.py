"""A device's peak arithmetic rate, for the "fraction of peak" of a benchmark (torch-free).

GPUs: NVIDIA's datasheet figures for a few common parts, by precision. CPUs: a
short measured probe, a large matrix product in ONNX Runtime (the MLAS kernels that also run the
model's convolutions) with the benchmark's thread count: FP32 ``MatMul``, and INT8 ``MatMulInteger``
(u8 x s8, the x86 VNNI path). A probe is the best rate seen over its time, a practical peak rather
than the vendor's theoretical one; it is labelled as measured.

GPU TFLOP/s (TOP/s for int8), dense, no sparsity, from NVIDIA's datasheets (their tensor-core figures
are quoted "with sparsity"; the dense figure is half of it):

- H100 SXM5 and H200 SXM (same GH100 SXM at the same clocks): FP32 66.9, TF32 494.7 (989 sparse),
  FP16/BF16 989.4 (1979 sparse), INT8 1978.9 (3958 sparse). H100 PCIe: 51.2, 378, 756, 1513. H200 NVL:
  60, 417, 835, 1670.
- A100 SXM4 and PCIe, 40 and 80 GB: FP32 19.5, TF32 156 (312 sparse), FP16/BF16 312 (624 sparse),
  INT8 624 (1248 sparse). A10: 31.2, 62.5, 125, 250.
- L4: FP32 30.3, TF32 60 (120 sparse), FP16/BF16 121 (242 sparse), INT8 242 (485 sparse).
- L40S: FP32 91.6, TF32 183 (366 sparse), FP16/BF16 362.1 (733 sparse), INT8 733 (1466 sparse).
- T4 (no TF32, no BF16): FP32 8.1, FP16 65, INT8 130. V100 (no TF32, no BF16): FP32 15.7, FP16 125, INT8 62.8.
- Jetson AGX Orin 64 GB (GPU only, 1.3 GHz, 16 SMs; technical brief: 170 sparse INT8 TOPS, 5.3
  FP32 TFLOPS): FP32 5.3, TF32 21.3, FP16 42.5, INT8 85. AGX Orin 32 GB (14 SMs at 0.93 GHz, 108
  sparse INT8 TOPS): FP32 3.3, TF32 13.5, FP16 27, INT8 54. Orin NX / Nano: not listed (fraction omitted).

These are boost-clock figures; a GPU held at lower clocks (power cap, thermals) cannot reach them.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np

# (name words, lowercase) -> {precision: peak TFLOP/s}; the first match wins, so specific names go first.
PEAKS: tuple[tuple[str, dict[str, float]], ...] = (
    ("h200 nvl", {"fp32": 60.0, "tf32": 417.0, "fp16": 835.0, "bf16": 835.0, "int8": 1670.0}),
    ("h200", {"fp32": 66.9, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4, "int8": 1978.9}),
    ("h100 pcie", {"fp32": 51.2, "tf32": 378.0, "fp16": 756.0, "bf16": 756.0, "int8": 1513.0}),
    ("h100", {"fp32": 66.9, "tf32": 494.7, "fp16": 989.4, "bf16": 989.4, "int8": 1978.9}),
    ("a100", {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0, "bf16": 312.0, "int8": 624.0}),
    ("a10", {"fp32": 31.2, "tf32": 62.5, "fp16": 125.0, "bf16": 125.0, "int8": 250.0}),
    ("l40s", {"fp32": 91.6, "tf32": 183.0, "fp16": 362.1, "bf16": 362.1, "int8": 733.0}),
    ("l4", {"fp32": 30.3, "tf32": 60.0, "fp16": 121.0, "bf16": 121.0, "int8": 242.0}),
    ("t4", {"fp32": 8.1, "fp16": 65.0, "int8": 130.0}),
    ("v100", {"fp32": 15.7, "fp16": 125.0, "int8": 62.8}),
)
ORIN_64GB = {"fp32": 5.3, "tf32": 21.3, "fp16": 42.5, "bf16": 42.5, "int8": 85.0}
ORIN_32GB = {"fp32": 3.3, "tf32": 13.5, "fp16": 27.0, "bf16": 27.0, "int8": 54.0}
ORIN_64GB_SMS = 16


@dataclass(frozen=True)
class Peak:
    """A peak rate in FLOP/s (ops/s for int8) and where it came from ("given", "datasheet ...", "measured ...")."""

    flops_per_s: float
    source: str


def peak_tflops(gpu_name: str, precision: str, *, sm_count: int | None = None) -> float | None:
    """Dense peak TFLOP/s of ``gpu_name`` in ``precision`` (fp32/tf32/fp16/bf16/int8); None if not in the table."""
    name = gpu_name.lower()
    if "orin" in name:  # the AGX modules differ by SM count only; NX / Nano are not listed
        if "nx" in name or "nano" in name or sm_count is None:
            return None
        table = ORIN_64GB if sm_count >= ORIN_64GB_SMS else ORIN_32GB
        return table.get(precision)
    for key, table in PEAKS:
        if re.search(rf"\b{re.escape(key)}\b", name):  # whole words: "l4" is not "l40", "a10" not "a100"
            return table.get(precision)
    return None


def fraction_of_peak(flops: float, seconds: float, gpu_name: str, precision: str, *, sm_count: int | None = None):
    """(achieved TFLOP/s, fraction of the dense peak or None) for ``flops`` done in ``seconds``."""
    achieved = flops / max(seconds, 1e-12) / 1e12
    peak = peak_tflops(gpu_name, precision, sm_count=sm_count)
    return round(achieved, 2), (None if peak is None else round(achieved / peak, 4))


def gpu_datasheet_peak(gpu_name: str, precision: str, *, sm_count: int | None = None) -> Peak | None:
    """The datasheet peak of a known GPU for a model file's precision ("fp16-emulated" and other FP32
    arithmetic count as "fp32"); None for an unknown part (pass ``--peak-tflops``)."""
    key = precision if precision in ("fp16", "bf16", "int8", "tf32") else "fp32"
    tflops = peak_tflops(gpu_name, key, sm_count=sm_count)
    return None if tflops is None else Peak(tflops * 1e12, f"datasheet {gpu_name} {key} dense")


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
