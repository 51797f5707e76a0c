"""COCO loading: label mapping, crowd and negatives, clipping/dropping, and one error per malformed input."""

import json
import logging

import numpy as np
import pytest

from retina_deploy.core.errors import DatasetError
from retina_deploy.data.coco import load_coco
from retina_deploy.data.shapes import make_shapes


def _write(tmp_path, coco, files=None):
    """Write annotations.json and touch the image files (load_coco checks existence, never decodes)."""
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for name in files if files is not None else [img["file_name"] for img in coco.get("images", [])]:
        (images / name).write_bytes(b"")
    ann = tmp_path / "annotations.json"
    ann.write_text(json.dumps(coco) if not isinstance(coco, str) else coco)
    return images, ann


def _base():
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 100, "height": 50},
            {"id": 5, "file_name": "b.png", "width": 40, "height": 40},
            {"id": 9, "file_name": "c.png", "width": 30, "height": 20},
        ],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}, {"id": 12, "name": "twelve"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 12, "bbox": [10, 5, 20, 10], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 100, 50], "iscrowd": 1},
            {"id": 3, "image_id": 5, "category_id": 7, "bbox": [1.5, 2.5, 3, 4]},
        ],
    }


def test_contiguous_labels_crowd_and_negatives(tmp_path):
    ds = load_coco(*_write(tmp_path, _base()))
    # category ids sorted ascending: 3 -> 0, 7 -> 1, 12 -> 2
    assert ds.category_ids == [3, 7, 12]
    assert ds.class_names == ["three", "seven", "twelve"]
    assert ds.label_to_category_id == {0: 3, 1: 7, 2: 12}
    assert ds.category_id_to_label == {3: 0, 7: 1, 12: 2}
    assert [r.image_id for r in ds.records] == [1, 5, 9]
    a, b, c = ds.records
    assert a.path == tmp_path / "images" / "a.png" and (a.width, a.height) == (100, 50)
    assert a.boxes.dtype == np.float32 and a.labels.dtype == np.int64 and a.iscrowd.dtype == bool
    np.testing.assert_array_equal(a.boxes, [[10, 5, 30, 15], [0, 0, 100, 50]])  # xywh -> xyxy
    np.testing.assert_array_equal(a.labels, [2, 0])
    np.testing.assert_array_equal(a.iscrowd, [False, True])
    np.testing.assert_array_equal(b.boxes, [[1.5, 2.5, 4.5, 6.5]])
    assert c.boxes.shape == (0, 4) and c.labels.shape == (0,) and c.iscrowd.shape == (0,)  # negative kept
    assert ds.stats == {"images": 3, "negatives": 1, "boxes": 3, "crowd": 1, "clipped": 0, "dropped": 0}
    assert len(ds) == 3 and ds.num_classes == 3


def test_clipping_and_dropping_counted_and_logged(tmp_path, caplog):
    coco = _base()
    coco["annotations"] = [  # all on image 1, 100 wide x 50 high
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [-5, 10, 20, 20]},  # clipped -> [0, 10, 15, 30]
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [90, 40, 20, 20]},  # clipped -> [90, 40, 100, 50]
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [10, 10, 0.5, 10]},  # 0.5 px wide: dropped
        {"id": 4, "image_id": 1, "category_id": 3, "bbox": [120, 10, 5, 5]},  # fully outside: dropped
        {"id": 5, "image_id": 1, "category_id": 3, "bbox": [10, 10, -4, 5]},  # negative width: dropped
        {"id": 6, "image_id": 1, "category_id": 3, "bbox": [10, 10, 5, 5]},  # untouched
    ]
    images, ann = _write(tmp_path, coco)
    with caplog.at_level(logging.WARNING, logger="retina_deploy.data.coco"):
        ds = load_coco(images, ann)
    np.testing.assert_array_equal(ds.records[0].boxes, [[0, 10, 15, 30], [90, 40, 100, 50], [10, 10, 15, 15]])
    assert (ds.stats["clipped"], ds.stats["dropped"], ds.stats["boxes"]) == (2, 3, 3)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "clipped 2 box(es)" in warnings[0] and "dropped 3 degenerate" in warnings[0]


def test_non_finite_box_dropped(tmp_path):
    text = json.dumps(_base()).replace("[1.5, 2.5, 3, 4]", "[NaN, 2.5, 3, 4]")  # Python's json reads NaN
    ds = load_coco(*_write(tmp_path, text, files=["a.png", "b.png", "c.png"]))
    assert ds.records[1].boxes.shape == (0, 4) and ds.stats["dropped"] == 1


