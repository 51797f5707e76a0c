"""Precision checks and the flavour interface without building anything (no TensorRT needed for most)."""

from __future__ import annotations

import json
import types

import pytest

from retina_deploy.core.errors import ConfigError
from retina_deploy.export.engine.flavours import EngineBuildError, Flavour, resolve_flavour
from retina_deploy.export.engine.precision import (
    check_engine_precision,
    check_network_precision,
    engine_conv_types,
)

# EngineInspector JSON, ProfilingVerbosity.DETAILED: TensorRT 10.x writes "Format/Datatype",
# 11.x splits it into "Format" and "DataType"; non-convolution layers are ignored.
INSPECTOR_10 = {
    "Layers": [
        {"Name": "conv1", "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "x", "Format/Datatype": "Channel major FP16 format where channel % 8 == 0"}]},
        {"Name": "conv2", "LayerType": "CaskGemmConvolution",
         "Inputs": [{"Name": "y", "Format/Datatype": "Four wide channel vectorized row major Int8 format"}]},
        {"Name": "sig", "LayerType": "PointWiseV2", "Inputs": [{"Format/Datatype": "Row major linear FP32 format"}]},
    ]
}  # fmt: skip
INSPECTOR_11 = {
    "Layers": [
        {"Name": "conv1", "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "x", "Format": "kLINEAR", "DataType": "Float"}]},
        {"Name": "conv2", "LayerType": "CaskConvolution",
         "Inputs": [{"Name": "y", "Format": "kHWC8", "DataType": "Half"}]},
        "a layer name only (LAYER_NAMES_ONLY)",
    ]
}  # fmt: skip


def test_inspector_json_of_both_major_versions():
    assert engine_conv_types(json.dumps(INSPECTOR_10)) == {"fp16": 1, "int8": 1}
    assert engine_conv_types(json.dumps(INSPECTOR_11)) == {"fp32": 1, "fp16": 1}


def test_engine_check_fails_when_the_precision_did_not_take():
    check_engine_precision({"fp16": 10}, "fp16")
    check_engine_precision({"int8": 8, "fp32": 2}, "int8", fp32_convs=2)  # two kept FP32 on purpose
    with pytest.raises(EngineBuildError, match="FP16 did not take"):
        check_engine_precision({"fp32": 10}, "fp16")
    with pytest.raises(EngineBuildError, match="INT8 did not take"):
        check_engine_precision({"int8": 8, "fp32": 3}, "int8", fp32_convs=2)
    check_engine_precision({"int8": 1, "fp32": 9}, "int8", legacy=True)  # weak typing: TensorRT's choice
    with pytest.raises(EngineBuildError, match="no convolution runs in it"):
        check_engine_precision({"fp16": 9, "fp32": 1}, "int8", legacy=True)


def test_network_check():
    check_network_precision({"conv": 4, "conv_half": 4, "conv_int8": 0}, "fp16")
    check_network_precision({"conv": 4, "conv_half": 0, "conv_int8": 3}, "int8", expected_int8=3)
    with pytest.raises(EngineBuildError, match="1 of 4 convolutions are not FP16"):
        check_network_precision({"conv": 4, "conv_half": 3, "conv_int8": 0}, "fp16")
    with pytest.raises(EngineBuildError, match="INT8 did not take"):
        check_network_precision({"conv": 4, "conv_half": 0, "conv_int8": 0}, "int8", expected_int8=0)


def fake_module(*, flags=("FP16", "INT8"), strongly_typed=True, calibrator=True) -> types.SimpleNamespace:
    mod = types.SimpleNamespace(__version__="10.13.0.35")
    mod.BuilderFlag = types.SimpleNamespace(**{f: i for i, f in enumerate(flags)})
    mod.NetworkDefinitionCreationFlag = types.SimpleNamespace(**({"STRONGLY_TYPED": 1} if strongly_typed else {}))
    if calibrator:
        mod.IInt8EntropyCalibrator2 = object
    return mod


def test_flavour_capabilities_come_from_the_module():
    trt10 = Flavour("tensorrt", fake_module())
    assert trt10.major == 10 and trt10.has_precision_flags and trt10.has_calibrator and trt10.has_timing_cache
    assert trt10.network_flags(strongly_typed=True) == 2 and trt10.network_flags(strongly_typed=False) == 0
    trt11 = Flavour("tensorrt", fake_module(flags=("GPU_FALLBACK",), strongly_typed=False, calibrator=False))
    assert not trt11.has_precision_flags and not trt11.has_calibrator
    assert trt11.network_flags(strongly_typed=True) == 0  # 11.x: always strongly typed
    rtx = Flavour("tensorrt-rtx", fake_module(flags=()))
    assert not rtx.has_timing_cache and rtx.build_target() == (None, ())


def test_unknown_flavour():
    with pytest.raises(ConfigError, match="flavor must be one of"):
        resolve_flavour("tensorrt-llm")
