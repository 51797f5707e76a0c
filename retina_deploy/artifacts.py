"""The toolkit's model files: their kinds and suffixes, the precision names, and ONNX file load / save.

One place for each: the runtime, the precision stages, the exporter and the CLI use these. The
``onnx`` package is imported only by the functions that read or write ONNX protobufs, so the runtime
(which reads ONNX files through ONNX Runtime) can import the names without it. Never imports torch.

A saved ONNX file carries our metadata (``runtime.onnx_metadata``) and stays under protobuf's 2 GiB
limit (no external data is written or read); it is written atomically.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from retina_deploy.errors import ModelFileError
from retina_deploy.fileio import write_bytes_atomic
from retina_deploy.runtime.onnx_metadata import OnnxMetadata

if TYPE_CHECKING:
    import onnx

ONNX_SUFFIX = ".onnx"
ENGINE_SUFFIXES = (".engine", ".plan")
PRECISIONS = ("fp32", "fp16", "int8")
# Precisions of files made for accuracy studies only (FP16-rounded values, FP32 arithmetic): never built.
STUDY_PRECISIONS = ("fp16-emulated",)
PROTOBUF_LIMIT = 2**31 - 1


def model_kind(path: str | os.PathLike) -> str:
    """ "checkpoint", "onnx" or "engine" for an existing path; ModelFileError for anything else."""
    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"{p}: no such model file or checkpoint folder")
    if p.is_file() and p.suffix == ONNX_SUFFIX:
        return "onnx"
    if p.is_file() and p.suffix in ENGINE_SUFFIXES:
        return "engine"
    if p.is_dir() or p.name in ("model.safetensors", "config.json"):
        return "checkpoint"
    raise ModelFileError(f"{p}: not a model (expected a checkpoint folder, a .onnx file or a .engine file)")


def baked_path(onnx_path: str | os.PathLike, precision: str, folder: str | os.PathLike | None = None) -> Path:
    """``model.onnx`` -> ``model.<precision>.onnx``, in ``folder`` (default: beside the source)."""
    src = Path(onnx_path)
    return Path(folder or src.parent) / f"{src.stem}.{precision}{ONNX_SUFFIX}"


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX file without external data; ModelFileError for a missing, huge, truncated or non-ONNX file."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such ONNX file")
    if path.stat().st_size > PROTOBUF_LIMIT:
        raise ModelFileError(f"{path}: over 2 GiB; ONNX files with external data are not supported")
    try:
        return onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, OSError) as e:
        raise ModelFileError(f"{path}: not a readable ONNX file, truncated or of another format ({e})") from e


def load_onnx_with_metadata(path: str | os.PathLike) -> tuple[onnx.ModelProto, OnnxMetadata]:
    """One of our ONNX files and its validated metadata (ModelFileError for a file without it)."""
    model = load_onnx(path)
    return model, OnnxMetadata.from_props({p.key: p.value for p in model.metadata_props}, str(path))


def read_onnx_metadata(path: str | os.PathLike) -> OnnxMetadata:
    """The validated metadata of one of our ONNX files (``.to_dict()`` gives plain JSON values)."""
    return load_onnx_with_metadata(path)[1]


def write_metadata(model: onnx.ModelProto, meta: OnnxMetadata) -> None:
    """Set ``meta``'s entries in ``model.metadata_props`` (replacing ours, keeping anyone else's)."""
    props = meta.to_props()
    others = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in [*others, *props.items()]:
        model.metadata_props.add(key=key, value=value)


def save_onnx(
    model: onnx.ModelProto, meta: OnnxMetadata, out_path: str | os.PathLike, *, precision: str | None = None
) -> Path:
    """Write ``model`` with ``meta`` (its precision replaced by ``precision`` when given) atomically; returns the path.

    Raises ModelFileError when the graph exceeds 2 GiB or the file cannot be written (naming ``out_path``).
    """
    if precision is not None:
        if precision not in PRECISIONS + STUDY_PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS + STUDY_PRECISIONS}, got {precision!r}")
        meta = replace(meta, precision=precision)
    write_metadata(model, meta)
    data = model.SerializeToString()
    out_path = Path(out_path)
    if len(data) > PROTOBUF_LIMIT:
        raise ModelFileError(
            f"{out_path}: the {meta.precision} graph is {len(data) / 2**30:.1f} GiB; "
            "ONNX files without external data stop at 2 GiB"
        )
    try:
        write_bytes_atomic(out_path, data)
    except OSError as e:
        raise ModelFileError(f"{out_path}: cannot write the ONNX file ({e.strerror or e})") from e
    return out_path
