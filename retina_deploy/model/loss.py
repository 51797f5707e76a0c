"""Sigmoid focal loss for classification and L1 / GIoU box loss, each normalised by foreground anchors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss

from retina_deploy.config import ModelConfig
from retina_deploy.model import box_coder
from retina_deploy.model.matcher import IGNORE, match_anchors


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Element-wise focal loss (Lin et al., eq. 5) of ``logits`` against 0/1 ``targets`` (same shape)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


def retinanet_loss(
    cls_logits: Tensor, bbox_deltas: Tensor, anchors: Tensor, targets: list[dict[str, Tensor]], cfg: ModelConfig
) -> dict[str, Tensor]:
    """Losses of one batch, averaged over images (each image's sums divided by max(1, its foreground count)).

    Args:
        cls_logits: [B, N, C] logits for all N anchors (levels concatenated).
        bbox_deltas: [B, N, 4] predicted deltas.
        anchors: [N, 4] xyxy input pixels (the same for every image of a batch: one input size).
        targets: per image ``boxes`` [G, 4] xyxy input pixels, ``labels`` int64 [G] in 0..C-1 and
            optionally ``iscrowd`` bool [G] (crowd boxes are not matched; anchors on them are ignored).

    Returns:
        {"loss_cls": scalar, "loss_box": scalar}
    """
    batch, _, num_classes = cls_logits.shape
    matches = []
    for t in targets:
        boxes, crowd = t["boxes"], t.get("iscrowd")
        crowd_boxes = None
        if crowd is not None and crowd.any():
            crowd_boxes, boxes = boxes[crowd], boxes[~crowd]
        matches.append(
            match_anchors(
                boxes,
                anchors,
                fg_iou_thresh=cfg.fg_iou_thresh,
                bg_iou_thresh=cfg.bg_iou_thresh,
                crowd_boxes=crowd_boxes,
            )
        )
    matches_t = torch.stack(matches)  # [B, N]
    foreground = matches_t >= 0
    num_fg = foreground.sum(dim=1).clamp(min=1).to(cls_logits.dtype)  # [B]

    cls_targets = torch.zeros_like(cls_logits)
    loss_box = cls_logits.new_zeros(())
    for i, t in enumerate(targets):
        fg = foreground[i]
        if not fg.any():
            continue
        labels, boxes = t["labels"], t["boxes"]
        if t.get("iscrowd") is not None and t["iscrowd"].any():
            labels, boxes = labels[~t["iscrowd"]], boxes[~t["iscrowd"]]
        matched = matches_t[i, fg]
        cls_targets[i, fg, labels[matched]] = 1.0
        loss_box = loss_box + _box_loss(bbox_deltas[i, fg], boxes[matched], anchors[fg], cfg) / num_fg[i]

    valid = (matches_t != IGNORE).to(cls_logits.dtype)  # [B, N]
    focal = sigmoid_focal_loss(cls_logits.float(), cls_targets.float(), cfg.focal_loss_alpha, cfg.focal_loss_gamma)
    loss_cls = (focal.sum(dim=2) * valid).sum(dim=1) / num_fg
    return {"loss_cls": loss_cls.sum() / batch, "loss_box": loss_box / max(1, batch)}


def _box_loss(deltas: Tensor, gt_boxes: Tensor, anchors: Tensor, cfg: ModelConfig) -> Tensor:
    """Summed box loss of the foreground anchors: L1 on encoded deltas, or GIoU on decoded boxes."""
    if cfg.box_loss == "giou":
        pred = box_coder.decode(deltas.float(), anchors, cfg.bbox_reg_clamp)
        return generalized_box_iou_loss(pred, gt_boxes, reduction="sum")
    return F.l1_loss(deltas.float(), box_coder.encode(gt_boxes, anchors), reduction="sum")
