"""COCO evaluation: results conversion and AP on hand-built ground truth with hand-computed answers."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from retina_deploy.core.errors import DatasetError
from retina_deploy.evaluation.metrics import (
    METRIC_NAMES,
    best_f1_threshold,
    coco_evaluate,
    format_metrics_table,
    format_operating_point,
    to_coco_results,
)

# Category ids are 3 and 7 on purpose: model label 0 -> 3, label 1 -> 7.
LABEL_TO_CATEGORY = [3, 7]
IMAGE_IDS = [1, 2, 5]  # image 5 has no objects


def make_ground_truth() -> dict:
    """3 images of 100x100. Areas: 1600 and 2500 are "medium" (32^2..96^2), 600 is "small"; none "large"."""
    return {
        "images": [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.png"} for i in IMAGE_IDS],
        "categories": [{"id": 3, "name": "circle"}, {"id": 7, "name": "square"}],
        "annotations": [
            # id 0 on purpose: COCOeval treats a matched id of 0 as "unmatched" unless renumbered.
            {"id": 0, "image_id": 1, "category_id": 3, "bbox": [10, 10, 40, 40]},
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [60, 50, 30, 20], "iscrowd": 0, "area": 600},
            {"id": 2, "image_id": 2, "category_id": 7, "bbox": [20, 30, 50, 50]},
        ],
    }


def gt_detections(gt: dict, dx_fraction: float = 0.0, swap_labels: bool = False) -> list[dict]:
    """The ground truth as detections (xyxy), each box shifted right by dx_fraction of its width."""
    category_to_label = {c: label for label, c in enumerate(LABEL_TO_CATEGORY)}
    detections = []
    for image_id in IMAGE_IDS:
        anns = [a for a in gt["annotations"] if a["image_id"] == image_id]
        boxes = [[x + dx_fraction * w, y, x + w + dx_fraction * w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        labels = [category_to_label[a["category_id"]] for a in anns]
        if swap_labels:
            labels = [1 - label for label in labels]
        detections.append(
            {
                "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                "scores": np.linspace(0.9, 0.5, len(anns), dtype=np.float32),
                "labels": np.asarray(labels, dtype=np.int64),
            }
        )
    return detections


def evaluate(gt: dict, detections: list[dict], **kwargs) -> dict:
    return coco_evaluate(gt, to_coco_results(detections, IMAGE_IDS, LABEL_TO_CATEGORY), **kwargs)


def test_results_conversion_hand_checked():
    class Det:  # attribute access works as well as a dict
        boxes = np.array([[10.0, 20.0, 50.0, 80.0], [1.234, 2.0, 3.5, 2.0]], dtype=np.float32)
        scores = np.array([0.87654321, 0.5], dtype=np.float32)
        labels = np.array([1, 0])

    empty = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32), "labels": np.zeros(0, int)}
    results = to_coco_results([Det(), empty], [42, 43], {0: 3, 1: 7})
    assert len(results) == 2
    assert results[0] == {"image_id": 42, "category_id": 7, "bbox": [10.0, 20.0, 40.0, 60.0], "score": 0.876543}
    # x 1.234 (float32 1.2339999...) -> 1.23, w 3.5 - 1.234 = 2.266 -> 2.27; a zero-height box is kept.
    assert results[1]["category_id"] == 3
    assert results[1]["bbox"] == [1.23, 2.0, 2.27, 0.0]
    assert json.loads(json.dumps(results)) == results  # plain JSON types only


def test_results_conversion_rejects_bad_input():
    ok = {"boxes": np.array([[0, 0, 1, 1]], np.float32), "scores": np.array([0.5]), "labels": np.array([2])}
    with pytest.raises(ValueError, match="label 2"):
        to_coco_results([ok], [1], LABEL_TO_CATEGORY)
    inverted = dict(ok, boxes=np.array([[5, 0, 1, 1]], np.float32), labels=np.array([0]))
    with pytest.raises(ValueError, match=r"detections\[0\] box 0"):
        to_coco_results([inverted], [1], LABEL_TO_CATEGORY)
    with pytest.raises(ValueError, match="1 detection entries but 2 image ids"):
        to_coco_results([ok], [1, 2], LABEL_TO_CATEGORY)
    with pytest.raises(ValueError, match="'scores'"):
        to_coco_results([{"boxes": ok["boxes"], "labels": ok["labels"]}], [1], LABEL_TO_CATEGORY)


def test_perfect_detections_score_one_and_input_is_untouched():
    gt = make_ground_truth()
    before = copy.deepcopy(gt)
    metrics = evaluate(gt, gt_detections(gt))
    assert gt == before
    assert set(metrics) == set(METRIC_NAMES)
    for name in ("AP", "AP50", "AP75", "APs", "APm", "AR1", "AR10", "AR100"):
        assert metrics[name] == pytest.approx(1.0), name
    assert metrics["APl"] is None  # no large objects: COCO's -1


def test_shift_to_iou_0_6_passes_at_0_5_fails_at_0_75():
    # Shifting a w x h box right by dx: IoU = (w - dx) h / ((w + dx) h); dx = w/4 gives 0.75/1.25 = 0.6.
    gt = make_ground_truth()
    metrics = evaluate(gt, gt_detections(gt, dx_fraction=0.25))
    assert metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == 0.0
    # 0.6 sits exactly on the third IoU threshold, so 2 or 3 of the 10 thresholds match.
    assert 0.2 - 1e-6 <= metrics["AP"] <= 0.3 + 1e-6


def test_shift_to_iou_two_thirds_gives_ap_0_4():
    # dx = w/5: IoU = 0.8/1.2 = 2/3, matched at thresholds 0.50, 0.55, 0.60, 0.65 -> 4 of 10 -> AP 0.4.
    gt = make_ground_truth()
    metrics = evaluate(gt, gt_detections(gt, dx_fraction=0.2))
    assert metrics["AP"] == pytest.approx(0.4)
    assert metrics["AR100"] == pytest.approx(0.4)


def test_wrong_class_scores_zero():
    gt = make_ground_truth()
    metrics = evaluate(gt, gt_detections(gt, swap_labels=True))
    assert metrics["AP"] == 0.0
    assert metrics["AP50"] == 0.0
    assert metrics["AR100"] == 0.0


def test_no_detections_at_all_scores_zero(capsys):
    gt = make_ground_truth()
    metrics = coco_evaluate(gt, [])
    assert {k: v for k, v in metrics.items() if k != "APl"} == dict.fromkeys(METRIC_NAMES[:5] + METRIC_NAMES[6:], 0.0)
    assert metrics["APl"] is None
    assert capsys.readouterr().out == ""  # pycocotools' prints are swallowed


def test_image_ids_restrict_evaluation(tmp_path):
    gt = make_ground_truth()
    good, bad = gt_detections(gt), gt_detections(gt, swap_labels=True)
    mixed = [good[0], bad[1], bad[2]]  # image 1 right, image 2 wrong
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(gt))
    results = to_coco_results(mixed, IMAGE_IDS, LABEL_TO_CATEGORY)
    assert coco_evaluate(path, results, image_ids=[1])["AP"] == pytest.approx(1.0)
    assert coco_evaluate(path, results)["AP"] < 1.0
    with pytest.raises(DatasetError, match=r"\[9\]"):
        coco_evaluate(path, results, image_ids=[1, 9])
    with pytest.raises(DatasetError, match="no ground-truth objects"):
        coco_evaluate(path, results, image_ids=[5])


def test_bad_annotations_and_results_are_named():
    gt = make_ground_truth()
    with pytest.raises(DatasetError, match="category_id 4"):
        coco_evaluate({**gt, "annotations": [{"image_id": 1, "category_id": 4, "bbox": [0, 0, 1, 1]}]}, [])
    with pytest.raises(DatasetError, match="'categories'"):
        coco_evaluate({"images": [], "annotations": []}, [])
    with pytest.raises(DatasetError, match="cannot read annotations"):
        coco_evaluate("/nonexistent/instances.json", [])
    record = {"image_id": 1, "category_id": 0, "bbox": [0, 0, 1, 1], "score": 0.5}
    with pytest.raises(ValueError, match="category_id 0"):
        coco_evaluate(gt, [record])
    with pytest.raises(ValueError, match="image_id 8"):
        coco_evaluate(gt, [dict(record, image_id=8, category_id=3)])


def test_format_metrics_table():
    table = format_metrics_table({"AP": 0.5, "AP50": 0.75, "APl": None})
    lines = table.splitlines()
    assert lines[0].startswith("metric")
    assert [line.split()[:2] for line in lines[1:]] == [["AP", "0.5000"], ["AP50", "0.7500"], ["APl", "n/a"]]
    value_ends = {line.index(line.split()[1], len(line.split()[0])) + len(line.split()[1]) for line in lines}
    assert len(value_ends) == 1  # the value column is right-aligned under its header


def random_ground_truth_and_results(seed: int = 0) -> tuple[dict, list[dict]]:
    """6 images with 0-5 objects of all sizes, detections = jittered GT + false positives, random scores."""
    rng = np.random.default_rng(seed)
    images, annotations, results = [], [], []
    for image_id in range(1, 7):
        images.append({"id": image_id, "width": 400, "height": 400})
        for _ in range(rng.integers(0, 6)):
            w, h = rng.uniform(8, 200, size=2)
            x, y = rng.uniform(0, 400 - w), rng.uniform(0, 400 - h)
            category_id = int(rng.choice([3, 7]))
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": category_id,
                 "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
            )  # fmt: skip
            if rng.random() < 0.8:  # a jittered true detection
                jitter = rng.normal(0, 0.1, size=4) * [w, h, w, h]
                bbox = [x + jitter[0], y + jitter[1], max(w + jitter[2], 1.0), max(h + jitter[3], 1.0)]
                results.append({"image_id": image_id, "category_id": category_id, "bbox": bbox})
        for _ in range(rng.integers(0, 3)):  # false positives
            w, h = rng.uniform(8, 100, size=2)
            bbox = [rng.uniform(0, 300), rng.uniform(0, 300), w, h]
            results.append({"image_id": image_id, "category_id": int(rng.choice([3, 7])), "bbox": bbox})
    for record in results:
        record["bbox"] = [round(float(v), 2) for v in record["bbox"]]
        record["score"] = round(float(rng.uniform(0.05, 1.0)), 6)
    gt = {"images": images, "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}], "annotations": annotations}
    return gt, results


def test_matches_faster_coco_eval():
    faster = pytest.importorskip("faster_coco_eval", reason="faster-coco-eval not installed (optional cross-check)")
    gt, results = random_ground_truth_and_results()
    ours = coco_evaluate(gt, results)
    assert 0.05 < ours["AP"] < 0.95  # a non-trivial case

    coco_gt = faster.COCO(copy.deepcopy(gt))
    coco_dt = coco_gt.loadRes(copy.deepcopy(results))
    theirs = faster.COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=lambda *args: None)
    theirs.evaluate()
    theirs.accumulate()
    theirs.summarize()
    for name, value in zip(METRIC_NAMES, theirs.stats[: len(METRIC_NAMES)], strict=True):
        expected = None if value < 0 else pytest.approx(float(value), abs=1e-9)
        assert ours[name] == expected, name


def _record(image_id: int, category_id: int, bbox: list[float], score: float) -> dict:
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


def f1_results(duplicate_score: float = 0.7) -> list[dict]:
    """Against make_ground_truth's 3 objects, in score order: hit, hit, duplicate of the first hit, a box on the
    empty image 5, hit, wrong class."""
    return [
        _record(1, 3, [10, 10, 40, 40], 0.9),
        _record(2, 7, [20, 30, 50, 50], 0.8),
        _record(1, 3, [11, 10, 40, 40], duplicate_score),
        _record(5, 3, [0, 0, 10, 10], 0.6),
        _record(1, 7, [60, 50, 30, 20], 0.4),
        _record(2, 3, [20, 30, 50, 50], 0.3),
    ]


def test_best_f1_threshold_hand_computed():
    # cumulative (correct, kept) by threshold: 0.9 (1, 1), 0.8 (2, 2), 0.7 (2, 3), 0.6 (2, 4), 0.4 (3, 5), 0.3 (3, 6);
    # F1 0.5, 0.8, 0.667, 0.571, 0.75, 0.667: the best keeps the two hits at >= 0.8
    best = best_f1_threshold(make_ground_truth(), f1_results())
    assert best == pytest.approx({"score_thresh": 0.8, "precision": 1.0, "recall": 2 / 3, "f1": 0.8})
    assert format_operating_point(best).startswith("best F1 0.800 at score >= 0.800 (precision 1.000, recall 0.667")


def test_best_f1_threshold_keeps_ties_together_and_ignores_crowd():
    # the duplicate at 0.8 too: >= 0.8 keeps 3 with 2 correct (F1 0.667), so the best is >= 0.4 (3 of 5: 0.75)
    best = best_f1_threshold(make_ground_truth(), f1_results(duplicate_score=0.8))
    assert best == pytest.approx({"score_thresh": 0.4, "precision": 0.6, "recall": 1.0, "f1": 0.75})
    # a crowd box under the detection on image 5: it counts neither way, so >= 0.4 keeps 4 with 3 correct
    gt = make_ground_truth()
    gt["annotations"].append({"id": 9, "image_id": 5, "category_id": 3, "bbox": [0, 0, 10, 10], "iscrowd": 1})
    best = best_f1_threshold(gt, f1_results(duplicate_score=0.8))
    assert best == pytest.approx({"score_thresh": 0.4, "precision": 0.75, "recall": 1.0, "f1": 6 / 7})


def test_best_f1_threshold_without_a_correct_detection_or_objects():
    wrong = [_record(1, 7, [10, 10, 40, 40], 0.9)]
    assert best_f1_threshold(make_ground_truth(), wrong) is None
    assert best_f1_threshold(make_ground_truth(), []) is None
    assert format_operating_point(None).startswith("best F1: none")
    gt = make_ground_truth()
    gt["annotations"] = []
    with pytest.raises(DatasetError, match="no \\(non-crowd\\) objects"):
        best_f1_threshold(gt, wrong)
    with pytest.raises(ValueError, match="finite score"):
        best_f1_threshold(make_ground_truth(), [_record(1, 3, [10, 10, 40, 40], float("nan"))])
