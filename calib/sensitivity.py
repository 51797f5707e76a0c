"""Which layers INT8 hurts most, and excluding them until the AP drop is within a budget (``--max-map-drop``).

Sensitivity of a convolution: run the FP32 and the INT8 graph on the same images and measure, at
the layer's input and at its output, the signal-to-quantization-noise ratio (SQNR) of the INT8
graph's tensor against the FP32 one. The relative noise power added across the layer (noise/signal
at the output minus at the input) is the damage its own quantization (input activations and
weights) adds to what arrives; a per-tensor range stretched by an outlier channel shows up as a
large one. The search then keeps the k most damaging layers in FP32, k = 1, 2, 4, ...
until the AP drop measured with ONNX Runtime is within the budget, and bisects down to the smallest
such k (assuming more FP32 layers never lower AP).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization.calibrate import TensorsData

from retina_deploy.calib.graph import WEIGHTED_OPS
from retina_deploy.calib.int8 import quantize_with_ranges
from retina_deploy.core.errors import RetinaDeployError

SQNR_CAP_DB = 99.0  # identical tensors (unquantized path) would be +inf


class AccuracyTargetError(RetinaDeployError):
    """No set of FP32 layers brings the INT8 AP drop within the requested budget."""


@dataclass(frozen=True)
class LayerSensitivity:
    """One convolution's INT8 damage: SQNR (dB) of the INT8 graph vs FP32 at its input and output."""

    node: str
    sqnr_in_db: float
    sqnr_out_db: float

    @property
    def added_noise(self) -> float:
        """Relative noise power (noise / signal) added across the layer."""
        return 10.0 ** (-self.sqnr_out_db / 10.0) - 10.0 ** (-self.sqnr_in_db / 10.0)


@dataclass(frozen=True)
class ExcludedLayer:
    """A convolution kept in FP32, and why."""

    node: str
    reason: str


@dataclass(frozen=True)
class DropSearch:
    """The outcome of ``fit_map_drop``. AP values in [0, 1]; trials: (layers kept FP32, AP) in order."""

    ap_fp32: float
    ap_int8_full: float
    ap_int8: float
    excluded: tuple[ExcludedLayer, ...]
    trials: tuple[tuple[int, float], ...]


def _conv_io(model: onnx.ModelProto) -> list[tuple[str, str, str]]:
    """(node name, input activation, output) of every convolution."""
    return [(n.name, n.input[0], n.output[0]) for n in model.graph.node if n.op_type in WEIGHTED_OPS]


def _session_with_outputs(path: str | os.PathLike, names: list[str]) -> tuple[ort.InferenceSession, list[str]]:
    """A CPU session of ``path`` that also outputs ``names`` (those present in the graph)."""
    model = onnx.load(str(path), load_external_data=False)
    present = {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    have = {o.name for o in model.graph.output}
    kept = [n for n in dict.fromkeys(names) if n in present]
    for name in kept:
        if name not in have:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]), kept


def rank_layers(
    fp32_path: str | os.PathLike, int8_path: str | os.PathLike, images: list[np.ndarray]
) -> list[LayerSensitivity]:
    """Every quantized convolution's sensitivity, most damaging first.

    images: preprocessed batches float32 [B, 3, H, W]; signal and noise powers are summed over them.
    """
    convs = _conv_io(onnx.load(str(fp32_path), load_external_data=False))
    names = [t for _, x, y in convs for t in (x, y)]
    ref, ref_names = _session_with_outputs(fp32_path, names)
    q8, q8_names = _session_with_outputs(int8_path, names)
    common = [n for n in ref_names if n in set(q8_names)]
    signal = dict.fromkeys(common, 0.0)
    noise = dict.fromkeys(common, 0.0)
    for batch in images:
        a = dict(zip(ref_names, ref.run(ref_names, {"images": batch}), strict=True))
        b = dict(zip(q8_names, q8.run(q8_names, {"images": batch}), strict=True))
        for name in common:
            signal[name] += float(np.square(a[name].astype(np.float64)).sum())
            noise[name] += float(np.square(a[name].astype(np.float64) - b[name]).sum())

    def sqnr(name: str) -> float:
        if noise[name] == 0.0:
            return SQNR_CAP_DB
        return float(min(SQNR_CAP_DB, 10.0 * np.log10(max(signal[name], 1e-30) / noise[name])))

    ranked = [LayerSensitivity(node, sqnr(x), sqnr(y)) for node, x, y in convs if x in signal and y in signal]
    return sorted(ranked, key=lambda s: s.added_noise, reverse=True)


