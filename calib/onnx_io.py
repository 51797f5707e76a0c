"""Read a retina-deploy ONNX file for a precision stage, and write the stage's result (onnx, no torch).

A precision-baked file keeps every metadata entry of its source (class names, preprocessing, NMS
settings, batch range), so ``Detector`` and ``retina-deploy eval`` run it like the FP32 export; only
``precision`` changes ("fp16" or "int8"). Files are written atomically and stay under protobuf's 2 GiB.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from retina_deploy.errors import ModelFileError
from retina_deploy.fileio import write_bytes_atomic
from retina_deploy.runtime.onnx_metadata import OnnxMetadata

PRECISIONS = ("fp32", "fp16", "int8", "fp16-emulated")  # the last: accuracy studies only
_PROTOBUF_LIMIT = 2**31 - 1


def load_model(path: str | os.PathLike) -> tuple[onnx.ModelProto, OnnxMetadata]:
    """Load one of our ONNX files (no external data) and its validated metadata.

    Raises ModelFileError for a missing, unreadable or foreign file (one without our metadata).
    Nodes without a name get one (``<op_type>_<index>``): quantization and reports address nodes by name.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, OSError) as e:
        raise ModelFileError(f"{path}: not a readable ONNX file, truncated or of another format ({e})") from e
    meta = OnnxMetadata.from_props({p.key: p.value for p in model.metadata_props}, str(path))
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)
    return model, meta


def save_model(model: onnx.ModelProto, meta: OnnxMetadata, precision: str, out_path: str | os.PathLike) -> Path:
    """Write ``model`` with ``meta`` (precision set to ``precision``) atomically to ``out_path``; returns it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    props = replace(meta, precision=precision).to_props()
    others = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in [*others, *props.items()]:
        model.metadata_props.add(key=key, value=value)
    data = model.SerializeToString()
    if len(data) > _PROTOBUF_LIMIT:
        raise ModelFileError(
            f"the {precision} graph is {len(data) / 2**30:.1f} GiB; files without external data stop at 2 GiB"
        )
    out_path = Path(out_path)
    try:
        write_bytes_atomic(out_path, data)
    except OSError as e:
        raise ModelFileError(f"{out_path}: cannot write the {precision} ONNX file ({e.strerror or e})") from e
    return out_path


def baked_path(onnx_path: str | os.PathLike, precision: str, folder: str | os.PathLike | None = None) -> Path:
    """``model.onnx`` -> ``model.<precision>.onnx``, in ``folder`` (default: beside the source)."""
    src = Path(onnx_path)
    return Path(folder or src.parent) / f"{src.stem}.{precision}.onnx"
