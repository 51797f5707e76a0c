"""The triton:// backend without a Triton server: URLs, request building and response parsing against
protocol messages written out here, and Detector.load over a loopback stand-in (triton_fake)."""

import json

import numpy as np
import pytest
from testkit.bad_outputs import CORRUPTIONS
from testkit.serve_fakes import PRE, fake_detector
from testkit.triton_fake import FakeTriton, decode_request, encode_response

from retina_deploy.core.errors import ConfigError, ModelFileError, ModelOutputError
from retina_deploy.runtime import Detector
from retina_deploy.runtime.backends.triton import (
    TritonServerError,
    TritonUrl,
    build_infer_request,
    model_from_config,
    parse_infer_response,
    spec_parameters,
)

NMS = {"mode": "onnx", "max_dets": 2, "score_thresh": 0.05, "iou_thresh": 0.5, "topk_per_level": 10}
PARAMS = spec_parameters(
    class_names=("even", "odd"),
    preprocess=PRE.to_dict(),
    nms=NMS,
    anchors_per_level=(1,),
    precision="fp16",
    source_sha256="ab" * 32,
)


def recorded_config(dims=(3, 128, 128), as_strings=False) -> dict:
    """``GET /v2/models/fake/config`` as Triton answers it (protobuf JSON; int64 dims may come as strings)."""
    d = [str(v) for v in dims] if as_strings else list(dims)
    return {
        "name": "fake",
        "platform": "tensorrt_plan",
        "backend": "tensorrt",
        "max_batch_size": 4,
        "input": [{"name": "images", "data_type": "TYPE_FP32", "format": "FORMAT_NCHW", "dims": d}],
        "output": [
            {"name": "num_dets", "data_type": "TYPE_INT32", "dims": [1]},
            {"name": "boxes", "data_type": "TYPE_FP32", "dims": [2, 4]},
            {"name": "scores", "data_type": "TYPE_FP32", "dims": [2]},
            {"name": "classes", "data_type": "TYPE_INT32", "dims": [2]},
        ],
        "dynamic_batching": {"preferred_batch_size": [2, 4], "max_queue_delay_microseconds": "500"},
        "instance_group": [{"name": "fake", "kind": "KIND_GPU", "count": 1, "gpus": [0]}],
        "parameters": {k: {"string_value": v} for k, v in PARAMS.items()},
    }


# Two images' detection outputs, encoded as Triton sends them: the JSON header, then the raw bytes.
RESPONSE_HEADER = (
    b'{"model_name":"fake","model_version":"1","outputs":['
    b'{"name":"num_dets","datatype":"INT32","shape":[2,1],"parameters":{"binary_data_size":8}},'
    b'{"name":"boxes","datatype":"FP32","shape":[2,2,4],"parameters":{"binary_data_size":64}},'
    b'{"name":"scores","datatype":"FP32","shape":[2,2],"parameters":{"binary_data_size":16}},'
    b'{"name":"classes","datatype":"INT32","shape":[2,2],"parameters":{"binary_data_size":16}}]}'
)
RESPONSE_ARRAYS = {
    "num_dets": np.array([[1], [2]], np.int32),
    "boxes": np.arange(16, dtype=np.float32).reshape(2, 2, 4),
    "scores": np.array([[0.9, 0.0], [0.8, 0.7]], np.float32),
    "classes": np.array([[1, 0], [0, 1]], np.int32),
}
RESPONSE = RESPONSE_HEADER + b"".join(a.tobytes() for a in RESPONSE_ARRAYS.values())


def test_url_parsing():
    assert TritonUrl.parse("triton://gpu-01:8000/retinanet") == TritonUrl("gpu-01", 8000, "retinanet")
    url = TritonUrl.parse("triton://localhost/retinanet/3")
    assert (url.port, url.version, url.model_path) == (8000, "3", "/v2/models/retinanet/versions/3")
    for bad in ("http://h:8000/m", "triton://h:8000/", "triton://h:8000/m/v1", "triton://h:99999/m", "triton:///m"):
        with pytest.raises(ConfigError):
            TritonUrl.parse(bad)


def test_request_is_the_binary_tensor_protocol():
    batch = np.random.default_rng(0).standard_normal((2, 3, 128, 128)).astype(np.float32)
    body, headers = build_infer_request(batch, "images", ("num_dets", "boxes", "scores", "classes"))
    n = int(headers["Inference-Header-Content-Length"])
    assert json.loads(body[:n]) == {
        "inputs": [
            {
                "name": "images",
                "shape": [2, 3, 128, 128],
                "datatype": "FP32",
                "parameters": {"binary_data_size": 393216},
            }
        ],
        "outputs": [
            {"name": k, "parameters": {"binary_data": True}} for k in ("num_dets", "boxes", "scores", "classes")
        ],
    }
    assert body[n:] == batch.tobytes() and headers["Content-Type"] == "application/octet-stream"
    _, arrays = decode_request(body, n)  # the stand-in reads it back the way Triton does
    np.testing.assert_array_equal(arrays["images"], batch)


