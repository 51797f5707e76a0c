"""Load test of ``retina-deploy serve`` on loopback: N concurrent clients, batching off vs on, then overload.

    python benchmarks/serve_load.py [--model model.onnx] [--clients 8] [--requests 160] [--max-seconds 60]

Each phase starts its own server (``--max-batch 1``: batching off; ``--max-batch B``: on) on
127.0.0.1 with a free port, sends at most ``--requests`` requests from ``--clients`` threads (each
client waits for its answer before sending the next), stops after ``--max-seconds`` whatever
happens, and reports throughput and latency percentiles; the two modes alternate ``--rounds``
times so that load drift on a shared machine hits both alike. The overload phase sends
``--clients + --extra`` requests at once to a server with ``--max-queue`` small and checks: every
request answered once, the 503s fast with Retry-After, every 200 equal to the in-process Detector,
the server ready afterwards. Without ``--model`` a random-weights ResNet-18 (80 classes, 256 px)
is exported first (needs torch).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from retina_deploy.runtime.bench.stats import summarize


def make_model(work: Path) -> Path:
    from common import random_checkpoint

    from retina_deploy.export.onnx_export import ExportConfig, export_onnx

    out = work / "r18_256.onnx"
    if not out.exists():
        ckpt = random_checkpoint(work, backbone="resnet18", size=(256, 256))
        export_onnx(ckpt, out, ExportConfig(batch=(1, 4, 8)))
    return out


def make_images(n: int, seed: int = 0) -> list[bytes]:
    """JPEGs of camera-like sizes with smooth content (decode and resize cost as for real photos)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = ((480, 640), (720, 1280), (600, 400))[i % 3]
        small = rng.integers(0, 256, (h // 32 + 1, w // 32 + 1, 3), dtype=np.uint8)
        img = np.kron(small, np.ones((32, 32, 1), np.uint8))[:h, :w]
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class Server:
    """``retina-deploy serve`` in a subprocess on 127.0.0.1; stopped with SIGTERM."""

    def __init__(self, model: Path, *flags: str) -> None:
        cmd = [sys.executable, "-m", "retina_deploy.cli", "serve", str(model), "--port", "0", *flags]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        m = re.search(r"http://127\.0\.0\.1:(\d+)", self.proc.stdout.readline())
        if not m:
            self.proc.kill()
            raise RuntimeError("the server did not announce its address")
        self.port = int(m[1])
        deadline = time.monotonic() + 120
        while request(self.port, "GET", "/health/ready")[0] != 200:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("the server did not become ready")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 60):
    """(status, headers, body) or (0, {}, b"") when the connection fails."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    except OSError:
        return 0, {}, b""
    finally:
        conn.close()


def mean_batch(port: int) -> float:
    text = request(port, "GET", "/metrics")[2].decode()
    total = float(re.search(r"^retina_batch_size_sum (\S+)", text, re.M)[1])
    count = float(re.search(r"^retina_batch_size_count (\S+)", text, re.M)[1])
    return total / count if count else 0.0


def load_phase(port: int, images: list[bytes], clients: int, requests: int, max_seconds: float) -> dict:
    """``clients`` closed-loop clients until ``requests`` were sent or ``max_seconds`` passed."""
    latencies, statuses, lock = [], [], threading.Lock()
    sent = iter(range(requests))
    deadline = time.monotonic() + max_seconds

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                i = next(sent, None)
            if i is None:
                return
            start = time.perf_counter()
            status = request(port, "POST", "/v1/detect", images[i % len(images)])[0]
            with lock:
                latencies.append(time.perf_counter() - start)
                statuses.append(status)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ok = statuses.count(200)
    return {"ok": ok, "other": len(statuses) - ok, "wall_s": wall, "latencies": latencies}


def overload(model: Path, images: list[bytes], args) -> dict:
    """``clients + extra`` requests at once against ``--max-queue``: counts, speed of the 503s, correctness."""
    from retina_deploy.runtime.detector import Detector

    n = args.clients + args.extra
    bodies = [images[i % len(images)] for i in range(n)]
    with Detector.load(model, backend="ort-cpu") as det:
        want = [det.detect_one(b).to_dict()["detections"] for b in bodies]
    server = Server(model, "--max-batch", str(args.max_batch), "--max-queue", str(args.max_queue))
    answers: list = [None] * n
    barrier = threading.Barrier(n)

    def send(i: int) -> None:
        barrier.wait()
        start = time.perf_counter()
        status, headers, body = request(server.port, "POST", "/v1/detect", bodies[i])
        answers[i] = (status, headers, body, time.perf_counter() - start)

    try:
        threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        ready = request(server.port, "GET", "/health/ready")[0] == 200
    finally:
        server.stop()
    ok = [i for i, a in enumerate(answers) if a and a[0] == 200]
    rejected = [i for i, a in enumerate(answers) if a and a[0] == 503]
    correct = sum(_same(json.loads(answers[i][2])["results"][0]["detections"], want[i]) for i in ok)
    return {
        "sent": n,
        "answered": sum(a is not None for a in answers),
        "ok": len(ok),
        "ok_correct": correct,
        "rejected_503": len(rejected),
        "retry_after": all(answers[i][1].get("retry-after") == "1" for i in rejected),
        "max_503_ms": max((answers[i][3] * 1000 for i in rejected), default=0.0),
        "max_200_ms": max((answers[i][3] * 1000 for i in ok), default=0.0),
        "ready_after": ready,
    }


def _same(got: list[dict], want: list[dict]) -> bool:
    if [d["class_id"] for d in got] != [d["class_id"] for d in want]:
        return False
    return all(
        np.allclose(g["box"], w["box"], atol=0.05) and abs(g["score"] - w["score"]) < 1e-4
        for g, w in zip(got, want, strict=True)
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="ONNX file (default: export a random ResNet-18 at 256 px)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "retina-serve-load")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=160, help="per phase")
    p.add_argument("--max-seconds", type=float, default=60.0, help="per phase")
    p.add_argument("--rounds", type=int, default=2, help="off/on alternations")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-delay-ms", type=float, default=10.0)
    p.add_argument("--max-queue", type=int, default=4, help="overload phase")
    p.add_argument("--extra", type=int, default=16, help="overload phase: requests beyond --clients")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    for name in ("clients", "requests", "rounds", "max_batch", "max_queue", "extra"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 < args.max_seconds <= 600:
        p.error("--max-seconds must be in (0, 600]")
    args.work.mkdir(parents=True, exist_ok=True)
    model = args.model or make_model(args.work)
    images = make_images(12)
    modes = {"off": ["--max-batch", "1"], "on": ["--max-batch", str(args.max_batch)]}
    results = {m: {"ok": 0, "other": 0, "wall_s": 0.0, "latencies": [], "mean_batch": []} for m in modes}
    for _ in range(args.rounds):
        for mode, flags in modes.items():
            server = Server(model, *flags, "--max-delay-ms", str(args.max_delay_ms), "--max-queue", "256")
            try:
                r = load_phase(server.port, images, args.clients, args.requests // args.rounds, args.max_seconds)
                results[mode]["mean_batch"].append(mean_batch(server.port))
            finally:
                server.stop()
            for key in ("ok", "other", "wall_s"):
                results[mode][key] += r[key]
            results[mode]["latencies"] += r["latencies"]
    report = {"machine": platform.processor() or platform.machine(), "clients": args.clients, "model": str(model)}
    for mode, r in results.items():
        s = summarize(r["latencies"])
        report[f"batching_{mode}"] = {
            "requests_ok": r["ok"],
            "errors": r["other"],
            "throughput_rps": r["ok"] / r["wall_s"],
            "p50_ms": s.median * 1000,
            "p99_ms": s.p99 * 1000,
            "mean_batch": float(np.mean(r["mean_batch"])),
        }
        print(
            f"batching {mode:3s}: {r['ok']} ok, {r['other']} errors, {r['ok'] / r['wall_s']:.2f} req/s, "
            f"p50 {s.median * 1000:.0f} ms, p99 {s.p99 * 1000:.0f} ms, mean batch {np.mean(r['mean_batch']):.2f}"
        )
    report["overload"] = overload(model, images, args)
    print("overload:", json.dumps(report["overload"]))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
