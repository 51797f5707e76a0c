"""Peak dense throughput of common GPUs, for the "fraction of peak" figures (torch-free).

TFLOP/s (TOP/s for int8), dense, no sparsity, from NVIDIA's datasheets (their tensor-core figures
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

The figures where this table overlaps ``retina_deploy.runtime.peak`` (the ``bench`` verb's) are the same.
These are boost-clock figures; a GPU held at lower clocks (power cap, thermals) cannot reach them,
which is why the environment part records the clocks.
"""

from __future__ import annotations

import re

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


def peak_tflops(gpu_name: str, precision: str, *, sm_count: int | None = None) -> float | None:
    """Dense peak TFLOP/s of ``gpu_name`` in ``precision`` (fp32/tf32/fp16/bf16/int8); None if not in the table."""
    name = gpu_name.lower()
    if "orin" in name:
        if "nx" in name or "nano" in name:
            return None
        table = ORIN_64GB if sm_count is None or sm_count >= ORIN_64GB_SMS else ORIN_32GB
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
