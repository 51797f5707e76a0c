"""COCO box metrics for detections from any backend (numpy + pycocotools, torch-free).

Two steps, so every backend (PyTorch checkpoint, ONNX Runtime, TensorRT) is scored by the same code:

1. ``to_coco_results`` turns per-image detections (xyxy, absolute pixels of the original image,
   contiguous labels ``0..C-1``) into COCO "results" records (xywh, dataset category ids).
2. ``coco_evaluate`` scores those records against a COCO annotation file with pycocotools'
   ``COCOeval`` (``iouType="bbox"``, default parameters: IoU 0.50:0.05:0.95, max 1/10/100
   detections per image, COCO's small/medium/large area ranges).

The label -> category id mapping is always explicit: COCO category ids are neither contiguous nor
zero-based (COCO itself uses 1..90 with gaps), so a label is never taken for a category id.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from retina_deploy.core.errors import DatasetError
from retina_deploy.runtime.post.host_nms import iou_one_to_many

# Order and meaning of COCOeval.stats[0:9].
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")
METRIC_DESCRIPTIONS = {
    "AP": "AP  IoU=0.50:0.95 area=all    maxDets=100",
    "AP50": "AP  IoU=0.50      area=all    maxDets=100",
    "AP75": "AP  IoU=0.75      area=all    maxDets=100",
    "APs": "AP  IoU=0.50:0.95 area=small  maxDets=100",
    "APm": "AP  IoU=0.50:0.95 area=medium maxDets=100",
    "APl": "AP  IoU=0.50:0.95 area=large  maxDets=100",
    "AR1": "AR  IoU=0.50:0.95 area=all    maxDets=1",
    "AR10": "AR  IoU=0.50:0.95 area=all    maxDets=10",
    "AR100": "AR  IoU=0.50:0.95 area=all    maxDets=100",
}
BOX_DECIMALS = 2  # 0.01 px: far below what changes an IoU at COCO's thresholds, keeps JSON small
SCORE_DECIMALS = 6  # float32 carries ~7 significant digits


class DetectionsPerImage(Protocol):
    """One image's detections (attribute access; a mapping with the same keys works too).

    boxes: float [N, 4] xyxy, absolute pixels of the original (not resized) image.
    scores: float [N], any range (only the order matters to COCO AP).
    labels: int [N], contiguous model labels in ``0..C-1``.
    """

    boxes: Any
    scores: Any
    labels: Any


def to_coco_results(
    detections: Sequence[DetectionsPerImage | Mapping[str, Any]],
    image_ids: Sequence[int],
    label_to_category_id: Mapping[int, int] | Sequence[int],
) -> list[dict[str, Any]]:
    """Convert per-image detections to COCO results records.

    detections: one entry per image, ``detections[i]`` belonging to ``image_ids[i]``; see
        ``DetectionsPerImage`` for the fields (numpy arrays or anything ``np.asarray`` accepts).
    image_ids: COCO image id of each entry.
    label_to_category_id: COCO category id of each model label, as a mapping ``{label: id}`` or a
        sequence indexed by label.

    Returns one dict per box: ``{"image_id": int, "category_id": int, "bbox": [x, y, w, h],
    "score": float}`` with bbox in absolute pixels rounded to 0.01 and score to 6 decimals.
    Raises ValueError naming the image index and value when shapes, labels or boxes are invalid.
    """
    if len(detections) != len(image_ids):
        raise ValueError(f"got {len(detections)} detection entries but {len(image_ids)} image ids")
    lookup = _category_lookup(label_to_category_id)
    results: list[dict[str, Any]] = []
    for index, (det, image_id) in enumerate(zip(detections, image_ids, strict=True)):
        boxes, scores, labels = _detection_arrays(det, index)
        for box, score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True):
            if label not in lookup:
                raise ValueError(
                    f"detections[{index}] has label {label}, which label_to_category_id does not map "
                    f"(known labels: {sorted(lookup)})"
                )
            x1, y1, x2, y2 = box
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": lookup[label],
                    "bbox": [
                        round(x1, BOX_DECIMALS),
                        round(y1, BOX_DECIMALS),
                        round(x2 - x1, BOX_DECIMALS),
                        round(y2 - y1, BOX_DECIMALS),
                    ],
                    "score": round(score, SCORE_DECIMALS),
                }
            )
    return results


def _category_lookup(label_to_category_id: Mapping[int, int] | Sequence[int]) -> dict[int, int]:
    if isinstance(label_to_category_id, Mapping):
        items = list(label_to_category_id.items())
    elif isinstance(label_to_category_id, Sequence) and not isinstance(label_to_category_id, (str, bytes)):
        items = list(enumerate(label_to_category_id))
    else:
        raise TypeError(
            f"label_to_category_id must be a mapping or a sequence, got {type(label_to_category_id).__name__}"
        )
    return {int(label): int(category_id) for label, category_id in items}


def _detection_arrays(det: Any, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (boxes float64 [N,4], scores float64 [N], labels int64 [N]) of one image."""
    fields = []
    for name in ("boxes", "scores", "labels"):
        if isinstance(det, Mapping):
            if name not in det:
                raise ValueError(f"detections[{index}] has no {name!r} key (keys: {sorted(det)})")
            fields.append(np.asarray(det[name]))
        elif hasattr(det, name):
            fields.append(np.asarray(getattr(det, name)))
        else:
            raise ValueError(f"detections[{index}] ({type(det).__name__}) has no {name!r} field")
    boxes, scores, labels = fields
    if boxes.size == 0:  # an empty [0] array is as good as [0, 4]
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.ndim != 1 or labels.shape != (boxes.shape[0],):
        raise ValueError(
            f"detections[{index}]: need boxes [N,4], scores [N], labels [N]; got {list(boxes.shape)}, "
            f"{list(scores.shape)}, {list(labels.shape)}"
        )
    if scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"detections[{index}]: {boxes.shape[0]} boxes but {scores.shape[0]} scores")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"detections[{index}]: labels must be integers, got dtype {labels.dtype}")
    boxes = boxes.astype(np.float64)
    scores = scores.astype(np.float64)
    bad = ~np.isfinite(boxes).all(axis=1) | ~np.isfinite(scores)
    bad |= (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"detections[{index}] box {j} is not a finite xyxy box with x2 >= x1 and y2 >= y1: "
            f"box {boxes[j].tolist()}, score {scores[j]}"
        )
    return boxes, scores, labels.astype(np.int64)


