"""A stand-in for the build side of the ``tensorrt`` module (10.x, and 11.x), so that the engine builder's
regular-TensorRT paths run without a GPU or TensorRT installed.

``make_tensorrt("10.13.3.9", cudart=FakeCudart(), dla_cores=2)`` returns a module object with the names
the builder uses, spelled and behaving as TensorRT's Python API documents them:

- ``Builder(logger)``: ``create_network(flags)``, ``create_builder_config()``, ``create_optimization_profile()``,
  ``num_DLA_cores``, ``build_serialized_network(network, config)`` (an ``IHostMemory``, or None with the
  reason sent to the logger as an ERROR).
- ``OnnxParser(network, logger).parse(bytes)`` (``fake_trt_onnx``) reads the ONNX file with the ``onnx``
  package: one layer per node (``LayerType`` from the op), initializers feeding a convolution are its
  weights (not inputs), other initializers become CONSTANT layers; tensor data types follow the ONNX types
  (Cast ``to``, Q -> its zero point's type, DQ -> its scale's), as a strongly typed network sees them.
  Unknown ops are parse errors (``num_errors`` / ``get_error(i).desc()``).
- ``IBuilderConfig``: flags, memory pools, profiles, ``profiling_verbosity``, DLA settings, timing cache, and
  (10.x only) ``int8_calibrator`` / ``set_calibration_profile``. Unknown attributes cannot be set (pybind).
- 10.x only: ``BuilderFlag.FP16/INT8/BF16/FP8``, ``IInt8EntropyCalibrator2``, ``IInt8MinMaxCalibrator``
  (whose ``__init__`` must be called by a subclass, as pybind11 requires). 11.x has neither.
- ``Runtime(logger).deserialize_cuda_engine(bytes)`` for engines this stand-in built with the same version
  (None otherwise); the engine lists its I/O tensors and has ``create_engine_inspector()``.

What a build (``fake_trt_build``) checks and does, as TensorRT does: a profile covering each dynamic
input; no precision flags on a strongly typed network; INT8 calibration (weak typing, INT8 flag, a
calibrator, no Q/DQ in the network): ``get_batch_size``, ``read_calibration_cache`` (a cache made by the
same algorithm skips calibration), else ``get_batch`` at the calibration profile's OPT shape until it
returns None (the data is read from the device pointers, which must be ``cudart`` allocations), then
``write_calibration_cache``; zero batches fail the build. DLA: the core must exist; layers run there only
in FP16/INT8, with static shapes and a DLA layer type, the rest need GPU_FALLBACK. Per-layer precisions:
strongly typed from the tensor types; weak typing from the flags (INT8 where calibration gave ranges).
``force_conv_precision`` on the module overrides them (a TensorRT that ignored the request). Every build
appends its record to ``module.builds``.

Not modelled: kernels, execution contexts, ranges of tensors other than the network input (the
calibration cache repeats the input's for every tensor), DLA subgraphs as foreign nodes.
"""

from __future__ import annotations

import ctypes
import json
import struct
import types
from typing import Any

import numpy as np
from fake_trt_onnx import (
    DataType,
    ILayer,
    INetworkDefinition,
    ITensor,
    LayerType,
    OnnxParser,
    ParserError,
    PybindEnum,
)

ENGINE_MAGIC = b"FAKE-TRT-ENGINE\n"
TIMING_MAGIC = b"FAKE-TRT-TIMING-CACHE\n"


