"""Draw detections on an image and save it atomically (numpy + pillow, torch-free).

Boxes are xyxy in absolute pixels of the image they are drawn on. Each class name keeps one
colour across images and runs (chosen from a CRC32 of the name, not Python's salted ``hash``).
Labels use PIL's built-in default font, so nothing depends on font files being installed.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from retina_deploy.core.errors import ImageError
from retina_deploy.core.fileio import atomic_path

# Distinct, saturated colours (RGB) that read well on photos and on the synthetic shapes.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (128, 128, 128),
)
SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
JPEG_QUALITY = 95


def class_colour(name: str) -> tuple[int, int, int]:
    """The RGB colour of a class name: the same name gets the same colour in every process."""
    return PALETTE[zlib.crc32(name.encode("utf-8")) % len(PALETTE)]


def draw_detections(
    image_rgb_uint8: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    class_names_per_box: Sequence[str],
    *,
    score_thresh: float = 0.0,
) -> Image.Image:
    """Draw boxes with "name 0.87" labels on a copy of an image.

    image_rgb_uint8: uint8 [H, W, 3], RGB; not modified.
    boxes: float [N, 4] xyxy, absolute pixels of this image; parts outside it are clipped and
        boxes entirely outside are skipped.
    scores: float [N]; boxes with ``score < score_thresh`` are not drawn.
    class_names_per_box: N class names, one per box (the caller maps labels to names).

    Returns a new RGB ``PIL.Image`` of size (W, H); with nothing to draw its pixels equal the input.
    Higher scores are drawn last, so they stay on top. Labels sit above the box when there is room,
    else just inside its top edge, and are shifted to stay inside the image.
    Raises ImageError for an image of the wrong shape or dtype, ValueError for mismatched or
    non-finite boxes and scores (naming the box index).
    """
    image = _checked_image(image_rgb_uint8)
    boxes, scores = _checked_boxes(boxes, scores, class_names_per_box)
    height, width = image.shape[:2]
    out = Image.fromarray(np.ascontiguousarray(image)).convert("RGB")  # convert() always copies
    keep = np.flatnonzero(scores >= score_thresh)
    if keep.size == 0:
        return out
    draw = ImageDraw.Draw(out)
    line_width = max(1, min(height, width) // 256)
    font = _default_font(max(10, min(height, width) // 40))
    for i in keep[np.argsort(scores[keep], kind="stable")]:
        x1, y1, x2, y2 = boxes[i]
        if x2 < 0 or y2 < 0 or x1 > width - 1 or y1 > height - 1:
            continue  # entirely outside the image
        x1, x2 = float(np.clip(x1, 0, width - 1)), float(np.clip(x2, 0, width - 1))
        y1, y2 = float(np.clip(y1, 0, height - 1)), float(np.clip(y2, 0, height - 1))
        colour = class_colour(class_names_per_box[i])
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line_width)
        _draw_label(draw, f"{class_names_per_box[i]} {scores[i]:.2f}", (x1, y1), colour, font, (width, height))
    return out


def _checked_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ImageError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"image must be [H, W, 3] RGB with H, W > 0, got shape {list(image.shape)}")
    if image.dtype != np.uint8:
        raise ImageError(f"image must be uint8, got dtype {image.dtype}")
    return image


def _checked_boxes(boxes: np.ndarray, scores: np.ndarray, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Validated (boxes float64 [N, 4], scores float64 [N])."""
    boxes = np.asarray(boxes, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != (boxes.shape[0],):
        raise ValueError(f"need boxes [N, 4] and scores [N], got {list(boxes.shape)} and {list(scores.shape)}")
    if len(names) != boxes.shape[0]:
        raise ValueError(f"got {boxes.shape[0]} boxes but {len(names)} class names")
    bad = ~np.isfinite(boxes).all(axis=1) | ~np.isfinite(scores)
    bad |= (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"box {i} is not a finite xyxy box with x2 >= x1 and y2 >= y1: {boxes[i].tolist()}")
    return boxes, scores


def _default_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's embedded font: scalable when Pillow has FreeType, its fixed bitmap font otherwise."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def _draw_label(
    draw: ImageDraw.ImageDraw,
    text: str,
    corner: tuple[float, float],
    colour: tuple[int, int, int],
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    image_size: tuple[int, int],
) -> None:
    """Text on a filled box at the box's top-left corner, kept inside the image."""
    width, height = image_size
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = 1
    label_w, label_h = right - left + 2 * pad, bottom - top + 2 * pad
    x, y = corner
    y = y - label_h if y - label_h >= 0 else y  # above the box, else inside its top edge
    x = max(0.0, min(x, width - label_w))
    y = max(0.0, min(y, height - label_h))
    draw.rectangle((x, y, x + label_w - 1, y + label_h - 1), fill=colour)
    # Dark text on light colours, white on dark (ITU-R BT.601 luma).
    luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    draw.text((x + pad - left, y + pad - top), text, fill=(0, 0, 0) if luma > 140 else (255, 255, 255), font=font)


def save_image_atomic(img: Image.Image, path: str | os.PathLike) -> None:
    """Write ``img`` to ``path`` as PNG (``.png``) or JPEG (``.jpg``/``.jpeg``, quality 95).

    The file appears under its final name only once fully written (temp file + rename); parent
    folders are created. Raises ValueError naming any other suffix, TypeError for a non-PIL image.
    """
    if not isinstance(img, Image.Image):
        raise TypeError(f"img must be a PIL.Image.Image, got {type(img).__name__}")
    path = Path(path)
    fmt = SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot save {str(path)!r}: the suffix must be one of {sorted(SAVE_FORMATS)}")
    if fmt == "JPEG" and img.mode != "RGB":
        img = img.convert("RGB")  # JPEG has no alpha or palette
    with atomic_path(path) as tmp:
        if fmt == "JPEG":
            img.save(tmp, format=fmt, quality=JPEG_QUALITY)
        else:
            img.save(tmp, format=fmt)