def test_response_parsing():
    out = parse_infer_response(
        RESPONSE, {"Inference-Header-Content-Length": str(len(RESPONSE_HEADER))}, list(RESPONSE_ARRAYS)
    )
    for name, want in RESPONSE_ARRAYS.items():
        assert out[name].dtype == want.dtype
        np.testing.assert_array_equal(out[name], want)
    assert encode_response("fake", RESPONSE_ARRAYS) == (RESPONSE, len(RESPONSE_HEADER))
    with pytest.raises(ModelOutputError, match="no output .extra."):
        parse_infer_response(RESPONSE, {"inference-header-content-length": str(len(RESPONSE_HEADER))}, ["extra"])


@pytest.mark.parametrize("as_strings", [False, True])
def test_config_gives_the_model_spec(as_strings):
    model = model_from_config(recorded_config(as_strings=as_strings), "triton://h/fake")
    assert model.input_name == "images" and model.input_size == (128, 128) and model.max_batch == 4
    assert model.output_names == ("num_dets", "boxes", "scores", "classes")
    assert model.spec.class_names == ("even", "odd") and model.spec.preprocess == PRE
    assert model.spec.nms.to_dict() == NMS and model.precision == "fp16" and model.source_sha256 == "ab" * 32


def test_config_without_our_parameters_or_with_other_dims_is_refused():
    foreign = recorded_config()
    foreign["parameters"] = {}
    with pytest.raises(ModelFileError, match="retina-deploy triton-repo"):
        model_from_config(foreign, "triton://h/fake")
    with pytest.raises(ModelFileError, match=r"does not take float32 batches \[B, 3, 128, 128\]"):
        model_from_config(recorded_config(dims=(3, 256, 128)), "triton://h/fake")


def test_detector_over_triton_equals_the_local_detector():
    local = fake_detector(max_batch=4)
    fake = FakeTriton("fake", recorded_config(), lambda arrays: local.backend.run(arrays["images"]))
    images = [np.full((h, w, 3), v, np.uint8) for h, w, v in ((64, 64, 10), (100, 50, 33), (30, 90, 200))]
    with fake.running() as url:
        with Detector.load(url) as det:
            assert det.backend.name == "triton" and det.max_batch == 4
            got = det.detect(images)
        with Detector.load(url, backend="triton") as det:
            assert len(det.detect(images[:1])) == 1
    want = local.detect(images)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.boxes, w.boxes)
        np.testing.assert_array_equal(g.scores, w.scores)
        assert g.class_names == w.class_names
    posts = [r for r in fake.requests if r[0] == "POST"]
    assert len(posts) == 2 and posts[0][1] == "/v2/models/fake/infer"


def test_server_errors_are_typed_and_name_the_cause():
    fake = FakeTriton("fake", recorded_config(), lambda arrays: {})
    with fake.running() as url:
        with pytest.raises(TritonServerError, match="unknown model"):
            Detector.load(url.replace("/fake", "/other"))
        with Detector.load(url) as det:
            fake.fail_infer = (400, "inference request batch-size must be <= 4")
            with pytest.raises(TritonServerError, match="HTTP 400: inference request batch-size"):
                det.detect([np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(TritonServerError, match="cannot reach Triton"):
        Detector.load(url)  # the server is gone
    with pytest.raises(ConfigError, match="triton://"):
        Detector.load("model.onnx", backend="triton")


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_bad_outputs_from_triton_are_typed_errors(case):
    """NaN boxes, scores out of range, too few rows, wrong shapes: ModelOutputError naming backend and URL."""
    corrupt, message = CORRUPTIONS[case]
    local = fake_detector(max_batch=4)
    fake = FakeTriton("fake", recorded_config(), lambda arrays: corrupt(local.backend.run(arrays["images"])))
    with fake.running() as url, Detector.load(url) as det:
        with pytest.raises(ModelOutputError, match=rf"^triton backend, model {url}: .*{message}"):
            det.detect([np.full((64, 64, 3), v, np.uint8) for v in (40, 50)])


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda body: body[:-3], "malformed infer response"),  # truncated binary part
        (lambda body: body[:40], "malformed infer response"),  # truncated JSON header
        (lambda body: b"", "malformed infer response"),
        (lambda body: body.replace(b'"shape":[2,2,4]', b'"shape":[2,3,4]'), "malformed infer response"),
        (lambda body: body.replace(b'"name":"scores"', b'"name":"scorez"'), "no output 'scores'"),
    ],
)
def test_malformed_triton_responses_are_typed_errors(mangle, message):
    local = fake_detector(max_batch=4)
    fake = FakeTriton("fake", recorded_config(), lambda arrays: local.backend.run(arrays["images"]))
    fake.mangle = mangle
    with fake.running() as url, Detector.load(url) as det:
        with pytest.raises(ModelOutputError, match=rf"^triton backend, model {url}: .*{message}"):
            det.detect([np.full((64, 64, 3), v, np.uint8) for v in (40, 50)])
