"""The steps of ``build_engine``: input checks, precision baking, parsing, builder config, build, checks.

Each step takes explicit arguments and raises a typed error with one clear line; ``builder``
only sequences them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from retina_deploy.calib.fp16 import write_fp16_onnx
from retina_deploy.calib.quantize import quantize_int8
from retina_deploy.core.artifacts import ENGINE_SUFFIXES, baked_path
from retina_deploy.core.errors import ConfigError, ModelFileError
from retina_deploy.core.fileio import sha256_file, write_bytes_atomic
from retina_deploy.export.engine.config import Baked, EngineBuildConfig, ParsedNetwork
from retina_deploy.export.engine.flavours import EngineBuildError, Flavour
from retina_deploy.export.engine.precision import (
    check_engine_precision,
    check_network_precision,
    inspect_engine,
    network_precision,
)
from retina_deploy.runtime.backends.tensorrt import make_logger
from retina_deploy.runtime.backends.trt_support import init_plugins
from retina_deploy.runtime.contract.onnx_metadata import OnnxMetadata

if TYPE_CHECKING:  # TensorRT objects are typed by name only: the module may be absent
    import tensorrt as trt


def check_output_path(out_path: str | os.PathLike) -> Path:
    """The engine path, once its suffix is right and its folder exists and takes a file (ModelFileError)."""
    out = Path(out_path)
    if out.suffix not in ENGINE_SUFFIXES:
        raise ConfigError(f"{out}: the engine file name must end in {' or '.join(ENGINE_SUFFIXES)}")
    if out.is_dir():
        raise ModelFileError(f"{out}: is a folder, not an engine file path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ModelFileError(f"{out}: cannot write in {out.parent} ({e.strerror or e})") from e
    return out


def resolve_batch(
    requested: tuple[int, int, int] | None, file_batch: tuple[int, int, int], onnx_path: str | os.PathLike
) -> tuple[int, int, int]:
    """The profile's (MIN, OPT, MAX): ``requested`` if inside the file's range, else the file's own."""
    if requested is None:
        return file_batch
    lo, opt, hi = requested
    if lo < file_batch[0] or hi > file_batch[2]:
        raise ConfigError(
            f"batch range {lo}..{hi} is outside the ONNX file's {file_batch[0]}..{file_batch[2]} ({onnx_path}); "
            f"export it again with --batch {lo} {opt} {hi}"
        )
    return lo, opt, hi


def check_flavour_options(
    flavour: Flavour, cfg: EngineBuildConfig, precision: str, batch: tuple[int, int, int] | None = None
) -> None:
    """Options the installed flavour cannot honour fail before any baking (ConfigError).

    batch: the profile's (MIN, OPT, MAX); DLA has no dynamic dimensions, so it must be one size.
    """
    if cfg.legacy_precision and not flavour.has_precision_flags:
        raise ConfigError(
            f"--legacy-precision needs TensorRT < 11; {flavour.name} {flavour.version} builds strongly typed"
            " networks only (drop --legacy-precision)"
        )
    if cfg.dla_core is None:
        return
    if flavour.has_precision_flags and not cfg.legacy_precision:
        raise ConfigError(
            f"DLA with a strongly typed network is not documented for {flavour.name} {flavour.version} (TensorRT"
            " 10.x documents DLA with builder flags): add --legacy-precision to --dla-core"
        )
    if precision == "fp32":
        raise ConfigError("DLA runs FP16 or INT8 only: add --fp16 or --int8 to --dla-core")
    cores = flavour.trt.Builder(make_logger(flavour.trt)).num_DLA_cores
    if cfg.dla_core >= cores:
        raise ConfigError(
            f"DLA core {cfg.dla_core} does not exist: {flavour.name} sees {cores} DLA cores (DLA is on Jetson AGX/NX)"
        )
    if batch is not None and len(set(batch)) != 1:
        raise ConfigError(
            f"DLA needs a fixed batch (it has no dynamic dimensions; TensorRT would run every layer on the GPU):"
            f" add --batch N N N to --dla-core, got {'/'.join(map(str, batch))}"
        )


