"""``evaluate_detector``: COCO metrics of any ``Detector`` (checkpoint, ONNX file, engine, Triton model) on a dataset.

Images are read with the runtime's loader and detected in original coordinates, so every backend
is scored by the same code; ``metrics`` turns the detections into COCO numbers.
"""

from __future__ import annotations

from retina_deploy.core.argcheck import int_at_least
from retina_deploy.core.errors import DatasetError


def evaluate_detector(detector, coco, *, batch_size: int = 8, progress: bool = False):
    """COCO metrics of ``detector`` (a runtime ``Detector``) on a ``CocoDataset``; returns (metrics, results).

    metrics: {name: value in [0, 1] or None} (``metrics.METRIC_NAMES``); results: COCO results
    records {"image_id", "category_id", "bbox" [x, y, w, h] original pixels, "score"}. Images are
    detected ``batch_size`` (>= 1) at a time. DatasetError when the model's classes are not the dataset's.
    """
    from tqdm import tqdm

    from retina_deploy.evaluation.metrics import coco_evaluate, to_coco_results

    batch_size = int_at_least("batch size", batch_size, 1)
    if tuple(detector.class_names) != tuple(coco.class_names):
        raise DatasetError(
            f"the model's classes {list(detector.class_names)[:6]} differ from those of {coco.annotations_path}"
            f" {coco.class_names[:6]}"
        )
    detections, image_ids = [], []
    records = coco.records
    with tqdm(total=len(records), desc="eval", unit="img", disable=not progress, leave=False) as bar:
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            detections.extend(detector.detect([coco.load_image(r) for r in chunk]))
            image_ids.extend(r.image_id for r in chunk)
            bar.update(len(chunk))
    results = to_coco_results(detections, image_ids, coco.label_to_category_id)
    return coco_evaluate(coco.annotations_path, results), results
