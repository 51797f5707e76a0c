"""Post-processing on the host in numpy (torch-free): the ``--nms none`` files' top-k + class-aware NMS,
and a CPU reference of TensorRT's ``EfficientNMS_TRT`` plugin.

``detections_from_dense`` reproduces the in-graph post-processing of ``--nms onnx`` files (and
PyTorch eval): per level the top-k (anchor, class) pairs, those with score > score_thresh,
class-aware greedy NMS (IoU > iou_thresh suppresses), the max_dets best, zero-padded. Equal scores
go in the graph's order: lowest index first in each TopK and in NonMaxSuppression.

Cost: the top-k looks only at the pairs above the threshold (or above a floor found on a sample),
and NMS runs all classes at once, a window of boxes per class a step, on ever fewer boxes: a few
dozen numpy calls per step and a few steps per image instead of a Python loop over boxes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

EFFICIENT_NMS_MAX_CANDIDATES = 4096  # the plugin's numSelectedBoxes: only the best 4096 scores enter NMS


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes broadcast against each other (``box`` [..., 4], ``boxes`` [..., 4]) as torchvision
    computes it (0/0 -> nan, never > a threshold); [4] vs [M, 4] gives [M]."""
    return _iou(np.moveaxis(box, -1, 0), np.moveaxis(boxes, -1, 0))


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``iou_one_to_many`` on coordinate-first stacks a [4, ...], b [4, ...] (x1, y1, x2, y2 rows, so
    each operation runs over long contiguous rows): torchvision's float operations in its order."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # inf and nan never exceed a threshold
        inter = np.asarray(np.minimum(a[2], b[2]))  # in place from here: no temporary of the pairs' shape per op
        inter -= np.maximum(a[0], b[0])
        np.maximum(inter, 0, out=inter)  # clip(w, 0): a -0.0 in place of 0.0 changes no comparison
        h = np.asarray(np.minimum(a[3], b[3]))
        h -= np.maximum(a[1], b[1])
        inter *= np.maximum(h, 0, out=h)
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
        union -= inter
        return np.divide(inter, union, out=inter)


def batched_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    iou_thresh: float,
    max_keep: int,
    *,
    plugin_rules: bool = False,
) -> np.ndarray:
    """Class-aware greedy NMS: indices into boxes [M, 4] / scores [M] / classes [M] int, at most max_keep.

    Candidates are visited by descending score, equal scores by index; one is kept unless a kept
    box of its class overlaps it with IoU > iou_thresh (torchvision, ONNX NonMaxSuppression).
    Returns the kept indices in that order (the order of the ``--nms onnx`` graph's final TopK).
    With ``plugin_rules`` (EfficientNMS_TRT): IoU >= iou_thresh as the plugin computes it, at most
    max_keep per class, and the result by descending score, equal scores by class.
    """
    order = np.argsort(-scores, kind="stable")
    ranks = _greedy_by_class(boxes[order], classes[order], iou_thresh, max_keep, plugin_rules=plugin_rules)
    kept = order[ranks]
    if plugin_rules:
        kept = kept[np.lexsort((classes[kept], -scores[kept]))]
    return kept[:max_keep]


PAIRS_PER_STEP = 32768  # box pairs an NMS step compares at most; sets the width of its windows (fastest here)