def coco_evaluate(
    annotations: str | os.PathLike | Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    *,
    image_ids: Sequence[int] | None = None,
) -> dict[str, float | None]:
    """COCO box AP/AR of ``results`` against ground truth ``annotations``.

    annotations: path of a COCO instances JSON file, or its already-loaded dict (not modified).
        Annotations need ``image_id``, ``category_id`` and ``bbox`` [x, y, w, h] in pixels;
        ``iscrowd`` defaults to 0 and ``area`` to w * h.
    results: COCO results records as made by ``to_coco_results``; may be empty (then every AP/AR
        is 0.0, or None as below). Records for images outside ``image_ids`` are ignored.
    image_ids: evaluate only these images (all of the file's images when None). Images without
        any detection count as misses; images without objects still contribute false positives.

    Returns ``{name: value}`` for ``METRIC_NAMES`` in [0, 1]. A value is None where COCOeval
    reports -1, i.e. the evaluated images hold no (non-crowd) object in that area range; this is
    None rather than -1 so it cannot be averaged by mistake.
    Raises DatasetError for a malformed annotation file, unknown ``image_ids``, or evaluated images
    with no objects at all; ValueError for a results record naming an unknown image or category.
    """
    dataset = _load_ground_truth(annotations)
    known_image_ids = {img["id"] for img in dataset["images"]}
    if image_ids is None:
        eval_ids = sorted(known_image_ids)
    else:
        eval_ids = sorted({int(i) for i in image_ids})
        unknown = [i for i in eval_ids if i not in known_image_ids]
        if unknown:
            raise DatasetError(f"image_ids not in the annotations: {unknown[:10]}")
    if not eval_ids:
        raise DatasetError("nothing to evaluate: no images selected")
    selected = set(eval_ids)
    if not any(ann["image_id"] in selected for ann in dataset["annotations"]):
        raise DatasetError(f"the {len(eval_ids)} evaluated images hold no ground-truth objects; AP is undefined")
    category_ids = {cat["id"] for cat in dataset["categories"]}
    detections = _results_as_annotations(results, known_image_ids, category_ids)
    coco_eval = _run_cocoeval(dataset, detections, eval_ids)
    stats = coco_eval.stats[: len(METRIC_NAMES)]
    return {name: (None if value < 0 else float(value)) for name, value in zip(METRIC_NAMES, stats, strict=True)}


