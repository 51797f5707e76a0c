"""The legacy precision path for TensorRT < 11 (``build-engine --legacy-precision``): builder flags and
TensorRT's INT8 calibrator on the FP32 ONNX file, with TensorRT's own calibration cache.

The calibration method is honoured: ``entropy`` runs ``IInt8EntropyCalibrator2``, ``minmax``
``IInt8MinMaxCalibrator``; ``percentile`` has no TensorRT calibrator and is refused (the CLI picks
``entropy`` when ``--legacy-precision`` is given without ``--calib-method``).

TensorRT 10.x deprecates both (10.1 / 10.12) and 11.x removes them; the default path bakes the
precision into the ONNX file instead. Implicit INT8 calibration runs the network on the GPU, so this
path needs one (as every regular TensorRT build does).

The calibration cache is TensorRT's file; a sidecar ``<cache>.key.json`` records the source ONNX and
calibration set hashes, and a cache whose key differs is ignored (recalibrated and overwritten).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from retina_deploy.calib.sampler import CalibSet
from retina_deploy.core.errors import ConfigError
from retina_deploy.core.fileio import write_bytes_atomic, write_json_atomic
from retina_deploy.export.engine.config import (
    LEGACY_CALIBRATORS,
    Baked,
    EngineBuildConfig,
    ParsedNetwork,
    legacy_calibrator_name,
)
from retina_deploy.export.engine.flavours import Flavour

if TYPE_CHECKING:  # TensorRT objects are typed by name only: the module may be absent
    import tensorrt as trt


def _key_path(cache: Path) -> Path:
    return cache.with_name(cache.name + ".key.json")


def make_legacy_calibrator(
    flavour: Flavour,
    calib: CalibSet,
    *,
    method: str,
    batch: int,
    cache_path: str | os.PathLike,
    key: dict[str, Any],
) -> trt.IInt8Calibrator:
    """TensorRT's calibrator for ``method`` feeding ``calib`` in batches of ``batch`` (a partial last batch is
    dropped). The device buffer is freed by ``calibrator.free()`` (the builder calls nothing of the kind).
    """
    trt = flavour.trt
    if not flavour.has_calibrator:
        raise ConfigError(f"{flavour.name} {flavour.version} has no INT8 calibrator; drop --legacy-precision")
    base = getattr(trt, legacy_calibrator_name(method))
    from retina_deploy.runtime.backends.cuda_mem import DeviceBuffer, check, import_cudart

    cudart = import_cudart()
    cache = Path(cache_path)
    h, w = calib.preprocess.size

    class Calibrator(base):
        def __init__(self) -> None:
            base.__init__(self)
            self._batches = (b for b in calib.batches(batch) if b.shape[0] == batch)
            self._device = DeviceBuffer(cudart, batch * 3 * h * w * 4)

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            host = next(self._batches, None)
            if host is None:
                return None
            host = np.ascontiguousarray(host, dtype=np.float32)
            kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
            check(cudart, cudart.cudaMemcpy(self._device.ptr, host.ctypes.data, host.nbytes, kind), "cudaMemcpy")
            return [int(self._device.ptr)]

        def read_calibration_cache(self) -> bytes | None:
            if cache.is_file() and _key_path(cache).is_file():
                if json.loads(_key_path(cache).read_text(encoding="utf-8")) == key:
                    return cache.read_bytes()
            return None

        def write_calibration_cache(self, data: memoryview) -> None:
            write_bytes_atomic(cache, bytes(memoryview(data)))
            write_json_atomic(_key_path(cache), key)

        def free(self) -> None:
            self._device.free()

    return Calibrator()


def apply_legacy_precision(
    flavour: Flavour,
    config: trt.IBuilderConfig,
    precision: str,
    *,
    calib_profile: trt.IOptimizationProfile | None = None,
    calibrator: trt.IInt8Calibrator | None = None,
) -> None:
    """Set the weak-typing flags on a builder config: FP16, or INT8 (+ FP16 fallback) with ``calibrator``.

    calib_profile: for INT8, an optimization profile fixed at the calibration batch shape: explicit-batch
    networks calibrate at the calibration profile's OPT shape, whatever get_batch_size says.
    """
    trt = flavour.trt
    if not flavour.has_precision_flags:
        raise ConfigError(
            f"--legacy-precision needs TensorRT < 11 (builder flags); {flavour.name} {flavour.version} builds"
            " strongly typed networks only: drop --legacy-precision"
        )
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        if calibrator is None:
            raise ConfigError("legacy INT8 needs calibration images (--calib-images)")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
        if calib_profile is not None and hasattr(config, "set_calibration_profile"):
            config.set_calibration_profile(calib_profile)


def setup_legacy(
    flavour: Flavour,
    parsed: ParsedNetwork,
    config: trt.IBuilderConfig,
    cfg: EngineBuildConfig,
    baked: Baked,
    input_name: str,
    chw: tuple[int, ...],
) -> list[trt.IInt8Calibrator]:
    """Legacy flags on ``config`` (and, for INT8, the calibrator with its own profile); returns what must
    stay alive until the build ends (the calibrator, whose ``free`` releases its device buffer)."""
    if baked.precision != "int8":
        apply_legacy_precision(flavour, config, baked.precision)
        return []
    if cfg.int8 is None:
        raise ConfigError("legacy INT8 needs calibration images (--calib-images)")
    from retina_deploy.calib.sampler import sample_calibration_images

    opts = cfg.int8
    calibrator_name = legacy_calibrator_name(opts.calib.method)
    calib = sample_calibration_images(
        opts.calib_images,
        baked.meta.preprocess,
        annotations=opts.calib_annotations,
        num=opts.calib.num,
        seed=opts.calib.seed,
    )
    if len(calib) < opts.calib.batch:  # TensorRT would fail with "no scaling factors detected"
        raise ConfigError(
            f"--legacy-precision calibrates in full batches of {opts.calib.batch} images: found {len(calib)} in"
            f" {opts.calib_images}; give it at least {opts.calib.batch}"
        )
    key = {
        "onnx_sha256": baked.source_sha256,
        "sampler_sha256": calib.sha256,
        "calibrator": calibrator_name,
        "tensorrt": flavour.version,
    }
    cache = opts.cache or baked.legacy_cache
    calibrator = make_legacy_calibrator(
        flavour, calib, method=opts.calib.method, batch=opts.calib.batch, cache_path=cache, key=key
    )
    shape = (opts.calib.batch, *chw)
    calib_profile = parsed.builder.create_optimization_profile()
    calib_profile.set_shape(input_name, shape, shape, shape)
    apply_legacy_precision(flavour, config, "int8", calib_profile=calib_profile, calibrator=calibrator)
    return [calibrator]


__all__ = [
    "LEGACY_CALIBRATORS",
    "apply_legacy_precision",
    "legacy_calibrator_name",
    "make_legacy_calibrator",
    "setup_legacy",
]
