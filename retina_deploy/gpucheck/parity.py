"""Detections of one backend against a reference backend's, on the same images (numpy only).

The model compared is the small detector ``train.detector`` fits to the test images, so its
confident detections are far from the score threshold and from each other: each reference
detection scoring at least ``min_score`` (up to ``top`` per image) must be found in the other list
(same class, IoU >= ``min_iou``); the score difference of the matched pairs is reported. Low-score
detections are left out: near the threshold and among near-equal scores, the rounding of FP16 and
INT8 kernels (ONNX Runtime's CPU runs FP16 and Q/DQ graphs in FP32 math) legitimately reorders them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from retina_deploy.gpucheck.report import Disagree, Skip

MIN_MATCHED = {"fp32": 0.98, "fp16": 0.95, "int8": 0.85}


def iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box [4] with boxes [N, 4] -> [N]."""
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / np.maximum(area + areas - inter, 1e-9)


def match_detections(
    ref: Sequence[Any], got: Sequence[Any], *, min_score: float = 0.3, top: int = 50, min_iou: float = 0.85
) -> dict[str, Any]:
    """Find the confident detections of each reference image in ``got`` (Detections lists of equal length).

    Returns matched (count), compared (count), matched_fraction (1.0 when nothing to compare),
    max_score_diff of matched pairs, and the detection counts of both sides.
    """
    if len(ref) != len(got):
        raise ValueError(f"got {len(got)} results for {len(ref)} reference images")
    matched = compared = 0
    score_diff = 0.0
    for r, g in zip(ref, got, strict=True):
        for i in range(min(top, int(np.count_nonzero(r.scores >= min_score)))):
            compared += 1
            same = np.flatnonzero(g.class_ids == r.class_ids[i])
            if same.size == 0:
                continue
            ious = iou_one_to_many(r.boxes[i], g.boxes[same])
            best = int(np.argmax(ious))
            if ious[best] >= min_iou:
                matched += 1
                score_diff = max(score_diff, abs(float(g.scores[same[best]]) - float(r.scores[i])))
    return {
        "matched": matched,
        "compared": compared,
        "matched_fraction": round(matched / compared, 4) if compared else 1.0,
        "max_score_diff": round(score_diff, 6),
        "detections_ref": [len(r) for r in ref],
        "detections_got": [len(g) for g in got],
    }


def identical(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """Whether two Detections lists are the same (boxes and scores within 1e-5, same classes)."""
    return len(a) == len(b) and all(
        len(x) == len(y)
        and np.array_equal(x.class_ids, y.class_ids)
        and np.allclose(x.boxes, y.boxes, atol=1e-4)
        and np.allclose(x.scores, y.scores, atol=1e-5)
        for x, y in zip(a, b, strict=True)
    )


def require_parity(m: dict[str, Any], precision: str, what: str) -> None:
    """Skip when ``m`` (``match_detections``) compared nothing; Disagree below MIN_MATCHED[precision]."""
    if m["compared"] == 0:
        raise Skip(f"no reference detection scored >= the comparison threshold: nothing to compare for {what}")
    if m["matched_fraction"] < MIN_MATCHED[precision]:
        raise Disagree(
            f"{what} found {m['matched']}/{m['compared']} of ONNX Runtime CPU's confident detections"
            f" (< {MIN_MATCHED[precision]:.0%}); max score diff {m['max_score_diff']}"
        )
