"""Post-NMS detections compared with the flips that floating-point tolerance can explain, and no others.

Two pipelines that agree to ~1e-6 before NMS (different CPUs' kernels, ONNX Runtime vs PyTorch, FP16
vs FP32) can still disagree after it: when two boxes of one class overlap with an IoU within a hair of
the NMS threshold, or two scores tie, a 1e-6 difference decides which survives, and the survivor may in
turn suppress a third box (a cascade). A comparison that demands one-to-one twins then fails on one
CPU and passes on another.

``compare_detections`` pairs detections one to one (class equal, score and box within tolerance).
Each detection left without a twin must be explained, or the comparison fails:

- **threshold flip**: a box of its class that scores at least as high (within ``score_tol``), in
  either set, overlaps it with |IoU - nms_thresh| <= ``iou_eps``;
- **tie or cascade**: a box of its class without a twin either (present on one side only), scoring
  at least as high within ``score_tol``, overlaps it with IoU >= nms_thresh - ``iou_eps``: that box
  suppresses it on one side and not the other;
- **cut-off**: its score lies within ``score_tol`` of the score threshold, or of the last kept score
  when a set holds ``max_dets`` detections.

A wrong anchor order, decode or class offset leaves most detections unexplained; a cap on the number
of flips (``max_flips``, default 5% of the detections, at least 4) catches the rest. The flips are
counted and returned so tests can report them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class DetSet:
    """boxes float [N, 4] xyxy pixels, scores float [N], labels int [N]."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.float64).reshape(-1, 4)
        self.scores = np.asarray(self.scores, np.float64).reshape(-1)
        self.labels = np.asarray(self.labels, np.int64).reshape(-1)
        assert len(self.boxes) == len(self.scores) == len(self.labels)

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def of(cls, d) -> DetSet:
        """From a torch dict (boxes/scores/labels), a padded ONNX row (num_dets/boxes/scores/classes) or Detections."""
        if isinstance(d, DetSet):
            return d
        if isinstance(d, dict) and "num_dets" in d:
            n = int(np.asarray(d["num_dets"]).reshape(-1)[0])
            for k in ("boxes", "scores", "classes"):
                assert not np.asarray(d[k])[n:].any(), f"padding of {k!r} past num_dets={n} is not zero"
            return cls(np.asarray(d["boxes"])[:n], np.asarray(d["scores"])[:n], np.asarray(d["classes"])[:n])
        if isinstance(d, dict):
            return cls(*(np.asarray(_numpy(d[k])) for k in ("boxes", "scores", "labels")))
        return cls(d.boxes, d.scores, d.class_ids)  # runtime Detections


@dataclass
class Comparison:
    """matched: pairs (i in a, j in b); flips: (side "a"/"b", index, why) for each explained unpaired detection."""

    matched: list[tuple[int, int]] = field(default_factory=list)
    flips: list[tuple[str, int, str]] = field(default_factory=list)

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for _, _, why in self.flips:
            kinds[why] = kinds.get(why, 0) + 1
        return f"{len(self.matched)} paired, {len(self.flips)} tolerance flips {kinds or ''}".rstrip()


def compare_detections(
    a,
    b,
    *,
    nms_thresh: float,
    box_tol: float,
    box_rtol: float = 0.0,
    score_tol: float = 1e-4,
    iou_eps: float = 1e-3,
    score_thresh: float | None = None,
    max_dets: int | None = None,
    max_flips: int | None = None,
) -> Comparison:
    """Assert ``a`` and ``b`` (one image each) are the same detections up to explained flips; return the count.

    Boxes pair when every coordinate is within ``box_tol + box_rtol * |b's coordinate|`` pixels.
    """
    a, b = DetSet.of(a), DetSet.of(b)
    result = Comparison(matched=_pair(a, b, box_tol, box_rtol, score_tol))
    paired_a = {i for i, _ in result.matched}
    paired_b = {j for _, j in result.matched}
    lone = {"a": [i for i in range(len(a)) if i not in paired_a], "b": [j for j in range(len(b)) if j not in paired_b]}
    sets = {"a": a, "b": b}
    floor = _cutoff_floor(a, b, score_thresh, max_dets)
    for side, idx in lone.items():
        for i in idx:
            why = _explain(side, i, sets, lone, nms_thresh, score_tol, iou_eps, floor)
            assert why, (
                f"detection {side}[{i}] (class {sets[side].labels[i]}, score {sets[side].scores[i]:.6f}, "
                f"box {np.round(sets[side].boxes[i], 3).tolist()}) has no twin and no tolerance explains it; "
                f"{len(result.matched)} paired of {len(a)} / {len(b)}"
            )
            result.flips.append((side, i, why))
    cap = max_flips if max_flips is not None else max(4, (max(len(a), len(b)) + 19) // 20)
    assert len(result.flips) <= cap, f"{len(result.flips)} flips exceed the cap of {cap}: {result.summary()}"
    return result


def _numpy(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else x


def _pair(a: DetSet, b: DetSet, box_tol: float, box_rtol: float, score_tol: float) -> list[tuple[int, int]]:
    """Greedy one-to-one pairing in a's score order (scores that tie may come out in either order)."""
    free = np.ones(len(b), bool)
    pairs = []
    for i in np.argsort(-a.scores, kind="stable"):
        ok = (
            free
            & (b.labels == a.labels[i])
            & (np.abs(b.scores - a.scores[i]) <= score_tol)
            & (np.abs(b.boxes - a.boxes[i]) <= box_tol + box_rtol * np.abs(b.boxes)).all(axis=1)
        )
        if ok.any():
            j = int(np.flatnonzero(ok)[np.argmin(np.abs(b.scores[ok] - a.scores[i]))])
            free[j] = False
            pairs.append((int(i), j))
    return pairs


def _cutoff_floor(a: DetSet, b: DetSet, score_thresh: float | None, max_dets: int | None) -> float:
    """Scores at or below this (+ tolerance) may differ by where a threshold or a max-detections cut fell."""
    floor = score_thresh if score_thresh is not None else -np.inf
    for s in (a, b):
        if max_dets is not None and len(s) >= max_dets:
            floor = max(floor, float(s.scores.min()))
    return floor


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / np.maximum(area + areas - inter, 1e-12)


def _explain(side, i, sets, lone, nms_thresh, score_tol, iou_eps, floor) -> str | None:
    d = sets[side]
    box, score, label = d.boxes[i], d.scores[i], d.labels[i]
    if score <= floor + score_tol:
        return "cut-off"
    for other_side, s in sets.items():
        rivals = (s.labels == label) & (s.scores >= score - score_tol)
        if other_side == side:
            rivals[i] = False
        if not rivals.any():
            continue
        idx = np.flatnonzero(rivals)
        iou = _iou(box, s.boxes[idx])
        if (np.abs(iou - nms_thresh) <= iou_eps).any():
            return "threshold"
        unpaired = np.isin(idx, lone[other_side])
        if (unpaired & (iou >= nms_thresh - iou_eps)).any():
            return "tie/cascade"
    return None
