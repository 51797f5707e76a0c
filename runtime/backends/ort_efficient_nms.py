"""Run ``EfficientNMS_TRT`` files in ONNX Runtime on the CPU, with ``host_nms.efficient_nms`` as a custom op.

The plugin only exists in TensorRT. This registers the numpy reference as an
``onnxruntime-extensions`` Python op; such ops live in the ``ai.onnx.contrib`` domain, so the file's
plugin node is moved there in memory (the file on disk is unchanged). Needs ``onnx`` and
``onnxruntime-extensions``; torch-free.
``run_reference`` is the same op for any caller (the OpenVINO backend runs it after the graph).
"""

from __future__ import annotations

import numpy as np

from retina_deploy.runtime.post.host_nms import efficient_nms

PLUGIN_OP = "EfficientNMS_TRT"
_ATTRS = {
    "plugin_version": "string",
    "background_class": "int64",
    "box_coding": "int64",
    "class_agnostic": "int64",
    "iou_threshold": "float",
    "max_output_boxes": "int64",
    "score_activation": "int64",
    "score_threshold": "float",
}
# The plugin's defaults for attributes a node may leave out (TensorRT's efficientNMSPlugin).
PLUGIN_DEFAULTS = {
    "plugin_version": "1",
    "background_class": -1,
    "box_coding": 0,
    "class_agnostic": 0,
    "score_activation": 0,
}
_registered = False


def run_reference(boxes, scores, attrs: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The plugin's four outputs (see ``host_nms.efficient_nms``) for boxes [B, N, 4], scores [B, N, C]
    and the node's attributes (``PLUGIN_DEFAULTS`` for those it leaves out)."""
    attrs = {**PLUGIN_DEFAULTS, **attrs}
    return efficient_nms(
        np.asarray(boxes, np.float32),
        np.asarray(scores, np.float32),
        score_threshold=float(attrs["score_threshold"]),
        iou_threshold=float(attrs["iou_threshold"]),
        max_output_boxes=int(attrs["max_output_boxes"]),
        background_class=int(attrs["background_class"]),
        score_activation=bool(attrs["score_activation"]),
        class_agnostic=bool(attrs["class_agnostic"]),
        box_coding=int(attrs["box_coding"]),
    )


def register_efficient_nms_op() -> str:
    """Register the reference op once per process; returns the custom-op library path for SessionOptions."""
    global _registered
    from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op

    if not _registered:
        dt = PyCustomOpDef

        @onnx_op(
            op_type=PLUGIN_OP,
            inputs=[dt.dt_float, dt.dt_float],
            outputs=[dt.dt_int32, dt.dt_float, dt.dt_float, dt.dt_int32],
            attrs={name: getattr(dt, f"dt_{kind}") for name, kind in _ATTRS.items()},
        )
        def _efficient_nms_op(boxes, scores, **attrs):
            return run_reference(boxes, scores, attrs)

        _registered = True
    return get_library_path()


def has_efficient_nms(model_bytes: bytes) -> bool:
    """Whether a serialized ONNX model holds an EfficientNMS_TRT node (a cheap byte search, then a parse)."""
    if PLUGIN_OP.encode() not in model_bytes:
        return False
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:
        return True  # let to_reference_model report what is missing
    try:
        return any(n.op_type == PLUGIN_OP for n in onnx.load_from_string(model_bytes).graph.node)
    except DecodeError:
        return False  # not parseable: ONNX Runtime reports the broken file


def to_reference_model(model_bytes: bytes) -> bytes:
    """The model with its EfficientNMS_TRT nodes in the custom-op domain, every attribute set explicitly."""
    import onnx
    from onnx import helper

    model = onnx.load_from_string(model_bytes)
    for node in model.graph.node:
        if node.op_type != PLUGIN_OP:
            continue
        node.domain = "ai.onnx.contrib"
        present = {a.name for a in node.attribute}
        node.attribute.extend(helper.make_attribute(k, v) for k, v in PLUGIN_DEFAULTS.items() if k not in present)
    if not any(o.domain == "ai.onnx.contrib" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("ai.onnx.contrib", 1))
    return model.SerializeToString()
