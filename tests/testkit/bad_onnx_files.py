"""Bad ONNX files, each with the message its error must match: {case: (make() -> bytes, regex)}.

Shared by the Detector's bad-input tests and the OpenVINO backend's (every backend refuses them alike).
"""

import io
import json

import numpy as np
import onnx
from onnx import TensorProto, helper
from PIL import Image
from testkit.detector_models import exported


def encode_image(fmt, size=(64, 48), **kw):
    """A grey image of ``size`` (w, h) encoded as ``fmt`` (e.g. "JPEG")."""
    buf = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), 120, np.uint8)).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _foreign_onnx() -> bytes:
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 3, 256, 256])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", 3, 256, 256])
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["out"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _with_metadata(change) -> bytes:
    model = onnx.load(str(exported("onnx")))
    props = {p.key: p.value for p in model.metadata_props}
    change(props)
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    return model.SerializeToString()


def _renamed_output() -> bytes:
    model = onnx.load(str(exported("onnx")))
    old = model.graph.output[1].name
    model.graph.output[1].name = "renamed"
    for node in model.graph.node:
        node.output[:] = ["renamed" if o == old else o for o in node.output]
    return model.SerializeToString()


def _nms_of(mode):
    def change(props):
        nms = json.loads(props["nms"])
        nms["mode"] = mode
        props["nms"] = json.dumps(nms)

    return change


ONNX_CASES = {
    "empty": (lambda: b"", "not a loadable ONNX file|no such|truncated"),
    "random_bytes": (lambda: bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), "not a loadable"),
    "truncated": (lambda: exported("onnx").read_bytes()[:100_000], "not a loadable ONNX file"),
    "a_jpeg_renamed": (lambda: encode_image("JPEG"), "not a loadable ONNX file"),
    "foreign_model": (_foreign_onnx, "not a retina-deploy ONNX file"),
    "metadata_format_changed": (lambda: _with_metadata(lambda p: p.update(format='"other"')), "not a retina-deploy"),
    "metadata_not_json": (lambda: _with_metadata(lambda p: p.update(class_names="[oops")), "malformed"),
    "metadata_key_removed": (lambda: _with_metadata(lambda p: p.pop("nms")), "lacks"),
    "metadata_says_dense_outputs": (lambda: _with_metadata(_nms_of("none")), "outputs"),
    "output_renamed": (_renamed_output, "outputs"),
}
