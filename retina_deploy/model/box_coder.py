"""Box coding between xyxy boxes and (dx, dy, dw, dh) deltas relative to anchors (weights 1, 1, 1, 1).

Widths are x2 - x1 (no +1), centres x1 + w / 2, as torchvision's BoxCoder; dw and dh are clamped
at ``clamp`` (log(1000 / 16)) before exp so a wild prediction cannot overflow.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DEFAULT_CLAMP = math.log(1000.0 / 16)


def encode(boxes: Tensor, anchors: Tensor) -> Tensor:
    """Deltas [N, 4] that move ``anchors`` [N, 4] xyxy onto ``boxes`` [N, 4] xyxy."""
    aw = anchors[:, 2] - anchors[:, 0]
    ah = anchors[:, 3] - anchors[:, 1]
    ax = anchors[:, 0] + 0.5 * aw
    ay = anchors[:, 1] + 0.5 * ah
    bw = boxes[:, 2] - boxes[:, 0]
    bh = boxes[:, 3] - boxes[:, 1]
    bx = boxes[:, 0] + 0.5 * bw
    by = boxes[:, 1] + 0.5 * bh
    return torch.stack([(bx - ax) / aw, (by - ay) / ah, torch.log(bw / aw), torch.log(bh / ah)], dim=1)


def decode(deltas: Tensor, anchors: Tensor, clamp: float = DEFAULT_CLAMP) -> Tensor:
    """Boxes [..., 4] xyxy from ``deltas`` [..., 4] and ``anchors`` [..., 4] xyxy (broadcasting)."""
    aw = anchors[..., 2] - anchors[..., 0]
    ah = anchors[..., 3] - anchors[..., 1]
    ax = anchors[..., 0] + 0.5 * aw
    ay = anchors[..., 1] + 0.5 * ah
    dx, dy = deltas[..., 0], deltas[..., 1]
    dw = torch.clamp(deltas[..., 2], max=clamp)
    dh = torch.clamp(deltas[..., 3], max=clamp)
    cx = dx * aw + ax
    cy = dy * ah + ay
    half_w = 0.5 * torch.exp(dw) * aw
    half_h = 0.5 * torch.exp(dh) * ah
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)
