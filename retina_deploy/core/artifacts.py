"""The toolkit's model files: their kinds and suffixes, and the precision names (one place for each).

Reading and writing ONNX files with our metadata is ``runtime.contract.onnx_files``.
"""

from __future__ import annotations

import os
from pathlib import Path

from retina_deploy.core.errors import ModelFileError

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
