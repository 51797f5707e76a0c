"""A stand-in for Triton's HTTP endpoint on 127.0.0.1: the KServe v2 messages the triton:// backend exchanges.

It answers ``GET /v2/models/<m>/config`` with a given config JSON and ``POST /v2/models/<m>/infer``
by decoding the request (JSON header + binary inputs, as the binary tensor extension defines it),
calling ``infer`` on the arrays and encoding the outputs the way Triton does (JSON header, then each
output's raw little-endian bytes, the header length in ``Inference-Header-Content-Length``).
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

DTYPES = {"FP32": np.float32, "FP16": np.float16, "INT32": np.int32, "INT64": np.int64}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


def decode_request(body: bytes, header_length: int) -> tuple[dict, dict[str, np.ndarray]]:
    """(JSON header, {input name: array}) of an infer request with binary inputs."""
    header = json.loads(body[:header_length])
    arrays, offset = {}, header_length
    for inp in header["inputs"]:
        size = inp["parameters"]["binary_data_size"]
        raw = body[offset : offset + size]
        arrays[inp["name"]] = np.frombuffer(raw, DTYPES[inp["datatype"]]).reshape(inp["shape"])
        offset += size
    return header, arrays


def encode_response(model: str, outputs: dict[str, np.ndarray]) -> tuple[bytes, int]:
    """(body, header length) of an infer response with every output binary."""
    entries, blobs = [], []
    for name, value in outputs.items():
        value = np.ascontiguousarray(value)
        blob = value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes()
        entries.append(
            {
                "name": name,
                "datatype": NAMES[value.dtype],
                "shape": list(value.shape),
                "parameters": {"binary_data_size": len(blob)},
            }
        )
        blobs.append(blob)
    header = json.dumps({"model_name": model, "model_version": "1", "outputs": entries}, separators=(",", ":")).encode()
    return header + b"".join(blobs), len(header)


class FakeTriton:
    """Serve ``config`` and ``infer`` for model ``name``; ``requests`` records (method, path, headers).

    ``mangle`` rewrites each infer response body before it is sent (Content-Length follows it)."""

    def __init__(self, name: str, config: dict, infer: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]):
        self.name, self.config, self.infer = name, config, infer
        self.requests: list[tuple[str, str, dict]] = []
        self.fail_infer: tuple[int, str] | None = None
        self.mangle: Callable[[bytes], bytes] = lambda body: body  # e.g. truncate the response body

    @contextlib.contextmanager
    def running(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                fake.requests.append(("GET", self.path, dict(self.headers)))
                if self.path == f"/v2/models/{fake.name}/config":
                    self._send(200, json.dumps(fake.config).encode(), {"Content-Type": "application/json"})
                else:
                    self._send(400, json.dumps({"error": f"Request for unknown model: '{self.path}'"}).encode())

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                fake.requests.append(("POST", self.path, dict(self.headers)))
                if self.path != f"/v2/models/{fake.name}/infer":
                    return self._send(400, json.dumps({"error": "unknown model"}).encode())
                if fake.fail_infer is not None:
                    status, message = fake.fail_infer
                    return self._send(status, json.dumps({"error": message}).encode())
                _, arrays = decode_request(body, int(self.headers["Inference-Header-Content-Length"]))
                out, n = encode_response(fake.name, fake.infer(arrays))
                out = fake.mangle(out)
                self._send(
                    200, out, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(n)}
                )

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"triton://127.0.0.1:{server.server_address[1]}/{self.name}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)
