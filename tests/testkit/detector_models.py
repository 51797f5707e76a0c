"""Small exported models shared by the runtime tests: one ResNet-18 checkpoint, exported once per NMS mode.

Random weights, with the head re-initialised so that scores spread over (0, 1) and boxes vary: many
candidates, real NMS work, and few exact ties (which would make backends differ by float noise).
Exports are cached per process, so every test module reuses the same files.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import numpy as np

CLASS_NAMES = ("circle", "square", "triangle")
INPUT_SIZE = (256, 256)
BATCH = (1, 2, 4)
_DIR = Path(tempfile.mkdtemp(prefix="retina-runtime-tests-"))
atexit.register(shutil.rmtree, _DIR, ignore_errors=True)
_cache: dict[str, Path] = {}


def checkpoint() -> Path:
    """A saved ResNet-18 RetinaNet checkpoint (3 classes, 256 x 256 input)."""
    if "checkpoint" not in _cache:
        import torch

        from retina_deploy.model import build_model
        from retina_deploy.model.checkpoint import save_checkpoint
        from retina_deploy.model.config import ModelConfig
        from retina_deploy.runtime.image.preprocess import PreprocessConfig

        torch.manual_seed(0)
        cfg = ModelConfig(
            backbone="resnet18",
            num_classes=len(CLASS_NAMES),
            head_norm="groupnorm",
            topk_candidates=200,
            detections_per_img=50,
        )
        model = build_model(cfg)
        with torch.no_grad():
            model.head.classification_head.cls_logits.weight.normal_(0, 0.02)
            model.head.classification_head.cls_logits.bias.fill_(-3.0)
            model.head.regression_head.bbox_reg.weight.normal_(0, 0.01)
        _cache["checkpoint"] = save_checkpoint(
            model, _DIR / "ckpt", class_names=list(CLASS_NAMES), preprocess=PreprocessConfig(size=INPUT_SIZE)
        )
    return _cache["checkpoint"]


def exported(nms: str = "onnx") -> Path:
    """The checkpoint exported with ``--nms nms`` and batch range 1..4 (cached)."""
    if nms not in _cache:
        from retina_deploy.export.onnx_export import ExportConfig, export_onnx

        _cache[nms] = export_onnx(checkpoint(), _DIR / f"model_{nms}.onnx", ExportConfig(nms=nms, batch=BATCH))
    return _cache[nms]


def images(seed: int = 0) -> list[np.ndarray]:
    """RGB uint8 images of several aspect ratios (wide, tall, square, larger and smaller than the input)."""
    rng = np.random.default_rng(seed)
    shapes = [(200, 300), (300, 120), (256, 256), (90, 400), (480, 640), (37, 41)]
    out = []
    for h, w in shapes:
        # smooth blobs rather than white noise, so that features (and scores) vary across the image
        small = rng.integers(0, 256, size=(-(-h // 16), -(-w // 16), 3), dtype=np.uint8)
        out.append(np.kron(small, np.ones((16, 16, 1), np.uint8))[:h, :w].copy())
    return out


def match_detections(a, b, *, box_tol: float = 0.5, score_tol: float = 1e-3) -> None:
    """Assert two ``Detections`` are equal up to tolerances: paired one to one, only explained flips
    (tests/testkit/detection_compare.py; NMS threshold and max detections as in ``checkpoint()``)."""
    from testkit.detection_compare import compare_detections

    compare_detections(a, b, nms_thresh=0.5, box_tol=box_tol, score_tol=score_tol, score_thresh=0.05, max_dets=50)
    assert a.class_names == tuple(a.class_names) and len(a.class_names) == len(b.class_names)
