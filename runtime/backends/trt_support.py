"""TensorRT facts the backend and the builder check before relying on them (torch-free, GPU-free).

- deserialization: TensorRT's validity check first, errors kept by the logger (``make_logger``);
- the plugin registry: bundled plugins (``EfficientNMS_TRT``) exist only once it is initialised;
- TensorRT-RTX runs on the compute capabilities its ``ComputeCapability`` enum lists, not on every GPU;
- TensorRT-RTX compiles its kernels when a context first runs a shape; its runtime cache keeps them in a
  file (``RuntimeCacheFile``) so the next process does not compile them again.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any

from retina_deploy.core.errors import ModelFileError
from retina_deploy.core.fileio import write_bytes_atomic
from retina_deploy.runtime.backends.cuda_mem import NoCudaDeviceError
from retina_deploy.runtime.contract.manifest import REBUILD_HINT

# Our files start with this line, so a file that is not ours is never overwritten.
RUNTIME_CACHE_MAGIC = b"retina-deploy/tensorrt-rtx-runtime-cache 1\n"
RUNTIME_CACHE_SUFFIX = ".rtx-cache"


class UnsupportedGpuError(NoCudaDeviceError):
    """The GPU is one the engine's TensorRT flavour does not run on (TensorRT-RTX on a datacenter GPU);
    rebuilding with the same flavour cannot help."""


def init_plugins(trt: ModuleType, logger: Any) -> bool:
    """Register the plugins bundled with TensorRT (``EfficientNMS_TRT``, ...) in its global registry.

    The ONNX parser and ``deserialize_cuda_engine`` find a plugin only in an initialised registry, so
    this runs before either (as NVIDIA's samples do). Repeated calls are harmless. False where the
    module has no plugin library entry point or TensorRT reports a failure.
    """
    init = getattr(trt, "init_libnvinfer_plugins", None)
    return bool(init(logger, "")) if init is not None else False


def rtx_capabilities(trt: ModuleType) -> tuple[str, ...]:
    """The compute capabilities TensorRT-RTX runs on, from its ``ComputeCapability`` enum:
    ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1") for 1.7 (``SM75`` -> "7.5", ``SM120`` -> "12.0")."""
    found = []
    for name in getattr(getattr(trt, "ComputeCapability", None), "__members__", {}):
        digits = re.fullmatch(r"SM(\d+)(\d)", name)
        if digits:
            found.append(f"{int(digits.group(1))}.{digits.group(2)}")
    return tuple(found)


def check_flavour_runs_here(trt: ModuleType, flavour: str, capability: str, gpu_name: str, path: str) -> None:
    """UnsupportedGpuError when ``flavour`` cannot run on this GPU at all (TensorRT-RTX on e.g. an H100, 9.0)."""
    if flavour != "tensorrt-rtx":
        return
    supported = rtx_capabilities(trt)
    if supported and capability not in supported:
        raise UnsupportedGpuError(
            f"{path}: TensorRT-RTX {trt.__version__} does not run on this GPU ({gpu_name}, compute capability"
            f" {capability}; it supports {', '.join(supported)}); build the engine with regular TensorRT instead"
            " (pip install 'retina-deploy[trt]', then build-engine --flavor tensorrt)"
        )


def make_logger(trt: ModuleType) -> Any:
    """A TensorRT logger that keeps error messages (``.errors``), so a failed deserialization can say why."""

    class CapturingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(str(msg))

    return CapturingLogger()


def deserialize(trt: ModuleType, data: bytes, path: str, logger: Any) -> tuple[Any, Any]:
    """Run TensorRT's validity check (where offered), then deserialize. Returns (runtime, engine)."""
    init_plugins(trt, logger)  # an engine with a plugin layer (EfficientNMS_TRT) deserializes only after this
    runtime = trt.Runtime(logger)
    if hasattr(runtime, "get_engine_validity"):
        validity, diagnostics = runtime.get_engine_validity(data)
        if validity == trt.EngineValidity.INVALID:
            reasons = [n for n, v in trt.EngineInvalidityDiagnostics.__members__.items() if int(diagnostics) & int(v)]
            why = ", ".join(reasons) or "invalid"
            raise ModelFileError(f"{path}: TensorRT refuses the engine ({why}); {REBUILD_HINT}")
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        why = "; ".join(getattr(logger, "errors", [])[-3:]) or "no reason given"
        raise ModelFileError(f"{path}: TensorRT could not deserialize the engine ({why}); {REBUILD_HINT}")
    return runtime, engine


def runtime_cache_path(engine_path: str | os.PathLike, setting: str | os.PathLike | bool) -> Path | None:
    """Where the runtime cache lives: True -> ``<engine>.rtx-cache`` beside the engine, False -> nowhere."""
    if setting is True:
        return Path(os.fspath(engine_path) + RUNTIME_CACHE_SUFFIX)
    return None if setting is False else Path(setting)


class RuntimeCacheFile:
    """TensorRT-RTX's runtime cache (``IRuntimeCache``) attached to a runtime config and kept in ``path``.

    The file is read when it exists: TensorRT-RTX loads it only if it was made with the same GPU, driver
    major version and TensorRT-RTX release, else the cache starts empty and ``save`` replaces the file.
    A file that does not start with our header is not ours: it is neither read nor overwritten.
    ``note`` says what happened, for logs and reports.
    """

    def __init__(self, path: Path, runtime_config: Any) -> None:
        self.path, self.writable = path, True
        self.cache = runtime_config.create_runtime_cache()
        self.note = f"runtime cache {path}: created"
        try:
            data = path.read_bytes() if path.is_file() else None
        except OSError as e:
            data, self.writable, self.note = None, False, f"runtime cache {path}: unreadable ({e.strerror or e})"
        if data is not None:
            if not data.startswith(RUNTIME_CACHE_MAGIC):
                self.writable = False
                self.note = f"runtime cache {path}: not a runtime cache written by retina-deploy, left alone"
            elif self.cache.deserialize(data[len(RUNTIME_CACHE_MAGIC) :]):
                self.note = f"runtime cache {path}: reused"
            else:
                self.note = f"runtime cache {path}: made for another GPU, driver or TensorRT-RTX; replaced on close"

    def attach(self, runtime_config: Any) -> None:
        """Give the cache to a runtime config (each execution context's); if refused, the context runs without."""
        if not runtime_config.set_runtime_cache(self.cache):
            self.writable, self.note = False, f"runtime cache {self.path}: TensorRT-RTX refused it"

    def save(self) -> None:
        """Write the cache back (atomically); a folder that cannot take it costs the cache, not the results."""
        if not self.writable:
            return
        try:
            write_bytes_atomic(self.path, RUNTIME_CACHE_MAGIC + bytes(memoryview(self.cache.serialize())))
        except OSError as e:
            self.note = f"runtime cache {self.path}: not saved ({e.strerror or e})"


__all__ = [
    "RuntimeCacheFile",
    "UnsupportedGpuError",
    "check_flavour_runs_here",
    "deserialize",
    "init_plugins",
    "make_logger",
    "rtx_capabilities",
    "runtime_cache_path",
]