DLA_LAYERS = {"CONVOLUTION", "ACTIVATION", "POOLING", "ELEMENTWISE", "CONCATENATION", "RESIZE", "SOFTMAX"}
BUILDER_FLAGS_10 = {
    "FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 5, "DISABLE_TIMING_CACHE": 6, "TF32": 7,
    "SPARSE_WEIGHTS": 8, "OBEY_PRECISION_CONSTRAINTS": 10, "PREFER_PRECISION_CONSTRAINTS": 11, "DIRECT_IO": 12,
    "VERSION_COMPATIBLE": 14, "FP8": 16, "ERROR_ON_TIMING_CACHE_MISS": 17, "BF16": 18, "STRIP_PLAN": 20,
}  # fmt: skip
PRECISION_FLAGS = ("FP16", "INT8", "BF16", "FP8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS")
# EngineInspector's per-tensor format text: 10.x "Format/Datatype", 11.x "Format" + "DataType"
FORMAT_10 = {
    "fp32": "Row major linear FP32 format",
    "fp16": "Channel major FP16 format where channel % 8 == 0",
    "int8": "Four wide channel vectorized row major Int8 format",
}
FORMAT_11 = {"fp32": ("kLINEAR", "Float"), "fp16": ("kHWC8", "Half"), "int8": ("kCHW32", "Int8")}


def make_tensorrt(version: str = "10.13.3.9", *, cudart: Any = None, dla_cores: int = 0, gpu: str = "Fake GPU"):
    """A fresh stand-in module; ``version`` >= 11 drops the precision flags and the calibrators.

    cudart: the ``FakeCudart`` whose allocations calibrators hand to ``get_batch``. dla_cores: what
    ``Builder.num_DLA_cores`` reports. gpu: the device named in timing caches.
    """
    major = int(version.split(".")[0])
    mod = types.ModuleType("tensorrt")
    mod.__version__ = version
    mod.builds, mod.force_conv_precision = [], None
    mod._plugins = False  # the plugin registry: empty until init_libnvinfer_plugins (process-global in TensorRT)

    def init_libnvinfer_plugins(logger: Any, namespace: str) -> bool:
        mod._plugins = True
        return True

    mod.init_libnvinfer_plugins = init_libnvinfer_plugins
    mod._cudart, mod._dla_cores, mod._gpu = cudart, dla_cores, gpu
    flags = {k: v for k, v in BUILDER_FLAGS_10.items() if major < 11 or k not in PRECISION_FLAGS}
    mod.BuilderFlag = PybindEnum("BuilderFlag", flags)
    creation = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1} if major < 11 else {"STRONGLY_TYPED": 1}
    mod.NetworkDefinitionCreationFlag = PybindEnum("NetworkDefinitionCreationFlag", creation)
    mod.DataType, mod.LayerType = DataType, LayerType
    mod.DeviceType = PybindEnum("DeviceType", {"GPU": 0, "DLA": 1})
    mod.MemoryPoolType = PybindEnum("MemoryPoolType", {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1, "DLA_LOCAL_DRAM": 2})
    mod.ProfilingVerbosity = PybindEnum("ProfilingVerbosity", {"LAYER_NAMES_ONLY": 0, "NONE": 1, "DETAILED": 2})
    mod.LayerInformationFormat = PybindEnum("LayerInformationFormat", {"ONELINE": 0, "JSON": 1})
    mod.TensorIOMode = PybindEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    mod.CalibrationAlgoType = PybindEnum(
        "CalibrationAlgoType", {"LEGACY_CALIBRATION": 0, "ENTROPY_CALIBRATION": 1, "ENTROPY_CALIBRATION_2": 2,
                                "MINMAX_CALIBRATION": 3}
    )  # fmt: skip
    mod.nptype = lambda dtype: {"FLOAT": np.float32, "HALF": np.float16, "INT32": np.int32}.get(dtype.name, np.int8)
    for cls in (ILogger, ITensor, ILayer, INetworkDefinition, ParserError, IOptimizationProfile, ITimingCache):
        setattr(mod, cls.__name__, cls)
    mod.Logger = ILogger
    for cls in (Builder, OnnxParser, Runtime, ICudaEngine, IEngineInspector, IHostMemory):
        setattr(mod, cls.__name__, type(cls.__name__, (cls,), {"_trt": mod}))
    config = IBuilderConfig10 if major < 11 else IBuilderConfig
    mod.IBuilderConfig = type("IBuilderConfig", (config,), {"_trt": mod})
    if major < 11:
        mod.IInt8Calibrator = type("IInt8Calibrator", (IInt8Calibrator,), {})
        algos = {
            "IInt8EntropyCalibrator2": "ENTROPY_CALIBRATION_2",
            "IInt8MinMaxCalibrator": "MINMAX_CALIBRATION",
            "IInt8EntropyCalibrator": "ENTROPY_CALIBRATION",
            "IInt8LegacyCalibrator": "LEGACY_CALIBRATION",
        }
        for name, algo in algos.items():
            setattr(mod, name, type(name, (mod.IInt8Calibrator,), {"_algorithm": mod.CalibrationAlgoType[algo]}))
    return mod


