"""torchvision RetinaNet state dict -> retina-deploy checkpoint, without retraining.

Parameter names already match torchvision's; this module reads the file safely, renames the keys
of older torchvision releases, infers the architecture from tensor shapes and writes our checkpoint.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from retina_deploy.core.errors import CheckpointError
from retina_deploy.core.outputs import check_output_dir
from retina_deploy.model import build_model
from retina_deploy.model.checkpoint import save_checkpoint
from retina_deploy.model.config import ModelConfig
from retina_deploy.model.weights import load_state_dict_strict, read_state_dict
from retina_deploy.runtime.image.preprocess import PreprocessConfig

# Blocks per stage (layer1..layer4) and whether blocks are bottlenecks (have conv3).
_RESNET_LAYOUTS = {
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
    ((3, 8, 36, 3), True): "resnet152",
}
_OLD_HEAD_KEY = re.compile(r"^(head\.(?:classification|regression)_head\.conv)\.(\d+)\.(weight|bias)$")
_OLD_FPN_KEY = re.compile(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$")


def upgrade_torchvision_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename keys of torchvision < 0.13 files (the published COCO weights) to today's names.

    Old heads were Sequential(conv, relu, conv, relu, ...): ``conv.{2i}`` -> ``conv.{i}.0``.
    Old FPN blocks were bare convs: ``inner_blocks.{i}.weight`` -> ``inner_blocks.{i}.0.weight``.
    ``num_batches_tracked`` counters are dropped (the backbone uses FrozenBatchNorm2d).
    """
    out = {}
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        if m := _OLD_HEAD_KEY.match(key):
            key = f"{m[1]}.{int(m[2]) // 2}.0.{m[3]}"
        elif m := _OLD_FPN_KEY.match(key):
            key = f"{m[1]}.0.{m[2]}"
        out[key] = value
    return out


def infer_model_config(state: dict[str, torch.Tensor]) -> ModelConfig:
    """The ModelConfig whose parameters have the shapes in ``state`` (upgraded keys)."""
    try:
        blocks = tuple(
            len({k.split(".")[3] for k in state if k.startswith(f"backbone.body.layer{i}.")}) for i in range(1, 5)
        )
        bottleneck = "backbone.body.layer1.0.conv3.weight" in state
        backbone = _RESNET_LAYOUTS[(blocks, bottleneck)]
        fpn_channels = state["backbone.fpn.inner_blocks.0.0.weight"].shape[0]
        p6_in = state["backbone.fpn.extra_blocks.p6.weight"].shape[1]
        num_anchors = state["head.regression_head.bbox_reg.weight"].shape[0] // 4
        num_classes = state["head.classification_head.cls_logits.weight"].shape[0] // num_anchors
    except (KeyError, IndexError) as e:
        raise CheckpointError(f"not a torchvision RetinaNet state dict (cannot read {e})") from e
    if num_anchors != 9:
        raise CheckpointError(f"expected 9 anchors per location, the file has {num_anchors}")
    groupnorm = "head.classification_head.conv.0.1.weight" in state
    return ModelConfig(
        backbone=backbone,
        num_classes=num_classes,
        fpn_channels=fpn_channels,
        p6_from="p5" if p6_in == fpn_channels else "c5",
        head_norm="groupnorm" if groupnorm else "none",
        box_loss="giou" if groupnorm else "l1",  # torchvision's v2 recipe pairs GroupNorm with GIoU
    )


def default_class_names(num_classes: int) -> list[str]:
    """COCO names for torchvision's 91-label layout (label == COCO category id), else class_0..class_{C-1}."""
    if num_classes == 91:
        from torchvision.models._meta import _COCO_CATEGORIES

        return list(_COCO_CATEGORIES)
    return [f"class_{i}" for i in range(num_classes)]


def convert_torchvision(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    class_names: list[str] | None = None,
    preprocess: PreprocessConfig | None = None,
    overwrite: bool = False,
) -> Path:
    """Convert a torchvision RetinaNet weights file (``.pth`` or ``.safetensors``) into a checkpoint folder.

    ``out_dir`` must be absent or empty (``overwrite``: replace the checkpoint in it), and never hold ``src``.
    """
    check_output_dir(out_dir, inputs=(src,), flag="OUT", foreign_ok=overwrite)
    state = upgrade_torchvision_keys(read_state_dict(src))
    try:
        cfg = infer_model_config(state)
    except CheckpointError as e:
        raise CheckpointError(f"{src}: {e}") from e
    names = class_names if class_names is not None else default_class_names(cfg.num_classes)
    if len(names) != cfg.num_classes:
        raise CheckpointError(f"{src}: {len(names)} class names given for a model of {cfg.num_classes} classes")
    model = build_model(cfg)
    load_state_dict_strict(model, state, str(src))
    return save_checkpoint(
        model,
        out_dir,
        class_names=names,
        preprocess=preprocess or PreprocessConfig(size=(768, 1280)),
        extra={"converted_from": Path(src).name, "source": "torchvision"},
    )
