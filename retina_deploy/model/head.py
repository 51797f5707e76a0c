"""RetinaNet classification and box-regression subnets, named as torchvision's ``RetinaNetHead``."""

from __future__ import annotations

import math

from torch import Tensor, nn

from retina_deploy.model.config import ModelConfig


def _tower(channels: int, head_norm: str) -> nn.Sequential:
    """Four 3x3 conv (+ GroupNorm(32)) + ReLU blocks; keys ``conv.{i}.0.weight`` like torchvision."""
    blocks = []
    for _ in range(4):
        conv = nn.Conv2d(channels, channels, 3, padding=1, bias=head_norm == "none")
        nn.init.normal_(conv.weight, std=0.01)
        if conv.bias is not None:
            nn.init.constant_(conv.bias, 0)
        layers = [conv] + ([nn.GroupNorm(32, channels)] if head_norm == "groupnorm" else []) + [nn.ReLU(inplace=True)]
        blocks.append(nn.Sequential(*layers))
    return nn.Sequential(*blocks)


def _flatten_level(x: Tensor, per_anchor: int) -> Tensor:
    """[B, A * K, H, W] -> [B, H * W * A, K]: location-major, then anchor (torchvision's order)."""
    b, _, h, w = x.shape
    return x.view(b, -1, per_anchor, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, per_anchor)


class ClassificationHead(nn.Module):
    def __init__(self, channels: int, num_anchors: int, num_classes: int, prior_prob: float, head_norm: str) -> None:
        super().__init__()
        self.conv = _tower(channels, head_norm)
        self.cls_logits = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        nn.init.normal_(self.cls_logits.weight, std=0.01)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))
        self.num_classes = num_classes

    def forward_per_level(self, features: list[Tensor]) -> list[Tensor]:
        return [_flatten_level(self.cls_logits(self.conv(f)), self.num_classes) for f in features]


class RegressionHead(nn.Module):
    def __init__(self, channels: int, num_anchors: int, head_norm: str) -> None:
        super().__init__()
        self.conv = _tower(channels, head_norm)
        self.bbox_reg = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        nn.init.normal_(self.bbox_reg.weight, std=0.01)
        nn.init.zeros_(self.bbox_reg.bias)

    def forward_per_level(self, features: list[Tensor]) -> list[Tensor]:
        return [_flatten_level(self.bbox_reg(self.conv(f)), 4) for f in features]


class RetinaNetHead(nn.Module):
    """Shared across levels. For each level returns logits [B, HWA, C] and deltas [B, HWA, 4]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        a = cfg.num_anchors_per_location
        self.classification_head = ClassificationHead(
            cfg.fpn_channels, a, cfg.num_classes, cfg.prior_prob, cfg.head_norm
        )
        self.regression_head = RegressionHead(cfg.fpn_channels, a, cfg.head_norm)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        return self.classification_head.forward_per_level(features), self.regression_head.forward_per_level(features)
