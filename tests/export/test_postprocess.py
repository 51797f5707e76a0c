"""The export heads in eager PyTorch == RetinaNet's eval post-processing, on random head outputs (no export)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from testkit.detection_compare import compare_detections
from testkit.export_helpers import SIZE

from retina_deploy.export.onnx_export import ExportModel
from retina_deploy.export.postprocess import CandidatesPerLevel, DenseHead, EfficientNmsHead, OnnxNmsHead
from retina_deploy.model import build_model
from retina_deploy.model.anchors import anchors_for_grids, grids_for_input
from retina_deploy.model.config import ModelConfig
from retina_deploy.runtime.contract.onnx_metadata import NmsSettings
from retina_deploy.runtime.post.host_nms import detections_from_dense

NUM_CLASSES = 3


def random_head_outputs(batch: int, seed: int):
    """Logits [B, HWA_l, C] ~ N(-1.5, 1.5) and deltas [B, HWA_l, 4] ~ N(0, 0.3) per level, with the anchors."""
    g = torch.Generator().manual_seed(seed)
    anchors = anchors_for_grids((32, 64, 128, 256, 512), SIZE, grids_for_input(SIZE))
    cls = [torch.randn(batch, a.shape[0], NUM_CLASSES, generator=g) * 1.5 - 1.5 for a in anchors]
    box = [torch.randn(batch, a.shape[0], 4, generator=g) * 0.3 for a in anchors]
    return cls, box, anchors


def detections_of(out, i: int) -> dict:
    num, boxes, scores, classes = (t[i] for t in out)
    n = int(num[0])
    assert not scores[n:].any() and not boxes[n:].any() and not classes[n:].any()
    return {"boxes": boxes[:n], "scores": scores[:n], "labels": classes[:n].long()}


@pytest.mark.parametrize("topk,max_dets", [(100, 50), (4, 40)], ids=["cap-binds", "padding"])
def test_heads_equal_eval_postprocess(topk, max_dets):
    cfg = ModelConfig(backbone="resnet18", num_classes=NUM_CLASSES, score_thresh=0.3, topk_candidates=topk,
                      detections_per_img=max_dets, nms_thresh=0.5)  # fmt: skip
    model = build_model(cfg).eval()
    cls, box, anchors = random_head_outputs(batch=2, seed=topk)
    expected = model.postprocess(cls, box, anchors, [SIZE, SIZE])
    candidates = CandidatesPerLevel(anchors, SIZE, num_classes=NUM_CLASSES, topk_per_level=topk,
                                    bbox_reg_clamp=cfg.bbox_reg_clamp)  # fmt: skip
    common = dict(num_classes=NUM_CLASSES, max_dets=max_dets, score_thresh=0.3, iou_thresh=0.5)
    with torch.no_grad():
        cand = candidates(cls, box)
        onnx_out = OnnxNmsHead(num_candidates=candidates.num_candidates, **common)(*cand)
        efficient_out = EfficientNmsHead(**common)(*cand)
        dense_boxes, dense_scores = DenseHead(anchors, SIZE, bbox_reg_clamp=cfg.bbox_reg_clamp)(cls, box)
    host = detections_from_dense(dense_boxes.numpy(), dense_scores.numpy(), level_sizes=[a.shape[0] for a in anchors],
                                 topk=topk, score_thresh=0.3, iou_thresh=0.5, max_dets=max_dets)  # fmt: skip
    host_out = [torch.from_numpy(host[k]) for k in ("num_dets", "boxes", "scores", "classes")]
    for out in (onnx_out, efficient_out, host_out):
        assert out[1].shape == (2, max_dets, 4) and out[0].dtype == out[3].dtype == torch.int32
        for i in range(2):
            got, want = detections_of(out, i), expected[i]
            assert len(want["scores"]) > 0 and (topk > 10 or len(want["scores"]) < max_dets)
            compare_detections(got, want, nms_thresh=0.5, box_tol=1e-4, box_rtol=1e-5, score_tol=1e-6,
                               score_thresh=0.3, max_dets=max_dets)  # fmt: skip


def test_export_anchors_equal_the_model_anchors():
    cfg = ModelConfig(backbone="resnet18", num_classes=NUM_CLASSES)
    model = build_model(cfg).eval()
    nms = NmsSettings(mode="onnx", max_dets=10, score_thresh=0.05, iou_thresh=0.5, topk_per_level=100)
    export_model = ExportModel(model, SIZE, nms)
    with torch.no_grad():
        _, _, anchors = model.forward_levels(torch.zeros(1, 3, *SIZE))
    for i, a in enumerate(anchors):
        assert torch.equal(getattr(export_model.post, f"anchors_{i}"), a)
    assert export_model.anchors_per_level == tuple(a.shape[0] for a in anchors)
    assert export_model.post.k_per_level == [100, 100, 100, 100, 2 * 1 * 9 * NUM_CLASSES]


def test_boxes_are_clipped_to_the_input():
    h, w = SIZE
    dense = DenseHead(anchors_for_grids((32, 64, 128, 256, 512), SIZE, grids_for_input(SIZE)), SIZE, bbox_reg_clamp=4.0)
    cls = [torch.zeros(1, n, 1) for n in (4608, 1152, 288, 72, 18)]
    box = [torch.full((1, n, 4), 3.0) for n in (4608, 1152, 288, 72, 18)]  # far outside, huge
    boxes, scores = dense(cls, box)
    assert boxes.min() == 0 and boxes[..., 0::2].max() == w and boxes[..., 1::2].max() == h
    np.testing.assert_allclose(scores.numpy(), 0.5)
