"""The INT8 stage's public entry: images in, a calibrated Q/DQ ONNX file out (``build-engine --int8``).

``quantize_int8(onnx, out, cfg)`` samples the calibration images with the model's own preprocessing,
takes the activation ranges from the cache or measures them, inserts Q/DQ in TensorRT's form, and,
with ``max_map_drop``, measures FP32 vs INT8 AP with ONNX Runtime and keeps the most sensitive
convolutions in FP32 until the drop is within budget (``calib.sensitivity``).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

from retina_deploy.calib.int8 import CalibConfig, activation_ranges, check_form, quantize_with_ranges
from retina_deploy.calib.sampler import sample_calibration_images
from retina_deploy.calib.sensitivity import ExcludedLayer, fit_map_drop
from retina_deploy.core.errors import ConfigError, ModelFileError
from retina_deploy.runtime.contract.onnx_files import read_onnx_metadata

PROBE_IMAGES = 4  # images run through both graphs to rank layers


@dataclass(frozen=True)
class Int8Config:
    """Options of ``quantize_int8``.

    calib_images: a folder of JPEG/PNG images (searched recursively), or a COCO set's images folder
        with ``calib_annotations``.
    calib: method, percentile, number of images (default 512), seed, batch.
    cache: the calibration cache file; None: ``<out>.calib.json`` beside the INT8 file.
    exclude: convolution node names to keep in FP32.
    max_map_drop: AP budget in points (1.0 = 0.01 COCO AP), measured on ``val_images`` /
        ``val_annotations``; None: no accuracy check.
    form: "tensorrt" (default: symmetric s8, Q/DQ on convolution inputs, what TensorRT builds) or "cpu"
        (u8 activations, outputs quantized too: ONNX Runtime fuses each group into QLinearConv, its fast
        CPU kernel; TensorRT cannot build it).
    """

    calib_images: Path
    calib_annotations: Path | None = None
    calib: CalibConfig = field(default_factory=CalibConfig)
    cache: Path | None = None
    exclude: tuple[str, ...] = ()
    max_map_drop: float | None = None
    val_images: Path | None = None
    val_annotations: Path | None = None
    form: str = "tensorrt"

    def __post_init__(self) -> None:
        check_form(self.form)
        if self.form != "tensorrt" and self.max_map_drop is not None:
            raise ConfigError("--max-map-drop searches the TensorRT form only; drop it or --int8-form cpu")
        for name in ("calib_images", "calib_annotations", "cache", "val_images", "val_annotations"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.max_map_drop is not None:
            if float(self.max_map_drop) < 0:
                raise ConfigError(f"max-map-drop must be >= 0 AP points, got {self.max_map_drop}")
            if self.val_images is None or self.val_annotations is None:
                raise ConfigError("--max-map-drop needs --val-images and --val-annotations to measure AP")

    def cache_path(self, out_path: str | os.PathLike) -> Path:
        out = Path(out_path)
        return self.cache or out.with_name(out.name + ".calib.json")


@dataclass(frozen=True)
class Int8Result:
    """What ``quantize_int8`` did.

    path: the INT8 ONNX file. cache_path: the calibration cache. calibrated: False when the ranges
    came from the cache. images: calibration images used. excluded: convolutions kept in FP32 by the
    accuracy search (with reasons). ap_fp32 / ap_int8: COCO AP in [0, 1] when measured.
    trials: (convolutions kept FP32, AP) of each accuracy trial.
    """

    path: Path
    cache_path: Path
    calibrated: bool
    images: int
    sampler_sha256: str
    excluded: tuple[ExcludedLayer, ...] = ()
    ap_fp32: float | None = None
    ap_int8: float | None = None
    trials: tuple[tuple[int, float], ...] = ()


def quantize_int8(onnx_path: str | os.PathLike, out_path: str | os.PathLike, cfg: Int8Config) -> Int8Result:
    """Calibrate and quantize our FP32 ONNX file to ``out_path`` (atomic; metadata kept, precision "int8").

    Raises ModelFileError (foreign or non-FP32 file), DatasetError (missing/empty/unreadable calibration
    images), ImageError (a corrupt image), ConfigError (bad options, a foreign cache file),
    AccuracyTargetError (``max_map_drop`` unreachable).
    """
    meta = read_onnx_metadata(onnx_path)
    if meta.precision != "fp32":
        raise ModelFileError(f"{onnx_path}: precision is already {meta.precision}; quantize the FP32 export")
    calib_set = sample_calibration_images(
        cfg.calib_images, meta.preprocess, annotations=cfg.calib_annotations, num=cfg.calib.num, seed=cfg.calib.seed
    )
    got = activation_ranges(onnx_path, calib_set, cfg.calib, cfg.cache_path(out_path), cfg.form)
    common = dict(
        path=Path(out_path),
        cache_path=got.cache_path,
        calibrated=not got.from_cache,
        images=len(calib_set),
        sampler_sha256=calib_set.sha256,
    )
    if cfg.max_map_drop is None:
        quantize_with_ranges(onnx_path, out_path, got.ranges, exclude=cfg.exclude, form=cfg.form)
        return Int8Result(**common)
    from retina_deploy.calib.accuracy import coco_metrics

    def evaluate(path: Path) -> float:
        return float(coco_metrics(path, cfg.val_images, cfg.val_annotations)["AP"] or 0.0)

    probes = list(itertools.islice(calib_set.batches(PROBE_IMAGES), 1))
    search = fit_map_drop(
        onnx_path,
        out_path,
        got.ranges,
        max_drop_points=float(cfg.max_map_drop),
        evaluate=evaluate,
        probe_images=probes,
        exclude=cfg.exclude,
    )
    return Int8Result(
        **common, excluded=search.excluded, ap_fp32=search.ap_fp32, ap_int8=search.ap_int8, trials=search.trials
    )


__all__ = ["Int8Config", "Int8Result", "quantize_int8"]
