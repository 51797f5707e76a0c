"""``triton://host:port/model``: a Backend that runs batches on a Triton Inference Server (torch-free).

``Detector.load("triton://host:8000/retinanet")`` returns the same ``Detections`` as a local file:
the client decodes and preprocesses images and finishes post-processing (host NMS for ``--nms none``
models) exactly as for ONNX Runtime or TensorRT; Triton runs the graph on float32 [B, 3, H, W]
batches, with its own dynamic batching across clients. The model's class names, preprocessing and
NMS settings come from the parameters ``triton-repo`` writes into ``config.pbtxt``.

Protocol: KServe v2 over HTTP with the binary tensor extension. Request bodies are built and
responses parsed by tritonclient's HTTP codec (``generate_request_body``,
``InferResult.from_response_body``); the transport is ``http.client``, one keep-alive connection
per thread (tritonclient's own HTTP client is gevent-based and bound to the thread that made it,
and a ``BatchingDetector`` runs batches in its worker thread).
"""

from __future__ import annotations

import http.client
import json
import threading
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from retina_deploy.core.errors import ConfigError, ModelFileError, ModelOutputError, RetinaDeployError
from retina_deploy.runtime.contract.onnx_metadata import NmsSettings
from retina_deploy.runtime.contract.spec import ModelSpec
from retina_deploy.runtime.image.preprocess import PreprocessConfig

SCHEME = "triton://"
DEFAULT_PORT = 8000  # Triton's HTTP port
PARAMETERS_FORMAT = "retina-deploy/triton"
_SPEC_KEYS = ("format", "class_names", "preprocess", "nms", "anchors_per_level", "precision", "source_sha256")


class TritonServerError(RetinaDeployError):
    """Triton could not be reached, does not serve the model, or refused a request."""


def spec_parameters(
    *,
    class_names: Sequence[str],
    preprocess: Mapping[str, Any],
    nms: Mapping[str, Any],
    anchors_per_level: Sequence[int],
    precision: str,
    source_sha256: str,
) -> dict[str, str]:
    """The ``config.pbtxt`` parameters the client reads back (each value JSON text)."""
    values = {
        "format": PARAMETERS_FORMAT,
        "class_names": list(class_names),
        "preprocess": dict(preprocess),
        "nms": dict(nms),
        "anchors_per_level": [int(n) for n in anchors_per_level],
        "precision": precision,
        "source_sha256": source_sha256,
    }
    return {k: json.dumps(v, ensure_ascii=False) for k, v in values.items()}


@dataclass(frozen=True)
class TritonUrl:
    """``triton://host[:port]/model[/version]`` (port 8000 by default, the latest version if none)."""

    host: str
    port: int
    model: str
    version: str = ""

    @classmethod
    def parse(cls, url: str) -> TritonUrl:
        parts = urlsplit(url)
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError as e:
            raise ConfigError(f"{url}: bad port ({e})") from e
        path = [p for p in parts.path.split("/") if p]
        if parts.scheme != "triton" or not parts.hostname or not 1 <= len(path) <= 2 or parts.query:
            raise ConfigError(f"{url}: expected triton://host[:port]/model[/version]")
        if len(path) == 2 and not path[1].isdigit():
            raise ConfigError(f"{url}: model version must be a number, got {path[1]!r}")
        return cls(parts.hostname, port, path[0], path[1] if len(path) == 2 else "")

    @property
    def model_path(self) -> str:
        return f"/v2/models/{self.model}" + (f"/versions/{self.version}" if self.version else "")

    def __str__(self) -> str:
        return f"{SCHEME}{self.host}:{self.port}/{self.model}" + (f"/{self.version}" if self.version else "")


@dataclass(frozen=True)
class TritonModel:
    """What a model's Triton config says: tensors, batch limit, and our spec from its parameters."""

    input_name: str
    input_size: tuple[int, int]
    max_batch: int
    output_names: tuple[str, ...]
    spec: ModelSpec
    precision: str
    source_sha256: str


def model_from_config(config: Mapping[str, Any], source: str) -> TritonModel:
    """Parse Triton's ``GET /v2/models/<m>/config`` JSON (dims as numbers or strings, as protobuf JSON allows)."""
    try:
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        if params.get("format") != json.dumps(PARAMETERS_FORMAT):
            raise ModelFileError(
                f"{source}: the model's config has no retina-deploy parameters; write its repository with"
                " `retina-deploy triton-repo`"
            )
        d = {k: json.loads(params[k]) for k in _SPEC_KEYS}
        (inp,) = config["input"]
        dims = [int(v) for v in inp["dims"]]
        max_batch = int(config.get("max_batch_size", 0))
        spec = ModelSpec(
            class_names=tuple(str(c) for c in d["class_names"]),
            preprocess=PreprocessConfig.from_dict(d["preprocess"]),
            nms=NmsSettings(**d["nms"]),
            anchors_per_level=tuple(int(n) for n in d["anchors_per_level"]),
        )
        outputs = tuple(str(o["name"]) for o in config["output"])
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, RetinaDeployError):
            raise
        raise ModelFileError(f"{source}: unexpected model config ({type(e).__name__}: {e})") from e
    if (
        max_batch < 1
        or len(dims) != 3
        or tuple(dims[1:]) != spec.preprocess.size
        or inp.get("data_type") != "TYPE_FP32"
    ):
        raise ModelFileError(
            f"{source}: input {inp.get('name')} {inp.get('data_type')} {dims} with max_batch_size {max_batch} does not"
            f" take float32 batches [B, 3, {spec.preprocess.size[0]}, {spec.preprocess.size[1]}]"
        )
    return TritonModel(
        inp["name"], spec.preprocess.size, max_batch, outputs, spec, str(d["precision"]), str(d["source_sha256"])
    )


