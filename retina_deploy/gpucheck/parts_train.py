"""Training parts: step throughput with AMP (bf16, fp16 + loss scaler), one DDP step, an exact resume.

All three run the training package's own code: ``train_step`` with ``StepOptions`` and a GradScaler
(as ``train()`` builds them), ``build_optimizer``, and for the resume ``train()`` itself on a
synthetic shapes dataset written in the output folder.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any

from retina_deploy.gpucheck.context import CheckContext, require_modules
from retina_deploy.gpucheck.report import Clock, Disagree, PartRecord, Skip, run_step

AMP_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "none": None}


def _step_options(device, amp: str):
    import torch

    from retina_deploy.training.loop import StepOptions

    dtype = None if AMP_DTYPES[amp] is None else getattr(torch, AMP_DTYPES[amp])
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    return StepOptions(device, amp_dtype=dtype, grad_clip=10.0, scaler=scaler)


def _model_and_optimizer(backbone: str, device, *, fpn_channels: int = 256):
    import torch

    from retina_deploy.model import build_model
    from retina_deploy.model.config import ModelConfig
    from retina_deploy.training.optim import build_optimizer

    torch.manual_seed(0)
    cfg = ModelConfig(backbone=backbone, num_classes=80, fpn_channels=fpn_channels)
    model = build_model(cfg).to(device).train()
    optimizer = build_optimizer(model, name="sgd", lr=1e-3, momentum=0.9, weight_decay=1e-4)
    return model, optimizer


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_steps(ctx: CheckContext, device, backbone: str, size, batch: int, amp: str) -> dict[str, Any]:
    """images/s and peak memory of ``train_step`` (forward, loss, backward, SGD) on one synthetic batch."""
    import math

    import torch

    from retina_deploy.gpucheck.models import synthetic_batch
    from retina_deploy.training.loop import train_step

    plan = ctx.plan
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise Skip("this GPU has no native bfloat16 (amp 'auto' picks fp16 on it)")
    model, optimizer = _model_and_optimizer(backbone, device, fpn_channels=64 if ctx.dry_run else 256)
    opts = _step_options(device, amp)
    images, targets = synthetic_batch(batch, size, device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    losses = [train_step(model, images, targets, optimizer, opts) for _ in range(plan.train_warmup)]
    _sync(device)
    start = time.perf_counter()
    losses += [train_step(model, images, targets, optimizer, opts) for _ in range(plan.train_steps)]
    _sync(device)
    seconds = (time.perf_counter() - start) / plan.train_steps
    last = [float(v) for v in losses[-1].tolist()]
    row = {
        "images_per_s": round(batch / seconds, 2),
        "step_ms": round(seconds * 1e3, 2),
        "batch": batch,
        "loss_cls_box": [round(v, 5) for v in last],
    }
    if device.type == "cuda":
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if opts.scaler.is_enabled():
        row["loss_scale"] = float(opts.scaler.get_scale())
    if not all(math.isfinite(v) for v in last):
        raise Disagree(f"non-finite loss {last} after {len(losses)} {amp} steps")
    del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def part_train_throughput(ctx: CheckContext, rec: PartRecord, clock: Clock) -> None:
    """Training steps per (backbone, size, batch, amp) configuration of the plan."""
    require_modules("torch", "torchvision", "tqdm")
    device = ctx.torch_device()
    import torch

    torch.backends.cudnn.benchmark = device.type == "cuda"
    for backbone, size, batch, amp in ctx.plan.train:
        key = f"{backbone}/{size[0]}x{size[1]}/b{batch}/{amp}"
        clock.require(5, key)
        run_step(rec, key, lambda b=backbone, s=size, n=batch, a=amp: measure_steps(ctx, device, b, s, n, a))
    rows = {k: v for k, v in rec.figures.items() if v.get("status") == "ok"}
    rec.summary = "; ".join(f"{k} {v['images_per_s']} img/s" for k, v in rows.items())


def _ddp_process_group(device, out: Path):
    """A one-process group (NCCL on CUDA, gloo on the CPU) rendezvousing through a file in ``out``."""
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and not dist.is_nccl_available():
        raise Skip("this torch build has no NCCL")
    store = out / "ddp-store"
    store.unlink(missing_ok=True)
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, init_method=store.resolve().as_uri(), rank=0, world_size=1, **kwargs)
    return backend


def ddp_matches_plain(ctx: CheckContext, device) -> dict[str, Any]:
    """One ``train_step`` through DistributedDataParallel equals the same step on the bare model."""
    import torch
    import torch.distributed as dist

    from retina_deploy.gpucheck.models import synthetic_batch
    from retina_deploy.training.loop import train_step

    side = 64 if ctx.dry_run else 256
    images, targets = synthetic_batch(2, (side, side), device)
    plain, plain_opt = _model_and_optimizer("resnet18", device, fpn_channels=64)
    wrapped_model, ddp_opt = _model_and_optimizer("resnet18", device, fpn_channels=64)
    backend = _ddp_process_group(device, ctx.out)
    try:
        ids = [device.index] if device.type == "cuda" else None
        wrapped = torch.nn.parallel.DistributedDataParallel(wrapped_model, device_ids=ids)
        opts = _step_options(device, "none")
        losses_ddp = train_step(wrapped, images, targets, ddp_opt, opts)
        losses_plain = train_step(plain, images, targets, plain_opt, _step_options(device, "none"))
        _sync(device)
    finally:
        dist.destroy_process_group()
    diff = max((a - b).abs().max().item() for a, b in zip(plain.parameters(), wrapped_model.parameters(), strict=True))
    row = {"backend": backend, "max_param_diff": diff, "loss_diff": (losses_ddp - losses_plain).abs().max().item()}
    if diff > 1e-5 or row["loss_diff"] > 1e-5:
        raise Disagree(f"a DDP step differs from the plain step: max parameter diff {diff:.3g}")
    return row


def part_train_ddp(ctx: CheckContext, rec: PartRecord, clock: Clock) -> None:
    """A single-process DDP step (NCCL on the GPU, gloo in the dry run) against the plain step."""
    require_modules("torch", "torchvision", "tqdm")
    device = ctx.torch_device()
    clock.require(5, "a DDP step")
    row = run_step(rec, "ddp_step", lambda: ddp_matches_plain(ctx, device))
    if row["status"] == "ok":
        rec.summary = f"{row['backend']} step equals the plain step (max parameter diff {row['max_param_diff']:.2g})"


def _train_config(ctx: CheckContext, data: Path, out: Path, device):
    from retina_deploy.training.config import TrainConfig

    backbone, side, _, batch, iters, every, _, fpn = ctx.plan.resume
    return TrainConfig(
        images=data / "images",
        annotations=data / "annotations.json",
        out=out,
        backbone=backbone,
        fpn_channels=fpn,
        size=(side, side),
        batch_size=batch,
        iters=iters,
        warmup_iters=1,
        checkpoint_every_iters=every,
        amp="fp16" if device.type == "cuda" else "none",
        workers=0,
        device=device.type,
    )


def _final_state(run_dir: Path) -> tuple[dict[str, Any], list[list[str]]]:
    from retina_deploy.training.run_files import load_train_state

    with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as f:
        rows = [[r["iteration"], r["loss_cls"], r["loss_box"], r["lr"]] for r in csv.DictReader(f)]
    return load_train_state(run_dir), rows


def _state_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    return max((a["model"][k].double() - b["model"][k].double()).abs().max().item() for k in a["model"])


def resume_is_exact(ctx: CheckContext, device) -> dict[str, Any]:
    """train() to the end vs train() killed after ``kill_after`` iterations then resumed: equal weights and losses."""
    import torch

    from retina_deploy.training.config import TrainConfig
    from retina_deploy.training.run import train

    _, side, num, _, iters, _, kill_after, _ = ctx.plan.resume
    data = ctx.shapes(side, num)
    root = ctx.out / "train-resume"
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (if not yet initialised)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        whole = train(_train_config(ctx, data, root / "whole", device))
        killed = train(_train_config(ctx, data, root / "resumed", device), stop_after_iters=kill_after)
        resumed = train(TrainConfig.for_resume(killed, workers=0))
        (state_a, rows_a), (state_b, rows_b) = _final_state(whole), _final_state(resumed)
        row = {"iters": iters, "killed_after": kill_after, "amp": _train_config(ctx, data, root, device).amp}
        row["max_weight_diff"] = _state_diff(state_a, state_b)
        row["same_losses"] = rows_a == rows_b
        if row["max_weight_diff"] == 0.0 and row["same_losses"]:
            return row
        again = train(_train_config(ctx, data, root / "whole-again", device))
        row["uninterrupted_rerun_diff"] = _state_diff(state_a, _final_state(again)[0])
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    raise Disagree(
        f"the resumed run differs from the uninterrupted one: max weight diff {row['max_weight_diff']:.3g},"
        f" same losses {row['same_losses']}; two uninterrupted runs differ by {row['uninterrupted_rerun_diff']:.3g}"
        " (non-zero: the GPU kernels are not deterministic; zero: resume lost state)"
    )


def part_train_resume(ctx: CheckContext, rec: PartRecord, clock: Clock) -> None:
    """``train()`` on synthetic shapes: killed mid-run and resumed, it must end exactly as the uninterrupted run."""
    require_modules("torch", "torchvision", "tqdm", "safetensors")
    device = ctx.torch_device()
    clock.require(10, "three short training runs")
    row = run_step(rec, "resume", lambda: resume_is_exact(ctx, device))
    if row["status"] == "ok":
        rec.summary = f"{row['iters']} it ({row['amp']}), killed after {row['killed_after']}: resumed run identical"


def repeat_coco(src: Path, dst: Path, times: int) -> Path:
    """A COCO file listing every image of ``src`` ``times`` times (new ids, same files): long epochs on few
    images, so that the run saves a checkpoint every few hundred iterations instead of every other one."""
    import json

    coco = json.loads(src.read_text(encoding="utf-8"))
    images, annotations = [], []
    for k in range(times):
        offset = k * (1 + max(img["id"] for img in coco["images"]))
        images += [{**img, "id": img["id"] + offset} for img in coco["images"]]
        annotations += [
            {**a, "id": len(annotations) + i + 1, "image_id": a["image_id"] + offset}
            for i, a in enumerate(coco["annotations"])
        ]
    dst.write_text(json.dumps({**coco, "images": images, "annotations": annotations}), encoding="utf-8")
    return dst


def fit_detector(ctx: CheckContext, device, clock: Clock) -> dict[str, Any]:
    """``train()`` the demo's recipe on the test images until they are detected confidently; the checkpoint
    (RUN/last) becomes the model the ONNX Runtime and TensorRT parts export."""
    from retina_deploy.training.config import TrainConfig
    from retina_deploy.training.run import train

    plan = ctx.plan
    side = max(plan.engine_size)
    data = ctx.shapes(side, max(plan.images, plan.calib_num))
    iters = 600 if ctx.mode == "full" else 300  # or until 80% of the budget: max_minutes ends it first
    annotations = repeat_coco(data / "annotations.json", ctx.out / "data" / "detector-train.json", 64)
    cfg = TrainConfig(
        images=data / "images",
        annotations=annotations,
        out=ctx.out / "train-detector",
        backbone=plan.engine_backbone,
        backbone_norm="bn",  # from scratch
        head_norm="groupnorm",
        fpn_channels=64,
        anchor_sizes=tuple(side // 16 * 2**i for i in range(5)),
        size=(side, side),
        batch_size=8,
        optimizer="adamw",
        lr=1e-3,
        warmup_iters=20,
        iters=iters,
        max_minutes=max(0.1, 0.8 * clock.left() / 60),
        checkpoint_every_iters=iters,
        workers=min(4, os.cpu_count() or 1),
        device=device.type,
    )
    run_dir = train(cfg)
    with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] == "train"]
    losses = [float(r["loss_cls"]) + float(r["loss_box"]) for r in rows]
    first, last = sum(losses[:5]) / len(losses[:5]), sum(losses[-10:]) / len(losses[-10:])  # means: steps are noisy
    ctx.artifacts["checkpoint"] = run_dir / "last"
    row = {"iterations": len(rows), "loss_first": round(first, 4), "loss_last": round(last, 4)}
    row["images_per_s"] = round(sum(float(r["images_per_s"]) for r in rows[1:]) / max(1, len(rows) - 1), 1)
    if last < 0.5 * first:
        return row
    why = f"loss {first:.3f} -> {last:.3f} in {len(rows)} of {iters} iterations"
    if len(rows) < iters:  # stopped by the time budget: a slow GPU, not a wrong result
        raise Skip(f"out of time: the detector did not fit in the budget ({why}); parity will compare little")
    raise Disagree(f"training did not fit the test images: {why}")


def part_train_detector(ctx: CheckContext, rec: PartRecord, clock: Clock) -> None:
    """A small detector fitted to the test images, so that backend parity compares confident detections."""
    if ctx.dry_run:
        raise Skip("not in the CPU dry run: the engine parts use random weights there")
    require_modules("torch", "torchvision", "tqdm", "safetensors")
    device = ctx.torch_device()
    clock.require(10, "fitting the detector")
    row = run_step(rec, "fit", lambda: fit_detector(ctx, device, clock))
    if row["status"] == "ok":
        rec.summary = f"{row['iterations']} it, loss {row['loss_first']} -> {row['loss_last']}"
