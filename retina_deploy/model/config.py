"""Frozen configuration dataclasses (torch-free). Unknown keys raise; every artifact saves its config."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from retina_deploy.core.errors import ConfigError
from retina_deploy.core.strict import from_dict_strict


def _integer(value: Any) -> int:
    """``value`` as an int; a bool, a string or a fractional number is refused (ValueError)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or int(value) != value:
        raise ValueError(f"not an integer: {value!r}")
    return int(value)


BACKBONE_DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101, "resnet152": 152}
# Channels of C3, C4, C5 for basic-block (18/34) and bottleneck (50+) ResNets.
BACKBONE_CHANNELS = {
    "resnet18": (128, 256, 512),
    "resnet34": (128, 256, 512),
    "resnet50": (512, 1024, 2048),
    "resnet101": (512, 1024, 2048),
    "resnet152": (512, 1024, 2048),
}


@dataclass(frozen=True)
class ModelConfig:
    """RetinaNet (Lin et al., 2017) with the paper's names; defaults follow the paper and torchvision.

    backbone: one of resnet18/34/50/101/152.
    backbone_norm: "frozen_bn" (statistics fixed: fine-tuning from ImageNet weights at the small
        per-GPU batches detection uses) or "bn" (trainable BatchNorm: training from scratch, at least 4
        images per process; the CPU recipe trains at 4).
        Both export identically: in eval mode BatchNorm is the same affine map as FrozenBatchNorm.
    num_classes: foreground classes C (no background class: sigmoid per class).
    fpn_channels: channels of P3-P7 and of the head convs.
    p6_from: "c5" (the paper, torchvision v2) or "p5" (torchvision's v1 COCO weights).
    head_norm: "none" (the paper) or "groupnorm" (32 groups; torchvision v2).
    anchor_sizes: base size per level P3..P7; each level adds 2^(1/3) and 2^(2/3) scales,
        truncated to int as torchvision does (32 -> 32, 40, 50), with aspect ratios 0.5, 1, 2.
    focal_loss_alpha, focal_loss_gamma: the sigmoid focal loss parameters.
    focal_loss_gamma_fg: the focusing exponent at anchors matched to an object (for all classes there),
        None for focal_loss_gamma everywhere (the paper). The focal term is meant for the many easy
        background anchors; on an object it also mutes the wrong classes once they score below ~0.3,
        which slows learning the classes apart. 0 (plain cross-entropy on objects) does not.
    prior_prob: initial foreground probability; the classifier bias is -log((1 - p) / p).
    fg_iou_thresh, bg_iou_thresh: IoU >= fg is foreground, < bg background, between is ignored;
        each ground-truth box also keeps its best anchors (low-quality matches).
    box_loss: "l1" (the paper's smooth-L1 with beta 0, as torchvision) or "giou".
    bbox_reg_clamp: upper bound of predicted dw/dh before exp, log(1000/16).
    score_thresh, topk_candidates, nms_thresh, detections_per_img: inference post-processing
        (score threshold, top-k per FPN level, class-aware NMS IoU, max detections per image).
    """

    backbone: str = "resnet101"
    backbone_norm: str = "frozen_bn"
    num_classes: int = 80
    fpn_channels: int = 256
    p6_from: str = "c5"
    head_norm: str = "none"
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    focal_loss_alpha: float = 0.25
    focal_loss_gamma: float = 2.0
    focal_loss_gamma_fg: float | None = None
    prior_prob: float = 0.01
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.4
    box_loss: str = "l1"
    bbox_reg_clamp: float = math.log(1000.0 / 16)
    score_thresh: float = 0.05
    topk_candidates: int = 1000
    nms_thresh: float = 0.5
    detections_per_img: int = 300

    def __post_init__(self) -> None:
        if isinstance(self.anchor_sizes, (str, bytes)) or not hasattr(self.anchor_sizes, "__iter__"):
            raise ConfigError(f"anchor_sizes must be a list of 5 integers, got {self.anchor_sizes!r}")
        try:
            object.__setattr__(self, "anchor_sizes", tuple(_integer(s) for s in self.anchor_sizes))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"anchor_sizes must be a list of 5 integers, got {self.anchor_sizes!r}") from e
        for name in ("num_classes", "fpn_channels", "topk_candidates", "detections_per_img"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
        for name in (
            "focal_loss_alpha", "focal_loss_gamma", "prior_prob", "fg_iou_thresh", "bg_iou_thresh",
            "bbox_reg_clamp", "score_thresh", "nms_thresh",
        ):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
        gamma_fg = self.focal_loss_gamma_fg
        if gamma_fg is not None and (
            isinstance(gamma_fg, bool) or not isinstance(gamma_fg, numbers.Real) or not 0 <= gamma_fg < math.inf
        ):
            raise ConfigError(f"focal_loss_gamma_fg must be a finite number >= 0 or None, got {gamma_fg!r}")
        if self.backbone not in BACKBONE_DEPTHS:
            raise ConfigError(f"backbone {self.backbone!r} is not one of {sorted(BACKBONE_DEPTHS)}")
        if self.backbone_norm not in ("frozen_bn", "bn"):
            raise ConfigError(f"backbone_norm must be 'frozen_bn' or 'bn', got {self.backbone_norm!r}")
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.p6_from not in ("c5", "p5"):
            raise ConfigError(f"p6_from must be 'c5' or 'p5', got {self.p6_from!r}")
        if self.head_norm not in ("none", "groupnorm"):
            raise ConfigError(f"head_norm must be 'none' or 'groupnorm', got {self.head_norm!r}")
        if self.box_loss not in ("l1", "giou"):
            raise ConfigError(f"box_loss must be 'l1' or 'giou', got {self.box_loss!r}")
        if len(self.anchor_sizes) != 5:
            raise ConfigError(f"anchor_sizes needs one size per level P3..P7 (5), got {self.anchor_sizes}")
        if not 0.0 <= self.bg_iou_thresh <= self.fg_iou_thresh <= 1.0:
            raise ConfigError(
                f"need 0 <= bg_iou_thresh <= fg_iou_thresh <= 1, got {self.bg_iou_thresh}, {self.fg_iou_thresh}"
            )
        if not 0.0 < self.prior_prob < 1.0:
            raise ConfigError(f"prior_prob must be in (0, 1), got {self.prior_prob}")
        if self.topk_candidates < 1 or self.detections_per_img < 1:
            raise ConfigError("topk_candidates and detections_per_img must be >= 1")
        if any(s < 1 for s in self.anchor_sizes):
            raise ConfigError(f"anchor_sizes must be >= 1 pixel, got {list(self.anchor_sizes)}")
        if self.fpn_channels < 1:
            raise ConfigError(f"fpn_channels must be >= 1, got {self.fpn_channels}")
        if not 0.0 <= self.score_thresh < 1.0:
            raise ConfigError(f"score_thresh must be in [0, 1), got {self.score_thresh}")
        if not 0.0 <= self.nms_thresh <= 1.0:
            raise ConfigError(f"nms_thresh must be in [0, 1], got {self.nms_thresh}")
        if not 0.0 <= self.focal_loss_alpha <= 1.0 or self.focal_loss_gamma < 0:
            raise ConfigError(
                f"need focal_loss_alpha in [0, 1] and focal_loss_gamma >= 0, got {self.focal_loss_alpha},"
                f" {self.focal_loss_gamma}"
            )
        if self.bbox_reg_clamp <= 0:
            raise ConfigError(f"bbox_reg_clamp must be > 0, got {self.bbox_reg_clamp}")
        if self.head_norm == "groupnorm" and self.fpn_channels % 32:
            raise ConfigError(f"groupnorm needs fpn_channels divisible by 32, got {self.fpn_channels}")

    def check_input_size(self, size: tuple[int, int]) -> None:
        """ConfigError when the model cannot run at input ``size`` (H, W).

        GroupNorm(32) normalises each group over its channels and pixels; P7 (stride 128) of a 128x128
        input is one pixel, so with 32 channels a group holds one value, which GroupNorm refuses.
        """
        h, w = (int(v) for v in size)
        if self.head_norm == "groupnorm" and (self.fpn_channels // 32) * (h // 128) * (w // 128) < 2:
            raise ConfigError(
                f"head_norm groupnorm with fpn_channels {self.fpn_channels} cannot run at {h}x{w}: P7 is"
                f" {h // 128}x{w // 128}, one value per GroupNorm group; use fpn_channels >= 64 or a larger input"
            )

    @property
    def num_anchors_per_location(self) -> int:
        return 9

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["anchor_sizes"] = list(self.anchor_sizes)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelConfig:
        return from_dict_strict(cls, d, "model")
