"""Host post-processing in numpy: class-aware NMS, per-level top-k, and the EfficientNMS_TRT reference.

Hand-computed cases: A = [0, 0, 10, 10] and B = [0, 0, 10, 5] overlap with IoU exactly 50 / 100 = 0.5,
C = [20, 20, 30, 30] overlaps neither.
"""

from __future__ import annotations

import numpy as np
import pytest
from testkit.detection_compare import compare_detections

from retina_deploy.runtime.post.host_nms import (
    EFFICIENT_NMS_MAX_CANDIDATES,
    batched_nms,
    detections_from_dense,
    efficient_nms,
    iou_one_to_many,
    topk_per_level,
)

A, B, C = [0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 30, 30]


def test_iou_one_to_many_hand_computed():
    a, b, c = (np.array(x, np.float32) for x in (A, B, C))
    assert float(iou_one_to_many(a, b)) == 0.5 and float(iou_one_to_many(a, c)) == 0.0  # one box against one
    np.testing.assert_array_equal(iou_one_to_many(a, np.stack([a, b, c])), [1.0, 0.5, 0.0])
    point = np.array([5, 5, 5, 5], np.float32)
    assert np.isnan(iou_one_to_many(point, point))  # 0 / 0: never above a threshold
    pairs = iou_one_to_many(np.stack([a, c])[:, None, :], np.stack([a, b, c])[None, :, :])
    np.testing.assert_array_equal(pairs, [[1.0, 0.5, 0.0], [0.0, 0.0, 1.0]])


def test_batched_nms_hand_computed():
    boxes = np.array([A, B, C, B], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    # IoU(A, B) = 0.5: suppressed only above 0.5 (torchvision's and ONNX's strict >).
    assert batched_nms(boxes, scores, np.zeros(4, np.int64), 0.5, 10).tolist() == [0, 1, 2]
    assert batched_nms(boxes, scores, np.zeros(4, np.int64), 0.49, 10).tolist() == [0, 2]
    # Classes never suppress each other; max_keep cuts the merged, score-sorted list.
    assert batched_nms(boxes, scores, np.array([0, 1, 0, 0]), 0.49, 10).tolist() == [0, 1, 2]
    assert batched_nms(boxes, scores, np.array([0, 1, 0, 0]), 0.49, 2).tolist() == [0, 1]


def test_batched_nms_matches_torchvision():
    torch = pytest.importorskip("torch")
    from torchvision.ops import batched_nms as tv_batched_nms

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 200, (500, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 60, (500, 2))], 1).astype(np.float32)
    scores = rng.uniform(0, 1, 500).astype(np.float32)
    classes = rng.integers(0, 4, 500)
    expected = tv_batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(classes), 0.5).numpy()
    ours = batched_nms(boxes, scores, classes, 0.5, 500)

    # Same inputs; the IoU arithmetic may round differently (SIMD, FMA): only explained flips allowed.
    def kept(idx):
        return {"boxes": boxes[idx], "scores": scores[idx], "labels": classes[idx]}

    result = compare_detections(kept(ours), kept(expected), nms_thresh=0.5, box_tol=0, score_tol=0, iou_eps=1e-6)
    assert len(result.matched) > 100 and len(result.flips) <= 2


def test_topk_per_level():
    # Two levels of 2 and 1 anchors, 2 classes: per level the k = 2 best (anchor, class) pairs.
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.4]], np.float32)
    anchors, classes = topk_per_level(scores, [2, 1], 2)
    assert anchors.tolist() == [0, 1, 2, 2] and classes.tolist() == [1, 0, 1, 0]
    with pytest.raises(ValueError, match="sum to 2"):
        topk_per_level(scores, [1, 1], 2)


