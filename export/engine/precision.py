"""Did the requested precision take? Checked on the network before the build and on the engine after it.

TensorRT 11 and TensorRT-RTX silently build FP32 from a graph without FP16 types or Q/DQ nodes, so
the builder checks twice:

- network level (every flavour, no GPU needed): in the parsed strongly typed network, FP16 means
  every convolution outputs HALF; INT8 means the convolutions that have Q/DQ in the ONNX read both
  their activations and weights through DequantizeLinear layers fed by INT8 tensors.
- engine level (only where the engine can be deserialized, i.e. on a GPU): ``EngineInspector``'s JSON
  (the builder sets ProfilingVerbosity.DETAILED) gives each convolution's I/O data types; no
  convolution may run in FP32 when FP16 or INT8 was asked for, except those left FP32 on purpose.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from retina_deploy.export.engine.flavours import EngineBuildError, Flavour
from retina_deploy.runtime.backends.trt_support import init_plugins


def _short(enum_value: Any) -> str:
    return str(enum_value).rsplit(".", 1)[-1]


def network_precision(network: Any) -> dict[str, int]:
    """Counts over a parsed network: convolutions, those with HALF output, those fed by INT8 Q/DQ on both inputs."""
    producer: dict[str, Any] = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            producer[layer.get_output(j).name] = layer

    def int8_dequantized(layer: Any, index: int) -> bool:
        tensor = layer.get_input(index)
        dq = producer.get(tensor.name) if tensor is not None else None
        if dq is None or _short(dq.type) != "DEQUANTIZE":
            return False
        source = dq.get_input(0)
        return source is not None and _short(source.dtype) == "INT8"

    counts = Counter()
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if _short(layer.type) != "CONVOLUTION":
            continue
        counts["conv"] += 1
        # The output tensor's type: TensorRT 10's get_output_type is kFLOAT unless set_output_type was
        # called, which a strongly typed network forbids; only 11.x returns the inferred type there.
        counts["conv_half"] += _short(layer.get_output(0).dtype) == "HALF"
        counts["conv_int8"] += int8_dequantized(layer, 0) and int8_dequantized(layer, 1)
    return {"conv": counts["conv"], "conv_half": counts["conv_half"], "conv_int8": counts["conv_int8"]}


def check_network_precision(counts: dict[str, int], precision: str, *, expected_int8: int = 0) -> None:
    """Raise EngineBuildError unless ``counts`` (``network_precision``) match ``precision``.

    expected_int8: convolutions that carry Q/DQ in the ONNX file (INT8 only).
    """
    conv, half, int8 = counts["conv"], counts["conv_half"], counts["conv_int8"]
    if precision == "fp16" and half != conv:
        raise EngineBuildError(
            f"FP16 did not take: {conv - half} of {conv} convolutions are not FP16 in the strongly typed network"
            " (TensorRT would build them in FP32); convert the ONNX file with build-engine --fp16"
        )
    if precision == "int8" and (int8 == 0 or int8 != expected_int8):
        raise EngineBuildError(
            f"INT8 did not take: {int8} of {conv} convolutions read INT8 Q/DQ in the network, the ONNX file has"
            f" {expected_int8}; quantize it with build-engine --int8"
        )
    if precision == "fp32" and (half or int8):
        raise EngineBuildError(f"the network has {half} FP16 and {int8} INT8 convolutions but FP32 was asked for")


def _datatype(io: dict[str, Any]) -> str:
    """'fp16' / 'int8' / 'fp32' / '?' from one inspector I/O record (10.x "Format/Datatype", 11.x "DataType")."""
    text = str(io.get("DataType") or io.get("Format/Datatype") or "").lower()
    for key, name in (("int8", "int8"), ("fp16", "fp16"), ("half", "fp16"), ("fp32", "fp32"), ("float", "fp32")):
        if key in text:
            return name
    return "?"


def engine_conv_types(info_json: str) -> dict[str, int]:
    """Counts of convolution layers in an engine by the data type of their first input (inspector JSON)."""
    info = json.loads(info_json)
    counts: Counter = Counter()
    for layer in info.get("Layers", []):
        if not isinstance(layer, dict) or "onvolution" not in str(layer.get("LayerType", "")):
            continue
        inputs = layer.get("Inputs") or [{}]
        counts[_datatype(inputs[0])] += 1
    return dict(counts)


def inspect_engine(flavour: Flavour, data: bytes, logger: Any) -> tuple[dict[str, int] | None, str]:
    """(convolution counts by input type, note) from the engine's inspector; (None, why) where it cannot run.

    Deserializing needs a CUDA device (TensorRT-RTX included), so without one the check is skipped.
    """
    from retina_deploy.runtime.backends.cuda_mem import CudaError, NoCudaDeviceError, import_cudart, select_device

    try:
        select_device(import_cudart(), 0)
    except (CudaError, NoCudaDeviceError) as e:
        return None, f"skipped: no CUDA device to deserialize the engine on ({e})"
    trt = flavour.trt
    init_plugins(trt, logger)  # an EfficientNMS_TRT engine deserializes only from an initialised registry
    engine = trt.Runtime(logger).deserialize_cuda_engine(data)
    if engine is None:
        why = "; ".join(getattr(logger, "errors", [])[-2:]) or "no reason given"
        return None, f"skipped: this GPU cannot deserialize the engine ({why})"
    info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
    counts = engine_conv_types(info)
    if not counts:
        return None, "skipped: the inspector listed no convolution layers (no per-layer detail in this engine)"
    return counts, "checked with EngineInspector"


def check_engine_precision(
    counts: dict[str, int], precision: str, *, fp32_convs: int = 0, legacy: bool = False
) -> None:
    """Raise EngineBuildError if the engine's convolutions do not run in ``precision``.

    Strongly typed builds: at most ``fp32_convs`` (left FP32 on purpose) may run in FP32. Legacy
    builds (builder flags; TensorRT picks per layer): at least one must run in ``precision``.
    """
    if precision == "fp32":
        return
    fp32, wanted = counts.get("fp32", 0), counts.get(precision, 0)
    if legacy and wanted == 0:
        raise EngineBuildError(f"{precision.upper()} did not take in the engine: no convolution runs in it ({counts})")
    if not legacy and fp32 > fp32_convs:
        raise EngineBuildError(
            f"{precision.upper()} did not take in the engine: {fp32} convolutions run in FP32 ({counts});"
            f" expected at most {fp32_convs}"
        )


__all__ = [
    "check_engine_precision",
    "check_network_precision",
    "engine_conv_types",
    "inspect_engine",
    "network_precision",
]
