"""ONNX Runtime on the GPU: the exported file on the CUDA (and TensorRT) execution providers, against ORT CPU.

Everything goes through ``Detector.load(path, backend=...)``, the runtime users call; the reference
is the same file on ``ort-cpu``. Latency: ``backend.run`` alone (inference) at batch 1 and the file's
largest batch, and ``detect`` of that many images (preprocessing and post-processing included).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from retina_deploy.gpucheck.context import CheckContext, require_modules
from retina_deploy.gpucheck.parity import match_detections, require_parity
from retina_deploy.gpucheck.report import Clock, PartRecord, Skip, run_step

ORT_BACKENDS = {"ort-cuda": "CUDAExecutionProvider", "ort-tensorrt": "TensorrtExecutionProvider"}
TIMED_RUNS = {"full": 20, "quick": 8, "cpu-dry-run": 2}


def _median_ms(fn, runs: int) -> float:
    fn()  # warm-up (first-run allocations, lazy kernel selection)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 3)


def detector_latency(detector: Any, images: list[np.ndarray], runs: int) -> dict[str, Any]:
    """Median ms of ``backend.run`` at batch 1 and the largest batch, and of ``detect`` on that many images."""
    chw = [detector.prepare(img).chw for img in images]
    big = max(detector.min_batch, min(detector.max_batch, 8))
    row: dict[str, Any] = {}
    for b in sorted({max(1, detector.min_batch), big}):
        batch = np.stack([chw[i % len(chw)] for i in range(b)])
        row[f"infer_b{b}_ms"] = _median_ms(lambda x=batch: detector.backend.run(x), runs)
    many = [images[i % len(images)] for i in range(big)]
    row[f"detect_{big}_images_ms"] = _median_ms(lambda: detector.detect(many), max(1, runs // 2))
    return row


def reference_detections(path: Path, images: list[np.ndarray]) -> list:
    """The same file on ONNX Runtime's CPU provider: the reference of every GPU backend."""
    from retina_deploy.runtime import Detector

    with Detector.load(path, backend="ort-cpu") as detector:
        return detector.detect(images)


def compare_ort_backend(ctx: CheckContext, path: Path, backend: str, images, ref, precision: str) -> dict[str, Any]:
    """Run ``path`` on ``backend``; check its provider is really active and its detections match ``ref``."""
    from retina_deploy.runtime import Detector

    with Detector.load(path, backend=backend) as detector:
        active = detector.backend.model.session.get_providers()
        if ORT_BACKENDS[backend] not in active:
            raise Skip(
                f"{ORT_BACKENDS[backend]} is in this onnxruntime build but did not load (active: {active}):"
                " its CUDA / TensorRT libraries are missing or of another version; see gpu-check.log"
            )
        got = detector.detect(images)
        row = {"active_providers": active, **match_detections(ref, got)}
        row.update(detector_latency(detector, images, TIMED_RUNS[ctx.mode]))
    require_parity(row, precision, backend)
    return row


def part_ort_gpu(ctx: CheckContext, rec: PartRecord, clock: Clock) -> None:
    """The exported FP32 file on ONNX Runtime's CUDA and TensorRT providers, parity with ORT CPU."""
    require_modules("onnxruntime")
    import onnxruntime as ort

    providers = ort.get_available_providers()
    rec.figures["onnxruntime"] = {"version": ort.__version__, "providers": providers}
    if ORT_BACKENDS["ort-cuda"] not in providers:
        raise Skip(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider: pip install onnxruntime-gpu")
    ctx.require_gpu()
    require_modules("onnx", "onnxslim", "retina_deploy.export", "safetensors")
    clock.require(20, "exporting the ONNX file")
    path = ctx.onnx("onnx")
    images = ctx.test_images()
    ref = reference_detections(path, images)
    rec.figures["model"] = {"file": path.name, "backbone": ctx.plan.engine_backbone, "size": list(ctx.plan.engine_size)}
    for backend, provider in ORT_BACKENDS.items():
        if provider not in providers:
            rec.figures[backend] = {"status": "skipped", "reason": f"{provider} is not in this onnxruntime build"}
            continue
        clock.require(10 if backend == "ort-cuda" else 60, backend)
        run_step(rec, backend, lambda b=backend: compare_ort_backend(ctx, path, b, images, ref, "fp32"))
    rows = [(k, v) for k, v in rec.figures.items() if isinstance(v, dict) and v.get("status") == "ok"]
    rec.summary = "; ".join(f"{k}: matched {v['matched_fraction']:.0%}, b1 {v.get('infer_b1_ms')} ms" for k, v in rows)
