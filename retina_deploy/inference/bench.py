"""``retina-deploy bench``: latency, throughput, phases, FLOPs and the fraction of peak of any model file.

``run_bench(models, cfg)`` opens each MODEL (checkpoint folder: PyTorch eager or ``torch.compile``;
``.onnx``: ONNX Runtime; ``.engine``: TensorRT / TensorRT-RTX), times it at every batch size with the
runtime's one timer (``runtime.bench.run.measure``), counts its FLOPs per image from the graph, puts
the achieved rate against the device's peak, and returns the report (``runtime.bench.report`` gives
its schema). Torch is imported only for checkpoints: engines and ONNX files bench on a torch-free
install (a Jetson with only the runtime).
"""

from __future__ import annotations

import datetime
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retina_deploy.core.artifacts import model_kind
from retina_deploy.core.errors import ConfigError, DatasetError, ModelFileError
from retina_deploy.inference.open import FITS, device_gpu, open_model, resolved_backend
from retina_deploy.runtime.bench import envinfo
from retina_deploy.runtime.bench.report import SCHEMA, SCHEMA_VERSION
from retina_deploy.runtime.bench.run import DetectorTarget, RunLength, measure

KINDS = ("checkpoint", "onnx", "engine")  # what bench opens (a Triton server's timings are not the model's)
BACKENDS = tuple(dict.fromkeys(b for kind in KINDS for b in FITS[kind]))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
SYNTHETIC_SIZE = 640  # longest side of the synthetic images: the preprocessing really resizes


@dataclass(frozen=True)
class BenchConfig:
    """What ``run_bench`` measures.

    batches: batch sizes, each within every model's range. length: warm-up and duration / iterations.
    backends: backend names; each model runs with those that fit its kind ("auto" fits all).
    device: "cpu" or "cuda[:N]". threads: intra-op threads (ONNX Runtime and PyTorch; None: theirs).
    images: a folder of JPEG/PNG/BMP images, or None for ``num_images`` synthetic ones.
    peak_tflops: the device's peak, given (None: datasheet for known GPUs, a probe on CPUs).
    peak_probe: measure the CPU's peak with a short matrix product when none is given.
    torch_compile: run checkpoints through ``torch.compile`` as well as eagerly.
    cuda_graphs: engines replay CUDA graphs. command: the command line, for the report.
    """

    batches: tuple[int, ...] = (1,)
    length: RunLength = RunLength()
    backends: tuple[str, ...] = ("auto",)
    device: str = "cpu"
    threads: int | None = None
    images: Path | None = None
    num_images: int = 16
    peak_tflops: float | None = None
    peak_probe: bool = True
    torch_compile: bool = False
    cuda_graphs: bool = False
    command: str = "retina-deploy bench"

    def __post_init__(self) -> None:
        if not self.batches or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.batches):
            raise ConfigError(f"batch sizes must be integers >= 1, got {list(self.batches)}")
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown:
            raise ConfigError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")
        device_gpu(self.device)
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.num_images < 1:
            raise ConfigError(f"num_images must be >= 1, got {self.num_images}")
        if self.peak_tflops is not None and not (math.isfinite(self.peak_tflops) and self.peak_tflops > 0):
            raise ConfigError(f"peak TFLOP/s must be a finite number > 0, got {self.peak_tflops}")


def check_device(device: str, kinds: Sequence[str]) -> None:
    """ConfigError when ``device`` is a GPU this machine does not have, or a CPU for an engine."""
    index = device_gpu(device)
    if index is None:
        if "engine" in kinds:
            raise ConfigError("TensorRT engines run on a GPU: pass --device cuda:N")
        return
    count = envinfo.cuda_device_count()
    if count is not None and index >= count:
        raise ConfigError(f"device {device} is absent: {count} CUDA device(s) visible on this machine")


def load_images(folder: Path | None, num: int) -> tuple[list[np.ndarray], str]:
    """Decoded RGB images (uint8 [h, w, 3]) and a description: the first ``num`` of ``folder`` (sorted),
    or ``num`` synthetic shapes images of up to 640 px (decoding is never part of a timed run)."""
    if folder is None:
        from retina_deploy.data.shapes import render_image

        images = [render_image(np.random.default_rng(i), size=SYNTHETIC_SIZE, num_objects=4)[0] for i in range(num)]
        return images, f"{num} synthetic make-shapes images, longest side {SYNTHETIC_SIZE} px"
    from retina_deploy.runtime.image.image_io import load_image

    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such images folder")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())[:num]
    if not files:
        raise DatasetError(f"{folder}: no JPEG, PNG or BMP images")
    return [load_image(p) for p in files], f"{len(files)} images from {folder}"


