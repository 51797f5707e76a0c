"""Sigmoid focal loss for classification and L1 / GIoU box loss, each normalised by foreground anchors."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss

from retina_deploy.model import box_coder
from retina_deploy.model.config import ModelConfig
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


def focal_loss_per_anchor(
    logits: Tensor,
    foreground: Tensor,
    fg_classes: Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    gamma_fg: float | None = None,
) -> Tensor:
    """Focal loss summed over classes, per anchor: [B, N] from ``logits`` [B, N, C] (float32).

    Equal to ``sigmoid_focal_loss(logits, one_hot).sum(-1)`` where ``one_hot`` has a single 1 at
    (b, n, fg_classes[k]) for the k-th foreground anchor (b, n) of ``foreground`` [B, N] (row-major
    order) and zeros elsewhere, with exponent ``gamma_fg`` (None: ``gamma``) on the foreground anchors'
    rows. It treats every entry as a negative, (1 - alpha) p^gamma softplus(x), and then recomputes the
    few foreground rows: a handful of passes over the [B, N, C] tensor instead of the element-wise form's
    dozen, which dominate the loss's time.
    """
    neg_weight, pos_weight = (1.0 - alpha, alpha) if alpha >= 0 else (1.0, 1.0)
    per_anchor = (torch.sigmoid(logits).pow(gamma) * F.softplus(logits)).sum(dim=2) * neg_weight
    b, n = foreground.nonzero(as_tuple=True)
    rows = logits[b, n]  # [K, C]
    g = gamma if gamma_fg is None else gamma_fg
    target = fg_classes[:, None]
    as_negative = (torch.sigmoid(rows).pow(g) * F.softplus(rows)).scatter(1, target, 0.0)
    x = rows.gather(1, target)[:, 0]
    as_positive = torch.sigmoid(-x).pow(g) * F.softplus(-x)
    return per_anchor.index_put((b, n), as_negative.sum(dim=1) * neg_weight + as_positive * pos_weight)


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
    batch = cls_logits.shape[0]
    non_crowd = [_non_crowd(t) for t in targets]
    matches_t = torch.stack(
        [
            match_anchors(
                boxes,
                anchors,
                fg_iou_thresh=cfg.fg_iou_thresh,
                bg_iou_thresh=cfg.bg_iou_thresh,
                crowd_boxes=crowd_boxes,
            )
            for boxes, _, crowd_boxes in non_crowd
        ]
    )  # [B, N]
    foreground = matches_t >= 0
    num_fg = foreground.sum(dim=1).clamp(min=1).to(torch.float32)  # [B]

    fg_classes = [torch.zeros(0, dtype=torch.int64, device=cls_logits.device)]
    # Zero, yet connected to bbox_deltas: under DDP every parameter must get a gradient at every step,
    # even from a batch without any foreground anchor.
    loss_box = bbox_deltas.float().sum() * 0.0
    for i, (boxes, labels, _) in enumerate(non_crowd):
        fg = foreground[i]
        if not fg.any():
            continue
        matched = matches_t[i, fg]
        fg_classes.append(labels[matched])
        loss_box = loss_box + _box_loss(bbox_deltas[i, fg], boxes[matched], anchors[fg], cfg) / num_fg[i]

    valid = (matches_t != IGNORE).to(torch.float32)  # [B, N]
    focal = focal_loss_per_anchor(
        cls_logits.float(),
        foreground,
        torch.cat(fg_classes),
        cfg.focal_loss_alpha,
        cfg.focal_loss_gamma,
        cfg.focal_loss_gamma_fg,
    )
    loss_cls = (focal * valid).sum(dim=1) / num_fg
    return {"loss_cls": loss_cls.sum() / batch, "loss_box": loss_box / max(1, batch)}


def _non_crowd(target: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
    """(boxes [G, 4], labels [G]) of the non-crowd objects and the crowd boxes [K, 4] (None if none)."""
    boxes, labels, crowd = target["boxes"], target["labels"], target.get("iscrowd")
    if crowd is None or not crowd.any():
        return boxes, labels, None
    return boxes[~crowd], labels[~crowd], boxes[crowd]


def _box_loss(deltas: Tensor, gt_boxes: Tensor, anchors: Tensor, cfg: ModelConfig) -> Tensor:
    """Summed box loss of the foreground anchors: L1 on encoded deltas, or GIoU on decoded boxes."""
    if cfg.box_loss == "giou":
        pred = box_coder.decode(deltas.float(), anchors, cfg.bbox_reg_clamp)
        return generalized_box_iou_loss(pred, gt_boxes, reduction="sum")
    return F.l1_loss(deltas.float(), box_coder.encode(gt_boxes, anchors), reduction="sum")
