"""One small interface over the two TensorRT Python packages the engine builder drives.

- ``tensorrt`` (datacenter GPUs, Jetson): 10.x and 11.x. 11.x builds strongly typed networks only (no
  FP16/INT8 builder flags, no calibrator); 10.x has both paths. Builds on, and for, the current GPU.
- ``tensorrt_rtx`` (RTX GPUs): strongly typed, builds without a GPU for a set of compute capabilities
  (default: every one it supports), compiles kernels at runtime; its timing-cache calls are no-ops.

Everything version-dependent is asked of the module (``hasattr``), not inferred from version numbers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import ModuleType

from retina_deploy.core.errors import ConfigError, RetinaDeployError
from retina_deploy.runtime.backends.tensorrt import FLAVOUR_MODULES, TensorRTUnavailableError, import_tensorrt

FLAVOUR_CHOICES = ("auto", *FLAVOUR_MODULES)


class EngineBuildError(RetinaDeployError):
    """TensorRT could not parse or build the network, or the engine's precision is not the one asked for."""


@dataclass(frozen=True)
class Flavour:
    """An imported TensorRT flavour. name: "tensorrt" or "tensorrt-rtx"; trt: its module."""

    name: str
    trt: ModuleType

    @property
    def version(self) -> str:
        return str(self.trt.__version__)

    @property
    def major(self) -> int:
        found = re.match(r"\d+", self.version)
        return int(found.group()) if found else 0

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt-rtx"

    @property
    def has_precision_flags(self) -> bool:
        """Weak typing (BuilderFlag.FP16 / INT8): TensorRT <= 10.x only."""
        flags = self.trt.BuilderFlag
        return hasattr(flags, "FP16") and hasattr(flags, "INT8")

    @property
    def has_calibrator(self) -> bool:
        """The implicit-quantization calibrator interface (IInt8EntropyCalibrator2): TensorRT <= 10.x only."""
        return hasattr(self.trt, "IInt8EntropyCalibrator2")

    @property
    def has_timing_cache(self) -> bool:
        """TensorRT-RTX keeps the API but its timing-cache operations are no-ops (deprecated in 1.2)."""
        return not self.is_rtx

    def network_flags(self, strongly_typed: bool) -> int:
        """``create_network`` flags: STRONGLY_TYPED where the module has it (11.x: always strongly typed)."""
        flag = getattr(self.trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        return (1 << int(flag)) if strongly_typed and flag is not None else 0

    def build_target(self) -> tuple[str | None, tuple[str, ...]]:
        """(GPU name, compute capabilities) the engine is built for, for the manifest.

        tensorrt: the current GPU (device 0), e.g. ("NVIDIA H100 80GB HBM3", ("9.0",)); (None, ()) if
        cuda-python cannot tell. tensorrt-rtx: (None, ()): not tied to one GPU.
        """
        if self.is_rtx:
            return None, ()
        from retina_deploy.runtime.backends.cuda_mem import CudaError, NoCudaDeviceError, import_cudart, select_device

        try:
            name, capability = select_device(import_cudart(), 0)
        except (CudaError, NoCudaDeviceError):
            return None, ()
        return name, (capability,)


def resolve_flavour(name: str = "auto") -> Flavour:
    """Import the flavour ``name`` ("auto": tensorrt if installed, else tensorrt-rtx).

    Raises ConfigError for an unknown name, TensorRTUnavailableError when it is not installed.
    """
    if name not in FLAVOUR_CHOICES:
        raise ConfigError(f"flavor must be one of {', '.join(FLAVOUR_CHOICES)}, got {name!r}")
    if name != "auto":
        return Flavour(name, import_tensorrt(name))
    for candidate in FLAVOUR_MODULES:
        try:
            return Flavour(candidate, import_tensorrt(candidate))
        except TensorRTUnavailableError:
            continue
    raise TensorRTUnavailableError(
        "no TensorRT is installed: pip install 'retina-deploy[trt]' (tensorrt) or 'retina-deploy[rtx]' (tensorrt-rtx)"
    )


__all__ = ["FLAVOUR_CHOICES", "EngineBuildError", "Flavour", "resolve_flavour"]
