"""The vectorised host NMS gives the same results as the per-class loops it replaced (host_nms_reference).

Bit for bit wherever no two candidates score the same (the old loops ordered equal scores differently:
see host_nms_reference); ties are held to ONNX Runtime's TopK in test_host_nms_onnx_ties.py.
"""

from __future__ import annotations

import host_nms_reference as old
import numpy as np
import pytest
from nms_cases import CASES, LEVELS_128, candidate_set, dense_outputs
from testkit.detection_compare import compare_detections

from retina_deploy.runtime.post import host_nms
from retina_deploy.runtime.post.host_nms import batched_nms, detections_from_dense, efficient_nms


@pytest.fixture(params=[1, host_nms.PAIRS_PER_STEP], ids=["one-box-a-step", "default-windows"])
def window(request, monkeypatch):
    """The NMS window sizes: one box per class and step (the most steps), and the default."""
    monkeypatch.setattr(host_nms, "PAIRS_PER_STEP", request.param)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("iou_thresh, max_keep", [(0.5, 300), (0.3, 7), (0.7, 1), (0.0, 50), (1.0, 10_000)])
def test_batched_nms_equals_the_old_loops(case, iou_thresh, max_keep, window):
    boxes, scores, classes = candidate_set(case, np.random.default_rng(len(case)))
    expected = old.batched_nms(boxes, scores, classes, iou_thresh, max_keep)
    got = batched_nms(boxes, scores, classes, iou_thresh, max_keep)
    assert got.dtype == np.int64 and got.tolist() == expected.tolist()
    if case == "identical-boxes" and 0 < iou_thresh < 1:
        assert len(got) == min(4, max_keep)  # one box per class
    if case == "random" and iou_thresh == 0.5:
        assert 50 < len(got) < len(boxes)  # real suppression happened


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("iou_thresh, max_keep", [(0.5, 300), (0.3, 7), (0.7, 1)])
def test_plugin_rules_equal_the_old_loops(case, iou_thresh, max_keep, window):
    boxes, scores, classes = candidate_set(case, np.random.default_rng(len(case) + 1))
    expected = old.batched_nms(boxes, scores, classes, iou_thresh, max_keep, plugin_rules=True)
    assert batched_nms(boxes, scores, classes, iou_thresh, max_keep, plugin_rules=True).tolist() == expected.tolist()


def test_plugin_rules_keep_equal_scores_in_class_order():
    # Two classes, same score, disjoint boxes: the plugin reference orders them by class, not by index.
    boxes = np.array([[0, 0, 1, 1], [5, 5, 6, 6]], np.float32)
    scores = np.array([0.5, 0.5], np.float32)
    assert batched_nms(boxes, scores, np.array([1, 0]), 0.5, 2, plugin_rules=True).tolist() == [1, 0]
    assert batched_nms(boxes, scores, np.array([1, 0]), 0.5, 2).tolist() == [0, 1]  # the graph: by index


def test_plugin_rules_look_past_max_keep_inside_a_score_tie():
    # 2,000 disjoint boxes of one score, class 0 only at the end: enough boxes are kept long before
    # it, but the plugin orders equal scores by class, so the last candidates come first.
    n = 2000
    x = np.arange(n, dtype=np.float32)[:, None] * 20
    boxes = np.concatenate([x, x * 0, x + 10, x * 0 + 10], 1)
    scores = np.full(n, 0.5, np.float32)
    classes = np.ones(n, np.int64)
    classes[-3:] = 0
    got = batched_nms(boxes, scores, classes, 0.5, 5, plugin_rules=True)
    assert got.tolist() == [n - 3, n - 2, n - 1, 0, 1]
    assert got.tolist() == old.batched_nms(boxes, scores, classes, 0.5, 5, plugin_rules=True).tolist()


@pytest.mark.parametrize(
    "num_classes, topk, score_thresh, max_dets",
    [(6, 1000, 0.05, 300), (6, 1000, 0.001, 300), (1, 1000, 0.05, 100), (6, 50, 0.3, 20), (6, 1000, 0.999, 300),
     (3, 5000, 0.0, 1000)],
    ids=["demo", "demo-0.001", "one-class", "topk-binds", "all-below-threshold", "thousands"],
)  # fmt: skip
def test_detections_from_dense_equal_the_old_loops(num_classes, topk, score_thresh, max_dets, window):
    boxes, scores = dense_outputs(np.random.default_rng(topk + num_classes), 2, LEVELS_128, num_classes, distinct=True)
    if score_thresh == 0.999:
        scores *= np.float32(0.99)
    run = dict(level_sizes=LEVELS_128, topk=topk, score_thresh=score_thresh, iou_thresh=0.5, max_dets=max_dets)
    expected = old.detections_from_dense(boxes, scores, **run)
    got = detections_from_dense(boxes, scores, **run)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    assert (got["num_dets"] == 0).all() if score_thresh == 0.999 else (got["num_dets"] > 5).all()


def test_detections_from_dense_on_sigmoid_ties_are_the_same_detections():
    # Sigmoid scores of a 128-px, 6-class model: float32 rounding makes some equal. Equal scores may
    # come in another order than the old loops' (and another of several equal boxes be kept), so
    # compare as detection sets: every difference must be explained by an exact tie.
    boxes, scores = dense_outputs(np.random.default_rng(3), 4, LEVELS_128, 6, distinct=False)
    run = dict(level_sizes=LEVELS_128, topk=1000, score_thresh=0.05, iou_thresh=0.5, max_dets=300)
    expected, got = old.detections_from_dense(boxes, scores, **run), detections_from_dense(boxes, scores, **run)
    np.testing.assert_array_equal(got["num_dets"], expected["num_dets"])
    for i in range(len(boxes)):
        n = expected["num_dets"][i, 0]
        a, b = ({"boxes": d["boxes"][i, :n], "scores": d["scores"][i, :n], "labels": d["classes"][i, :n]}
                for d in (got, expected))  # fmt: skip
        result = compare_detections(a, b, nms_thresh=0.5, box_tol=0, score_tol=0, iou_eps=0, max_flips=0)
        assert len(result.matched) == n > 100
        np.testing.assert_array_equal(a["scores"], b["scores"])  # the same scores in the same places


def test_efficient_nms_equals_the_old_loops():
    rng = np.random.default_rng(7)
    boxes, scores = dense_outputs(rng, 2, [500], 5, distinct=True)
    run = dict(score_threshold=0.2, iou_threshold=0.45, max_output_boxes=100)
    num, out_boxes, out_scores, out_classes = efficient_nms(boxes, scores, **run)
    for i in range(2):  # the plugin reference's candidates, through the old loops
        s = scores[i].reshape(-1)
        cand = np.flatnonzero(s >= 0.2)
        cand = cand[np.argsort(-s[cand], kind="stable")]
        keep = old.batched_nms(boxes[i][cand // 5], s[cand], cand % 5, 0.45, 100, plugin_rules=True)
        assert num[i, 0] == len(keep) > 20
        np.testing.assert_array_equal(out_classes[i, : len(keep)], (cand % 5)[keep])
        np.testing.assert_array_equal(out_scores[i, : len(keep)], s[cand][keep])
        np.testing.assert_array_equal(out_boxes[i, : len(keep)], boxes[i][cand // 5][keep])