def test_detections_from_dense_hand_computed():
    boxes = np.array([[A, B, C]], np.float32)
    scores = np.array([[[0.9, 0.0], [0.8, 0.85], [0.2, 0.7]]], np.float32)  # [1, 3 anchors, 2 classes]
    out = detections_from_dense(boxes, scores, level_sizes=[2, 1], topk=3, score_thresh=0.5, iou_thresh=0.4,
                                max_dets=4)  # fmt: skip
    # Level 0 top-3: (A, 0) .9, (B, 1) .85, (B, 0) .8; level 1: (C, 1) .7, (C, 0) .2 < threshold.
    # NMS per class: (B, 0) overlaps (A, 0) with IoU 0.5 > 0.4 and goes.
    assert out["num_dets"].tolist() == [[3]]
    np.testing.assert_allclose(out["scores"], [[0.9, 0.85, 0.7, 0.0]])
    assert out["classes"].tolist() == [[0, 1, 1, 0]]
    np.testing.assert_array_equal(out["boxes"][0], [A, B, C, [0, 0, 0, 0]])


def test_efficient_nms_plugin_rules():
    boxes = np.array([[A, B, C]], np.float32)
    scores = np.array([[[0.9], [0.8], [0.7]]], np.float32)
    run = dict(score_threshold=0.7, max_output_boxes=5)
    # >= thresholds: C (score == 0.7) stays, B (IoU == 0.5) is suppressed.
    num, out_boxes, out_scores, out_classes = efficient_nms(boxes, scores, iou_threshold=0.5, **run)
    assert num.tolist() == [[2]] and out_boxes.shape == (1, 5, 4) and num.dtype == out_classes.dtype == np.int32
    np.testing.assert_array_equal(out_boxes[0, :2], [A, C])
    np.testing.assert_allclose(out_scores[0], [0.9, 0.7, 0, 0, 0])
    num, *_ = efficient_nms(boxes, scores, iou_threshold=0.51, **run)
    assert num.tolist() == [[3]]


def test_efficient_nms_classes_background_coding_activation():
    boxes = np.array([[A, B]], np.float32)
    scores = np.array([[[0.9, 0.1, 0.0], [0.0, 0.8, 0.95]]], np.float32)  # B is class 1 and class 2
    run = dict(score_threshold=0.5, iou_threshold=0.3, max_output_boxes=3)
    num, _, s, c = efficient_nms(boxes, scores, **run)
    assert num.tolist() == [[3]] and c.tolist() == [[2, 0, 1]]  # class-aware: nothing suppressed
    num, _, s, c = efficient_nms(boxes, scores, class_agnostic=True, **run)
    assert num.tolist() == [[1]] and c.tolist() == [[2, 0, 0]]  # B(2) suppresses A and B(1)
    num, _, s, c = efficient_nms(boxes, scores, background_class=2, **run)
    assert c[0, : num[0, 0]].tolist() == [0, 1]
    logits = np.log(scores / (1 - scores + 1e-12) + 1e-12).astype(np.float32)
    num, _, s, c = efficient_nms(boxes, logits, score_activation=True, **run)
    assert c.tolist() == [[2, 0, 1]] and s[0] == pytest.approx([0.95, 0.9, 0.8], abs=1e-5)
    centre_size = np.array([[[5, 5, 10, 10], [5, 2.5, 10, 5]]], np.float32)  # A and B as cx, cy, w, h
    _, out_boxes, *_ = efficient_nms(centre_size, scores, box_coding=1, **run)
    np.testing.assert_allclose(out_boxes[0], [B, A, B])


def test_efficient_nms_considers_only_the_best_4096():
    n = EFFICIENT_NMS_MAX_CANDIDATES + 10
    x = np.arange(n, dtype=np.float32)[:, None] * 20  # disjoint boxes
    boxes = np.concatenate([x, x * 0, x + 10, x * 0 + 10], 1)[None]
    scores = np.linspace(0.99, 0.5, n, dtype=np.float32)[None, :, None]
    num, out_boxes, out_scores, _ = efficient_nms(boxes, scores, score_threshold=0.1, iou_threshold=0.5,
                                                  max_output_boxes=n)  # fmt: skip
    assert num[0, 0] == EFFICIENT_NMS_MAX_CANDIDATES and not out_scores[0, EFFICIENT_NMS_MAX_CANDIDATES:].any()
