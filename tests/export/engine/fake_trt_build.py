"""``build_serialized_network`` of the stand-in in ``fake_trt_builder``: the checks TensorRT makes before it
builds, INT8 calibration through the application's calibrator, DLA placement, per-layer precisions, the
timing cache, and the serialized plan its ``Runtime`` reads back. What it records goes to ``record``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from fake_trt_builder import (
    DLA_LAYERS,
    ENGINE_MAGIC,
    PRECISION_FLAGS,
    calibration_cache,
    parse_calibration_cache,
    read_device,
)

ALGORITHM_NAMES = {
    "ENTROPY_CALIBRATION_2": "EntropyCalibration2",
    "MINMAX_CALIBRATION": "MinMaxCalibration",
    "ENTROPY_CALIBRATION": "EntropyCalibration",
    "LEGACY_CALIBRATION": "LegacyCalibration",
}
FOLDED = ("CONSTANT", "QUANTIZE", "DEQUANTIZE")  # folded into their consumers: no engine layer of their own


class BuildError(Exception):
    """A build failure; TensorRT logs the message as an ERROR and returns None."""


def build(trt: Any, network: Any, config: Any, record: dict[str, Any]) -> bytes:
    """Check, calibrate, place and "build" ``network``; the serialized plan (see the module docstring)."""
    flags = {f.name for f in trt.BuilderFlag if config.get_flag(f)}
    cache = config.get_timing_cache()
    record.update(
        flags=flags,
        strongly_typed=network.strongly_typed,
        device_type=config.default_device_type.name,
        dla_core=config.DLA_core,
        workspace=config._pools.get(trt.MemoryPoolType.WORKSPACE),
        optimization_level=config.builder_optimization_level,
        profiling_verbosity=config.profiling_verbosity.name,
        timing_cache_source=cache.source,
        calibrator=None if config._calibrator is None else type(config._calibrator).__mro__[1].__name__,
    )
    if not network.num_outputs:
        raise BuildError("Network must have at least one output")
    profiles = _check_profiles(network, config)
    if network.strongly_typed and flags & set(PRECISION_FLAGS):
        raise BuildError(
            f"IBuilderConfig flags {sorted(flags & set(PRECISION_FLAGS))} cannot be set for a strongly typed network"
        )
    ranges = _calibrate(trt, network, config, flags, record)
    layers = _engine_layers(trt, network, flags, ranges)
    _place(trt, network, config, flags, profiles, layers, record)
    record["conv_precisions"] = sorted({layer["precision"] for layer in layers if layer["type"] == "CONVOLUTION"})
    if "DISABLE_TIMING_CACHE" not in flags:
        keys = {f"{layer['type']}:{layer['precision']}:{profiles[0]}" for layer in layers}
        record["timing_cache_hits"] = len(keys & cache.entries)
        cache.entries |= keys
    plan = {
        "tensorrt": trt.__version__,
        "io": [
            {"name": t.name, "input": t.is_network_input, "shape": list(t.shape), "dtype": t.dtype.name}
            for t in [*network._inputs, *network._outputs]
        ],
        "profiles": [{name: [list(s) for s in shapes] for name, shapes in p._shapes.items()} for p in config._profiles],
        "layers": layers,
        "profiling_verbosity": config.profiling_verbosity.name,
    }
    return ENGINE_MAGIC + json.dumps(plan).encode()


def _check_profiles(network: Any, config: Any) -> list[str]:
    """Every dynamic input needs a profile shape that fits the network's static dims. Profiles as text."""
    dynamic = [t for t in network._inputs if -1 in t.shape]
    if dynamic and not config._profiles:
        raise BuildError("Network has dynamic or shape inputs, but no optimization profile has been defined.")
    for index, profile in enumerate(config._profiles):
        for tensor in dynamic:
            if tensor.name not in profile._shapes:
                raise BuildError(f"Optimization profile {index} has no dimensions for input {tensor.name}")
            for shape in profile._shapes[tensor.name]:
                fits = len(shape) == len(tensor.shape) and all(
                    d == n or n == -1 for d, n in zip(shape, tensor.shape, strict=True)
                )
                if not fits or min(shape) < 1:
                    raise BuildError(
                        f"Optimization profile {index}: dimensions {shape} of {tensor.name} do not fit"
                        f" the network's {tensor.shape}"
                    )
    return [json.dumps(p._shapes, sort_keys=True) for p in config._profiles]


def _has_qdq(network: Any) -> bool:
    return any(network.get_layer(i).type.name in ("QUANTIZE", "DEQUANTIZE") for i in range(network.num_layers))


