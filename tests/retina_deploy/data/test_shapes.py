"""Synthetic shapes dataset: determinism, layout, tight boxes, negatives, argument checks."""

import json

import numpy as np
import pytest
from PIL import Image

from retina_deploy.core.errors import ConfigError
from retina_deploy.data.shapes import CLASS_NAMES, make_shapes, render_image


@pytest.fixture(scope="module")
def shapes40(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("s") / "shapes", num_images=40, size=128, seed=3)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path, shapes40):
    again = make_shapes(tmp_path / "again", num_images=40, size=128, seed=3)
    assert _files(again) == _files(shapes40)
    other = make_shapes(tmp_path / "other", num_images=40, size=128, seed=4)
    assert (other / "annotations.json").read_bytes() != (shapes40 / "annotations.json").read_bytes()
    # only the finished folders remain next to them (temporary folders are renamed or removed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "other"]


def test_layout_counts_and_categories(shapes40):
    coco = json.loads((shapes40 / "annotations.json").read_text())
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3, 4, 5, 6]
    assert [c["name"] for c in coco["categories"]] == list(CLASS_NAMES)
    assert len(coco["images"]) == 40
    assert sorted(p.name for p in (shapes40 / "images").iterdir()) == [f"{i:06d}.png" for i in range(40)]
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    with_objects = {a["image_id"] for a in coco["annotations"]}
    assert len(coco["images"]) - len(with_objects) == round(40 * 0.08)  # 3 negatives
    per_image = np.bincount([a["image_id"] for a in coco["annotations"]])
    assert per_image.max() <= 6
    for img in coco["images"]:
        w, h = Image.open(shapes40 / "images" / img["file_name"]).size
        assert (w, h) == (img["width"], img["height"])
        assert max(w, h) == 128 and min(w, h) >= 96  # aspect varies: other side in [0.75 * size, size]


def test_boxes_inside_image_and_sized(shapes40):
    coco = json.loads((shapes40 / "annotations.json").read_text())
    sizes = {img["id"]: (img["width"], img["height"]) for img in coco["images"]}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        width, height = sizes[a["image_id"]]
        assert 0 <= x and 0 <= y and x + w <= width and y + h <= height and w >= 1 and h >= 1
        assert 0 < a["area"] <= w * h and a["iscrowd"] == 0
        assert max(w, h) <= 0.6 * min(width, height) + 2  # largest shape diameter is 60% of the short side


@pytest.mark.parametrize("seed", range(8))
def test_box_is_tight_around_the_drawn_pixels(seed):
    # Same generator state with 0 and 1 objects: the background draws come first, so the images differ
    # exactly at the shape's pixels, whose bounding box must be the annotation.
    empty, _ = render_image(np.random.default_rng(seed), size=96, num_objects=0)
    pixels, objects = render_image(np.random.default_rng(seed), size=96, num_objects=1)
    ((label, (x, y, w, h), area),) = objects
    changed = np.any(pixels != empty, axis=2)
    cols, rows = np.flatnonzero(changed.any(axis=0)), np.flatnonzero(changed.any(axis=1))
    assert [x, y, x + w, y + h] == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
    assert area == changed.sum()
    assert 0 <= label < len(CLASS_NAMES)


def test_object_extent_sets_the_shape_sizes(tmp_path):
    def diameters(extent):
        out = make_shapes(tmp_path / str(extent), num_images=30, size=128, seed=5, object_extent=extent)
        coco = json.loads((out / "annotations.json").read_text())
        short = {img["id"]: min(img["width"], img["height"]) for img in coco["images"]}
        return np.array([max(a["bbox"][2:]) / short[a["image_id"]] for a in coco["annotations"]])

    default, large = diameters((0.08, 0.6)), diameters((0.3, 0.6))
    # a box is at most the shape's diameter (+1 px of rasterisation), at least ~half of it (a star's narrow view,
    # a shape cut by the border)
    assert large.max() <= 0.6 + 2 / 96 and np.median(large) >= 0.3
    assert np.quantile(default, 0.1) < 0.15 and np.median(large) > 1.5 * np.median(default)
    with pytest.raises(ConfigError, match=r"0 < low <= high <= 1, got \(0.5, 0.2\)"):
        make_shapes(tmp_path / "bad", num_images=2, object_extent=(0.5, 0.2))
    with pytest.raises(ConfigError, match="two numbers"):
        make_shapes(tmp_path / "bad", num_images=2, object_extent=0.5)
    assert not (tmp_path / "bad").exists()


def test_argument_checks_and_existing_folder(tmp_path):
    with pytest.raises(ConfigError, match="num_images must be an integer >= 1, got 0"):
        make_shapes(tmp_path / "a", num_images=0)
    with pytest.raises(ConfigError, match="size must be an integer >= 32, got 16"):
        make_shapes(tmp_path / "a", num_images=2, size=16)
    out = make_shapes(tmp_path / "a", num_images=2, size=64)
    with pytest.raises(ConfigError, match="pass --overwrite"):
        make_shapes(out, num_images=2, size=64)
    make_shapes(out, num_images=3, size=64, overwrite=True)
    assert len(json.loads((out / "annotations.json").read_text())["images"]) == 3
    (tmp_path / "user" / "images").mkdir(parents=True)  # looks like a dataset, was not written by make-shapes
    with pytest.raises(ConfigError, match="not written by `make-shapes`"):
        make_shapes(tmp_path / "user", num_images=2, size=64, overwrite=True)
    assert (tmp_path / "user" / "images").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "user"]


def test_pycocotools_reads_it(shapes40):
    from pycocotools.coco import COCO

    api = COCO(str(shapes40 / "annotations.json"))
    assert len(api.getImgIds()) == 40 and len(api.getCatIds()) == 6