def build_infer_request(batch: np.ndarray, input_name: str, output_names: Sequence[str]) -> tuple[bytes, dict]:
    """(body, headers) of ``POST /v2/models/<m>/infer`` for float32 ``batch`` [B, 3, H, W], every output binary."""
    import tritonclient.http as tc

    inp = tc.InferInput(input_name, list(batch.shape), "FP32")
    inp.set_data_from_numpy(np.ascontiguousarray(batch, np.float32), binary_data=True)
    outputs = [tc.InferRequestedOutput(name, binary_data=True) for name in output_names]
    body, json_size = tc.InferenceServerClient.generate_request_body([inp], outputs=outputs)
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(json_size)}
    return body, headers


def parse_infer_response(
    body: bytes, headers: Mapping[str, str], output_names: Sequence[str], where: str = "triton backend"
) -> dict:
    """{output name: array} from an infer response (JSON header, then the binary outputs).

    A truncated or malformed body, a header length that is not a number, an array whose bytes do not
    fill its shape, or a missing output is a ModelOutputError starting with ``where``.
    """
    import tritonclient.http as tc

    lower = {k.lower(): v for k, v in headers.items()}
    length = lower.get("inference-header-content-length")
    try:
        result = tc.InferResult.from_response_body(
            body, header_length=int(length) if length else None, content_encoding=lower.get("content-encoding")
        )
        out = {name: result.as_numpy(name) for name in output_names}
    except (ValueError, KeyError, TypeError, IndexError, OSError, zlib.error) as e:  # JSON, buffer, reshape
        raise ModelOutputError(
            f"{where}: malformed infer response of {len(body)} bytes ({type(e).__name__}: {e})"
        ) from e
    missing = [name for name, value in out.items() if value is None]
    if missing:
        raise ModelOutputError(f"{where}: Triton's response has no output {missing[0]!r}")
    return out


class HttpTransport:
    """``http.client`` to one server: a keep-alive connection per thread, reopened once if it went stale."""

    def __init__(self, host: str, port: int, timeout_s: float = 60.0) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._local = threading.local()

    def request(self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None):
        """(status, headers, body bytes); TritonServerError when the server cannot be reached."""
        for attempt in (0, 1):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
            try:
                conn.request(method, path, body=body, headers=dict(headers or {}))
                resp = conn.getresponse()
                return resp.status, dict(resp.getheaders()), resp.read()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                self._local.conn = None
                if attempt or isinstance(e, (ConnectionRefusedError, TimeoutError)):
                    raise TritonServerError(
                        f"cannot reach Triton at {self.host}:{self.port} ({type(e).__name__}: {e}); is tritonserver"
                        " running there?"
                    ) from e
        raise AssertionError("unreachable")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class TritonBackend:
    """The Backend protocol over Triton: ``run`` sends one batch, returns the graph's outputs."""

    name = "triton"

    def __init__(self, url: TritonUrl, transport: HttpTransport | None = None) -> None:
        self.url = url
        self.transport = transport or HttpTransport(url.host, url.port)
        self.model = model_from_config(self._get_json(f"{url.model_path}/config", "model config"), str(url))
        self.input_size = self.model.input_size
        self.batch_range = (1, self.model.max_batch)
        self.precision = self.model.precision
        self.source_sha256 = self.model.source_sha256

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        body, headers = build_infer_request(batch, self.model.input_name, self.model.output_names)
        status, resp_headers, data = self.transport.request("POST", f"{self.url.model_path}/infer", body, headers)
        if status != 200:
            raise TritonServerError(f"{self.url}: inference failed: HTTP {status}: {_error_text(data)}")
        return parse_infer_response(data, resp_headers, self.model.output_names, f"triton backend, model {self.url}")

    def _get_json(self, path: str, what: str) -> dict[str, Any]:
        status, _, data = self.transport.request("GET", path)
        if status != 200:
            raise TritonServerError(f"{self.url}: {what}: HTTP {status}: {_error_text(data)}")
        try:
            return json.loads(data)
        except ValueError as e:
            raise TritonServerError(f"{self.url}: {what} is not JSON ({e})") from e

    def close(self) -> None:
        self.transport.close()


def _error_text(data: bytes) -> str:
    """Triton's ``{"error": "..."}`` message, or the start of whatever else came back."""
    try:
        return str(json.loads(data)["error"])
    except (ValueError, KeyError, TypeError):
        return data[:200].decode("utf-8", "replace")


def open_triton(url: str) -> tuple[TritonBackend, ModelSpec]:
    """A TritonBackend for ``url`` and the ModelSpec from the model's config parameters."""
    backend = TritonBackend(TritonUrl.parse(url))
    return backend, backend.model.spec