def _onnx_flops(path: Path) -> tuple[int | None, str | None]:
    from retina_deploy.runtime.bench.flops import count_onnx_flops

    try:
        count = count_onnx_flops(path)
    except ModelFileError as e:
        return None, f"not counted: {e}"
    source = "ONNX graph (conv + matmul)"
    if count.uncounted:
        source += f", lower bound: {len(count.uncounted)} nodes without inferred shapes"
    return count.total, source


def _engine_source_onnx(engine: Path) -> Path | None:
    """The ONNX file an engine was built from, found beside it by its sha256 (in the manifest)."""
    from retina_deploy.core.fileio import sha256_file
    from retina_deploy.runtime.contract.manifest import read_manifest

    try:
        wanted = read_manifest(engine).onnx_sha256
    except ModelFileError:
        return None
    candidates = sorted(engine.parent.glob("*.onnx"), key=lambda p: p.stem != engine.stem)
    return next((p for p in candidates if sha256_file(p) == wanted), None)


def _flops(path: Path, kind: str, target: DetectorTarget) -> tuple[int | None, str | None]:
    count = getattr(target.detector.backend, "flops_per_image", None)  # PyTorch counts its own
    if count is not None:
        return count()
    if kind == "onnx":
        return _onnx_flops(path)
    source = _engine_source_onnx(path)
    if source is None:
        return None, "not counted: the engine's source ONNX file is not beside it"
    flops, how = _onnx_flops(source)
    return flops, f"{how}, from {source.name}"


class _Peaks:
    """The peak for a (device, precision), computed once: given, datasheet (GPU) or probed (CPU)."""

    def __init__(self, cfg: BenchConfig, env: dict) -> None:
        self.cfg, self.env, self.cache = cfg, env, {}

    def get(self, precision: str) -> tuple[float | None, str | None]:
        from retina_deploy.runtime.bench.peak import cpu_peak_probe, gpu_datasheet_peak

        if self.cfg.peak_tflops is not None:
            return self.cfg.peak_tflops * 1e12, "given (--peak-tflops)"
        key = "int8" if precision == "int8" else "fp16" if precision == "fp16" else "fp32"
        if key not in self.cache:
            index = device_gpu(self.cfg.device)
            if index is not None:
                gpus = self.env["gpus"]
                peak = gpu_datasheet_peak(gpus[index]["name"], key) if index < len(gpus) else None
            elif self.cfg.peak_probe:
                # CPUs run our FP16 files with FP32 kernels (casts inserted): their peak is the FP32 one.
                peak = cpu_peak_probe("int8" if key == "int8" else "fp32", threads=self.cfg.threads)
            else:
                peak = None
            self.cache[key] = (peak.flops_per_s, peak.source) if peak else (None, None)
        return self.cache[key]


def _open(path: Path, kind: str, backend: str, cfg: BenchConfig, label: str, compile_model: bool) -> DetectorTarget:
    detector = open_model(
        path,
        device=cfg.device,
        backend=backend,
        num_threads=cfg.threads,
        cuda_graphs=cfg.cuda_graphs,
        compile_model=compile_model,
    )
    return DetectorTarget(detector, label=label, kind=kind, device=cfg.device)


def _plan(models: Sequence[Path], cfg: BenchConfig) -> list[tuple[Path, str, str, bool]]:
    """(path, kind, backend, torch.compile) for each run, after checking every model and the device."""
    kinds = [model_kind(Path(m)) for m in models]
    check_device(cfg.device, kinds)
    plan = []
    for path, kind in zip(models, kinds, strict=True):
        fitting = [b for b in cfg.backends if b in FITS[kind]]
        if not fitting:
            raise ConfigError(f"{path}: none of the backends {list(cfg.backends)} runs a {kind}")
        # "auto" on an ONNX file is the backend --device names: each one runs once
        named = (resolved_backend(path, b, cfg.device) if kind == "onnx" else b for b in fitting)
        for backend in dict.fromkeys(named):
            plan.append((Path(path), kind, backend, False))
            if kind == "checkpoint" and cfg.torch_compile:
                plan.append((Path(path), kind, backend, True))
    return plan


