"""One model at one batch size, timed end to end with its phases (torch-free).

A bench target is anything with ``label``, ``kind``, ``backend``, ``precision``, ``device``,
``input_size`` (H, W), ``batch_range`` (min, max), ``step(images, stopwatch)`` (one batch: uint8 RGB
images in, detections out, phases recorded) and ``close()``. ``DetectorTarget`` wraps an opened
``Detector`` of any backend (``retina_deploy.inference.open_model`` opens checkpoints too).

Phases: ``preprocess`` (resize, normalise, pad, stack), ``h2d``, ``compute``, ``d2h``, ``postprocess``
(host NMS for ``--nms none`` files, boxes back to original pixels). Image decoding is not timed:
images are decoded once before the run. Where a backend cannot separate the copies from the
computation (ONNX Runtime), ``compute`` includes them and ``h2d`` / ``d2h`` are absent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from retina_deploy.core.errors import ConfigError
from retina_deploy.runtime.bench.envinfo import peak_rss_bytes, peak_rss_reset
from retina_deploy.runtime.bench.stats import DEFAULT_CV_WARN, Stopwatch, check_run_length, summarize, time_iterations

PHASES = ("preprocess", "h2d", "compute", "d2h", "postprocess")


@dataclass(frozen=True)
class RunLength:
    """How long each (model, batch) runs: ``warmup_s`` untimed, then ``duration_s`` or ``iterations``."""

    warmup_s: float = 2.0
    duration_s: float | None = 10.0
    iterations: int | None = None
    cv_warn: float = DEFAULT_CV_WARN

    def __post_init__(self) -> None:
        check_run_length(self.warmup_s, self.duration_s, self.iterations)
        if not 0 < float(self.cv_warn) < 10:
            raise ConfigError(f"the CV warning threshold must be a fraction in (0, 10), got {self.cv_warn}")


class DetectorTarget:
    """An opened ``Detector`` (any backend) as bench's target: its steps timed phase by phase.

    label: the model's short name in the report; kind: "checkpoint", "onnx" or "engine"; device:
    as given to bench ("cpu", "cuda:N"). Where the backend records a CUDA-event split of its run
    (``enable_phase_timing`` + ``last_timings_s``: TensorRT, PyTorch on a GPU), it is turned on here.
    """

    def __init__(self, detector, *, label: str, kind: str, device: str = "cpu") -> None:
        self.detector = detector
        self.label = label
        self.kind = kind
        self.backend = detector.backend.name
        self.device = device
        self.precision = _precision_of(detector.backend)
        self.input_size = tuple(detector.preprocess_cfg.size)
        self.batch_range = (detector.min_batch, detector.max_batch)
        enable = getattr(detector.backend, "enable_phase_timing", None)
        if enable is not None:
            enable()

    def step(self, images: Sequence[np.ndarray], sw: Stopwatch) -> None:
        det = self.detector
        with sw.phase("preprocess"):
            prepared = [det.prepare(img) for img in images]
            batch = np.ascontiguousarray(np.stack([p.chw for p in prepared]), dtype=np.float32)
        with sw.phase("compute"):
            raw = det.backend.run(batch)
        events = getattr(det.backend, "last_timings_s", None)  # CUDA-event split, where the backend records one
        if events:
            sw.phases.pop("compute")
            for name in ("h2d", "compute", "d2h"):
                sw.add(name, events.get(name, 0.0))
        with sw.phase("postprocess"):
            det.postprocess(raw, prepared)  # the Detector's own post-processing, timed apart from the backend

    def graph_status(self, batch: int) -> str | None:
        """Whether ``batch`` ran as a CUDA graph (``TrtBackend.graph_status``); None: graphs off or not an engine."""
        status = getattr(self.detector.backend, "graph_status", None)
        return status(batch) if status is not None else None

    def close(self) -> None:
        self.detector.close()


def _precision_of(backend) -> str:
    """The file's precision (ONNX metadata, engine manifest); "fp32" for a backend without either (PyTorch)."""
    model = getattr(backend, "model", backend)  # ONNX Runtime: its OnnxModel; OpenVINO: itself
    if getattr(model, "metadata", None) is not None:
        return model.metadata.precision
    manifest = getattr(backend, "manifest", None)
    return manifest.precision if manifest is not None else "fp32"


def batches_of(images: Sequence[np.ndarray], batch: int):
    """A step's image source: consecutive batches of ``batch`` images, cycling through ``images``."""
    position = 0

    def next_batch() -> list[np.ndarray]:
        nonlocal position
        chunk = [images[(position + i) % len(images)] for i in range(batch)]
        position = (position + batch) % len(images)
        return chunk

    return next_batch


def measure(target, batch: int, images: Sequence[np.ndarray], length: RunLength) -> dict:
    """Time ``target`` at ``batch``; the result record of the JSON report (times in ms), without FLOPs."""
    lo, hi = target.batch_range
    if not lo <= batch <= hi:
        raise ConfigError(f"{target.label}: batch {batch} is outside the model's range {lo}..{hi}")
    next_batch = batches_of(images, batch)
    peak_rss_reset()
    timings = time_iterations(
        lambda sw: target.step(next_batch(), sw),
        warmup_s=length.warmup_s,
        duration_s=length.duration_s,
        iterations=length.iterations,
    )
    rss = peak_rss_bytes()
    latency = summarize(timings.total)
    phases = {name: (summarize(timings.phases[name]).mean * 1e3 if name in timings.phases else None) for name in PHASES}
    compute = summarize(timings.phases["compute"]) if "compute" in timings.phases else None
    warnings = []
    graphs = target.graph_status(batch) if hasattr(target, "graph_status") else None
    if graphs is not None and not graphs.startswith(("captured", "built-in")):
        warnings.append(f"CUDA graphs were asked for but batch {batch} ran without one ({graphs})")
    if latency.cv > length.cv_warn:
        warnings.append(
            f"latency CV {latency.cv:.1%} > {length.cv_warn:.1%}: unstable timing (other processes, frequency "
            "scaling); lock clocks, pin threads or run longer"
        )
    return {
        "model": target.label,
        "kind": target.kind,
        "backend": target.backend,
        "precision": target.precision,
        "device": target.device,
        "input_size": list(target.input_size),
        "batch": batch,
        "iterations": latency.n,
        "warmup_iterations": timings.warmup_iterations,
        "latency_ms": latency.scaled(1e3),
        "images_per_s": batch / latency.mean,
        "phases_ms": phases,
        "compute_ms": compute.scaled(1e3) if compute else None,
        "memory": {"host_peak_rss_mib": rss / 2**20 if rss else None, "gpu_mib": None},
        "cuda_graphs": graphs,
        "warnings": warnings,
    }
