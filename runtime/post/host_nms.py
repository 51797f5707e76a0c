"""Post-processing on the host in numpy (torch-free): the ``--nms none`` files' top-k + class-aware NMS,
and a CPU reference of TensorRT's ``EfficientNMS_TRT`` plugin.

``detections_from_dense`` reproduces the in-graph post-processing of ``--nms onnx`` files (and
PyTorch eval): per level the top-k (anchor, class) pairs, those with score > score_thresh,
class-aware greedy NMS (IoU > iou_thresh suppresses), the max_dets best, zero-padded. Equal scores
go in the graph's order: lowest index first in each TopK and in NonMaxSuppression.

Cost: the top-k looks only at the pairs above the threshold (or above a floor found on a sample),
and NMS compares only the best-ranked candidates that can still reach the output, all classes at
once: the IoU of every same-class pair in one array, then a fixed point over the overlapping pairs
that is exactly greedy NMS. A few dozen numpy calls per image instead of a Python loop over boxes.
"""

from __future__ import annotations

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
    ranked = scores[order]
    ranks = _greedy_by_class(boxes[order], ranked, classes[order], iou_thresh, max_keep, plugin_rules=plugin_rules)
    kept = order[ranks]
    if plugin_rules:
        kept = kept[np.lexsort((classes[kept], -scores[kept]))]
    return kept[:max_keep]


PAIRS_PER_STEP = 1 << 18  # box pairs an NMS step compares at most: its block of candidates shrinks to fit
FIRST_BLOCK = 150  # candidates settled in the first block (then as many as the kept rate asks for)


