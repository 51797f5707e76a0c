"""The RetinaNet module: backbone + FPN + head; losses in train mode, detections in eval mode."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from retina_deploy.model import box_coder
from retina_deploy.model.anchors import anchors_for_grids
from retina_deploy.model.backbone import BackboneWithFPN
from retina_deploy.model.config import ModelConfig
from retina_deploy.model.head import RetinaNetHead
from retina_deploy.model.loss import retinanet_loss


class RetinaNet(nn.Module):
    """RetinaNet over a batch of preprocessed images.

    Input: ``images`` float32 [B, 3, H, W], normalised by the shared preprocessing.
    Train mode, with ``targets`` (per image ``boxes`` [G, 4] xyxy input pixels, ``labels`` int64 [G]
    in 0..C-1, optional ``iscrowd`` bool [G]): returns {"loss_cls", "loss_box"} scalars.
    Eval mode: returns per image {"boxes" [K, 4] xyxy input pixels, 0 <= x1 <= x2 <= w,
    "scores" [K] in (score_thresh, 1], "labels" int64 [K]}, K <= detections_per_img, sorted by score.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = BackboneWithFPN(cfg)
        self.head = RetinaNetHead(cfg)
        self._anchor_cache: dict[tuple, list[Tensor]] = {}

    def forward_levels(self, images: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Per FPN level: logits [B, HWA, C], deltas [B, HWA, 4], anchors [HWA, 4] (xyxy input pixels)."""
        features = self.backbone(images)
        cls_per_level, box_per_level = self.head(features)
        anchors = self.anchors(tuple(images.shape[-2:]), [tuple(f.shape[-2:]) for f in features], images.device)
        return cls_per_level, box_per_level, anchors

    def anchors(self, image_hw: tuple[int, int], grids_hw: list[tuple[int, int]], device: torch.device) -> list[Tensor]:
        key = (image_hw, tuple(grids_hw), str(device))
        if key not in self._anchor_cache:
            levels = anchors_for_grids(self.cfg.anchor_sizes, image_hw, grids_hw)
            self._anchor_cache[key] = [a.to(device) for a in levels]
        return self._anchor_cache[key]

    def forward(
        self,
        images: Tensor,
        targets: list[dict[str, Tensor]] | None = None,
        image_sizes: list[tuple[int, int]] | None = None,
    ):
        cls_per_level, box_per_level, anchors = self.forward_levels(images)
        if self.training:
            if targets is None:
                raise ValueError("RetinaNet in train mode needs targets")
            if len(targets) != images.shape[0]:
                raise ValueError(f"got {len(targets)} targets for a batch of {images.shape[0]} images")
            return retinanet_loss(
                torch.cat(cls_per_level, 1), torch.cat(box_per_level, 1), torch.cat(anchors), targets, self.cfg
            )
        if image_sizes is None:
            image_sizes = [tuple(images.shape[-2:])] * images.shape[0]
        return self.postprocess(cls_per_level, box_per_level, anchors, image_sizes)

    @torch.no_grad()
    def postprocess(
        self,
        cls_per_level: list[Tensor],
        box_per_level: list[Tensor],
        anchors: list[Tensor],
        image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        """Score threshold, top-k per level, decode, clip to ``image_sizes`` (h, w), class-aware NMS.

        One of four copies of the post-processing, each for a reason: this one is torchvision's own
        algorithm on dynamic shapes (tests hold it to torchvision's RetinaNet, detections included) and
        clips each image to its own size; the exported graph (``export/postprocess.py``) needs fixed
        shapes, TopK before the threshold and ops TensorRT maps; ``runtime/post/host_nms.py`` finishes
        ``--nms none`` files without torch; ``runtime/cpp/src/postprocess.cpp`` does it for C++ callers.
        Tests hold all four to the same detections (ties aside).
        """
        cfg = self.cfg
        detections = []
        for i, (h, w) in enumerate(image_sizes):
            boxes_all, scores_all, labels_all = [], [], []
            for logits, deltas, level_anchors in zip(cls_per_level, box_per_level, anchors, strict=True):
                num_classes = logits.shape[-1]
                scores = torch.sigmoid(logits[i]).flatten()
                keep = torch.where(scores > cfg.score_thresh)[0]
                scores, order = scores[keep].topk(min(cfg.topk_candidates, keep.numel()))
                keep = keep[order]
                anchor_idx = torch.div(keep, num_classes, rounding_mode="floor")
                boxes = box_coder.decode(deltas[i][anchor_idx], level_anchors[anchor_idx], cfg.bbox_reg_clamp)
                boxes = torch.stack(
                    [
                        boxes[:, 0].clamp(0, w),
                        boxes[:, 1].clamp(0, h),
                        boxes[:, 2].clamp(0, w),
                        boxes[:, 3].clamp(0, h),
                    ],
                    dim=1,
                )
                boxes_all.append(boxes)
                scores_all.append(scores)
                labels_all.append(keep % num_classes)
            boxes, scores, labels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
            keep = batched_nms(boxes, scores, labels, cfg.nms_thresh)[: cfg.detections_per_img]
            detections.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return detections


def build_model(cfg: ModelConfig, *, backbone_weights: str | None = None) -> RetinaNet:
    """A RetinaNet for ``cfg``, randomly initialised, optionally with ImageNet backbone weights from a local file."""
    model = RetinaNet(cfg)
    if backbone_weights is not None:
        from retina_deploy.model.backbone import load_backbone_weights

        load_backbone_weights(model.backbone.body, backbone_weights)
    return model
