"""Exponential moving average (EMA) of a model's weights, the model that a run with ``ema_decay`` evaluates and saves.

After update number ``n`` (1-based), every floating-point entry of the state dict (parameters and
BatchNorm running statistics) becomes ``ema = d * ema + (1 - d) * current`` with
``d = min(decay, (1 + n) / (10 + n))``: the ramp lets the average follow the fast early changes of a
model trained from scratch instead of averaging in its random initialisation for ~1 / (1 - decay)
steps. Integer entries (BatchNorm's ``num_batches_tracked``) are copied. The update is deterministic,
so a resumed run that restores ``state_dict()`` continues the average bit for bit.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from retina_deploy.core.errors import ConfigError


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay used by update number ``updates`` (1-based): ``min(decay, (1 + updates) / (10 + updates))``."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


class ModelEMA:
    """An averaged copy of ``model`` (``module``, in eval mode, no gradients) and its update count.

    decay: the long-run decay in (0, 1); the average spans roughly the last 1 / (1 - decay) updates.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"ema decay must be in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for param in self.module.parameters():
            param.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` (same architecture, not DDP-wrapped) into the average."""
        self.updates += 1
        d = ema_decay_at(self.decay, self.updates)
        current = model.state_dict()
        for name, avg in self.module.state_dict().items():
            value = current[name].detach()
            if avg.is_floating_point():
                avg.mul_(d).add_(value.to(avg.dtype), alpha=1.0 - d)
            else:
                avg.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        """What a resume needs: the averaged weights (on the CPU) and the update count."""
        return {
            "module": {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()},
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
