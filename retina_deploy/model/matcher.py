"""Anchor-to-ground-truth matching: IoU >= fg is foreground, < bg background, in between ignored."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou

BACKGROUND = -1
IGNORE = -2


def match_anchors(
    gt_boxes: Tensor,
    anchors: Tensor,
    *,
    fg_iou_thresh: float,
    bg_iou_thresh: float,
    crowd_boxes: Tensor | None = None,
) -> Tensor:
    """Index of the matched ground-truth box for each anchor, or BACKGROUND (-1) / IGNORE (-2).

    Args:
        gt_boxes: [G, 4] xyxy input pixels (crowd boxes excluded), G may be 0.
        anchors: [N, 4] xyxy input pixels.
        crowd_boxes: [K, 4] xyxy; background anchors that overlap one by IoU >= bg_iou_thresh
            are ignored rather than taught as background.

    Returns:
        int64 [N]. Low-quality matches: each box also claims the anchors of its highest IoU, so
        every box has a positive; a box with no overlap at all (degenerate) claims none.
    """
    matches = torch.full((anchors.shape[0],), BACKGROUND, dtype=torch.int64, device=anchors.device)
    if gt_boxes.numel():
        iou = box_iou(gt_boxes, anchors)  # [G, N]
        best_iou, best_gt = iou.max(dim=0)
        matches = torch.where(best_iou >= fg_iou_thresh, best_gt, matches)
        matches = torch.where((best_iou >= bg_iou_thresh) & (best_iou < fg_iou_thresh), IGNORE, matches)
        best_per_gt = iou.max(dim=1, keepdim=True).values
        # torchvision's matcher lets a zero-IoU (degenerate) box claim every anchor; require overlap.
        low_quality = ((iou == best_per_gt) & (best_per_gt > 0)).any(dim=0)
        matches = torch.where(low_quality, best_gt, matches)
    if crowd_boxes is not None and crowd_boxes.numel():
        crowd_iou = box_iou(crowd_boxes, anchors).max(dim=0).values
        matches = torch.where((matches == BACKGROUND) & (crowd_iou >= bg_iou_thresh), IGNORE, matches)
    return matches