def _greedy_by_class(
    boxes: np.ndarray, classes: np.ndarray, iou_thresh: float, max_keep: int, *, plugin_rules: bool
) -> np.ndarray:
    """Ranks kept by greedy NMS of boxes [M, 4] sorted by descending score, per class; ascending [<= M].

    Every class at once, on shrinking sets: the alive boxes sit grouped by class in rank order. A step
    takes each class's first ``width`` alive boxes (a window), settles the window exactly, then drops
    the boxes that the window's kept boxes suppress. Windows widen as boxes die, so the loop runs a
    few times, not once per box. Without ``plugin_rules``, once max_keep boxes are kept, boxes ranked
    after the max_keep-th best kept one are dropped (they cannot be output); with them each class
    keeps up to max_keep.
    """
    small = classes.astype(np.int16) if len(classes) and 0 <= classes.min() and classes.max() < 2**15 else classes
    by_class = np.argsort(small, kind="stable")  # a radix sort for 16-bit keys
    rank, group, xy = by_class, classes[by_class], np.ascontiguousarray(boxes[by_class].T)
    taken = np.zeros(int(classes.max()) + 1 if len(classes) else 0, np.int64)  # kept so far, per class
    kept: list[np.ndarray] = []
    while len(rank):
        first = np.ones(len(rank), bool)
        np.not_equal(group[1:], group[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        seg = np.cumsum(first) - 1  # each alive box's class row
        pos = np.arange(len(rank)) - starts[seg]
        # pairs of a step: alive boxes x width (to suppress) and classes x width**2 (to settle the windows)
        width = max(1, min(int(pos.max()) + 1, PAIRS_PER_STEP // len(rank), math.isqrt(PAIRS_PER_STEP // len(starts))))
        in_win = pos < width
        win = np.zeros((len(starts), width), np.int64)  # [G, width] positions of each class's window
        win[seg[in_win], pos[in_win]] = np.flatnonzero(in_win)
        sizes = np.diff(starts, append=len(rank))
        win_xy = np.take(xy, win, axis=1)  # [4, G, width]
        keep = _settle(win_xy, np.arange(width) < sizes[:, None], iou_thresh, plugin_rules)
        stay = ~in_win
        if plugin_rules:
            keep &= taken[group[starts]][:, None] + np.cumsum(keep, 1) <= max_keep
            taken[group[starts]] += keep.sum(1)
            stay &= taken[group] < max_keep
        kept.append(rank[win[keep]])
        rest = np.flatnonzero(stay)
        if len(rest):
            rows = seg[rest]
            over = _suppresses(np.take(win_xy, rows, axis=1), np.take(xy, rest, axis=1)[..., None], iou_thresh,
                               plugin_rules)  # fmt: skip
            stay[rest] = ~(over & keep[rows]).any(1)
        if not plugin_rules and sum(map(len, kept)) >= max_keep:
            stay &= rank < np.partition(np.concatenate(kept), max_keep - 1)[max_keep - 1]
        rank, group, xy = rank[stay], group[stay], np.compress(stay, xy, axis=1)
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, np.int64)


def _settle(xy: np.ndarray, open_: np.ndarray, iou_thresh: float, plugin_rules: bool) -> np.ndarray:
    """Greedy NMS inside each window: boxes xy [4, G, W] in rank order, candidates open_ [G, W] (a prefix
    of each row); returns kept [G, W]. A box is kept once no open box before it can suppress it."""
    if xy.shape[2] == 1:
        return open_.copy()
    over = _suppresses(xy[:, :, :, None], xy[:, :, None, :], iou_thresh, plugin_rules)
    over &= np.triu(np.ones(over.shape[1:], bool), 1)  # [g, i, j]: earlier i suppresses later j
    keep, open_ = np.zeros_like(open_), open_.copy()
    while open_.any():
        newly = open_ & ~(open_[:, :, None] & over).any(1)
        keep |= newly
        open_ &= ~newly & ~(newly[:, :, None] & over).any(1)
    return keep


def _suppresses(a: np.ndarray, b: np.ndarray, iou_thresh: float, plugin_rules: bool) -> np.ndarray:
    """Whether boxes a [4, ...] (kept first) suppress boxes b [4, ...], broadcast."""
    if plugin_rules:
        return _efficient_iou_xy(a, b) >= iou_thresh
    return _iou(a, b) > iou_thresh


def topk_per_level(
    scores: np.ndarray, level_sizes: Sequence[int], k: int, *, score_thresh: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per level the k best (anchor, class) pairs of one image's scores [N, C], as ONNX TopK picks them.

    Within a level: by descending score, equal scores by flat index (anchor * C + class), the order
    of the ``--nms onnx`` graph's TopK. With ``score_thresh``, only the pairs scoring > score_thresh
    (the same pairs as thresholding afterwards, found without sorting the rest).
    Returns (anchor indices [N'], class indices [N'] int64), level after level, N' <= sum_l min(k, N_l * C).
    """
    num_classes = scores.shape[1]
    if sum(level_sizes) != scores.shape[0]:
        raise ValueError(f"level sizes {list(level_sizes)} sum to {sum(level_sizes)}, "
                         f"the scores have {scores.shape[0]} anchors")  # fmt: skip
    floor = -np.inf if score_thresh is None else score_thresh
    anchors, classes = [], []
    start = 0
    for size in level_sizes:
        top = _top_flat(scores[start : start + size].reshape(-1), k, floor)
        anchors.append(start + top // num_classes)
        classes.append(top % num_classes)
        start += size
    return np.concatenate(anchors), np.concatenate(classes)


SAMPLE_PER_K = 16  # a level of more than 2 * 16 * k pairs first finds a score floor on a strided sample


def _top_flat(flat: np.ndarray, k: int, score_thresh: float) -> np.ndarray:
    """Indices of the min(k, n) largest of ``flat`` [n] that are > score_thresh, by descending value,
    ties by index (ONNX TopK's order)."""
    k = min(k, flat.size)
    if k == 0:
        return np.zeros(0, np.int64)
    score_thresh = flat.dtype.type(score_thresh)  # compared in the scores' dtype, as the graph does
    idx = None
    floor = _sampled_floor(flat, k)
    if floor > score_thresh:  # every pair of the top k is >= floor when >= k pairs are
        idx = np.flatnonzero(flat >= floor)
        idx = idx if idx.size >= k else None  # an unlucky sample: the exact way
    if idx is None:
        idx = np.flatnonzero(flat > score_thresh)  # fewer than k of these: all are in the top k
    values = flat[idx]
    if idx.size > k:
        kth = values[np.argpartition(-values, k - 1)[k - 1]]
        chosen = values > kth
        chosen[np.flatnonzero(values == kth)[: k - np.count_nonzero(chosen)]] = True  # ties: lowest indices
        idx, values = idx[chosen], values[chosen]
    return idx[np.argsort(-values, kind="stable")]


def _sampled_floor(flat: np.ndarray, k: int) -> np.floating:
    """A value of ``flat`` that about 2k of its entries reach, from every step-th entry; -inf for small levels."""
    step = flat.size // (SAMPLE_PER_K * k)
    if step < 2:
        return flat.dtype.type(-np.inf)
    sample = flat[::step]
    rank = min(sample.size, -(-2 * k // step))
    return np.partition(sample, sample.size - rank)[sample.size - rank]


def detections_from_dense(
    boxes: np.ndarray,
    scores: np.ndarray,
    *,
    level_sizes: Sequence[int],
    topk: int,
    score_thresh: float,
    iou_thresh: float,
    max_dets: int,
) -> dict[str, np.ndarray]:
    """Detections from decoded boxes [B, N, 4] and sigmoid scores [B, N, C] of every anchor.

    Returns num_dets [B, 1] int32, boxes [B, K, 4] float32, scores [B, K] float32 (descending),
    classes [B, K] int32, zero past num_dets; the outputs of a ``--nms onnx`` file.
    """
    b = boxes.shape[0]
    out = {
        "num_dets": np.zeros((b, 1), np.int32),
        "boxes": np.zeros((b, max_dets, 4), np.float32),
        "scores": np.zeros((b, max_dets), np.float32),
        "classes": np.zeros((b, max_dets), np.int32),
    }
    for i in range(b):
        anchor_idx, class_idx = topk_per_level(scores[i], level_sizes, topk, score_thresh=score_thresh)
        cand_scores = scores[i][anchor_idx, class_idx]
        cand_boxes = boxes[i][anchor_idx]
        keep = batched_nms(cand_boxes, cand_scores, class_idx, iou_thresh, max_dets)
        n = len(keep)
        out["num_dets"][i, 0] = n
        out["boxes"][i, :n] = cand_boxes[keep]
        out["scores"][i, :n] = cand_scores[keep]
        out["classes"][i, :n] = class_idx[keep]
    return out


def _efficient_iou_xy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The plugin's IoU of coordinate-first stacks a [4, ...], b [4, ...] (like ``_iou``): corners
    reordered, 0 where the intersection or the union is <= 0."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        a = np.stack([np.minimum(a[0], a[2]), np.minimum(a[1], a[3]), np.maximum(a[0], a[2]), np.maximum(a[1], a[3])])
        b = np.stack([np.minimum(b[0], b[2]), np.minimum(b[1], b[3]), np.maximum(b[0], b[2]), np.maximum(b[1], b[3])])
        w = np.minimum(a[2], b[2]) - np.maximum(a[0], b[0])
        h = np.minimum(a[3], b[3]) - np.maximum(a[1], b[1])
        inter = np.where((w > 0) & (h > 0), w * h, 0.0)
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return np.where((inter > 0) & (union > 0), inter / np.where(union > 0, union, 1.0), 0.0)


def efficient_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    *,
    score_threshold: float,
    iou_threshold: float,
    max_output_boxes: int,
    background_class: int = -1,
    score_activation: bool = False,
    class_agnostic: bool = False,
    box_coding: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CPU reference of ``EfficientNMS_TRT`` (TensorRT's efficientNMSPlugin, standard mode, FP32).

    Args:
        boxes: [B, N, 4] (shared by all classes) or [B, N, C, 4]; box_coding 0 = x1, y1, x2, y2
            corners, 1 = centre x, y, width, height.
        scores: [B, N, C]; with ``score_activation`` raw logits (sigmoid applied to the output scores).
    Semantics (from the plugin's kernels): a (box, class) pair is a candidate when its score
    >= score_threshold and the class is not ``background_class``; the 4096 best candidates, by
    descending score, go through greedy NMS where a candidate is dropped when its IoU with an already
    kept box of the same class (any class if ``class_agnostic``) is >= iou_threshold; it stops at
    ``max_output_boxes``. Boxes are output as corners, unclipped.

    Returns:
        num_detections [B, 1] int32, boxes [B, K, 4] float32, scores [B, K] float32 (descending),
        classes [B, K] int32; zero past num_detections.
    """
    b, n, c = scores.shape
    k = max_output_boxes
    num = np.zeros((b, 1), np.int32)
    out_boxes = np.zeros((b, k, 4), np.float32)
    out_scores = np.zeros((b, k), np.float32)
    out_classes = np.zeros((b, k), np.int32)
    for i in range(b):
        s = scores[i].astype(np.float32)
        probs = 1.0 / (1.0 + np.exp(-s)) if score_activation else s
        flat = probs.reshape(-1)
        cand = np.flatnonzero(flat >= score_threshold)
        if background_class >= 0:
            cand = cand[cand % c != background_class]
        cand = cand[np.argsort(-flat[cand], kind="stable")][:EFFICIENT_NMS_MAX_CANDIDATES]
        anchor_idx, class_idx = cand // c, cand % c
        bx = boxes[i][anchor_idx] if boxes.ndim == 3 else boxes[i][anchor_idx, class_idx]
        bx = bx.astype(np.float32)
        if box_coding == 1:
            bx = np.concatenate([bx[:, :2] - bx[:, 2:] / 2, bx[:, :2] + bx[:, 2:] / 2], axis=1)
        groups = np.zeros_like(class_idx) if class_agnostic else class_idx
        kept = batched_nms(bx, flat[cand], groups, iou_threshold, k, plugin_rules=True)
        m = len(kept)
        num[i, 0] = m
        out_boxes[i, :m] = bx[kept]
        out_scores[i, :m] = flat[cand[kept]]
        out_classes[i, :m] = class_idx[kept]
    return num, out_boxes, out_scores, out_classes