def _greedy_by_class(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_thresh: float, max_keep: int, *, plugin_rules: bool
) -> np.ndarray:
    """Ranks kept by greedy NMS per class of boxes [M, 4] / scores [M] sorted by descending score; ascending.

    Blocks of candidates in rank order, each settled exactly against the boxes kept before it
    (``_settle_block``). Where a block kept fewer than half its boxes, its kept boxes then prune the
    later candidates (``_suppressed``) and the next block at most doubles; otherwise the next block is
    what the kept rate predicts max_keep needs. Each block shrinks to at most PAIRS_PER_STEP pairs.
    Once max_keep boxes are kept, later candidates cannot be output and are never compared (under
    ``plugin_rules`` the block must also end before a score tie: equal scores are output by class).
    (The plugin's limit of max_keep per class needs no step of its own: the output's max_keep best
    would hold a class's later boxes only if it had kept fewer.)
    """
    m = len(classes)
    if m == 0 or max_keep < 1:
        return np.zeros(0, np.int64)
    if classes.min() < 0 or classes.max() >= 2**15:
        classes = np.unique(classes, return_inverse=True)[1]
    group = classes.astype(np.int16)  # stable argsort of 16-bit keys is a radix sort
    num_groups = int(group.max()) + 1
    xy = np.ascontiguousarray(boxes.T)
    kept = np.zeros(0, np.int64)
    alive = np.arange(m)  # candidates not yet settled nor known suppressed, ascending
    block = FIRST_BLOCK
    while len(alive):
        hi = min(len(alive), block)
        before = np.bincount(group[kept], minlength=num_groups)
        while hi > 1:
            here = np.bincount(group[alive[:hi]], minlength=num_groups)
            if int((before * here + here * (here - 1) // 2).sum()) <= PAIRS_PER_STEP:
                break
            hi //= 2
        new = _settle_block(xy, group, kept, alive[:hi], iou_thresh, plugin_rules)
        kept, seen, alive = np.concatenate([kept, new]), alive[hi - 1], alive[hi:]
        if len(kept) >= max_keep:
            if not plugin_rules or not len(alive) or scores[seen] != scores[alive[0]]:
                break
            block *= 2  # inside a tie: only its end can stop the loop
            continue
        block = int((max_keep - len(kept)) * hi / max(len(new), 1) * 1.25) + 16  # from the kept rate
        if 2 * len(new) < hi:  # most were suppressed: prune the rest with the new boxes, grow slowly
            alive = alive[~_suppressed(xy, group, new, alive, iou_thresh, plugin_rules, num_groups)]
            block = min(2 * hi, block)
    return kept


def _settle_block(
    xy: np.ndarray, group: np.ndarray, kept: np.ndarray, block: np.ndarray, iou_thresh: float, plugin_rules: bool
) -> np.ndarray:
    """The ranks of ``block`` [B] (ascending, after every rank of ``kept``) that greedy NMS keeps, given
    the ranks ``kept`` [K] kept before them (ascending) and boxes xy [4, M] / groups [M] in rank order.

    Every pair of one class with its later box in the block is compared once. Greedy NMS keeps box j
    exactly when no kept box before j suppresses it; iterated from "all kept", that rule fixes at least
    one more box per chain of suppressions a round and then stops changing, at greedy's answer
    (Cluster-NMS): a few rounds over the few overlapping pairs.
    """
    nodes = np.concatenate([kept, block])
    ranks = nodes[np.argsort(group[nodes], kind="stable")]  # by class, each class in rank order
    n, sorted_group = len(ranks), group[ranks]
    first = np.ones(n, bool)
    np.not_equal(sorted_group[1:], sorted_group[:-1], out=first[1:])
    starts, seg = np.flatnonzero(first), np.cumsum(first) - 1  # each class's first box, each box's class row
    ends = np.append(starts[1:], n)
    earlier = ranks < block[0]  # kept before the block: a prefix of each class
    first_open = starts + np.add.reduceat(earlier, starts)
    at = np.arange(n)
    begin = np.maximum(at + 1, first_open[seg])  # each box's later partners: begin .. end of its class
    count = ends[seg] - begin
    total = int(count.sum())
    keep = np.ones(n, bool)
    if total:
        src = np.repeat(at, count)
        dst = np.arange(total) + np.repeat(begin - (np.cumsum(count) - count), count)
        rxy = np.take(xy, ranks, axis=1)
        over = _suppresses(np.repeat(rxy, count, axis=1), np.take(rxy, dst, axis=1), iou_thresh, plugin_rules)
        src, dst = src[over], dst[over]
        while True:
            settled = np.ones(n, bool)
            settled[dst[keep[src]]] = False
            if np.array_equal(settled, keep):
                break
            keep = settled
    return np.sort(ranks[keep & ~earlier])


def _suppressed(
    xy: np.ndarray,
    group: np.ndarray,
    kept: np.ndarray,
    rest: np.ndarray,
    iou_thresh: float,
    plugin_rules: bool,
    num_groups: int,
) -> np.ndarray:
    """Which ranks of ``rest`` [R] a box of ``kept`` [K] (ranked before them) suppresses: bool [R]. Skipped
    (all False: the next blocks compare them anyway) where that takes more than PAIRS_PER_STEP pairs."""
    by_group = np.argsort(group[rest], kind="stable")
    sizes = np.bincount(group[rest], minlength=num_groups)
    count = sizes[group[kept]]  # each kept box's partners: the rest of its class
    total = int(count.sum())
    hit = np.zeros(len(rest), bool)
    if 0 < total <= PAIRS_PER_STEP:
        offset = (np.cumsum(sizes) - sizes)[group[kept]] - (np.cumsum(count) - count)
        dst = by_group[np.arange(total) + np.repeat(offset, count)]
        kxy = np.take(xy, kept, axis=1)
        over = _suppresses(np.repeat(kxy, count, axis=1), np.take(xy, rest[dst], axis=1), iou_thresh, plugin_rules)
        hit[dst[over]] = True
    return hit


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


def empty_detections(batch: int, max_dets: int) -> dict[str, np.ndarray]:
    """Zeroed outputs of a ``--nms onnx`` file for ``batch`` images of at most ``max_dets`` detections each."""
    return {
        "num_dets": np.zeros((batch, 1), np.int32),
        "boxes": np.zeros((batch, max_dets, 4), np.float32),
        "scores": np.zeros((batch, max_dets), np.float32),
        "classes": np.zeros((batch, max_dets), np.int32),
    }


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
    out = empty_detections(b, max_dets)
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