def best_f1_threshold(
    annotations: str | os.PathLike | Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    *,
    iou_thresh: float = 0.5,
) -> dict[str, float] | None:
    """The score threshold at which ``results`` have the best F1 against ``annotations``: where to cut when
    drawing or deploying a model whose scores are calibrated in its own way (the loss's alpha shifts them).

    A detection is correct when it overlaps an unmatched object of its class at IoU >= ``iou_thresh``; objects
    are matched greedily in score order per image and class, as COCOeval does. Crowd boxes are not objects to
    find, and a detection on one (IoU >= ``iou_thresh``) counts neither way. Returns ``{"score_thresh",
    "precision", "recall", "f1"}`` (keep detections scoring >= ``score_thresh``, rounded down to 0.001), or None
    when no detection is correct. Raises DatasetError / ValueError as ``coco_evaluate`` does.
    """
    dataset = _load_ground_truth(annotations)
    image_ids = {img["id"] for img in dataset["images"]}
    detections = _results_as_annotations(results, image_ids, {cat["id"] for cat in dataset["categories"]})
    objects: dict[tuple[int, int], list[list[float]]] = {}
    crowds: dict[tuple[int, int], list[list[float]]] = {}
    for ann in dataset["annotations"]:
        boxes = crowds if ann["iscrowd"] else objects
        boxes.setdefault((ann["image_id"], ann["category_id"]), []).append(ann["bbox"])
    num_objects = sum(len(v) for v in objects.values())
    if num_objects == 0:
        raise DatasetError("the annotations hold no (non-crowd) objects; precision and recall are undefined")
    by_group: dict[tuple[int, int], list[Mapping[str, Any]]] = {}
    for det in sorted(detections, key=lambda d: -d["score"]):
        by_group.setdefault((det["image_id"], det["category_id"]), []).append(det)
    scores: list[float] = []
    hits: list[bool] = []
    for key, dets in by_group.items():
        boxes = _xyxy([d["bbox"] for d in dets])
        hit = _match_greedily(_iou_matrix(boxes, objects.get(key, [])), iou_thresh)
        on_crowd = (_iou_matrix(boxes, crowds.get(key, [])) >= iou_thresh).any(axis=1)
        for det, is_hit, counts in zip(dets, hit, hit | ~on_crowd, strict=True):
            if counts:  # a detection on a crowd box that found no object counts neither way
                scores.append(det["score"])
                hits.append(bool(is_hit))
    if not any(hits):
        return None
    order = np.argsort(-np.asarray(scores), kind="stable")
    sorted_scores = np.asarray(scores)[order]
    correct = np.cumsum(np.asarray(hits)[order])
    last = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]  # a threshold keeps every detection of an equal score
    precision = (correct / np.arange(1, len(order) + 1))[last]
    recall = correct[last] / num_objects
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(f1.argmax())
    return {
        "score_thresh": math.floor(float(sorted_scores[last][best]) * 1000) / 1000,
        "precision": float(precision[best]),
        "recall": float(recall[best]),
        "f1": float(f1[best]),
    }