def _set(path, value):
    def edit(coco):
        target = coco
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return coco

    return edit


MALFORMED = [
    ("not json", lambda c: "{not json", r"annotations\.json: not valid JSON"),
    ("top-level list", lambda c: [], r"annotations\.json: top level must be a JSON object"),
    (
        "no categories",
        lambda c: {k: v for k, v in c.items() if k != "categories"},
        r"annotations\.json: not a COCO instances file, missing key\(s\) \['categories'\]",
    ),
    ("no images key", lambda c: {k: v for k, v in c.items() if k != "images"}, r"missing key\(s\) \['images'\]"),
    (
        "unknown image",
        _set(["annotations", 0, "image_id"], 4),
        r"annotations\.json: annotation id 1: unknown image_id 4",
    ),
    (
        "unknown category",
        _set(["annotations", 2, "category_id"], 99),
        r"annotations\.json: annotation id 3: unknown category_id 99",
    ),
    (
        "bbox 3 numbers",
        _set(["annotations", 1, "bbox"], [1, 2, 3]),
        r"annotation id 2: 'bbox' must be 4 numbers \[x, y, w, h\], got \[1, 2, 3\]",
    ),
    ("bbox string", _set(["annotations", 1, "bbox"], [1, 2, "3", 4]), r"annotation id 2: 'bbox' must be 4 numbers"),
    ("bbox missing", lambda c: c["annotations"][0].pop("bbox") and c, r"annotation id 1: 'bbox' must be 4"),
    ("annotation id missing", lambda c: c["annotations"][2].pop("id") and c, r"annotations\[2\]: missing 'id'"),
    ("duplicate annotation id", _set(["annotations", 1, "id"], 1), r"annotation id 1: appears twice"),
    ("bad iscrowd", _set(["annotations", 0, "iscrowd"], 2), r"annotation id 1: 'iscrowd' must be 0 or 1"),
    ("duplicate image id", _set(["images", 1, "id"], 1), r"image id 1: appears twice"),
    ("bad width", _set(["images", 2, "width"], 0), r"image id 9: 'width' must be >= 1, got 0"),
    ("string height", _set(["images", 0, "height"], "50"), r"image id 1: 'height' must be an integer"),
    ("no file_name", lambda c: c["images"][1].pop("file_name") and c, r"image id 5: 'file_name' must be"),
    ("category without name", lambda c: c["categories"][1].pop("name") and c, r"category id 3: 'name' must"),
    ("duplicate category", _set(["categories", 1, "id"], 7), r"category id 7 appears twice"),
    ("no categories listed", _set(["categories"], []), r"'categories' is empty"),
    ("annotations not a list", _set(["annotations"], {}), r"'annotations' must be a list, got dict"),
    ("empty dataset", _set(["images"], []), r"annotations\.json: 'images' is empty"),
]


@pytest.mark.parametrize("edit, message", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_json_names_file_and_record(tmp_path, edit, message):
    coco = edit(_base())
    images, ann = _write(tmp_path, coco, files=["a.png", "b.png", "c.png"])
    with pytest.raises(DatasetError, match=message):
        load_coco(images, ann)


def test_missing_image_file_named(tmp_path):
    images, ann = _write(tmp_path, _base(), files=["a.png", "c.png"])
    with pytest.raises(DatasetError, match=r"annotations\.json: image id 5: .*images/b\.png: image file not found"):
        load_coco(images, ann)


def test_missing_paths(tmp_path):
    images, ann = _write(tmp_path, _base())
    with pytest.raises(DatasetError, match=r"annotations file .*nope\.json does not exist"):
        load_coco(images, tmp_path / "nope.json")
    with pytest.raises(DatasetError, match=r"images folder .*nope does not exist"):
        load_coco(tmp_path / "nope", ann)


def test_loads_synthetic_shapes(tmp_path):
    root = make_shapes(tmp_path / "shapes", num_images=13, size=64, seed=1)
    ds = load_coco(root / "images", root / "annotations.json")
    assert ds.class_names == ["circle", "square", "triangle", "star", "cross", "ring"]
    assert ds.category_ids == [1, 2, 3, 4, 5, 6]
    assert ds.stats["images"] == 13 and ds.stats["negatives"] == 1 and ds.stats["dropped"] == 0
    for r in ds.records:
        assert np.all(r.boxes[:, 2] > r.boxes[:, 0]) and np.all(r.boxes[:, 2] <= r.width)
        assert np.all(r.labels >= 0) and np.all(r.labels < 6)