def bake_precision(src: Path, meta: OnnxMetadata, cfg: EngineBuildConfig, out_path: Path, flavour: Flavour) -> Baked:
    """Write the FP16 / INT8 ONNX file the engine is built from (or take ``src`` as it is)."""
    requested = cfg.precision or meta.precision
    check_flavour_options(flavour, cfg, requested, cfg.batch or meta.batch)
    check_nms_box_limit(flavour, meta, src)
    if requested == "int8" and meta.precision == "fp32" and cfg.int8 is None:
        raise ConfigError("--int8 needs calibration images (--calib-images DIR)")
    source_sha = sha256_file(src)
    if meta.precision != "fp32":
        if requested != meta.precision or cfg.legacy_precision:
            raise ConfigError(
                f"{src} is already {meta.precision}; build it as it is, or start from the FP32 export for {requested}"
                + (" with --legacy-precision" if cfg.legacy_precision else "")
            )
        return _with_conv_counts(Baked(src, meta.precision, source_sha, meta))
    if requested == "fp32" or cfg.legacy_precision:
        return Baked(src, requested, source_sha, meta, legacy_cache=out_path.with_name(out_path.name + ".calib.cache"))
    target = cfg.precision_onnx or baked_path(src, requested, out_path.parent)
    if target.resolve() == src.resolve():
        raise ConfigError(f"{target}: the {requested} ONNX file would overwrite its source")
    if requested == "fp16":
        path, summary = write_fp16_onnx(src, target)
        return Baked(path, "fp16", source_sha, meta, fp16=summary)
    result = quantize_int8(src, target, cfg.int8)
    return _with_conv_counts(Baked(result.path, "int8", source_sha, meta, int8=result))


def _with_conv_counts(baked: Baked) -> Baked:
    """Count the convolutions that read a DequantizeLinear output (Q/DQ) and those that do not (INT8 only:
    in an FP16 file no convolution is meant to stay FP32)."""
    if baked.precision != "int8":
        return baked
    graph = onnx.load(str(baked.path), load_external_data=False).graph
    dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    qdq = sum(1 for n in convs if n.input[0] in dq_outputs)
    return Baked(**{**baked.__dict__, "qdq_convs": qdq, "fp32_convs": len(convs) - qdq})


# TensorRT's NMS layer considers at most this many boxes per image (INMSLayer::setTopKBoxLimit; 2000 on
# SM 5.3 / 6.2 devices, which TensorRT 10 no longer supports) and drops the rest without a word.
NMS_TOPK_BOX_LIMIT = 5000


def nms_candidates(meta: OnnxMetadata) -> int:
    """Boxes entering the NMS of a ``--nms onnx`` file: sum over levels of min(topk_per_level, HWA_l * C)."""
    classes = len(meta.class_names)
    return sum(min(int(meta.nms.topk_per_level), int(a) * classes) for a in meta.anchors_per_level)


def check_nms_box_limit(flavour: Flavour, meta: OnnxMetadata, src: Path) -> None:
    """ConfigError when TensorRT's NMS layer would silently cut candidates that ONNX Runtime keeps."""
    if flavour.is_rtx or meta.nms.mode != "onnx":
        return
    n = nms_candidates(meta)
    if n > NMS_TOPK_BOX_LIMIT:
        raise ConfigError(
            f"{src}: {n} candidates enter NonMaxSuppression (topk-per-level {meta.nms.topk_per_level} over"
            f" {len(meta.anchors_per_level)} levels) but TensorRT's NMS layer considers at most"
            f" {NMS_TOPK_BOX_LIMIT} per image and drops the rest; export again with a smaller --topk-per-level"
            " or with --nms none (host NMS)"
        )


def _plugin_hint(flavour: Flavour, errors: list[str]) -> str:
    if not any("EfficientNMS_TRT" in e for e in errors):
        return ""
    if flavour.is_rtx:
        return " (TensorRT-RTX has no EfficientNMS_TRT plugin: export with --nms none)"
    return (
        " (EfficientNMS_TRT comes from TensorRT's plugin library libnvinfer_plugin, which the tensorrt wheel"
        " ships; with a lean or dispatch runtime export with --nms onnx)"
    )


def parse_network(flavour: Flavour, path: Path, *, strongly_typed: bool) -> ParsedNetwork:
    """Parse ``path`` into a (strongly typed) network; EngineBuildError naming the parser's errors."""
    trt = flavour.trt
    logger = make_logger(trt)
    init_plugins(trt, logger)  # the parser finds EfficientNMS_TRT only in an initialised plugin registry
    builder = trt.Builder(logger)
    network = builder.create_network(flavour.network_flags(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(path.read_bytes()):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)] or logger.errors
        raise EngineBuildError(
            f"{path}: {flavour.name} {flavour.version} cannot parse the ONNX file: {'; '.join(errors[:3])}"
            + _plugin_hint(flavour, errors)
        )
    return ParsedNetwork(builder, network, parser, logger, is_rtx=flavour.is_rtx)


