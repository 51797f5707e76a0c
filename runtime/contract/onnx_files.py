"""Our ONNX files on disk: load without external data, read and write the metadata, save atomically.

The ``onnx`` package is imported only by the functions that read or write protobufs. A saved file
carries our metadata (``onnx_metadata``) and stays under protobuf's 2 GiB limit (no external data is
written or read). Never imports torch.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from retina_deploy.core.artifacts import PRECISIONS, PROTOBUF_LIMIT, STUDY_PRECISIONS
from retina_deploy.core.errors import ModelFileError
from retina_deploy.core.fileio import write_bytes_atomic
from retina_deploy.runtime.contract.onnx_metadata import OnnxMetadata

if TYPE_CHECKING:
    import onnx


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