class ILogger:
    class Severity(PybindEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    def __init__(self, min_severity: Any = None) -> None:
        pass

    def log(self, severity, msg) -> None:
        pass


class _Strict:
    """pybind11 objects have a fixed set of attributes: setting an unknown one raises AttributeError."""

    _fields: tuple[str, ...] = ()

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_") and name not in self._fields:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
        object.__setattr__(self, name, value)


class IOptimizationProfile:
    def __init__(self) -> None:
        self._shapes: dict[str, tuple[tuple[int, ...], ...]] = {}
        self._valid = True

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - TensorRT's names
        shapes = tuple(tuple(int(d) for d in s) for s in (min, opt, max))
        if len({len(s) for s in shapes}) != 1 or any(not a <= b <= c for a, b, c in zip(*shapes, strict=True)):
            self._valid = False  # TensorRT logs the error and the profile cannot be added
        self._shapes[input] = shapes

    def get_shape(self, input: str) -> list[tuple[int, ...]]:  # noqa: A002
        return list(self._shapes[input])


class ITimingCache:
    def __init__(self, header: dict, entries: set[str], source: bytes) -> None:
        self.header, self.entries, self.source = header, entries, source

    def serialize(self) -> bytes:
        return TIMING_MAGIC + json.dumps({**self.header, "entries": sorted(self.entries)}).encode()


class IHostMemory(bytes):
    """TensorRT's buffer object; bytes already offer the buffer protocol ``memoryview`` needs."""

    nbytes = property(len)


class IBuilderConfig(_Strict):
    _trt: types.ModuleType
    _fields = (
        "profiling_verbosity", "builder_optimization_level", "default_device_type", "DLA_core", "flags",
    )  # fmt: skip

    def __init__(self) -> None:
        trt = self._trt
        self.flags = 0
        self.profiling_verbosity = trt.ProfilingVerbosity.LAYER_NAMES_ONLY
        self.builder_optimization_level = 3
        self.default_device_type = trt.DeviceType.GPU
        self.DLA_core = -1
        self._pools: dict[Any, int] = {}
        self._profiles: list[IOptimizationProfile] = []
        self._calibration_profile = None
        self._calibrator = None
        self._timing_cache = ITimingCache(self._cache_header(), set(), b"")

    def _cache_header(self) -> dict:
        return {"tensorrt": self._trt.__version__, "gpu": self._trt._gpu}

    def set_flag(self, flag: Any) -> None:
        self.flags |= 1 << int(flag)

    def clear_flag(self, flag: Any) -> None:
        self.flags &= ~(1 << int(flag))

    def get_flag(self, flag: Any) -> bool:
        return bool(self.flags & (1 << int(flag)))

    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        self._pools[pool] = int(pool_size)

    def get_memory_pool_limit(self, pool: Any) -> int:
        return self._pools.get(pool, 1 << 40)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        if not profile._valid:
            return -1
        self._profiles.append(profile)
        return len(self._profiles) - 1

    num_optimization_profiles = property(lambda self: len(self._profiles))

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        """An empty cache from b"", None (TensorRT's nullptr) from bytes that are not a timing cache."""
        blob = bytes(serialized_timing_cache)
        if not blob:
            return ITimingCache(self._cache_header(), set(), blob)
        try:
            record = json.loads(blob[len(TIMING_MAGIC) :]) if blob.startswith(TIMING_MAGIC) else None
        except ValueError:
            record = None
        if not isinstance(record, dict) or not {"tensorrt", "gpu", "entries"} <= record.keys():
            return None
        return ITimingCache({"tensorrt": record["tensorrt"], "gpu": record["gpu"]}, set(record["entries"]), blob)

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        """False (cache not set) when it was made by another TensorRT version or on another GPU."""
        if cache.header != self._cache_header() and not ignore_mismatch:
            return False
        self._timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache:
        return self._timing_cache


class IBuilderConfig10(IBuilderConfig):
    """10.x adds the implicit-quantization calibrator and its profile (removed in 11.x)."""

    _fields = (*IBuilderConfig._fields, "int8_calibrator")

    @property
    def int8_calibrator(self) -> Any:
        return self._calibrator

    @int8_calibrator.setter
    def int8_calibrator(self, value: Any) -> None:
        if value is not None and not isinstance(value, self._trt.IInt8Calibrator):
            raise TypeError("int8_calibrator: incompatible type, expected tensorrt.IInt8Calibrator")
        self._calibrator = value

    def set_calibration_profile(self, profile: IOptimizationProfile) -> bool:
        self._calibration_profile = profile
        return profile._valid

    def get_calibration_profile(self) -> IOptimizationProfile | None:
        return self._calibration_profile


class _PybindType(type):
    """pybind11 refuses an instance of a Python subclass whose ``__init__`` skipped the base's."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        obj = super().__call__(*args, **kwargs)
        if not obj.__dict__.get("_base_initialized"):
            raise TypeError(f"{cls.__mro__[1].__name__}.__init__() must be called when overriding __init__")
        return obj


class IInt8Calibrator(metaclass=_PybindType):
    _algorithm: Any = None

    def __init__(self) -> None:
        self._base_initialized = True

    def get_algorithm(self) -> Any:
        return self._algorithm


class Builder:
    _trt: types.ModuleType

    def __init__(self, logger: ILogger) -> None:
        self.logger = logger
        self.num_DLA_cores = self._trt._dla_cores

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        known = sum(1 << int(f) for f in self._trt.NetworkDefinitionCreationFlag)
        if flags & ~known:
            raise ValueError(f"unknown NetworkDefinitionCreationFlag bits in {flags}")
        always = int(self._trt.__version__.split(".")[0]) >= 11  # 11.x: the flag is deprecated and ignored
        typed = always or bool(flags & (1 << int(self._trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)))
        return INetworkDefinition(flags, typed)

    def create_builder_config(self) -> IBuilderConfig:
        return self._trt.IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        from fake_trt_build import BuildError, build  # the build itself lives beside this module

        record: dict[str, Any] = {}
        self._trt.builds.append(record)
        try:
            blob = build(self._trt, network, config, record)
        except BuildError as e:
            record["error"] = str(e)
            self.logger.log(ILogger.Severity.ERROR, str(e))
            return None
        return self._trt.IHostMemory(blob)


class Runtime:
    _trt: types.ModuleType

    def __init__(self, logger: ILogger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None:
        data = bytes(serialized_engine)
        if not data.startswith(ENGINE_MAGIC):
            self.logger.log(ILogger.Severity.ERROR, "Magic tag does not match: not a serialized engine")
            return None
        plan = json.loads(data[len(ENGINE_MAGIC) :])
        plugin = next((la["name"] for la in plan["layers"] if la["type"] == "PLUGIN_V2"), None)
        if plugin is not None and not self._trt._plugins:
            self.logger.log(ILogger.Severity.ERROR, f"getPluginCreator could not find plugin for layer {plugin}")
            return None
        if plan["tensorrt"] != self._trt.__version__:
            self.logger.log(
                ILogger.Severity.ERROR,
                f"The engine plan file is not compatible with this version of TensorRT, expecting library version"
                f" {self._trt.__version__} got {plan['tensorrt']}, please rebuild.",
            )
            return None
        return self._trt.ICudaEngine(plan)


class ICudaEngine:
    _trt: types.ModuleType

    def __init__(self, plan: dict) -> None:
        self.plan = plan
        self.num_io_tensors = len(plan["io"])
        self.num_layers = len(plan["layers"])

    def _io(self, name: str) -> dict:
        return next(t for t in self.plan["io"] if t["name"] == name)

    def get_tensor_name(self, index: int) -> str:
        return self.plan["io"][index]["name"]

    def get_tensor_mode(self, name: str) -> Any:
        return self._trt.TensorIOMode.INPUT if self._io(name)["input"] else self._trt.TensorIOMode.OUTPUT

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._io(name)["shape"])

    def get_tensor_dtype(self, name: str) -> Any:
        return DataType[self._io(name)["dtype"]]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        return [tuple(s) for s in self.plan["profiles"][profile_index][name]]

    def create_engine_inspector(self) -> IEngineInspector:
        return self._trt.IEngineInspector(self)


class IEngineInspector:
    _trt: types.ModuleType

    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine

    def get_engine_information(self, format: Any) -> str:  # noqa: A002 - TensorRT's name
        plan, trt = self.engine.plan, self._trt
        major = int(trt.__version__.split(".")[0])
        bindings = [t["name"] for t in plan["io"]]
        verbosity = plan["profiling_verbosity"]
        if verbosity == "NONE":
            layers: list = []
        elif verbosity == "LAYER_NAMES_ONLY":
            layers = [layer["name"] for layer in plan["layers"]]
        else:
            layers = [_layer_json(layer, major) for layer in plan["layers"]]
        if format == trt.LayerInformationFormat.JSON:
            io_key = "I/O Tensors" if major >= 11 else "Bindings"  # renamed in 11.x
            return json.dumps({"Layers": layers, io_key: bindings})
        return "\n".join(str(layer) for layer in layers)


def _layer_json(layer: dict, major: int) -> dict:
    """One layer as ``get_engine_information(JSON)`` writes it under ProfilingVerbosity.DETAILED."""
    precision = layer["precision"]
    tensor = {"Name": layer["input"], "Location": "Device"}
    if major >= 11:
        tensor["Format"], tensor["DataType"] = FORMAT_11[precision]
    else:
        tensor["Format/Datatype"] = FORMAT_10[precision]
    kind = "CaskConvolution" if layer["type"] == "CONVOLUTION" else "PointWiseV2"
    return {"Name": layer["name"], "LayerType": kind, "Inputs": [tensor], "TacticName": layer["tactic"]}


def read_device(cudart: Any, ptr: int, nbytes: int) -> np.ndarray:
    """Copy ``nbytes`` from a ``FakeCudart`` allocation (ValueError for any other address)."""
    buf = cudart.buffers.get(int(ptr)) if cudart is not None else None
    if buf is None or ctypes.sizeof(buf) < nbytes:
        raise ValueError(f"address {ptr:#x} is not a device allocation of {nbytes} bytes")
    return np.frombuffer(ctypes.string_at(int(ptr), nbytes), dtype=np.float32).copy()


def calibration_cache(header: str, ranges: dict[str, float]) -> bytes:
    """TensorRT's text cache: a header line, then ``tensor: <scale as big-endian float32 hex>`` lines."""
    lines = [header] + [f"{name}: {struct.pack('>f', amax / 127.0).hex()}" for name, amax in ranges.items()]
    return ("\n".join(lines) + "\n").encode()


def parse_calibration_cache(data: bytes) -> tuple[str, dict[str, float]]:
    lines = data.decode().splitlines()
    ranges = {}
    for line in lines[1:]:
        name, _, scale = line.rpartition(": ")
        ranges[name] = struct.unpack(">f", bytes.fromhex(scale))[0] * 127.0
    return lines[0], ranges


__all__ = ["ENGINE_MAGIC", "make_tensorrt", "read_device"]
