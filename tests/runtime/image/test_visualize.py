"""Drawing detections: what changes, what does not, odd boxes, and saving."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFont

from retina_deploy.core.errors import ImageError
from retina_deploy.runtime.image.visualize import class_colour, draw_detections, save_image_atomic

GREY = 90


def grey_image(height: int = 128, width: int = 128) -> np.ndarray:
    return np.full((height, width, 3), GREY, dtype=np.uint8)


def test_outline_drawn_and_far_pixels_untouched():
    image = grey_image()
    before = image.copy()
    boxes = np.array([[20, 40, 80, 100]], dtype=np.float32)
    out = draw_detections(image, boxes, np.array([0.87], np.float32), ["cat"])
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (128, 128)
    np.testing.assert_array_equal(image, before)  # the input is not drawn on
    pixels = np.asarray(out)
    colour = class_colour("cat")
    # 128 px image -> 1 px lines; on the left and bottom edges, away from the label at the top.
    assert tuple(pixels[70, 20]) == colour
    assert tuple(pixels[100, 50]) == colour
    assert tuple(pixels[70, 50]) == (GREY,) * 3  # box interior
    assert (pixels[110:, :] == GREY).all()  # below the box
    assert (pixels[:, 90:] == GREY).all()  # right of the box and its label
    # The label "cat 0.87" sits above the box (rows < 40), in the class colour.
    assert (pixels[:40, 20:80] == colour).all(axis=-1).sum() > 20


def test_zero_detections_and_below_threshold_return_identical_image():
    image = grey_image()
    image[10:20, 10:20] = (1, 2, 3)
    empty = draw_detections(image, np.zeros((0, 4), np.float32), np.zeros(0, np.float32), [])
    np.testing.assert_array_equal(np.asarray(empty), image)
    low = draw_detections(image, np.array([[5, 5, 50, 50]]), np.array([0.2]), ["dog"], score_thresh=0.3)
    np.testing.assert_array_equal(np.asarray(low), image)


def test_boxes_partly_or_fully_outside_do_not_crash():
    image = grey_image(96, 128)
    boxes = np.array([[-50, -50, 30, 30], [100, 60, 500, 500], [200, 200, 300, 300]], np.float32)
    out = np.asarray(draw_detections(image, boxes, np.array([0.9, 0.8, 0.7]), ["a", "b", "c"]))
    assert out.shape == image.shape
    assert tuple(out[80, 127]) == class_colour("b")  # right edge clipped onto the last column
    assert tuple(out[95, 110]) == class_colour("b")  # bottom edge clipped onto the last row
    only_outside = draw_detections(image, boxes[2:], np.array([0.7]), ["c"])
    np.testing.assert_array_equal(np.asarray(only_outside), image)


def test_label_kept_inside_image():
    # A long label for a box at the top-right corner: no room above, none to the right, so it is
    # drawn inside the box's top edge and shifted left into the image.
    image = grey_image()
    out = np.asarray(draw_detections(image, np.array([[118, 0, 127, 8]]), np.array([0.5]), ["a_long_class_name"]))
    colour = class_colour("a_long_class_name")
    label_columns = np.flatnonzero((out[:20] == colour).all(axis=-1).any(axis=0))
    assert label_columns.min() < 60 and label_columns.max() == 127


def test_same_class_same_colour_different_classes_from_palette():
    assert class_colour("person") == class_colour("person")
    assert len({class_colour(name) for name in ("circle", "square", "triangle", "star", "cross")}) > 1


def test_works_with_bitmap_font_only(monkeypatch):
    # Pillow without FreeType (or < 10.1) has only the embedded bitmap font and no size argument.
    bitmap = ImageFont.load_default_imagefont()

    def load_default(size=None):
        if size is not None:
            raise TypeError("load_default() got an unexpected keyword argument 'size'")
        return bitmap

    monkeypatch.setattr(ImageFont, "load_default", load_default)
    out = draw_detections(grey_image(), np.array([[20, 40, 80, 100]]), np.array([0.5]), ["cat"])
    assert (np.asarray(out)[:40] == class_colour("cat")).all(axis=-1).sum() > 20


def test_bad_inputs_are_named():
    with pytest.raises(ImageError, match="uint8"):
        draw_detections(grey_image().astype(np.float32), np.zeros((0, 4)), np.zeros(0), [])
    with pytest.raises(ImageError, match=r"\[128, 128\]"):
        draw_detections(grey_image()[..., 0], np.zeros((0, 4)), np.zeros(0), [])
    with pytest.raises(ValueError, match="1 boxes but 2 class names"):
        draw_detections(grey_image(), np.array([[0, 0, 5, 5]]), np.array([0.5]), ["a", "b"])
    with pytest.raises(ValueError, match="box 1"):
        draw_detections(grey_image(), np.array([[0, 0, 5, 5], [9, 0, 5, 5]]), np.array([0.5, 0.5]), ["a", "b"])


def test_save_png_reload_identical_and_jpeg(tmp_path):
    out = draw_detections(grey_image(), np.array([[20, 40, 80, 100]]), np.array([0.87]), ["cat"])
    png = tmp_path / "sub" / "vis.png"
    save_image_atomic(out, png)
    with Image.open(png) as reloaded:
        assert reloaded.format == "PNG"
        np.testing.assert_array_equal(np.asarray(reloaded.convert("RGB")), np.asarray(out))
    jpeg = tmp_path / "vis.JPG"
    save_image_atomic(out.convert("RGBA"), jpeg)  # alpha is dropped for JPEG
    with Image.open(jpeg) as reloaded:
        assert reloaded.format == "JPEG" and reloaded.size == out.size
    with pytest.raises(ValueError, match="vis.gif"):
        save_image_atomic(out, tmp_path / "vis.gif")
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["vis.JPG", "vis.png"]  # no temp files