def run_bench(models: Sequence[str | os.PathLike], cfg: BenchConfig, *, log=print) -> dict:
    """Benchmark every model at every batch size of ``cfg``; returns the report (see ``runtime.bench.report``).

    Raises ModelFileError (missing or foreign model), ConfigError (a batch outside a model's range, an
    absent device, a backend that fits no model), DatasetError (no images).
    """
    if not models:
        raise ConfigError("give at least one MODEL")
    plan = _plan([Path(m) for m in models], cfg)
    labels = _labels([path for path, *_ in plan])
    images, images_desc = load_images(cfg.images, cfg.num_images)
    env = envinfo.environment()
    env["load_before"] = envinfo.machine_load()
    peaks = _Peaks(cfg, env)
    results = []
    for path, kind, backend, compile_model in plan:
        target = _open(path, kind, backend, cfg, labels[path], compile_model)
        try:
            lo, hi = target.batch_range
            bad = [b for b in cfg.batches if not lo <= b <= hi]
            if bad:
                raise ConfigError(f"{path}: batch {bad[0]} is outside the model's range {lo}..{hi}")
            flops, flops_source = _flops(path, kind, target)
            for batch in cfg.batches:
                log(f"bench: {target.label} [{target.backend}] batch {batch} ...")
                reset = getattr(target.detector.backend, "reset_gpu_peak", None)
                if reset is not None:
                    reset()
                record = measure(target, batch, images, cfg.length)
                record["memory"]["gpu_mib"] = _gpu_mib(target, cfg.device)
                results.append(_with_efficiency(record, flops, flops_source, peaks))
        finally:
            target.close()
    env["load_after"] = envinfo.machine_load()
    report = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": cfg.command,
        "settings": {
            "batches": list(cfg.batches),
            "warmup_s": cfg.length.warmup_s,
            "duration_s": cfg.length.duration_s,
            "iterations": cfg.length.iterations,
            "device": cfg.device,
            "threads": cfg.threads,
            "images": images_desc,
            "cv_warn": cfg.length.cv_warn,
        },
        "environment": env,
        "results": results,
        "warnings": _load_warnings(env),
    }
    return report


def _labels(paths: Sequence[Path]) -> dict[Path, str]:
    """A short name per model for the table and plot: its file or folder name, or the path as given
    where two models share a name (``r101/model.onnx``, ``r18/model.onnx``)."""

    def short(p: Path) -> str:
        return f"{p.parent.name}/{p.name}" if p.name in ("best", "last") else p.name

    names = [short(p) for p in dict.fromkeys(paths)]
    return {p: (short(p) if names.count(short(p)) == 1 else str(p)) for p in dict.fromkeys(paths)}


def _gpu_mib(target: DetectorTarget, device: str) -> float | None:
    if device_gpu(device) is None:
        return None
    peak = getattr(target.detector.backend, "gpu_peak_mib", None)  # PyTorch's allocator knows its peak
    if peak is not None:
        return peak()
    used = envinfo.gpu_process_memory_bytes(device_gpu(device) or 0)
    return used / 2**20 if used is not None else None


def _with_efficiency(record: dict, flops: int | None, flops_source: str | None, peaks: _Peaks) -> dict:
    compute = record["compute_ms"]
    achieved = None
    if flops is not None and compute and compute["mean"] > 0:
        achieved = flops * record["batch"] / (compute["mean"] / 1e3)
    peak, peak_source = peaks.get(record["precision"])
    record.update(
        flops_per_image=flops,
        flops_source=flops_source,
        achieved_tflops=achieved / 1e12 if achieved is not None else None,
        peak_tflops=peak / 1e12 if peak is not None else None,
        peak_source=peak_source,
        fraction_of_peak=achieved / peak if achieved is not None and peak else None,
    )
    return record


def _load_warnings(env: dict) -> list[str]:
    warnings = []
    for when in ("load_before", "load_after"):
        load = env.get(when)
        if load and load["busy"]:
            top = ", ".join(f"{p['name']} ({p['cpu_pct']:.0f}% CPU)" for p in load["top"])
            warnings.append(
                f"machine busy {when.removeprefix('load_')} the run: other processes used "
                f"{load['other_cpu_share']:.0%} of the CPU time ({top}); figures are pessimistic"
            )
    return warnings
