"""Write and read the retina-deploy metadata of an ONNX file (needs the onnx package, not torch).

The fields and their validation live in ``retina_deploy.runtime.onnx_metadata`` so that the
torch-free runtime reads the same metadata through ONNX Runtime alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from retina_deploy.errors import ModelFileError
from retina_deploy.runtime.onnx_metadata import OnnxMetadata


def write_metadata(model: onnx.ModelProto, meta: OnnxMetadata) -> None:
    """Set ``meta``'s entries in ``model.metadata_props`` (replacing ours, keeping anyone else's)."""
    props = meta.to_props()
    others = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in [*others, *props.items()]:
        model.metadata_props.add(key=key, value=value)


def load_onnx_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load an ONNX file without external data; missing, truncated or non-ONNX files raise ModelFileError."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, OSError) as e:
        raise ModelFileError(f"{path}: not a readable ONNX file, truncated or of another format ({e})") from e


def load_onnx_metadata(path: str | os.PathLike) -> OnnxMetadata:
    """The validated metadata of a retina-deploy ONNX file (ModelFileError for anything else)."""
    model = load_onnx_model(path)
    return OnnxMetadata.from_props({p.key: p.value for p in model.metadata_props}, str(path))


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a retina-deploy ONNX file as plain JSON values (keys as in ``metadata_props``).

    Keys: format, format_version, toolkit_version, class_names, input_size [H, W], mean, std,
    channel_order, nms {mode, max_dets, score_thresh, iou_thresh, topk_per_level}, batch {min, opt,
    max}, anchors_per_level, checkpoint_sha256, backbone, opset, precision.
    """
    return load_onnx_metadata(path).to_dict()
