"""Candidate sets and dense outputs the host NMS tests share: random and adversarial sets (ties, identical boxes,
empty sets, one class, thousands of candidates, degenerate and extreme boxes), dense outputs shaped like the demo's."""

from __future__ import annotations

import numpy as np


def distinct_scores(rng: np.random.Generator, shape, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """Scores in [low, high), no two equal (float32)."""
    n = int(np.prod(shape))
    scores = (low + (high - low) * rng.permutation(n) / n).astype(np.float32).reshape(shape)
    assert np.unique(scores).size == n
    return scores


def clustered_boxes(rng: np.random.Generator, n: int, *, extent: float = 200.0, clusters: int = 12) -> np.ndarray:
    """xyxy float32 boxes [n, 4] around a few centres: crowded, many overlaps near every IoU threshold."""
    centres = rng.uniform(0, extent, (clusters, 2))[rng.integers(0, clusters, n)] + rng.normal(0, 4, (n, 2))
    half = rng.uniform(2, extent / 6, (n, 2))
    return np.concatenate([centres - half, centres + half], 1).astype(np.float32)


def candidate_set(case: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes [M, 4] float32, scores [M] float32, classes [M] int64) of one adversarial case."""
    n = {"empty": 0, "thousands-one-class": 3000, "thousands-80-classes": 5000}.get(case, 400)
    boxes = clustered_boxes(rng, n)
    classes = rng.integers(0, 80 if "80" in case else 4, n)
    scores = distinct_scores(rng, n)
    if case in ("one-class", "thousands-one-class"):
        classes[:] = 2
    elif case == "identical-boxes":
        boxes[:] = [10, 20, 50, 60]
    elif case == "ties-within-a-class":  # equal scores, equal boxes, one class: the lower index goes first
        classes[:] = 1
        scores = np.round(scores * 5).astype(np.float32) / 5
        boxes[::3] = boxes[0]
    elif case == "zero-area":  # 0/0 IoU (nan) never suppresses; half the boxes collapse to a line or a point
        boxes[::2, 2] = boxes[::2, 0]
        boxes[::4, 3] = boxes[::4, 1]
    elif case == "extreme-coordinates":  # areas overflow to inf, tiny boxes underflow, inverted corners
        boxes[::3] *= np.float32(1e18)
        boxes[1::3] = boxes[1::3] * np.float32(1e-30)
        boxes[2::5] = boxes[2::5][:, [2, 3, 0, 1]]
    return boxes, scores, classes.astype(np.int64)


CASES = ["random", "empty", "one-class", "thousands-one-class", "thousands-80-classes", "identical-boxes",
         "ties-within-a-class", "zero-area", "extreme-coordinates"]  # fmt: skip


LEVELS_128 = [2304, 576, 144, 36, 9]  # the demo's anchors at 128 px: 16x16 .. 1x1 cells, 9 anchors each


def dense_outputs(rng: np.random.Generator, batch: int, levels, num_classes: int, *, distinct: bool):
    """Decoded boxes [B, N, 4] (anchor-like, clipped to 128 px) and scores [B, N, C] mostly near 0."""
    n = sum(levels)
    boxes = np.clip(clustered_boxes(rng, batch * n, extent=128.0), 0, 128).reshape(batch, n, 4)
    if distinct:
        scores = distinct_scores(rng, (batch, n, num_classes)) ** 4  # x**4 keeps them distinct at this size
        assert np.unique(scores).size == scores.size
    else:  # sigmoid outputs as a model makes them: equal scores happen (float32 rounding)
        logits = rng.normal(-4, 1.5, (batch, n, num_classes)).astype(np.float32)
        scores = (1 / (1 + np.exp(-logits))).astype(np.float32)
    return boxes, scores
