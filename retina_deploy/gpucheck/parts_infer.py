"""PyTorch inference parts: eager and ``torch.compile`` latency of the network core, FP32 / TF32 / FP16.

Latency is timed with CUDA events around each run (after warm-up runs), so host overhead between
launches counts but Python timing noise does not; the median and the 90th percentile are reported,
with the achieved TFLOP/s and the fraction of the GPU's dense peak (``runtime.bench.peak``). FP32 disables TF32
in cuDNN and cuBLAS; TF32 enables it; FP16 runs a half-precision copy of the weights (as an engine does).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from retina_deploy.gpucheck.context import CheckContext, require_modules
from retina_deploy.gpucheck.report import Clock, PartRecord, run_step
from retina_deploy.runtime.bench.peak import fraction_of_peak

WARMUP = 3


@contextlib.contextmanager
def precision_flags(precision: str) -> Iterator[None]:
    """TF32 on for "tf32", off otherwise (cuDNN and cuBLAS); the previous flags are restored."""
    import torch

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    on = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def time_runs(fn: Callable[[], Any], device, iters: int) -> list[float]:
    """Seconds of each of ``iters`` runs of ``fn`` after WARMUP untimed ones (CUDA events on a GPU)."""
    import torch

    for _ in range(WARMUP):
        fn()
    if device.type != "cuda":
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return times
    torch.cuda.synchronize(device)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return [start.elapsed_time(end) / 1e3 for start, end in events]


def latency_row(times: list[float], flops: int, batch: int, gpu: dict[str, Any], precision: str) -> dict[str, Any]:
    """Median / p90 latency (ms), images/s, achieved TFLOP/s and fraction of peak from per-run seconds."""
    median = statistics.median(times)
    ordered = sorted(times)
    tflops, fraction = fraction_of_peak(flops * batch, median, gpu["name"], precision, sm_count=gpu.get("sms"))
    return {
        "median_ms": round(median * 1e3, 3),
        "p90_ms": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1e3, 3),
        "images_per_s": round(batch / median, 1),
        "tflops": tflops,
        "fraction_of_peak": fraction,
        "runs": len(times),
    }


class InferenceBench:
    """The network core of the plan's backbone on one device, its FLOPs, and one timed run per setting."""

    def __init__(self, ctx: CheckContext) -> None:
        import torch

        self.ctx, self.plan = ctx, ctx.plan
        self.device = ctx.torch_device()  # Skip before the model imports when there is no GPU

        from retina_deploy.gpucheck.models import count_flops, network_core

        self.core = network_core(self.plan.infer_backbone, fpn_channels=self.plan.infer_fpn).to(self.device)
        self.core_half = None
        h, w = self.plan.infer_size
        self.flops = count_flops(self.core, torch.zeros(1, 3, h, w, device=self.device))
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            self.gpu = {"name": props.name, "sms": props.multi_processor_count}
            torch.backends.cudnn.benchmark = True
        else:
            self.gpu = {"name": "cpu", "sms": None}

    def module(self, precision: str):
        import copy

        if precision != "fp16":
            return self.core
        if self.core_half is None:
            self.core_half = copy.deepcopy(self.core).half()
        return self.core_half

    def input(self, precision: str, batch: int):
        import torch

        h, w = self.plan.infer_size
        dtype = torch.float16 if precision == "fp16" else torch.float32
        return torch.randn(batch, 3, h, w, generator=torch.Generator().manual_seed(batch)).to(self.device, dtype)

    def measure(self, fn: Callable, precision: str, batch: int) -> dict[str, Any]:
        import torch

        x = self.input(precision, batch)
        with precision_flags(precision), torch.inference_mode():
            times = time_runs(lambda: fn(x), self.device, self.plan.infer_iters)
        return latency_row(times, self.flops, batch, self.gpu, precision)


def part_infer_eager(ctx: CheckContext, rec: PartRecord, clock: Clock) -> None:
    """Eager latency of the plan's backbone at its size, per precision and batch."""
    require_modules("torch", "torchvision")
    bench = InferenceBench(ctx)
    rec.figures["model"] = {
        "backbone": ctx.plan.infer_backbone,
        "size": list(ctx.plan.infer_size),
        "gflops_per_image": round(bench.flops / 1e9, 1),
        "gpu": bench.gpu["name"],
    }
    for precision in ctx.plan.infer_precisions:
        for batch in ctx.plan.infer_batches:
            clock.require(3, f"eager {precision} batch {batch}")
            key = f"eager/{precision}/b{batch}"
            run_step(rec, key, lambda p=precision, b=batch: bench.measure(bench.module(p), p, b))
    rec.summary = _latency_summary(rec)


def compile_and_measure(bench: InferenceBench, precision: str, batch: int) -> dict[str, Any]:
    """torch.compile (default mode, static shapes) of the core; compile seconds, then the timed runs."""
    import torch
    import torch._dynamo

    torch._dynamo.reset()
    compiled = torch.compile(bench.module(precision), dynamic=False)
    x = bench.input(precision, batch)
    start = time.perf_counter()
    with precision_flags(precision), torch.inference_mode():
        compiled(x)
        if bench.device.type == "cuda":
            torch.cuda.synchronize(bench.device)
    compile_s = time.perf_counter() - start
    row = bench.measure(compiled, precision, batch)
    eager = bench.measure(bench.module(precision), precision, batch)
    return {
        **row,
        "compile_s": round(compile_s, 1),
        "speedup_vs_eager": round(eager["median_ms"] / row["median_ms"], 3),
    }


def part_infer_compile(ctx: CheckContext, rec: PartRecord, clock: Clock) -> None:
    """torch.compile latency for the plan's (precision, batch) pairs while the budget lasts."""
    require_modules("torch", "torchvision")
    if not ctx.plan.compile:
        from retina_deploy.gpucheck.report import Skip

        raise Skip("not run in this mode (compiling takes minutes on a CPU)")
    bench = InferenceBench(ctx)
    estimate = 60.0
    for precision, batch in ctx.plan.compile:
        clock.require(estimate, f"torch.compile {precision} batch {batch}")
        row = run_step(
            rec, f"compile/{precision}/b{batch}", lambda p=precision, b=batch: compile_and_measure(bench, p, b)
        )
        estimate = max(20.0, 1.3 * row["seconds"])
    rec.summary = _latency_summary(rec)


def _latency_summary(rec: PartRecord) -> str:
    rows = [(k, v) for k, v in rec.figures.items() if isinstance(v, dict) and v.get("status") == "ok"]
    text = [f"{k.split('/', 1)[1]} {v['median_ms']} ms" for k, v in rows]
    fractions = [v["fraction_of_peak"] for _, v in rows if v.get("fraction_of_peak") is not None]
    peak = f"; best {max(fractions):.0%} of peak" if fractions else ""
    return ", ".join(text) + peak