def _search_k(n: int, meets: Callable[[int], bool]) -> int | None:
    """The smallest k in 1..n with meets(k), probing 1, 2, 4, ... then bisecting; None if meets(n) fails."""
    if n < 1:
        return None
    lo, k = 0, 1  # meets(lo) is known false (the fully quantized graph)
    while True:
        k = min(k, n)
        if meets(k):
            break
        if k == n:
            return None
        lo, k = k, 2 * k
    hi = k
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if meets(mid):
            hi = mid
        else:
            lo = mid
    return hi


def fit_map_drop(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    ranges: TensorsData,
    *,
    max_drop_points: float,
    evaluate: Callable[[Path], float],
    probe_images: list[np.ndarray],
    exclude: tuple[str, ...] = (),
) -> DropSearch:
    """Write to ``out_path`` the INT8 graph with the fewest FP32 convolutions whose AP drop <= budget.

    Args:
        max_drop_points: the budget in AP points (1.0 = 0.01 COCO AP).
        evaluate: ONNX file -> COCO AP in [0, 1] (the caller's validation set).
        probe_images: preprocessed batches for ``rank_layers``.
        exclude: convolutions the user keeps in FP32 anyway.

    Raises AccuracyTargetError (naming the best AP reached) if even all ranked layers in FP32 miss it.
    """
    ap32 = evaluate(Path(fp32_path))
    quantize_with_ranges(fp32_path, out_path, ranges, exclude=exclude)
    ap_full = evaluate(Path(out_path))
    trials: list[tuple[int, float]] = [(0, ap_full)]
    if (ap32 - ap_full) * 100.0 <= max_drop_points:
        return DropSearch(ap32, ap_full, ap_full, (), tuple(trials))
    ranking = [s for s in rank_layers(fp32_path, out_path, probe_images) if s.node not in exclude]
    results: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="retina-drop-") as tmp:

        def meets(k: int) -> bool:
            trial = Path(tmp) / f"k{k}.onnx"
            keep = tuple(exclude) + tuple(s.node for s in ranking[:k])
            results[k] = evaluate(quantize_with_ranges(fp32_path, trial, ranges, exclude=keep))
            trials.append((k, results[k]))
            return (ap32 - results[k]) * 100.0 <= max_drop_points

        best = _search_k(len(ranking) - 1, meets) if len(ranking) > 1 else None  # one INT8 layer at least
    if best is None:
        top = max(results.values(), default=ap_full)
        raise AccuracyTargetError(
            f"INT8 AP stays {100 * (ap32 - top):.2f} points below FP32 ({100 * ap32:.2f}) with all but one of the "
            f"{len(ranking)} convolutions in FP32; raise --max-map-drop or use --fp16"
        )
    quantize_with_ranges(fp32_path, out_path, ranges, exclude=tuple(exclude) + tuple(s.node for s in ranking[:best]))
    excluded = tuple(
        ExcludedLayer(
            s.node,
            f"INT8 adds {100 * s.added_noise:.2f}% relative noise across it (SQNR vs FP32 {s.sqnr_in_db:.1f} dB in,"
            f" {s.sqnr_out_db:.1f} dB out), rank {i + 1} of {len(ranking)}; with the top {best} in FP32, AP"
            f" {100 * results[best]:.2f} "
            f"vs FP32 {100 * ap32:.2f} (all INT8: {100 * ap_full:.2f})",
        )
        for i, s in enumerate(ranking[:best])
    )
    return DropSearch(ap32, ap_full, results[best], excluded, tuple(trials))


__all__ = ["AccuracyTargetError", "DropSearch", "ExcludedLayer", "LayerSensitivity", "fit_map_drop", "rank_layers"]
