"""ONNX -> TensorRT engine (``retina-deploy build-engine MODEL.onnx OUT.engine``).

``build_engine(onnx, out, EngineBuildConfig(...))``:

1. checks the inputs first (our ONNX metadata, the batch range inside the file's, a writable output),
2. bakes the precision into the ONNX file (``--fp16``: ``calib.fp16``; ``--int8``: ``calib.quantize``),
   written as ``<model>.fp16.onnx`` / ``<model>.int8.onnx`` beside the engine with our metadata,
3. parses it into a strongly typed network and checks that the precision is in the network,
4. builds with one optimization profile for the batch range (workspace limit, timing cache, DLA),
5. inspects the engine where it can be deserialized (a GPU), and fails if the precision did not take,
6. writes the engine atomically and ``<engine>.json`` (``runtime.contract.manifest``) beside it.

A failure at any step leaves no engine (and no manifest) behind. ``--legacy-precision`` (TensorRT < 11)
builds the FP32 file with builder flags and the INT8 entropy calibrator instead (``legacy_precision``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retina_deploy import __version__
from retina_deploy.calib.fp16 import Fp16Summary
from retina_deploy.calib.quantize import Int8Result
from retina_deploy.core.artifacts import PRECISIONS
from retina_deploy.core.errors import ModelFileError
from retina_deploy.core.fileio import sha256_file, write_bytes_atomic
from retina_deploy.export.engine.config import Baked, EngineBuildConfig
from retina_deploy.export.engine.flavours import Flavour, resolve_flavour
from retina_deploy.export.engine.steps import (
    bake_precision,
    build_serialized,
    check_engine,
    check_network,
    check_output_path,
    configure,
    parse_network,
    resolve_batch,
    timing_cache_write,
)
from retina_deploy.runtime.contract.manifest import EngineManifest, fields_from_onnx_metadata, write_manifest
from retina_deploy.runtime.contract.onnx_metadata import OnnxMetadata


@dataclass(frozen=True)
class EngineBuildResult:
    """What ``build_engine`` made.

    engine_path / manifest: the engine and its manifest. onnx_path: the file the network was parsed from
    (the baked one for --fp16 / --int8). precision: the engine's. precision_check: the network- and
    engine-level checks (``extra.precision_check`` in the manifest). fp16 / int8: the baking stage's
    summary, when it ran. seconds: wall time of the whole call. notes: what was skipped and why.
    """

    engine_path: Path
    manifest: EngineManifest
    onnx_path: Path
    precision: str
    precision_check: dict[str, Any]
    fp16: Fp16Summary | None = None
    int8: Int8Result | None = None
    seconds: float = 0.0
    notes: tuple[str, ...] = field(default_factory=tuple)


def build_engine(
    onnx_path: str | os.PathLike, out_path: str | os.PathLike, cfg: EngineBuildConfig | None = None
) -> EngineBuildResult:
    """Build ``out_path`` (an .engine / .plan file) and its manifest from our ONNX file; see the module docstring.

    Raises ModelFileError (foreign or unreadable ONNX, unwritable output), ConfigError (bad options, a
    batch range outside the file's), DatasetError / ImageError (calibration images), TensorRTUnavailableError,
    EngineBuildError (parse or build failure, precision that did not take), AccuracyTargetError.
    """
    start = time.perf_counter()
    cfg = cfg or EngineBuildConfig()
    out_path = check_output_path(out_path)
    meta = _load_metadata(onnx_path)
    batch = resolve_batch(cfg.batch, meta.batch, onnx_path)
    flavour = resolve_flavour(cfg.flavour)
    baked = bake_precision(Path(onnx_path), meta, cfg, out_path, flavour)
    parsed = parse_network(flavour, baked.path, strongly_typed=not cfg.legacy_precision)
    network_check = check_network(parsed, baked, legacy=cfg.legacy_precision)
    config, notes = configure(flavour, parsed, cfg, batch, baked)
    data = build_serialized(parsed, config)
    engine_check = check_engine(flavour, data, parsed, baked, legacy=cfg.legacy_precision)
    precision_check = {"network": network_check, "engine": engine_check}
    if cfg.timing_cache is not None and flavour.has_timing_cache:
        timing_cache_write(config, cfg.timing_cache)
    try:
        write_bytes_atomic(out_path, data)
        manifest = _write_manifest(out_path, flavour, meta, batch, baked, cfg, precision_check)
    except BaseException as e:
        out_path.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise ModelFileError(f"{out_path}: cannot write the engine ({e.strerror or e})") from e
        raise
    return EngineBuildResult(
        engine_path=out_path,
        manifest=manifest,
        onnx_path=baked.path,
        precision=baked.precision,
        precision_check=precision_check,
        fp16=baked.fp16,
        int8=baked.int8,
        seconds=time.perf_counter() - start,
        notes=tuple(notes),
    )


def _load_metadata(onnx_path: str | os.PathLike) -> OnnxMetadata:
    from retina_deploy.runtime.contract.onnx_files import read_onnx_metadata

    meta = read_onnx_metadata(onnx_path)
    return meta


def _write_manifest(
    out_path: Path,
    flavour: Flavour,
    meta: OnnxMetadata,
    batch: tuple[int, int, int],
    baked: Baked,
    cfg: EngineBuildConfig,
    precision_check: dict[str, Any],
) -> EngineManifest:
    """``<engine>.json``: the engine's and both ONNX files' sha256, flavour, GPU, precision, pre/post-processing."""
    gpu_name, capabilities = flavour.build_target()
    fields = fields_from_onnx_metadata(meta.to_dict())
    fields.update(batch_range=batch, precision=baked.precision)
    extra = {
        "fp32_onnx_sha256": baked.source_sha256,
        "built_from": baked.path.name,
        "precision_check": precision_check,
        "build_config": cfg.to_dict(),
        "toolkit_version": __version__,
    }
    if baked.int8 is not None:
        extra["calibration"] = _int8_record(baked.int8)
    return write_manifest(
        out_path,
        flavour=flavour.name,
        trt_version=flavour.version,
        onnx_sha256=sha256_file(baked.path),
        gpu_name=gpu_name,
        compute_capabilities=capabilities,
        extra=extra,
        **fields,
    )


def _int8_record(result: Int8Result) -> dict[str, Any]:
    return {
        "images": result.images,
        "sampler_sha256": result.sampler_sha256,
        "cache": str(result.cache_path),
        "calibrated": result.calibrated,
        "excluded": [{"node": e.node, "reason": e.reason} for e in result.excluded],
        "ap_fp32": result.ap_fp32,
        "ap_int8": result.ap_int8,
    }


__all__ = ["PRECISIONS", "EngineBuildConfig", "EngineBuildResult", "build_engine"]
