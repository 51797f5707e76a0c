"""The engine manifest: ``<engine>.json`` beside every TensorRT engine (torch-free, TensorRT-free).

A serialized engine is opaque, tied to one TensorRT version and GPU, and deserializing a foreign or
tampered file runs the library's parser on untrusted bytes. So every engine carries a manifest that
says what it is (flavour, version, GPU, precision, batch range, input size, classes, preprocessing,
post-processing) and the sha256 of its bytes, and the runtime checks the bytes against it before
they reach TensorRT. Mismatches become a ``ModelFileError`` that says to rebuild.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from retina_deploy.core.errors import ConfigError, ModelFileError
from retina_deploy.core.fileio import sha256_file, write_json_atomic
from retina_deploy.core.strict import from_dict_strict
from retina_deploy.runtime.image.preprocess import PreprocessConfig

FORMAT = "retina-deploy/engine-manifest"
FORMAT_VERSION = 1
FLAVOURS = ("tensorrt", "tensorrt-rtx")
MAX_ENGINE_BYTES = 8 << 30  # refuse to hash / load anything larger (8 GiB): not an engine of ours
REBUILD_HINT = "rebuild the engine on this machine with `retina-deploy build-engine MODEL.onnx OUT.engine`"


@dataclass(frozen=True)
class EngineManifest:
    """What an engine file is; stored as JSON in ``<engine>.json``.

    engine_sha256: hex sha256 of the engine file's bytes.
    flavour: "tensorrt" (datacenter / Jetson) or "tensorrt-rtx".
    trt_version: version of the library that built it, e.g. "10.13.0" or "1.7.1".
    gpu_name: the GPU it was built on, or None when built without one (TensorRT-RTX).
    compute_capabilities: SM versions it runs on, e.g. ("8.6",); empty = any the library supports.
    precision: the ONNX file's precision ("fp32", "fp16", "int8"): precision lives in the ONNX file.
    batch_range: (min, opt, max) of the optimization profile.
    input_size: (H, W) of the network input.
    input_name: the engine's input tensor name.
    onnx_sha256: hex sha256 of the ONNX file it was built from.
    class_names: the C class names, in label order.
    preprocess: ``PreprocessConfig.to_dict()``.
    postprocess: {"nms": the ONNX metadata's nms settings (mode = output kind), "anchors_per_level": [...]}.
    """

    engine_sha256: str
    flavour: str
    trt_version: str
    precision: str
    batch_range: tuple[int, int, int]
    input_size: tuple[int, int]
    onnx_sha256: str
    class_names: tuple[str, ...]
    preprocess: dict[str, Any]
    postprocess: dict[str, Any]
    input_name: str = "images"
    gpu_name: str | None = None
    compute_capabilities: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch_range", tuple(int(v) for v in self.batch_range))
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "compute_capabilities", tuple(str(c) for c in self.compute_capabilities))
        if self.flavour not in FLAVOURS:
            raise ConfigError(f"manifest flavour must be one of {list(FLAVOURS)}, got {self.flavour!r}")
        if not isinstance(self.precision, str) or not self.precision:
            raise ConfigError(f"manifest precision must be a non-empty string, got {self.precision!r}")
        lo, opt, hi = _triple(self.batch_range, "batch_range")
        if not 1 <= lo <= opt <= hi:
            raise ConfigError(f"manifest batch_range needs 1 <= min <= opt <= max, got {list(self.batch_range)}")
        if len(self.input_size) != 2:
            raise ConfigError(f"manifest input_size must be (H, W), got {list(self.input_size)}")
        for name in ("engine_sha256", "onnx_sha256"):
            if not re.fullmatch(r"[0-9a-f]{64}", str(getattr(self, name))):
                raise ConfigError(f"manifest {name} must be 64 lowercase hex digits, got {getattr(self, name)!r}")
        if not self.class_names:
            raise ConfigError("manifest class_names is empty")
        PreprocessConfig.from_dict(self.preprocess)  # validates (input size multiple of 128, ...)

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.preprocess)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("batch_range", "input_size", "class_names", "compute_capabilities"):
            d[key] = list(d[key])
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EngineManifest:
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise ConfigError(f"not an engine manifest (format is not {FORMAT!r})")
        if d.get("format_version") != FORMAT_VERSION:
            raise ConfigError(f"manifest format_version {d.get('format_version')!r} is not {FORMAT_VERSION}")
        body = {k: v for k, v in d.items() if k not in ("format", "format_version")}
        return from_dict_strict(cls, body, "engine manifest")


def _triple(values: Sequence[int], what: str) -> tuple[int, int, int]:
    if len(values) != 3:
        raise ConfigError(f"manifest {what} must be (min, opt, max), got {list(values)}")
    return values[0], values[1], values[2]


def manifest_path(engine_path: str | os.PathLike) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def sha256_bytes(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def fields_from_onnx_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``write_manifest`` keyword arguments taken from ``read_onnx_metadata(onnx_path)``'s dict.

    Gives class_names, preprocess, postprocess, batch_range, input_size and precision; the builder
    adds flavour, trt_version, onnx_sha256 and the GPU.
    """
    try:
        batch = meta["batch"]
        return {
            "class_names": list(meta["class_names"]),
            "preprocess": {
                "size": list(meta["input_size"]),
                "mean": list(meta["mean"]),
                "std": list(meta["std"]),
                "channel_order": meta["channel_order"],
            },
            "postprocess": {"nms": dict(meta["nms"]), "anchors_per_level": list(meta["anchors_per_level"])},
            "batch_range": [batch["min"], batch["opt"], batch["max"]],
            "input_size": list(meta["input_size"]),
            "precision": meta["precision"],
        }
    except (KeyError, TypeError) as e:
        raise ConfigError(f"ONNX metadata lacks a field the manifest needs: {e}") from e


def write_manifest(
    engine_path: str | os.PathLike,
    *,
    flavour: str,
    trt_version: str,
    precision: str,
    batch_range: Sequence[int],
    input_size: Sequence[int],
    onnx_sha256: str,
    class_names: Sequence[str],
    preprocess: Mapping[str, Any] | PreprocessConfig,
    postprocess: Mapping[str, Any],
    input_name: str = "images",
    gpu_name: str | None = None,
    compute_capabilities: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> EngineManifest:
    """Hash the (already written) engine file and write ``<engine>.json`` atomically beside it.

    All arguments are plain values (see ``EngineManifest`` for each); the engine's sha256 is computed
    here from the file, so the manifest always describes the bytes on disk. Returns the manifest.
    """
    path = Path(engine_path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such engine file to write a manifest for")
    pre = preprocess.to_dict() if isinstance(preprocess, PreprocessConfig) else dict(preprocess)
    manifest = EngineManifest(
        engine_sha256=sha256_file(path),
        flavour=flavour,
        trt_version=str(trt_version),
        precision=precision,
        batch_range=tuple(batch_range),
        input_size=tuple(input_size),
        onnx_sha256=onnx_sha256,
        class_names=tuple(class_names),
        preprocess=pre,
        postprocess=dict(postprocess),
        input_name=input_name,
        gpu_name=gpu_name,
        compute_capabilities=tuple(compute_capabilities),
        extra=dict(extra or {}),
    )
    write_json_atomic(manifest_path(path), manifest.to_dict())
    return manifest


def read_manifest(engine_path: str | os.PathLike) -> EngineManifest:
    """Read and validate ``<engine>.json``; a missing or malformed manifest is a ModelFileError."""
    mpath = manifest_path(engine_path)
    if not mpath.is_file():
        raise ModelFileError(
            f"{engine_path}: no manifest {mpath.name} beside the engine, so its origin cannot be checked; "
            f"{REBUILD_HINT}"
        )
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
        return EngineManifest.from_dict(data)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ConfigError) as e:
        raise ModelFileError(f"{mpath}: unreadable engine manifest: {e}") from e


def read_verified_engine(engine_path: str | os.PathLike) -> tuple[EngineManifest, bytes]:
    """Read the engine's bytes once and check them against the manifest's sha256.

    Returns (manifest, bytes): the caller deserializes exactly the bytes that were hashed, so the
    file cannot change between the check and its use. Raises ModelFileError naming the file.
    """
    path = Path(engine_path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such engine file")
    manifest = read_manifest(path)
    size = path.stat().st_size
    if size == 0 or size > MAX_ENGINE_BYTES:
        raise ModelFileError(f"{path}: engine file of {size} bytes is empty or implausibly large")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read engine: {e}") from e
    digest = sha256_bytes(data)
    if digest != manifest.engine_sha256:
        raise ModelFileError(
            f"{path}: sha256 {digest[:16]}... differs from its manifest's {manifest.engine_sha256[:16]}...; "
            f"the engine was modified, truncated or swapped; {REBUILD_HINT}"
        )
    return manifest, data


def check_compatible(
    manifest: EngineManifest,
    engine_path: str | os.PathLike,
    *,
    flavour: str | None = None,
    trt_version: str | None = None,
    gpu_name: str | None = None,
    compute_capability: str | None = None,
) -> None:
    """Compare the manifest with the installed library and GPU; each given value must match.

    Versions match on major.minor.patch (serialized engines are not portable across TensorRT
    releases); the GPU matches on compute capability (if the manifest lists any) and on name (if it
    names the GPU it was built on). A mismatch is a ModelFileError saying to rebuild.
    """
    problems = []
    if flavour is not None and flavour != manifest.flavour:
        problems.append(f"it was built with {manifest.flavour}, the runtime asked for is {flavour}")
    if trt_version is not None and _release(trt_version) != _release(manifest.trt_version):
        problems.append(f"it was built with {manifest.flavour} {manifest.trt_version}, installed is {trt_version}")
    caps = manifest.compute_capabilities
    if compute_capability is not None and caps and compute_capability not in caps:
        problems.append(f"it was built for compute capability {', '.join(caps)}, this GPU is {compute_capability}")
    if gpu_name is not None and manifest.gpu_name is not None and gpu_name != manifest.gpu_name:
        problems.append(f"it was built on a {manifest.gpu_name}, this GPU is a {gpu_name}")
    if problems:
        raise ModelFileError(
            f"{engine_path}: engine does not match this machine: {'; '.join(problems)}; {REBUILD_HINT}"
        )


def _release(version: str) -> tuple[str, ...]:
    """'10.13.0.35' -> ('10', '13', '0'); '1.7.1.116' -> ('1', '7', '1')."""
    return tuple(re.findall(r"\d+", str(version))[:3])


def verify_engine_file(
    engine_path: str | os.PathLike,
    *,
    flavour: str | None = None,
    trt_version: str | None = None,
    gpu_name: str | None = None,
    compute_capability: str | None = None,
) -> EngineManifest:
    """Check an engine file before deserialization: manifest present and valid, sha256 equal, and
    (for each value given) the installed flavour/version and the GPU compatible. Returns the manifest."""
    manifest, _ = read_verified_engine(engine_path)
    check_compatible(
        manifest,
        engine_path,
        flavour=flavour,
        trt_version=trt_version,
        gpu_name=gpu_name,
        compute_capability=compute_capability,
    )
    return manifest
