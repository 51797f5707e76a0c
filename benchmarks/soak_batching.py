"""Soak of the runtime: ``BatchingDetector`` under many client threads, bad images and random close/re-open.

Every request gets exactly one answer: a result, or a typed error (a bad image refused at submit, a full
queue, a timeout, a closed batcher). The script counts requests in and answers out per request id, so a
lost request (never answered) or a duplicated one (answered twice) shows up, and samples the process RSS.

    python benchmarks/soak_batching.py --minutes 10 --threads 16            # the documented soak
    python benchmarks/soak_batching.py --minutes 2 --model model.onnx       # an existing export

Without ``--model`` it exports a random-weights ResNet-18 at 128 px first, in a child process (needs torch),
so that the soaked process holds the runtime alone (numpy, pillow, onnxruntime) and its RSS is the runtime's.
Prints one JSON summary (RSS sampled every 10 s); exit status 1 when a request was lost or duplicated.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import TimeoutError as FutureTimeoutError
from pathlib import Path

import numpy as np
from PIL import Image

from retina_deploy.core.errors import RetinaDeployError
from retina_deploy.runtime.batching import BatcherError, BatchingDetector
from retina_deploy.runtime.detector import Detector


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def make_model(folder: Path) -> Path:
    """Export in a child process: torch never enters the soaked process."""
    import subprocess

    out = folder / "soak.onnx"
    subprocess.run([sys.executable, __file__, "--export-to", str(out)], check=True)
    return out


def export_model(out: Path) -> Path:
    from common import random_checkpoint

    from retina_deploy.export.onnx_export import ExportConfig, export_onnx

    ckpt = random_checkpoint(out.parent, backbone="resnet18", size=(128, 128))
    return export_onnx(ckpt, out, ExportConfig(batch=(1, 4, 8)))


def _png(rng: np.random.Generator, h: int, w: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_inputs(seed: int = 0) -> list[tuple[str, object]]:
    """(kind, image): good arrays and PNG bytes of several sizes, and bad inputs of several kinds."""
    rng = np.random.default_rng(seed)
    good = [("good", rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((96, 128), (200, 150), (64, 64))]
    good += [("good", _png(rng, h, w)) for h, w in ((120, 160), (80, 80))]
    png = _png(rng, 100, 100)
    bad = [
        ("bad", png[:80]),  # truncated
        ("bad", b"not an image at all"),
        ("bad", np.zeros((10, 10), np.uint8)),  # no channels
        ("bad", np.zeros((10, 10, 3), np.float32)),  # wrong dtype
        ("bad", b""),
    ]
    return good * 4 + bad  # 80% good


class Soak:
    def __init__(self, detector: Detector, args) -> None:
        self.detector, self.args = detector, args
        self.lock = threading.Lock()
        self.batcher = self._open()
        self.answers: Counter[int] = Counter()  # request id -> number of answers
        self.outcomes: Counter[str] = Counter()
        self.next_id = 0
        self.reopens = 0
        self.stop = threading.Event()

    def _open(self) -> BatchingDetector:
        a = self.args
        return BatchingDetector(
            self.detector, max_batch=a.max_batch, max_delay_ms=a.max_delay_ms, max_queue=a.max_queue
        )

    def _answer(self, rid: int, outcome: str) -> None:
        with self.lock:
            self.answers[rid] += 1
            self.outcomes[outcome] += 1

    def client(self, seed: int, inputs) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            kind, image = rng.choice(inputs)
            with self.lock:
                rid, self.next_id = self.next_id, self.next_id + 1
                batcher = self.batcher
            try:
                future = batcher.submit(image)
            except RetinaDeployError:
                self._answer(rid, f"{kind}:refused")
                continue
            except BatcherError as e:
                self._answer(rid, f"{kind}:{type(e).__name__}")
                continue
            future.add_done_callback(lambda f, rid=rid, kind=kind: self._done(rid, kind, f))
            try:
                future.result(timeout=self.args.timeout_s)
            except FutureTimeoutError:
                future.cancel()  # answered by the callback (cancelled) or later by the worker
            except Exception:  # noqa: BLE001 - the callback records every outcome
                pass

    def _done(self, rid: int, kind: str, future) -> None:
        if future.cancelled():
            outcome = "cancelled"
        elif future.exception() is not None:
            outcome = type(future.exception()).__name__
        else:
            outcome = "ok"
        self._answer(rid, f"{kind}:{outcome}")

    def reopener(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.wait(rng.uniform(0.5, self.args.reopen_every_s * 2)):
            with self.lock:
                old, self.batcher = self.batcher, self._open()
                self.reopens += 1
            old.close(drain=rng.random() < 0.5)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="an exported .onnx (default: a random ResNet-18 at 128 px)")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--max-delay-ms", type=float, default=5.0)
    p.add_argument("--max-queue", type=int, default=32)
    p.add_argument("--timeout-s", type=float, default=10.0)
    p.add_argument("--reopen-every-s", type=float, default=5.0, help="mean seconds between close()/re-open")
    p.add_argument("--ort-threads", type=int, default=1)
    p.add_argument("--export-to", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.export_to is not None:
        export_model(args.export_to)
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or make_model(Path(tmp))
        detector = Detector.load(model, num_threads=args.ort_threads)
        args.max_batch = min(args.max_batch, detector.max_batch)
        inputs = make_inputs()
        detector.detect([inputs[0][1]])  # warm-up: first-run allocations are not a leak
        soak = Soak(detector, args)
        gc.collect()
        objects_start = len(gc.get_objects())
        rss = [(0.0, rss_mib())]
        t0 = time.monotonic()
        threads = [threading.Thread(target=soak.client, args=(i, inputs), daemon=True) for i in range(args.threads)]
        threads.append(threading.Thread(target=soak.reopener, args=(12345,), daemon=True))
        for t in threads:
            t.start()
        end = t0 + 60 * args.minutes
        while (now := time.monotonic()) < end:
            time.sleep(min(10.0, end - now))
            rss.append((time.monotonic() - t0, rss_mib()))
        soak.stop.set()
        for t in threads:
            t.join(args.timeout_s + 30)
        soak.batcher.close()
        time.sleep(0.5)  # done-callbacks of the last batch
        elapsed = time.monotonic() - t0
        gc.collect()
        objects_end = len(gc.get_objects())
        stuck = [t.name for t in threads if t.is_alive()]
        requests_in = soak.next_id
        answered = sum(1 for n in soak.answers.values() if n >= 1)
        duplicated = sum(1 for n in soak.answers.values() if n > 1)
        warm = rss[1][1] if len(rss) > 2 else rss[0][1]  # after the first interval: pools and caches filled
        summary = {
            "minutes": round(elapsed / 60, 2),
            "threads": args.threads,
            "requests_in": requests_in,
            "answers_out": sum(soak.answers.values()),
            "lost": requests_in - answered,
            "duplicated": duplicated,
            "reopens": soak.reopens,
            "outcomes": dict(sorted(soak.outcomes.items())),
            "images_per_s": round(soak.outcomes.get("good:ok", 0) / elapsed, 1),
            "rss_mib": {
                "start": round(rss[0][1], 1),
                "after_first_interval": round(warm, 1),
                "end": round(rss[-1][1], 1),
                "max": round(max(r for _, r in rss), 1),
                "samples": " ".join(f"{t:.0f}s:{r:.0f}" for t, r in rss),
            },
            # Python objects alive (gc-tracked): a leak of requests, futures or batchers would grow this
            "python_objects": {"start": objects_start, "end": objects_end},
            "stuck_threads": stuck,
        }
    print(json.dumps(summary, indent=2))
    return 1 if summary["lost"] or summary["duplicated"] or stuck else 0


if __name__ == "__main__":
    sys.exit(main())
