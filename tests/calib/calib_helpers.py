"""Helpers of the precision tests: a small ResNet-18 export whose scores spread out, and tiny image sets.

Random weights give near-constant scores; the head is re-initialised so that logits spread (std ~1.5
around -1.5) and boxes move, which gives many well-separated detections: accuracy changes between
precisions then show up in AP instead of vanishing in ties. ``head_norm="none"``: each head tower
layer is conv -> ReLU, which the outlier construction in ``test_sensitivity`` relies on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SIZE = (128, 128)
BATCH = (1, 2, 4)
CLASS_NAMES = ("circle", "square", "triangle")


def export_none(out_dir: Path, seed: int = 0) -> Path:
    """A ResNet-18 checkpoint exported with ``--nms none`` (batch 1..4, 128 x 128)."""
    import torch
    from torch import nn

    from retina_deploy.export.onnx_export import ExportConfig, export_onnx
    from retina_deploy.model import build_model
    from retina_deploy.model.checkpoint import save_checkpoint
    from retina_deploy.model.config import ModelConfig
    from retina_deploy.runtime.image.preprocess import PreprocessConfig

    torch.manual_seed(seed)
    cfg = ModelConfig(
        backbone="resnet18", num_classes=len(CLASS_NAMES), head_norm="none", score_thresh=0.3,
        topk_candidates=100, detections_per_img=30,
    )  # fmt: skip
    model = build_model(cfg).eval()
    head = model.head
    with torch.no_grad():
        feats = model.backbone(torch.randn(2, 3, *SIZE))
        for tower, conv, std in (
            (head.classification_head.conv, head.classification_head.cls_logits, 1.5),
            (head.regression_head.conv, head.regression_head.bbox_reg, 0.2),
        ):
            for m in tower.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight)
            out = torch.cat([(conv(tower(f)) - conv.bias[:, None, None]).flatten() for f in feats])
            conv.weight.mul_(std / out.std())
        head.classification_head.cls_logits.bias.normal_(-1.5, 0.5)
        head.regression_head.bbox_reg.bias.zero_()
    ckpt = save_checkpoint(
        model, out_dir / "ckpt", class_names=list(CLASS_NAMES), preprocess=PreprocessConfig(size=SIZE)
    )
    return export_onnx(ckpt, out_dir / "model.onnx", ExportConfig(nms="none", batch=BATCH))


def shapes_images(out_dir: Path, num: int, seed: int) -> Path:
    """``num`` synthetic PNG images (make-shapes, 128 px); returns the images folder."""
    from retina_deploy.data.shapes import make_shapes

    return make_shapes(out_dir, num_images=num, size=SIZE[0], seed=seed) / "images"


def pseudo_labels(onnx_path: Path, images_dir: Path, out_json: Path, *, min_score: float = 0.5) -> Path:
    """A COCO file whose ground truth is the FP32 model's own detections (score > min_score).

    The FP32 file then scores AP ~1.0 on it, and any AP another precision loses is its own error.
    """
    from retina_deploy.runtime.detector import Detector
    from retina_deploy.runtime.image.image_io import load_image

    files = sorted(images_dir.glob("*.png"))
    images, annotations = [], []
    with Detector.load(onnx_path, backend="ort-cpu") as det:
        for image_id, path in enumerate(files, start=1):
            rgb = load_image(path)
            images.append({"id": image_id, "file_name": path.name, "height": rgb.shape[0], "width": rgb.shape[1]})
            found = det.detect_one(rgb)
            for box, score, cls in zip(found.boxes, found.scores, found.class_ids, strict=True):
                if score > min_score:
                    x1, y1, x2, y2 = (float(v) for v in box)
                    annotations.append({
                        "id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls) + 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                    })  # fmt: skip
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(CLASS_NAMES)]
    out_json.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return out_json


def plant_outlier_channel(onnx_path: Path, out_path: Path, *, factor: float = 1000.0, channel: int = 0) -> Path:
    """A function-preserving rewrite that INT8 cannot take: one channel into the classification convs x1000.

    The last classification tower conv's output channel ``channel`` is scaled by ``factor`` (a ReLU
    follows: relu(k z) = k relu(z)) and the matching input channel of ``cls_logits`` by 1/``factor``.
    FP32 outputs are unchanged (to float rounding), but the per-tensor INT8 range of cls_logits' input
    is now set by that one channel, so every other channel rounds to ~0.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {i.name: i for i in model.graph.initializer}
    tower = inits["head.classification_head.conv.3.0.weight"]
    logits = inits["head.classification_head.cls_logits.weight"]
    w = numpy_helper.to_array(tower).copy()
    w[channel] *= factor
    tower.CopyFrom(numpy_helper.from_array(w, tower.name))
    w = numpy_helper.to_array(logits).copy()
    w[:, channel] /= factor
    logits.CopyFrom(numpy_helper.from_array(w, logits.name))
    for node in model.graph.node:  # the tower conv's bias must scale too; it is shared zeros here
        if node.op_type == "Conv" and node.input[1] == tower.name and len(node.input) > 2:
            if np.any(numpy_helper.to_array(inits[node.input[2]])):
                raise ValueError("plant_outlier_channel expects a zero bias on the tower conv")
    onnx.save(model, str(out_path))
    return out_path


__all__ = ["BATCH", "CLASS_NAMES", "SIZE", "export_none", "plant_outlier_channel", "pseudo_labels", "shapes_images"]
