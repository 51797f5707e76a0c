"""Helpers of the export tests: seeded random checkpoints that produce detections, and test images.

Random weights give near-constant scores (all anchors score ~prior_prob); the head is re-initialised
so that logits spread (std ~1.5 around -2) and boxes move (deltas std ~0.2), which gives hundreds of
candidates with well-separated scores. Images fill the whole canvas with noise: constant padding
would give many anchors exactly the same score, and ties may be ordered differently by two runtimes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from testkit.detection_compare import compare_detections
from testkit.model_factory import make_detector

from retina_deploy.model.checkpoint import save_checkpoint
from retina_deploy.model.config import ModelConfig
from retina_deploy.runtime.image.preprocess import PreprocessConfig, preprocess

SIZE = (128, 256)  # not square: a swapped H/W fails the tests
BATCH = (1, 2, 4)
# Settings shared by the PyTorch model (eval post-processing) and the export flags.
DETECTOR = dict(num_classes=4, score_thresh=0.5, topk_candidates=200, detections_per_img=100, nms_thresh=0.5)


def make_checkpoint(out_dir: Path, backbone: str = "resnet18", seed: int = 0, size=SIZE, **overrides) -> Path:
    cfg = ModelConfig(backbone=backbone, **{**DETECTOR, **overrides})
    model = make_detector(cfg, seed, size)
    names = [f"class_{i}" for i in range(cfg.num_classes)]
    return save_checkpoint(model, out_dir, class_names=names, preprocess=PreprocessConfig(size=size))


def noise_images(n: int, size=SIZE, seed: int = 1) -> np.ndarray:
    """``n`` preprocessed images [n, 3, H, W]: random RGB noise at half size, upscaled to fill the canvas."""
    rng = np.random.default_rng(seed)
    h, w = size
    cfg = PreprocessConfig(size=size)
    return np.stack([preprocess(rng.integers(0, 256, (h // 2, w // 2, 3), dtype=np.uint8), cfg)[0] for _ in range(n)])


def assert_same_detections(ours: dict, torch_det: dict, *, box_rtol: float = 1e-3, score_tol: float = 1e-4) -> None:
    """ONNX detections of one image (num_dets [1], boxes [K, 4], scores [K], classes [K]) == PyTorch's.

    Paired one to one (class equal, score within ``score_tol``, box within ``box_rtol`` relative +
    1e-3 px), padding past num_dets zero; only flips that tolerance explains are allowed
    (tests/testkit/detection_compare.py).
    """
    compare_detections(
        ours,
        torch_det,
        nms_thresh=DETECTOR["nms_thresh"],
        box_tol=1e-3,
        box_rtol=box_rtol,
        score_tol=score_tol,
        score_thresh=DETECTOR["score_thresh"],
        max_dets=DETECTOR["detections_per_img"],
    )
