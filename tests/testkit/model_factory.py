"""Models for tests: a RetinaNet whose random head gives spread-out scores, and an ONNX file that is not ours.

Random weights give near-constant scores (all anchors score ~prior_prob); the head is re-initialised
so that logits spread (std ~1.5 around -2) and boxes move (deltas std ~0.2), which gives hundreds of
candidates with well-separated scores.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from retina_deploy.model import build_model
from retina_deploy.model.config import ModelConfig


def make_detector(cfg: ModelConfig, seed: int, size: tuple[int, int]) -> nn.Module:
    """A RetinaNet whose random head gives spread-out scores and moving boxes (see the module docstring)."""
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    cls_head, reg_head = model.head.classification_head, model.head.regression_head
    with torch.no_grad():
        for tower in (cls_head.conv, reg_head.conv):
            for m in tower.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight)
        features = model.backbone(torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(seed)))
        for tower, conv, std in ((cls_head.conv, cls_head.cls_logits, 1.5), (reg_head.conv, reg_head.bbox_reg, 0.2)):
            out = torch.cat([(conv(tower(f)) - conv.bias[:, None, None]).flatten() for f in features])
            conv.weight.mul_(std / out.std())
        cls_head.cls_logits.bias.normal_(-2.0, 0.5)
        reg_head.bbox_reg.bias.zero_()
    return model


def write_foreign_onnx(path: Path) -> Path:
    """A valid ONNX file (one Identity node) without our metadata."""
    import onnx

    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    onnx.save(onnx.helper.make_model(graph), path)
    return path
