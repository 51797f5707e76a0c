"""The training loop: one step and one epoch (autocast, clipping, progress bar, CSV log).

Validation scores through ``evaluation.loop.evaluate_detector``, the code ``eval`` uses for every model file.

``run.py`` owns the run (config, schedule, checkpoints, resume); this module only runs batches.
"""

from __future__ import annotations

import csv
import logging
import os
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from retina_deploy.core.errors import ConfigError
from retina_deploy.core.fileio import atomic_path
from retina_deploy.data.dataset import DetectionTarget
from retina_deploy.training.distributed import DistInfo, all_reduce_
from retina_deploy.training.optim import set_lr

log = logging.getLogger(__name__)

AMP_CHOICES = ("auto", "none", "bf16", "fp16")
METRICS_FIELDS = ("kind", "epoch", "iteration", "loss_cls", "loss_box", "lr", "images_per_s", "AP", "AP50")


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bfloat16 natively (AVX512-BF16 / AMX); elsewhere bf16 autocast is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device``, or None for float32.

    "auto": bf16 on CUDA GPUs that support it, else fp16; bf16 on CPUs with native bf16, else float32.
    fp16 is CUDA-only (it needs loss scaling, which ``train_step`` does with a GradScaler).
    """
    if amp not in AMP_CHOICES:
        raise ConfigError(f"amp must be one of {AMP_CHOICES}, got {amp!r}")
    if amp == "none":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError(f"amp 'fp16' needs a CUDA device, got {device}; use 'bf16' or 'none' on the CPU")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_supports_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def progress_bar_enabled(info: DistInfo) -> bool:
    """A bar only on rank 0, on a terminal, and not under CI=true (logs stay clean; the epoch summary still prints)."""
    return info.is_main and sys.stderr.isatty() and os.environ.get("CI", "").lower() != "true"


@dataclass
class StepOptions:
    """How ``train_step`` runs: device, autocast dtype (None: float32), max gradient norm (None: no clipping),
    the classification loss's weight (the box loss's is 1)."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    grad_clip: float | None = None
    cls_loss_weight: float = 1.0
    scaler: torch.amp.GradScaler | None = None


def targets_to_device(targets: list[DetectionTarget], device: torch.device) -> list[dict[str, torch.Tensor]]:
    """The model's view of the targets: boxes [G, 4] xyxy input pixels, labels [G], iscrowd [G], on ``device``."""
    return [{k: t[k].to(device, non_blocking=True) for k in ("boxes", "labels", "iscrowd")} for t in targets]


def train_step(
    model: nn.Module,
    images: torch.Tensor,
    targets: list[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    opts: StepOptions,
) -> torch.Tensor:
    """One forward/backward/update of ``cls_loss_weight * loss_cls + loss_box``.

    images [B, 3, H, W] on the device; returns the detached, unweighted losses [2] (cls, box).
    """
    with autocast(opts.device, opts.amp_dtype):
        losses = model(images, targets)
    total = opts.cls_loss_weight * losses["loss_cls"] + losses["loss_box"]
    optimizer.zero_grad(set_to_none=True)
    if opts.scaler is not None and opts.scaler.is_enabled():
        opts.scaler.scale(total).backward()
        if opts.grad_clip:
            opts.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
        opts.scaler.step(optimizer)
        opts.scaler.update()
    else:
        total.backward()
        if opts.grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
        optimizer.step()
    return torch.stack([losses["loss_cls"].detach(), losses["loss_box"].detach()]).float()


@dataclass
class TrainProgress:
    """Where a run stands: ``epoch`` and ``batch`` (next batch within it) to run, ``iteration`` = steps done."""

    epoch: int = 0
    batch: int = 0
    iteration: int = 0


@dataclass
class EpochSummary:
    """Sums over the iterations one ``train_one_epoch`` call ran; ``line`` reports their means."""

    iterations: int = 0
    loss_sums: list[float] = field(default_factory=lambda: [0.0, 0.0])
    images: int = 0
    seconds: float = 0.0
    lr: float = 0.0

    def add(self, loss_cls: float, loss_box: float, lr: float, images: int) -> None:
        self.iterations += 1
        self.loss_sums[0] += loss_cls
        self.loss_sums[1] += loss_box
        self.lr = lr
        self.images += images

    def line(self, epoch: int) -> str:
        n = max(1, self.iterations)
        return (
            f"epoch {epoch}: {self.iterations} it, loss_cls {self.loss_sums[0] / n:.4f},"
            f" loss_box {self.loss_sums[1] / n:.4f}, lr {self.lr:.3g},"
            f" {self.images / max(self.seconds, 1e-9):.1f} images/s, {self.seconds:.0f} s"
        )


class MetricsLog:
    """``metrics.csv``: one "train" row per iteration (losses, lr, images/s), one "val" row per validation."""

    def __init__(self, path: Path) -> None:
        self.path = path
        new = not path.exists() or path.stat().st_size == 0
        self._file = open(path, "a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=METRICS_FIELDS)
        if new:
            self._writer.writeheader()

    def write(self, **row: Any) -> None:
        self._writer.writerow({k: _csv_value(row.get(k)) for k in METRICS_FIELDS})
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    @staticmethod
    def truncate(path: Path, iteration: int) -> None:
        """Drop rows logged after ``iteration``: a killed run logged iterations its resume will redo."""
        if not path.exists():
            return
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= iteration]
        with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=METRICS_FIELDS)
            writer.writeheader()
            writer.writerows(rows)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else value  # repr: exact float round-trip


def train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    progress: TrainProgress,
    opts: StepOptions,
    *,
    lr_for: Callable[[TrainProgress], float],
    after_step: Callable[[TrainProgress], bool],
    dist: DistInfo,
    metrics: MetricsLog | None,
) -> EpochSummary:
    """Train on the batches of ``loader`` (the rest of epoch ``progress.epoch``), updating ``progress``.

    Before each step the lr is set to ``lr_for(progress)``; after it the losses (averaged over ranks)
    are logged and ``after_step(progress)`` may return True to stop early (checkpoints, limits).
    """
    summary = EpochSummary()
    start = time.perf_counter()
    bar = tqdm(
        total=progress.batch + len(loader),
        initial=progress.batch,
        desc=f"epoch {progress.epoch}",
        disable=not progress_bar_enabled(dist),
        dynamic_ncols=True,
        leave=False,
    )
    tick = time.perf_counter()
    for images, targets in loader:
        log.debug("rank %d iteration %d image_ids %s", dist.rank, progress.iteration, [t["image_id"] for t in targets])
        lr = lr_for(progress)
        set_lr(optimizer, lr)
        images = images.to(opts.device, non_blocking=True)
        losses = all_reduce_(train_step(model, images, targets_to_device(targets, opts.device), optimizer, opts), dist)
        loss_cls, loss_box = losses.tolist()
        now, batch_images = time.perf_counter(), images.shape[0] * dist.world_size
        speed, tick = batch_images / max(now - tick, 1e-9), now
        progress.iteration += 1
        progress.batch += 1
        summary.add(loss_cls, loss_box, lr, batch_images)
        if metrics is not None:
            metrics.write(
                kind="train", epoch=progress.epoch, iteration=progress.iteration, loss_cls=loss_cls,
                loss_box=loss_box, lr=lr, images_per_s=round(speed, 2),
            )  # fmt: skip
        bar.update(1)
        bar.set_postfix(loss=f"{loss_cls + loss_box:.3f}", lr=f"{lr:.2e}", img_s=f"{speed:.1f}", refresh=False)
        if after_step(progress):
            break
    bar.close()
    summary.seconds = time.perf_counter() - start
    return summary
