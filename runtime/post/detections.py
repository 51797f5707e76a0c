"""``Detections``: the one result type every backend returns (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Detections:
    """Detections of one image, in that image's original pixel coordinates.

    boxes: float32 [N, 4] xyxy, 0 <= x1 <= x2 <= width, 0 <= y1 <= y2 <= height.
    scores: float32 [N] in (0, 1], sorted descending.
    class_ids: int64 [N], contiguous labels 0..C-1.
    class_names: N names, ``class_names[i]`` of ``class_ids[i]``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def labels(self) -> np.ndarray:
        """Alias of ``class_ids`` (the name used by ``evaluate.to_coco_results``)."""
        return self.class_ids

    def to_dict(self) -> dict[str, Any]:
        return {
            "detections": [
                {
                    "box": [round(float(v), 2) for v in box],
                    "score": round(float(score), 5),
                    "class_id": int(cid),
                    "class_name": name,
                }
                for box, score, cid, name in zip(self.boxes, self.scores, self.class_ids, self.class_names, strict=True)
            ]
        }


def make_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    all_class_names: tuple[str, ...] | list[str],
    *,
    scale: float,
    orig_hw: tuple[int, int],
) -> Detections:
    """Map input-pixel detections back to the original image: divide by ``scale``, clip to ``orig_hw``."""
    h, w = orig_hw
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4) / np.float32(scale)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    class_ids = np.asarray(class_ids, np.int64).reshape(-1)
    return Detections(
        boxes=boxes,
        scores=np.asarray(scores, np.float32).reshape(-1),
        class_ids=class_ids,
        class_names=tuple(all_class_names[i] for i in class_ids),
    )