def _xyxy(xywh: Sequence[Sequence[float]]) -> np.ndarray:
    """COCO [x, y, w, h] boxes -> float64 [N, 4] xyxy."""
    boxes = np.array(xywh, dtype=np.float64).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def _iou_matrix(boxes: np.ndarray, others: Sequence[Sequence[float]]) -> np.ndarray:
    """IoU [D, K] of xyxy ``boxes`` [D, 4] with COCO xywh ``others``; 0 where both boxes are empty."""
    return np.nan_to_num(iou_one_to_many(boxes[:, None, :], _xyxy(others)[None, :, :]))


def _match_greedily(ious: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Which rows (detections in score order) of ``ious`` [D, G] find an object not found by an earlier row:
    each takes its best remaining object at IoU >= ``iou_thresh``. Returns bool [D]."""
    hit = np.zeros(len(ious), dtype=bool)
    if ious.shape[1] == 0:
        return hit
    ious = ious.copy()
    for row in range(len(ious)):
        best = int(ious[row].argmax())
        if ious[row, best] >= iou_thresh:
            hit[row] = True
            ious[:, best] = -1.0  # found: it cannot be found twice
    return hit


def _run_cocoeval(dataset: dict[str, Any], detections: list[dict[str, Any]], eval_ids: list[int]) -> Any:
    """Run COCOeval on prepared ground truth and detections; its prints go nowhere."""
    try:  # pycocotools comes with the `train` extra; the runtime alone does not need it
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise ImportError("COCO evaluation needs pycocotools: pip install pycocotools") from e

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        # Built directly rather than with COCO.loadRes, which fails on an empty list.
        coco_dt = COCO()
        coco_dt.dataset = {
            "images": dataset["images"],
            "categories": dataset["categories"],
            "annotations": detections,
        }
        coco_dt.createIndex()
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
        coco_eval.params.imgIds = eval_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def _load_ground_truth(annotations: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """A validated copy of a COCO dataset dict, ready for pycocotools."""
    if isinstance(annotations, (str, os.PathLike)):
        try:
            with open(annotations, encoding="utf-8") as f:
                raw = json.load(f)
        except OSError as e:
            raise DatasetError(f"cannot read annotations {os.fspath(annotations)!r}: {e}") from e
        except json.JSONDecodeError as e:
            raise DatasetError(f"annotations {os.fspath(annotations)!r} is not valid JSON: {e}") from e
        source = repr(os.fspath(annotations))
    elif isinstance(annotations, Mapping):
        raw, source = annotations, "annotations dict"
    else:
        raise TypeError(f"annotations must be a path or a dict, got {type(annotations).__name__}")
    if not isinstance(raw, Mapping):
        raise DatasetError(f"{source} must hold a JSON object, got {type(raw).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(raw.get(key), list):
            raise DatasetError(f"{source} needs a list under {key!r}")
    images = [_checked_id_record(img, "images", i, source) for i, img in enumerate(raw["images"])]
    categories = [_checked_id_record(cat, "categories", i, source) for i, cat in enumerate(raw["categories"])]
    image_ids = {img["id"] for img in images}
    category_ids = {cat["id"] for cat in categories}
    if len(image_ids) != len(images) or len(category_ids) != len(categories):
        raise DatasetError(f"{source} repeats an image id or a category id")
    anns = [_checked_annotation(a, i, source, image_ids, category_ids) for i, a in enumerate(raw["annotations"])]
    return {"images": images, "categories": categories, "annotations": anns}


def _checked_id_record(record: Any, key: str, index: int, source: str) -> dict[str, Any]:
    if not isinstance(record, Mapping) or not isinstance(record.get("id"), int):
        raise DatasetError(f"{source}: {key}[{index}] needs an integer 'id', got {record!r:.200}")
    return dict(record)


def _checked_annotation(
    ann: Any, index: int, source: str, image_ids: set[int], category_ids: set[int]
) -> dict[str, Any]:
    where = f"{source}: annotations[{index}]"
    if not isinstance(ann, Mapping):
        raise DatasetError(f"{where} must be an object, got {ann!r:.200}")
    if ann.get("image_id") not in image_ids:
        raise DatasetError(f"{where} names image_id {ann.get('image_id')!r}, not among the images")
    if ann.get("category_id") not in category_ids:
        raise DatasetError(f"{where} names category_id {ann.get('category_id')!r}, not among the categories")
    bbox = _checked_xywh(ann.get("bbox"))
    if bbox is None:
        raise DatasetError(f"{where} needs a finite bbox [x, y, w, h] with w, h >= 0, got {ann.get('bbox')!r}")
    out = dict(ann)
    # COCOeval marks "unmatched" with id 0, so an annotation id of 0 would silently turn its true
    # positive into a false positive; ids are only used for matching, so renumber from 1.
    out["id"] = index + 1
    out["bbox"] = bbox
    out["iscrowd"] = int(ann.get("iscrowd", 0))
    out.setdefault("area", bbox[2] * bbox[3])
    return out


def _finite_float(value: Any) -> float | None:
    """value as a float if it is a finite real number (not a bool), else None."""
    if isinstance(value, (bool, str, bytes)):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _checked_xywh(bbox: Any) -> list[float] | None:
    """bbox as 4 floats if it is a finite [x, y, w, h] with w, h >= 0, else None."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None
    values = [_finite_float(v) for v in bbox]
    if any(v is None for v in values) or values[2] < 0 or values[3] < 0:
        return None
    return values


def _results_as_annotations(
    results: Sequence[Mapping[str, Any]], image_ids: set[int], category_ids: set[int]
) -> list[dict[str, Any]]:
    """Results records as COCO detection annotations (what COCO.loadRes makes for boxes)."""
    detections = []
    for index, record in enumerate(results):
        if not isinstance(record, Mapping):
            raise ValueError(f"results[{index}] must be a dict, got {type(record).__name__}")
        if record.get("image_id") not in image_ids:
            raise ValueError(f"results[{index}] names image_id {record.get('image_id')!r}, not in the annotations")
        if record.get("category_id") not in category_ids:
            raise ValueError(
                f"results[{index}] names category_id {record.get('category_id')!r}; "
                f"the annotations' categories are {sorted(category_ids)}"
            )
        bbox = _checked_xywh(record.get("bbox"))
        score = _finite_float(record.get("score"))
        if bbox is None or score is None:
            raise ValueError(
                f"results[{index}] needs a finite bbox [x, y, w, h] with w, h >= 0 and a finite score, "
                f"got bbox {record.get('bbox')!r}, score {record.get('score')!r}"
            )
        detections.append(
            {
                "id": index + 1,
                "image_id": int(record["image_id"]),
                "category_id": int(record["category_id"]),
                "bbox": bbox,
                "score": score,
                "area": bbox[2] * bbox[3],
                "iscrowd": 0,
            }
        )
    return detections


def format_operating_point(best_f1: Mapping[str, float] | None) -> str:
    """One line for ``best_f1_threshold``'s result."""
    if best_f1 is None:
        return "best F1: none (no detection is correct at IoU 0.5)"
    return (
        f"best F1 {best_f1['f1']:.3f} at score >= {best_f1['score_thresh']:.3f} (precision {best_f1['precision']:.3f},"
        f" recall {best_f1['recall']:.3f} at IoU 0.5; e.g. predict --draw-thresh {best_f1['score_thresh']:.3f})"
    )


def format_metrics_table(metrics: Mapping[str, float | None]) -> str:
    """A small aligned text table of ``coco_evaluate``'s output ("n/a" for None).

    Known metrics come first in COCO's order with their meaning; any other keys follow.
    """
    names = [n for n in METRIC_NAMES if n in metrics] + [n for n in metrics if n not in METRIC_NAMES]
    width = max([len("metric"), *(len(n) for n in names)])
    lines = [f"{'metric':<{width}}  {'value':>6}  meaning"]
    for name in names:
        value = metrics[name]
        shown = "n/a" if value is None else f"{value:.4f}"
        lines.append(f"{name:<{width}}  {shown:>6}  {METRIC_DESCRIPTIONS.get(name, '')}".rstrip())
    return "\n".join(lines)
