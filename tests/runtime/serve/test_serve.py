"""serve: readiness, answers, every error path, back-pressure, metrics and SIGTERM draining.

Most tests run the app under uvicorn in a thread (127.0.0.1, a free port) with a fake detector whose
answer identifies each image (serve_fakes); one runs the real CLI on an exported ONNX file.
"""

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from testkit.serve_fakes import expected, fake_detector, png, running, wait_ready

from retina_deploy.core.errors import ConfigError
from retina_deploy.runtime.serve.app import ServeConfig, create_app

TESTS = Path(__file__).parents[2]  # holds testkit/: the fake server's working folder


def _app(load=None, **cfg):
    return create_app(load or (lambda: fake_detector(max_batch=4)), ServeConfig(**cfg))


def _metric(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text (0 if absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if m and m[1] == name and ",".join(sorted((m[2] or "").split(","))) == want:
            return float(m[3])
    return 0.0


# ------------------------------------------------------------------ readiness


def test_live_at_once_ready_after_load_and_warmup():
    gate = threading.Event()
    det = fake_detector(max_batch=4)

    def load():
        gate.wait(30)
        return det

    with running(_app(load)) as base, httpx.Client() as c:
        assert c.get(f"{base}/health/live").status_code == 200
        r = c.get(f"{base}/health/ready")
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "loading" in r.json()["error"]
        assert c.post(f"{base}/v1/detect", content=png(10)).status_code == 503
        assert c.get(f"{base}/v1/model").status_code == 503
        gate.set()
        wait_ready(c, base)
        assert det.backend.batch_sizes == [4]  # the warm-up batch ran before ready
        info = c.get(f"{base}/v1/model").json()
        assert info["classes"] == ["even", "odd"] and info["input_size"] == [128, 128]
        assert info["batch_range"] == [1, 4] and info["backend"] == "fake" and info["nms"] == "onnx"


def test_failed_load_is_reported_and_never_ready():
    def load():
        raise ConfigError("no such model")

    app = _app(load)
    fatal = []
    app.state.retina.on_fatal = fatal.append
    with running(app) as base, httpx.Client() as c:
        deadline = time.monotonic() + 10
        while not fatal and time.monotonic() < deadline:
            time.sleep(0.02)
        r = c.get(f"{base}/health/ready")
        assert r.status_code == 503 and "no such model" in r.json()["error"]
        assert c.get(f"{base}/health/live").status_code == 200
    assert fatal == ["ConfigError: no such model"]


# ------------------------------------------------------------------ answers


@pytest.fixture(scope="module")
def server():
    with running(_app(max_body_mb=0.01, max_images=3)) as base, httpx.Client() as c:
        wait_ready(c, base)
        yield base, c


def test_one_image_as_body(server):
    base, c = server
    r = c.post(f"{base}/v1/detect", content=png(37), headers={"content-type": "image/png"})
    assert r.status_code == 200
    assert r.json() == {"results": [{"name": "body", "detections": [expected(37)]}]}


def test_several_images_as_multipart_in_order(server):
    base, c = server
    files = [("images", (f"{v}.png", png(v), "image/png")) for v in (11, 12, 13)]
    r = c.post(f"{base}/v1/detect", files=files)
    assert r.status_code == 200
    assert r.json()["results"] == [{"name": f"{v}.png", "detections": [expected(v)]} for v in (11, 12, 13)]


def test_score_threshold_and_max_detections(server):
    base, c = server
    assert c.post(f"{base}/v1/detect?score_threshold=0.2", content=png(40)).json()["results"][0]["detections"] == []
    kept = c.post(f"{base}/v1/detect?score_threshold=0.1", content=png(40)).json()["results"][0]["detections"]
    assert kept == [expected(40)]
    assert c.post(f"{base}/v1/detect?max_detections=0", content=png(40)).json()["results"][0]["detections"] == []


@pytest.mark.parametrize(
    ("query", "body", "message"),
    [
        ("", b"not an image", "body: "),
        ("", b"", "empty body"),
        ("?score_threshold=nan", None, "score_threshold must be in [0, 1]"),
        ("?score_threshold=2", None, "score_threshold must be in [0, 1]"),
        ("?max_detections=-1", None, "max_detections must be >= 0"),
        ("?max_detections=x", None, "bad query parameter"),
        ("?threshold=0.5", None, "unknown query parameter 'threshold'"),
    ],
)
def test_400_names_the_problem(server, query, body, message):
    base, c = server
    r = c.post(f"{base}/v1/detect{query}", content=png(5) if body is None else body)
    assert r.status_code == 400 and message in r.json()["error"]


def test_400_multipart_names_the_part(server):
    base, c = server
    files = [("a", ("good.png", png(3), "image/png")), ("b", ("broken.jpg", b"\xff\xd8garbage", "image/jpeg"))]
    r = c.post(f"{base}/v1/detect", files=files)
    assert r.status_code == 400 and r.json()["error"].startswith("broken.jpg: ")
    r = c.post(f"{base}/v1/detect", data={"note": "hello"}, files=[("a", ("a.png", png(3), "image/png"))])
    assert r.status_code == 400 and "'note' is not a file part" in r.json()["error"]
    too_many = [("i", (f"{i}.png", png(i), "image/png")) for i in range(4)]
    r = c.post(f"{base}/v1/detect", files=too_many)
    assert r.status_code == 400 and "multipart" in r.json()["error"]


@pytest.mark.parametrize("media_type", ["Multipart/Form-Data", "MULTIPART/FORM-DATA", "multipart/form-data "])
def test_multipart_media_type_is_case_insensitive(server, media_type):
    base, c = server
    files = [("images", (f"{v}.png", png(v), "image/png")) for v in (14, 15)]
    req = c.build_request("POST", f"{base}/v1/detect", files=files)
    req.headers["content-type"] = req.headers["content-type"].replace("multipart/form-data", media_type)
    r = c.send(req)
    assert r.status_code == 200, r.text
    assert r.json()["results"] == [{"name": f"{v}.png", "detections": [expected(v)]} for v in (14, 15)]


@pytest.mark.parametrize("sent", [0, 100, 5000])
def test_client_leaving_mid_body_is_counted_499_not_500(server, caplog, sent):
    base, c = server
    host, port = base.removeprefix("http://").split(":")
    before = c.get(f"{base}/metrics").text
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = "POST /v1/detect HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 9000\r\n\r\n"
        sock.sendall(head.encode() + os.urandom(sent))
    deadline = time.monotonic() + 10
    while True:
        after = c.get(f"{base}/metrics").text
        if _metric(after, "retina_rejections_total", reason="client_disconnected") > _metric(
            before, "retina_rejections_total", reason="client_disconnected"
        ):
            break
        assert time.monotonic() < deadline, "the disconnect was never counted"
        time.sleep(0.02)
    for status in ("499", "500"):
        moved = _metric(after, "retina_http_requests_total", route="/v1/detect", status=status) - _metric(
            before, "retina_http_requests_total", route="/v1/detect", status=status
        )
        assert moved == (1 if status == "499" else 0), status
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_413_body_over_the_limit(server):
    base, c = server
    big = os.urandom(20_000)  # limit 0.01 MiB = 10485 bytes
    r = c.post(f"{base}/v1/detect", content=big)
    assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(10):
            yield os.urandom(2_000)

    r = c.post(f"{base}/v1/detect", content=chunks())
    assert r.status_code == 413


def test_404_and_405_are_json(server):
    base, c = server
    r = c.get(f"{base}/v2/models")
    assert r.status_code == 404 and r.json()["error"] == "Not Found: GET /v2/models"
    assert c.get(f"{base}/v1/detect").status_code == 405


def test_metrics_counters_move(server):
    base, c = server
    before = c.get(f"{base}/metrics").text
    c.post(f"{base}/v1/detect", content=png(9))
    c.post(f"{base}/v1/detect", content=b"junk")
    c.get(f"{base}/nowhere")
    after = c.get(f"{base}/metrics").text
    assert after.startswith("# HELP") or "retina_http_requests_total" in after

    def moved(name, **labels):
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    assert moved("retina_http_requests_total", route="/v1/detect", status="200") == 1
    assert moved("retina_http_requests_total", route="/v1/detect", status="400") == 1
    assert moved("retina_http_requests_total", route="other", status="404") == 1
    assert moved("retina_rejections_total", reason="bad_request") == 1
    assert moved("retina_batch_size_count") == 1 and moved("retina_images_total") == 1
    assert moved("retina_request_latency_seconds_count", route="/v1/detect") == 2
    assert "retina_queue_depth 0.0" in after


# ------------------------------------------------------------------ back-pressure


def test_overload_gives_fast_503s_and_every_accepted_request_its_answer():
    """max_batch 1, max_queue 3, the model held on a first request: of 9 more sent at once, 3 wait, 6 get 503."""
    gate = threading.Event()
    det = fake_detector(max_batch=1, gate=gate)
    gate.set()  # let the warm-up through, then hold every batch
    app = _app(lambda: det, max_batch=1, max_queue=3, max_delay_ms=0)
    with running(app) as base, httpx.Client() as c:
        wait_ready(c, base)
        gate.clear()
        det.backend.entered.clear()
        n_total = 10
        answers: dict[int, httpx.Response] = {}
        elapsed: dict[int, float] = {}

        def post(v):
            start = time.perf_counter()
            with httpx.Client(timeout=30) as own:
                answers[v] = own.post(f"{base}/v1/detect", content=png(v))
            elapsed[v] = time.perf_counter() - start

        with ThreadPoolExecutor(n_total) as pool:
            futures = [pool.submit(post, 100)]
            assert det.backend.entered.wait(20)  # the first request is in the model, which holds it
            futures += [pool.submit(post, v) for v in range(101, 100 + n_total)]
            deadline = time.monotonic() + 20
            while sum(r.status_code == 503 for r in answers.values()) < n_total - 4 and time.monotonic() < deadline:
                time.sleep(0.01)
            rejected = {v for v, r in answers.items() if r.status_code == 503}
            assert len(rejected) == n_total - 4 and len(answers) == n_total - 4  # nothing else answered yet
            gate.set()
            for f in futures:
                f.result()
        ok = {v for v, r in answers.items() if r.status_code == 200}
        assert len(ok) == 4 and ok | rejected == set(range(100, 100 + n_total)) and not ok & rejected
        for v in ok:
            assert answers[v].json()["results"][0]["detections"] == [expected(v)]
        for v in rejected:
            assert answers[v].headers["retry-after"] == "1" and "queue is full" in answers[v].json()["error"]
            assert elapsed[v] < 5  # answered while the model was still held
        assert det.backend.batch_sizes[1:] == [1, 1, 1, 1]  # each accepted image ran exactly once
        assert c.get(f"{base}/health/ready").status_code == 200
        text = c.get(f"{base}/metrics").text
        assert _metric(text, "retina_rejections_total", reason="queue_full") == n_total - 4
        assert c.post(f"{base}/v1/detect", content=png(7)).json()["results"][0]["detections"] == [expected(7)]


def test_500_504_and_requests_larger_than_the_queue():
    gate = threading.Event()
    gate.set()
    det = fake_detector(max_batch=2, gate=gate)
    with running(_app(lambda: det, max_queue=2, timeout_s=0.5)) as base, httpx.Client(timeout=10) as c:
        wait_ready(c, base)
        files = [("i", (f"{i}.png", png(i), "image/png")) for i in range(3)]
        r = c.post(f"{base}/v1/detect", files=files)
        assert r.status_code == 400 and "3 images in one request; this server queues at most 2" in r.json()["error"]
        gate.clear()
        r = c.post(f"{base}/v1/detect", content=png(1))
        assert r.status_code == 504 and "no result within 0.5 s" in r.json()["error"]
        gate.set()
        det.backend.fail = True
        r = c.post(f"{base}/v1/detect", content=png(1))
        assert r.status_code == 500 and r.json()["error"] == "RuntimeError: backend exploded"
        det.backend.fail = False
        assert c.post(f"{base}/v1/detect", content=png(8)).json()["results"][0]["detections"] == [expected(8)]


BAD_CONFIGS = [
    {"max_queue": 0},
    {"workers": -1},
    {"max_delay_ms": float("nan")},
    {"max_body_mb": 0},
    {"max_delay_ms": 1e300},
    {"max_delay_ms": 60_001},
    {"timeout_s": 1e300},
    {"timeout_s": 3601},
    {"drain_timeout_s": 1e300},
    {"max_body_mb": 1e9},
    {"max_queue": 2.0},
    {"timeout_s": "5"},
    {"max_images": True},
]


@pytest.mark.parametrize("bad", BAD_CONFIGS, ids=[f"{k}={v!r}" for d in BAD_CONFIGS for k, v in d.items()])
def test_config_validation(bad):
    (name,) = bad
    with pytest.raises(ConfigError, match=name):
        ServeConfig(**bad)


def test_config_takes_numpy_numbers_and_the_bounds_themselves():
    cfg = ServeConfig(max_queue=np.int64(8), max_batch=np.int32(2), max_delay_ms=np.float32(60_000), timeout_s=3600)
    assert (cfg.max_queue, cfg.max_batch, cfg.max_delay_ms, cfg.timeout_s) == (8, 2, 60_000.0, 3600.0)
    assert type(cfg.max_queue) is int and type(cfg.max_delay_ms) is float


@pytest.fixture
def no_server_start(monkeypatch):
    """Fail (instead of serving forever) if run_server gets as far as starting uvicorn."""
    import uvicorn

    def refuse(self, *args, **kwargs):
        raise AssertionError("the server started")

    monkeypatch.setattr(uvicorn.Server, "run", refuse)


@pytest.mark.parametrize("host", ["", " ", "\t", " 127.0.0.1", "127.0.0.1\n"])
def test_run_server_refuses_an_empty_host_before_loading(no_server_start, host):
    from retina_deploy.runtime.serve.runner import run_server

    loads, announced = [], []
    with pytest.raises(ConfigError, match="host must be an address"):
        run_server(lambda: loads.append(1) or fake_detector(), host=host, port=0, announce=announced.append)
    assert loads == [] and announced == []


def test_run_server_checks_the_model_before_binding(no_server_start):
    from retina_deploy.core.errors import ModelFileError
    from retina_deploy.runtime.serve.runner import run_server

    announced = []

    def broken():
        raise ModelFileError("m.onnx: not a loadable ONNX file")

    with pytest.raises(ModelFileError, match="not a loadable"):
        run_server(broken, port=0, announce=announced.append)
    with pytest.raises(ConfigError, match="max_batch 8 exceeds the model's maximum batch 4"):
        run_server(lambda: fake_detector(max_batch=4), ServeConfig(max_batch=8), port=0, announce=announced.append)
    exploding = fake_detector(max_batch=4)
    exploding.backend.fail = True  # the warm-up batch fails
    with pytest.raises(ModelFileError, match="model failed to load: RuntimeError: backend exploded"):
        run_server(lambda: exploding, port=0, announce=announced.append)
    assert announced == []  # never bound


# ------------------------------------------------------------------ SIGTERM


def _start(cmd: list[str], cwd: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
    if not m:
        proc.kill()
        raise AssertionError(f"no address announced: {line!r} {proc.stderr.read()}")
    return proc, m[1]


def _in_flight(base: str, bodies: list[bytes]) -> tuple[list, list[threading.Thread]]:
    """Send ``bodies`` from threads; return (results filled in as they answer, threads) once all are in the server."""
    with httpx.Client() as c:
        wait_ready(c, base)
    results: list = [None] * len(bodies)

    def post(i):
        with httpx.Client(timeout=60) as own:
            results[i] = own.post(f"{base}/v1/detect", content=bodies[i])

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    with httpx.Client() as c:  # every request is in the server (the /metrics request itself is one more)
        deadline = time.monotonic() + 30
        while _metric(c.get(f"{base}/metrics").text, "retina_requests_in_flight") < len(bodies) + 1:
            assert time.monotonic() < deadline, "the requests never reached the server"
            time.sleep(0.02)
    return results, threads


def _drain_check(proc: subprocess.Popen, base: str, bodies: list[bytes]) -> tuple[list[httpx.Response], str]:
    """SIGTERM while ``bodies`` are in flight: new connections get a JSON 503 until they are answered, then the
    process exits with status 0. Returns (their answers, the server's stderr)."""
    results, threads = _in_flight(base, bodies)
    proc.send_signal(signal.SIGTERM)
    with httpx.Client(timeout=10) as c:  # connections opened after SIGTERM: answered, not reset
        for _ in range(3):
            r = c.post(f"{base}/v1/detect", content=png(5))
            assert r.status_code == 503 and r.json()["error"] == "draining: shutting down", r.text
            assert r.headers["retry-after"] == "1" and r.headers["connection"] == "close"
        r = c.get(f"{base}/health/ready")
        assert r.status_code == 503 and "draining" in r.json()["error"]
    for t in threads:
        t.join(60)
    rc = proc.wait(60)
    err = proc.stderr.read()
    assert rc == 0, err
    assert "Traceback" not in err and "CancelledError" not in err, err
    return results, err


def _fake_server(**kw) -> tuple[subprocess.Popen, str]:
    args = ", ".join(f"{k}={v!r}" for k, v in kw.items())
    code = f"from testkit import serve_fakes; serve_fakes.serve_fake_main({args})"
    return _start([sys.executable, "-c", code], TESTS)


def test_sigterm_drains_in_flight_requests():
    proc, base = _fake_server(delay_s=2.0, drain_timeout_s=20.0)
    try:
        results, _ = _drain_check(proc, base, [png(v) for v in (21, 22, 23)])
    finally:
        proc.kill()
    for v, r in zip((21, 22, 23), results, strict=True):
        assert r is not None and r.status_code == 200, r
        assert r.json()["results"][0]["detections"] == [expected(v)]


def test_sigterm_with_a_stuck_backend_answers_503_at_the_drain_timeout_and_exits():
    """A batch that never ends (600 s): at --drain-timeout its requests get a JSON 503, and the process
    exits with 0 long before the backend would have returned."""
    proc, base = _fake_server(delay_s=600.0, drain_timeout_s=1.0)
    try:
        results, err = _drain_check(proc, base, [png(v) for v in (31, 32)])
    finally:
        proc.kill()
    for r in results:
        assert r is not None and r.status_code == 503, r
        assert r.json()["error"] == "shutting down: no result within the drain timeout (1 s)"
    assert "still running a batch" in err


def test_cli_serves_an_onnx_file_like_the_detector(tmp_path):
    """`retina-deploy serve model.onnx`: same detections as Detector in-process; SIGTERM drains."""
    from PIL import Image
    from testkit.detector_models import exported, images

    from retina_deploy.runtime.detector import Detector

    model = exported("onnx")
    paths = []
    for i, img in enumerate(images()[:2]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(paths[-1])
    with Detector.load(model, backend="ort-cpu") as det:
        want = [det.detect_one(p).to_dict()["detections"] for p in paths]
    cmd = [sys.executable, "-m", "retina_deploy.cli", "serve", str(model), "--port", "0", "--max-delay-ms", "1500"]
    proc, base = _start(cmd, tmp_path)
    try:
        results, _ = _drain_check(proc, base, [p.read_bytes() for p in paths])
    finally:
        proc.kill()
    for r, w in zip(results, want, strict=True):
        got = r.json()["results"][0]["detections"]
        assert [d["class_name"] for d in got] == [d["class_name"] for d in w]
        np.testing.assert_allclose([d["box"] for d in got], [d["box"] for d in w], atol=0.02)
        np.testing.assert_allclose([d["score"] for d in got], [d["score"] for d in w], atol=1e-4)


def test_cli_rejects_bad_arguments(tmp_path):
    from retina_deploy.cli.main import main

    assert main(["serve", str(tmp_path / "missing.onnx"), "--port", "0"]) == 1
    with pytest.raises(SystemExit):
        main(["serve", "m.onnx", "--max-queue", "0"])
    with pytest.raises(SystemExit):
        main(["serve", "m.onnx", "--max-delay-ms", "nan"])
