"""What an engine build is told and what it passes between its steps: ``EngineBuildConfig`` (the options of
``build_engine``), ``Baked`` (the ONNX file the network is parsed from) and ``ParsedNetwork``.

The builder, its steps and the legacy-precision path all read these; this module imports none of them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retina_deploy.calib.fp16 import Fp16Summary
from retina_deploy.calib.quantize import Int8Config, Int8Result
from retina_deploy.core.artifacts import PRECISIONS
from retina_deploy.core.errors import ConfigError
from retina_deploy.export.engine.flavours import FLAVOUR_CHOICES
from retina_deploy.runtime.contract.onnx_metadata import OnnxMetadata, check_batch_range

if TYPE_CHECKING:  # TensorRT objects are typed by name only: the module may be absent
    import tensorrt as trt

# --calib-method -> TensorRT's calibrator class (TensorRT < 11 only)
LEGACY_CALIBRATORS = {"entropy": "IInt8EntropyCalibrator2", "minmax": "IInt8MinMaxCalibrator"}


def legacy_calibrator_name(method: str) -> str:
    """TensorRT's calibrator class for a calibration method; ConfigError for one it does not have."""
    if method not in LEGACY_CALIBRATORS:
        raise ConfigError(
            f"--legacy-precision calibrates with TensorRT's own calibrators: --calib-method "
            f"{' or '.join(LEGACY_CALIBRATORS)}, not {method!r}"
        )
    return LEGACY_CALIBRATORS[method]


@dataclass(frozen=True)
class EngineBuildConfig:
    """Options of ``build_engine``.

    precision: None (build the ONNX file's own precision), "fp32", "fp16" or "int8" (baked into a new
        ONNX file first, or set with builder flags under ``legacy_precision``).
    batch: (MIN, OPT, MAX) of the optimization profile, inside the ONNX file's range (None: the file's).
    workspace_gib: builder workspace limit in GiB (None: TensorRT's default, the device memory).
    timing_cache: a timing cache file, read if present and written back (tensorrt only).
    flavour: "auto", "tensorrt" or "tensorrt-rtx".
    dla_core: run on this DLA core (Jetson; FP16 / INT8 only, a fixed batch: MIN = OPT = MAX), with GPU
        fallback when ``gpu_fallback``.
    legacy_precision: TensorRT < 11: builder flags (+ IInt8EntropyCalibrator2) on the FP32 file.
    int8: calibration options, required to make an INT8 file (or a legacy INT8 engine).
    precision_onnx: where the baked ONNX goes (None: ``<onnx stem>.<precision>.onnx`` beside the engine).
    optimization_level: builder optimization level 0..5 (None: TensorRT's default, 3).
    """

    precision: str | None = None
    batch: tuple[int, int, int] | None = None
    workspace_gib: float | None = None
    timing_cache: Path | None = None
    flavour: str = "auto"
    dla_core: int | None = None
    gpu_fallback: bool = True
    legacy_precision: bool = False
    int8: Int8Config | None = None
    precision_onnx: Path | None = None
    optimization_level: int | None = None

    def __post_init__(self) -> None:
        if self.precision is not None and self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.batch is not None:
            object.__setattr__(self, "batch", check_batch_range(tuple(self.batch)))
        if self.flavour not in FLAVOUR_CHOICES:
            raise ConfigError(f"flavor must be one of {', '.join(FLAVOUR_CHOICES)}, got {self.flavour!r}")
        if self.workspace_gib is not None and not float(self.workspace_gib) > 0:
            raise ConfigError(f"workspace must be > 0 GiB, got {self.workspace_gib}")
        if self.dla_core is not None and int(self.dla_core) < 0:
            raise ConfigError(f"dla-core must be >= 0, got {self.dla_core}")
        if self.optimization_level is not None and not 0 <= int(self.optimization_level) <= 5:
            raise ConfigError(f"optimization level must be in 0..5, got {self.optimization_level}")
        for name in ("timing_cache", "precision_onnx"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        if self.legacy_precision and self.int8 is not None:
            legacy_calibrator_name(self.int8.calib.method)  # a method TensorRT's calibrators cannot honour fails here

    def to_dict(self) -> dict[str, Any]:
        """JSON-able values (recorded in the manifest's ``extra.build_config``)."""
        return _jsonable(asdict(self))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value


@dataclass(frozen=True)
class Baked:
    """The ONNX file the network is parsed from, and how it got its precision.

    path: that file. precision: the engine's precision ("fp32" for the file itself under legacy flags
    is still reported as the requested one). source_sha256: the FP32 export's sha256. meta: its metadata.
    qdq_convs / fp32_convs: convolutions with / without Q/DQ inputs in an INT8 file.
    """

    path: Path
    precision: str
    source_sha256: str
    meta: OnnxMetadata
    fp16: Fp16Summary | None = None
    int8: Int8Result | None = None
    qdq_convs: int = 0
    fp32_convs: int = 0
    legacy_cache: Path | None = None  # TensorRT's calibration cache (legacy INT8), beside the engine


@dataclass
class ParsedNetwork:
    """A parsed network and what must outlive it until the build ends (the parser owns the weights)."""

    builder: trt.Builder
    network: trt.INetworkDefinition
    parser: trt.OnnxParser
    logger: trt.ILogger
    keepalive: list[object] = field(default_factory=list)  # objects the builder uses without owning
    is_rtx: bool = False  # TensorRT-RTX: its own hints (no NMS layer, no plugins)