def _calibrate(trt: Any, network: Any, config: Any, flags: set[str], record: dict[str, Any]) -> dict[str, float]:
    """INT8 ranges per tensor name, from the calibrator's cache or its batches ({} when none apply)."""
    calibrator = config._calibrator
    if "INT8" not in flags or calibrator is None:
        return {}
    if _has_qdq(network):
        record["calibration"] = {"source": "ignored: the network is explicitly quantized"}
        return {}
    algorithm = ALGORITHM_NAMES[calibrator.get_algorithm().name]
    major, minor, patch = (int(v) for v in trt.__version__.split(".")[:3])
    header = f"TRT-{major}{minor:02d}{patch:02d}-{algorithm}"
    batch_size = int(calibrator.get_batch_size())
    record["get_batch_calls"] = 0
    cached = calibrator.read_calibration_cache()
    if cached:
        found_header, ranges = parse_calibration_cache(bytes(cached))
        if found_header == header:
            record["calibration"] = {"source": "cache", "batches": 0, "batch_size": batch_size}
            return ranges
    profile = config._calibration_profile
    if profile is None and any(-1 in t.shape for t in network._inputs):
        raise BuildError("Calibration profile must be set when calibrating a network with runtime dimensions")
    shapes = {t.name: tuple(profile.get_shape(t.name)[1]) for t in network._inputs}
    amax, batches = 0.0, 0
    names = list(shapes)
    record["get_batch_calls"] = 0
    while True:
        record["get_batch_calls"] += 1
        pointers = calibrator.get_batch(names)
        if not pointers:
            break
        if len(pointers) != len(names):
            raise BuildError(f"get_batch returned {len(pointers)} bindings for {len(names)} inputs")
        for name, ptr in zip(names, pointers, strict=True):
            try:
                data = read_device(trt._cudart, ptr, int(np.prod(shapes[name])) * 4)
            except ValueError as e:
                raise BuildError(f"calibration batch for {name}: {e}") from e
            amax = max(amax, float(np.abs(data).max()))
        batches += 1
    if not batches:
        raise BuildError(
            "Calibration failure occurred with no scaling factors detected. This could be due to no int8 calibrator"
            " or insufficient custom scales for network layers."
        )
    tensors = {t.name for i in range(network.num_layers) for t in network.get_layer(i)._outputs}
    ranges = {name: amax for name in [*names, *sorted(tensors)]}
    calibrator.write_calibration_cache(memoryview(calibration_cache(header, ranges)))
    record["calibration"] = {
        "source": "calibrated",
        "batches": batches,
        "batch_size": batch_size,
        "batch_shape": shapes[names[0]],
        "input_amax": amax,
    }
    return ranges


def _engine_layers(trt: Any, network: Any, flags: set[str], ranges: dict[str, float]) -> list[dict[str, Any]]:
    """The engine's layers with the precision each runs in."""
    producer = {t.name: layer for layer in network._layers for t in layer._outputs}
    layers = []
    for layer in network._layers:
        kind = layer.type.name
        if kind in FOLDED:
            continue
        first = layer.get_input(0) if layer.num_inputs else None
        if network.strongly_typed:
            source = producer.get(first.name) if first is not None else None
            qdq = source is not None and source.type.name == "DEQUANTIZE" and source.get_input(0).dtype.name == "INT8"
            dtype = first.dtype.name if first is not None else "FLOAT"
            precision = "int8" if qdq else {"HALF": "fp16"}.get(dtype, "fp32")
        elif "INT8" in flags and first is not None and first.name in ranges:
            precision = "int8"
        else:
            precision = "fp16" if "FP16" in flags else "fp32"
        if kind == "CONVOLUTION" and trt.force_conv_precision:
            precision = trt.force_conv_precision
        name = first.name if first is not None else ""
        layers.append({"name": layer.name, "type": kind, "precision": precision, "input": name, "tactic": "gpu"})
    return layers


def _place(trt, network, config, flags, profiles, layers, record) -> None:  # noqa: ANN001
    """DLA placement: layers that DLA can run go there; the rest need GPU_FALLBACK (else the build fails)."""
    if config.default_device_type != trt.DeviceType.DLA:
        return
    cores, fallback = trt._dla_cores, "GPU_FALLBACK" in flags
    if cores and not 0 <= config.DLA_core < cores:
        raise BuildError(f"Cannot create DLA engine, DLA core {config.DLA_core} not available ({cores} cores)")
    static = all(
        len({tuple(s) for s in shapes}) == 1 for p in config._profiles for shapes in p._shapes.values()
    )  # DLA has no dynamic dimensions: min, opt and max must be equal
    on_dla = 0
    for layer in layers:
        why = (
            "no DLA on this platform" if not cores
            else "dynamic dimensions" if not static
            else "layer type not supported on DLA" if layer["type"] not in DLA_LAYERS
            else "DLA runs FP16 or INT8 only" if layer["precision"] == "fp32"
            else None
        )  # fmt: skip
        if why is None:
            layer["tactic"], on_dla = "dla", on_dla + 1
        elif not fallback:
            raise BuildError(f"{layer['name']} cannot run on DLA ({why}) and GPU fallback is not enabled")
    record["dla_layers"], record["gpu_layers"] = on_dla, len(layers) - on_dla
