"""The host post-processing as it was before the vectorised NMS (per-class greedy loops): the reference
the tests hold ``retina_deploy.runtime.post.host_nms`` equal to.

Where it differs by design, only on exactly equal scores: its per-level top-k takes argpartition's
order among equal scores (the runtime and the graph's TopK: lowest index first), and its merge puts
equal scores of different classes in class order (the runtime and the graph: candidate order).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes broadcast against each other (``box`` [..., 4], ``boxes`` [..., 4]) as torchvision
    computes it (0/0 -> nan, never > a threshold); [4] vs [M, 4] gives [M]."""
    lt = np.maximum(box[..., :2], boxes[..., :2])
    rb = np.minimum(box[..., 2:], boxes[..., 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area = (box[..., 2] - box[..., 0]) * (box[..., 3] - box[..., 1])
    areas = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / (area + areas - inter)


MATRIX_LIMIT = 2048  # up to this many boxes, greedy NMS precomputes all pairwise overlaps (16 MiB of bools)


def greedy_nms(boxes: np.ndarray, iou_thresh: float, max_keep: int, *, plugin_rules: bool = False) -> list[int]:
    """Positions kept by greedy NMS over ``boxes`` [M, 4] already sorted by descending score.

    A box is dropped when its IoU with a kept box is > iou_thresh (torchvision, ONNX), or, with
    ``plugin_rules``, >= iou_thresh computed as EfficientNMS_TRT does.
    """

    def suppresses(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if plugin_rules:
            return _efficient_iou(a, b) >= iou_thresh
        return iou_one_to_many(a, b) > iou_thresh

    # One vectorised pass over all pairs instead of one IoU call per kept box (10x fewer numpy calls).
    over = suppresses(boxes[:, None, :], boxes[None, :, :]) if len(boxes) <= MATRIX_LIMIT else None
    suppressed = np.zeros(len(boxes), bool)
    keep: list[int] = []
    for i in range(len(boxes)):
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) == max_keep:
            break
        suppressed[i + 1 :] |= over[i, i + 1 :] if over is not None else suppresses(boxes[i], boxes[i + 1 :])
    return keep


def batched_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    iou_thresh: float,
    max_keep: int,
    *,
    plugin_rules: bool = False,
) -> np.ndarray:
    """Class-aware NMS: indices into boxes [M, 4] / scores [M] / classes [M], by descending score, <= max_keep.

    Classes never suppress each other, so greedy NMS per class then a merge by score is exact.
    """
    order = np.argsort(-scores, kind="stable")
    kept = []
    for c in np.unique(classes):
        idx = order[classes[order] == c]
        kept.extend(idx[greedy_nms(boxes[idx], iou_thresh, max_keep, plugin_rules=plugin_rules)])
    kept = np.asarray(kept, np.int64)
    return kept[np.argsort(-scores[kept], kind="stable")][:max_keep]


def topk_per_level(scores: np.ndarray, level_sizes: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per level the k best (anchor, class) pairs of one image's scores [N, C].

    Returns (anchor indices [N'], class indices [N']) over all levels, N' = sum_l min(k, N_l * C).
    """
    num_classes = scores.shape[1]
    anchors, classes = [], []
    start = 0
    for size in level_sizes:
        flat = scores[start : start + size].reshape(-1)
        kk = min(k, flat.size)
        top = np.argpartition(-flat, kk - 1)[:kk] if kk < flat.size else np.arange(flat.size)
        top = top[np.argsort(-flat[top], kind="stable")]
        anchors.append(start + top // num_classes)
        classes.append(top % num_classes)
        start += size
    if start != scores.shape[0]:
        raise ValueError(f"level sizes {list(level_sizes)} sum to {start}, the scores have {scores.shape[0]} anchors")
    return np.concatenate(anchors), np.concatenate(classes)


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
        anchor_idx, class_idx = topk_per_level(scores[i], level_sizes, topk)
        cand_scores = scores[i][anchor_idx, class_idx]
        above = cand_scores > score_thresh
        anchor_idx, class_idx, cand_scores = anchor_idx[above], class_idx[above], cand_scores[above]
        cand_boxes = boxes[i][anchor_idx]
        keep = batched_nms(cand_boxes, cand_scores, class_idx, iou_thresh, max_dets)
        n = len(keep)
        out["num_dets"][i, 0] = n
        out["boxes"][i, :n] = cand_boxes[keep]
        out["scores"][i, :n] = cand_scores[keep]
        out["classes"][i, :n] = class_idx[keep]
    return out


def _efficient_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The plugin's IoU (broadcasting like ``iou_one_to_many``): corners reordered, 0 where the
    intersection or the union is <= 0."""
    a = np.concatenate([np.minimum(box[..., :2], box[..., 2:]), np.maximum(box[..., :2], box[..., 2:])], axis=-1)
    bs = np.concatenate(
        [np.minimum(boxes[..., :2], boxes[..., 2:]), np.maximum(boxes[..., :2], boxes[..., 2:])], axis=-1
    )
    wh = np.minimum(a[..., 2:], bs[..., 2:]) - np.maximum(a[..., :2], bs[..., :2])
    inter = np.where((wh[..., 0] > 0) & (wh[..., 1] > 0), wh[..., 0] * wh[..., 1], 0.0)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    union = area_a + (bs[..., 2] - bs[..., 0]) * (bs[..., 3] - bs[..., 1]) - inter
    return np.where((inter > 0) & (union > 0), inter / np.where(union > 0, union, 1.0), 0.0)
