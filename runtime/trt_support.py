"""TensorRT facts the backend and the builder check before relying on them (torch-free, GPU-free).

- the plugin registry: bundled plugins (``EfficientNMS_TRT``) exist only once it is initialised;
- TensorRT-RTX runs on the compute capabilities its ``ComputeCapability`` enum lists, not on every GPU.
"""

from __future__ import annotations

import re
from types import ModuleType
from typing import Any

from retina_deploy.runtime.cuda_mem import NoCudaDeviceError


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


__all__ = ["UnsupportedGpuError", "check_flavour_runs_here", "init_plugins", "rtx_capabilities"]