def check_network(parsed: ParsedNetwork, baked: Baked, *, legacy: bool) -> dict[str, Any]:
    """The network-level precision check (``precision``); its record for the manifest."""
    counts = network_precision(parsed.network)
    if legacy:
        return {"counts": counts, "result": "not applicable: weak typing, TensorRT picks precisions while building"}
    check_network_precision(counts, baked.precision, expected_int8=baked.qdq_convs)
    return {"counts": counts, "result": "ok"}


def configure(
    flavour: Flavour, parsed: ParsedNetwork, cfg: EngineBuildConfig, batch: tuple[int, int, int], baked: Baked
) -> tuple[trt.IBuilderConfig, list[str]]:
    """The builder config: profile over ``batch``, workspace, timing cache, DLA, legacy flags. (config, notes)."""
    trt, notes = flavour.trt, []
    config = parsed.builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # per-layer types for the engine check
    if cfg.workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(float(cfg.workspace_gib) * 2**30))
    if cfg.optimization_level is not None:
        config.builder_optimization_level = int(cfg.optimization_level)
    image = parsed.network.get_input(0)
    chw = tuple(int(d) for d in image.shape[1:])
    profile = parsed.builder.create_optimization_profile()
    profile.set_shape(image.name, *[(b, *chw) for b in batch])
    config.add_optimization_profile(profile)
    notes.extend(_timing_cache_read(flavour, config, cfg.timing_cache))
    if cfg.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(cfg.dla_core)
        if cfg.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if cfg.legacy_precision and baked.precision != "fp32":
        from retina_deploy.export.engine.legacy_precision import setup_legacy

        parsed.keepalive.extend(setup_legacy(flavour, parsed, config, cfg, baked, image.name, chw))
    return config, notes


def _timing_cache_read(flavour: Flavour, config: trt.IBuilderConfig, path: Path | None) -> list[str]:
    if path is None:
        return []
    if not flavour.has_timing_cache:
        return ["timing cache not used: TensorRT-RTX compiles its kernels at runtime (its timing cache is a no-op)"]
    data = path.read_bytes() if path.is_file() else b""
    try:
        cache = config.create_timing_cache(data)
    except Exception as e:  # TensorRT's bindings raise on some corrupt blobs; the C++ API returns nullptr
        cache, why = None, f" ({e})"
    else:
        why = ""
    if cache is None:
        raise ConfigError(
            f"{path}: not a TensorRT timing cache TensorRT can read (corrupt or truncated{why});"
            " delete it or pass another --timing-cache file"
        )
    if not config.set_timing_cache(cache, False):
        config.set_timing_cache(config.create_timing_cache(b""), False)
        return [f"timing cache {path} was made for another GPU or TensorRT version: started a fresh one"]
    return [f"timing cache {path} {'reused' if data else 'created'}"]


def timing_cache_write(config: trt.IBuilderConfig, path: Path) -> None:
    """Write the (updated) timing cache back, atomically."""
    try:
        write_bytes_atomic(path, bytes(memoryview(config.get_timing_cache().serialize())))
    except OSError as e:
        raise ModelFileError(f"{path}: cannot write the timing cache ({e.strerror or e})") from e


def build_serialized(parsed: ParsedNetwork, config: trt.IBuilderConfig) -> bytes:
    """``build_serialized_network``; EngineBuildError with TensorRT's last errors when it returns None."""
    try:
        serialized = parsed.builder.build_serialized_network(parsed.network, config)
    finally:
        for item in parsed.keepalive:
            if hasattr(item, "free"):
                item.free()
    if serialized is None:
        errors = parsed.logger.errors[-3:]
        hint = ""
        if parsed.is_rtx and any("NonMaxSuppression" in e for e in errors):
            hint = " (TensorRT-RTX cannot build NonMaxSuppression: export with --nms none)"
        raise EngineBuildError(f"the engine build failed: {'; '.join(errors) or 'no reason given'}{hint}")
    return bytes(memoryview(serialized))


def check_engine(flavour: Flavour, data: bytes, parsed: ParsedNetwork, baked: Baked, *, legacy: bool) -> dict[str, Any]:
    """The engine-level precision check where the engine can be deserialized; its record for the manifest."""
    counts, note = inspect_engine(flavour, data, parsed.logger)
    if counts is not None:
        check_engine_precision(counts, baked.precision, fp32_convs=baked.fp32_convs, legacy=legacy)
        note = "ok (EngineInspector)"
    return {"counts": counts, "result": note}
