"""Optimizer and learning-rate schedule for training.

The schedule is a pure function of the iteration (and, with a time budget, of its elapsed fraction), so
it holds no state to save: a resumed run recomputes the same learning rate for every iteration.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from retina_deploy.core.errors import ConfigError
from retina_deploy.training.config import SCHEDULES

WARMUP_FACTOR = 0.001  # the first iteration runs at lr * 0.001, rising linearly to lr (Goyal et al., 2017)
STEP_MILESTONES = (2 / 3, 8 / 9)  # "step" multiplies the lr by 0.1 at each fraction of the run
FLAT_FRACTION = 0.75  # "flat-cosine" holds the peak lr for this fraction of the run, then anneals to 0
STEP_GAMMA = 0.1


def build_optimizer(
    model: nn.Module, *, name: str, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """SGD (with ``momentum``) or AdamW over the trainable parameters.

    Weight decay applies to conv and linear weights only: biases and normalisation parameters (every
    parameter with ndim <= 1) get none, as is usual for both optimizers.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        # fused: one kernel over all parameters instead of ~10 ops per tensor; a training step at 128 px on a
        # 2-core CPU takes 0.88x the time (BENCHMARKS.md, "The demo")
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    raise ConfigError(f"optimizer must be 'sgd' or 'adamw', got {name!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass(frozen=True)
class LRSchedule:
    """Linear warmup times a cosine, flat-cosine or step decay over the run.

    base_lr: the peak learning rate.
    kind: "cosine" (lr * (1 + cos(pi * p)) / 2), "flat-cosine" (lr until p = FLAT_FRACTION, then a cosine
        to 0 over the rest) or "step" (x0.1 at p = 2/3 and 8/9).
    total_iters: the run length in iterations, or None when only a time budget bounds it. The decay's
        progress p is max(iteration / total_iters, elapsed fraction of the time budget): the schedule
        completes by whichever end comes first.
    warmup_iters: iterations of linear warmup from base_lr * 0.001 (already clamped to the run).
    """

    base_lr: float
    kind: str
    total_iters: int | None
    warmup_iters: int

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.kind!r}")

    def lr(self, iteration: int, time_fraction: float = 0.0) -> float:
        """The lr of ``iteration`` (0-based); ``time_fraction``: elapsed fraction of the time budget (0 without one)."""
        by_iters = 0.0 if self.total_iters is None else iteration / max(1, self.total_iters)
        progress = min(1.0, max(0.0, by_iters, time_fraction))
        if self.kind == "cosine":
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        elif self.kind == "flat-cosine":
            tail = max(0.0, progress - FLAT_FRACTION) / (1.0 - FLAT_FRACTION)
            decay = 0.5 * (1.0 + math.cos(math.pi * tail))
        else:
            decay = STEP_GAMMA ** sum(progress >= m for m in STEP_MILESTONES)
        warmup = 1.0
        if iteration < self.warmup_iters:
            warmup = WARMUP_FACTOR + (1.0 - WARMUP_FACTOR) * iteration / self.warmup_iters
        return self.base_lr * warmup * decay

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def clamp_warmup(warmup_iters: int, total_iters: int | None) -> int:
    """Warmup no longer than a third of the run, so a short run still reaches its peak lr and decays."""
    if total_iters is None:
        return warmup_iters
    return min(warmup_iters, total_iters // 3)
