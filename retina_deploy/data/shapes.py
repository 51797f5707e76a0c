"""Synthetic COCO-format detection data: coloured shapes on varied backgrounds (numpy + pillow, no torch).

The embedded default dataset: the whole pipeline (train, export, calibrate, evaluate) runs on it without
a download. Layout written by :func:`make_shapes`::

    OUT/images/000000.png, 000001.png, ...   RGB PNG, width and height in [0.75 * size, size]
    OUT/annotations.json                     COCO instances: images, annotations, categories

Boxes are COCO ``[x, y, w, h]`` in pixel-edge coordinates, computed from the visible pixels of each
drawn shape (so they are tight and inside the image even for shapes cut by the border or partly
covered by a later shape). Output is a pure function of the arguments: the same seed gives the same bytes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from retina_deploy.core.errors import ConfigError
from retina_deploy.core.fileio import remove_stale_temporaries, replace_dir, temporary_sibling_dir
from retina_deploy.core.outputs import check_output_dir, mark_folder

CLASS_NAMES = ("circle", "square", "triangle", "star", "cross", "ring")
IMAGES_DIRNAME = "images"
ANNOTATIONS_FILENAME = "annotations.json"
NEGATIVE_FRACTION = 0.08  # images with no object at all
MIN_SIZE = 32
MAX_SIZE = 4096  # one RGB image of 4096 x 4096 is 50 MB in memory; larger is a typo
OBJECT_EXTENT = (0.08, 0.6)  # shape diameter as a fraction of the image's shorter side
MIN_VISIBLE = 0.6  # a new shape may not hide more than 40% of an earlier one
COMMAND = "make-shapes"  # the marker of its folders, the only ones --overwrite replaces
PLACEMENT_TRIES = 10
MIN_COLOUR_DISTANCE = 90.0  # RGB L2 distance between a shape and its background's mean colour


def make_shapes(
    out_dir: str | os.PathLike,
    *,
    num_images: int,
    size: int = 256,
    seed: int = 0,
    max_objects: int = 6,
    object_extent: tuple[float, float] = OBJECT_EXTENT,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic shapes dataset in COCO format and return ``out_dir``.

    Args:
        out_dir: destination folder; created. It must be absent, empty, or (with ``overwrite``) a
            folder make-shapes wrote (its marker file ``.retina-deploy-make-shapes``).
        num_images: number of images (>= 1); about 8% of them contain no object.
        size: longest image side in pixels (>= 32); the other side is in [0.75 * size, size].
        seed: any non-negative integer; image ``i`` depends only on (seed, i).
        max_objects: at most this many shapes per image (>= 1).
        object_extent: (low, high) shape diameter as a fraction of the image's shorter side, drawn
            log-uniformly; 0 < low <= high <= 1. Small images need a larger ``low``: at 128 px, 0.08 is a 10-px shape.
        overwrite: replace an earlier make-shapes folder (never another folder).

    The folder appears complete or not at all: everything is written into a temporary sibling folder
    that is renamed onto ``out_dir`` at the end.
    """
    _check_args(num_images, size, seed, max_objects)
    object_extent = check_object_extent(object_extent)
    out_dir = check_output_dir(out_dir, flag="OUT", command=COMMAND, overwrite=overwrite)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)  # a killed earlier run's half-written folder
    tmp = temporary_sibling_dir(out_dir)
    try:
        mark_folder(tmp, COMMAND)
        _write_dataset(
            tmp, num_images=num_images, size=size, seed=seed, max_objects=max_objects, object_extent=object_extent
        )
        replace_dir(tmp, out_dir)
    except OSError as e:  # a full disk, say: name the user's folder, not the temporary one
        raise OSError(e.errno, e.strerror or str(e), str(out_dir)) from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


def _check_args(num_images: int, size: int, seed: int, max_objects: int) -> None:
    for name, value, low in (
        ("num_images", num_images, 1),
        ("size", size, MIN_SIZE),
        ("seed", seed, 0),
        ("max_objects", max_objects, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}")
    if size > MAX_SIZE:
        raise ConfigError(f"size must be <= {MAX_SIZE} pixels, got {size}")


def check_object_extent(extent) -> tuple[float, float]:
    """``extent`` as a (low, high) float pair with 0 < low <= high <= 1, else :class:`ConfigError`."""
    try:
        low, high = (float(v) for v in extent)
    except (TypeError, ValueError):
        raise ConfigError(f"object_extent must be two numbers (low, high), got {extent!r}") from None
    if not (0 < low <= high <= 1):  # also False for NaN
        raise ConfigError(f"object_extent must satisfy 0 < low <= high <= 1, got ({low}, {high})")
    return low, high


def _write_dataset(
    root: Path, *, num_images: int, size: int, seed: int, max_objects: int, object_extent: tuple[float, float]
) -> None:
    images_dir = root / IMAGES_DIRNAME
    images_dir.mkdir()
    rng = np.random.default_rng([seed, 0x5EED])
    num_negatives = round(num_images * NEGATIVE_FRACTION)
    negatives = set(rng.choice(num_images, size=num_negatives, replace=False).tolist())
    images, annotations = [], []
    for index in range(num_images):
        image_rng = np.random.default_rng([seed, index])
        count = 0 if index in negatives else int(image_rng.integers(1, max_objects + 1))
        pixels, objects = render_image(image_rng, size=size, num_objects=count, object_extent=object_extent)
        file_name = f"{index:06d}.png"
        Image.fromarray(pixels).save(images_dir / file_name, format="PNG", compress_level=1)
        height, width = pixels.shape[:2]
        images.append({"id": index + 1, "file_name": file_name, "width": width, "height": height})
        for label, bbox, area in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index + 1,
                    "category_id": label + 1,
                    "bbox": bbox,
                    "area": area,
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": f"retina-deploy synthetic shapes (seed {seed}, size {size})", "version": "1"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASS_NAMES)],
    }
    (root / ANNOTATIONS_FILENAME).write_text(json.dumps(coco, separators=(",", ":")) + "\n")


def render_image(
    rng: np.random.Generator, *, size: int, num_objects: int, object_extent: tuple[float, float] = OBJECT_EXTENT
) -> tuple[np.ndarray, list[tuple[int, list[int], int]]]:
    """Draw one image.

    Returns:
        (pixels, objects): uint8 array [h, w, 3] RGB, and per visible shape (label 0..5 indexing
        ``CLASS_NAMES``, COCO bbox [x, y, w, h] in integer pixels, visible area in pixels).
    """
    short = int(rng.integers(math.ceil(0.75 * size), size + 1))
    height, width = (size, short) if rng.random() < 0.5 else (short, size)
    pixels = _background(rng, height, width)
    background_mean = pixels[::4, ::4].reshape(-1, 3).mean(axis=0)
    instance = np.zeros((height, width), np.int16)  # 0 = background, k = k-th placed shape
    drawn_area: list[int] = []
    labels: list[int] = []
    for _ in range(num_objects):
        label = int(rng.integers(len(CLASS_NAMES)))
        for _ in range(PLACEMENT_TRIES):
            mask = _shape_mask(rng, CLASS_NAMES[label], height, width, object_extent)
            if mask.any() and _keeps_earlier_visible(instance, mask, drawn_area):
                break
        else:
            continue  # too crowded: this image gets one shape fewer
        drawn_area.append(int(mask.sum()))
        labels.append(label)
        instance[mask] = len(labels)
        pixels[mask] = _shape_colour(rng, background_mean)
    objects = []
    for k, label in enumerate(labels, start=1):
        visible = instance == k
        cols, rows = np.flatnonzero(visible.any(axis=0)), np.flatnonzero(visible.any(axis=1))
        if cols.size == 0:
            continue
        x0, x1, y0, y1 = int(cols[0]), int(cols[-1]) + 1, int(rows[0]), int(rows[-1]) + 1
        objects.append((label, [x0, y0, x1 - x0, y1 - y0], int(visible.sum())))
    return pixels, objects


def _keeps_earlier_visible(instance: np.ndarray, mask: np.ndarray, drawn_area: list[int]) -> bool:
    """True when drawing ``mask`` on top leaves every earlier shape at least MIN_VISIBLE visible."""
    if not drawn_area:
        return True
    visible = np.bincount(instance.ravel(), minlength=len(drawn_area) + 1)[1:]
    covered = np.bincount(instance[mask], minlength=len(drawn_area) + 1)[1:]
    return bool(np.all(visible - covered >= MIN_VISIBLE * np.asarray(drawn_area)))


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    kind = rng.integers(3)
    base = rng.uniform(0, 255, size=3)
    if kind == 0:  # solid
        out = np.broadcast_to(base, (height, width, 3))
    elif kind == 1:  # linear gradient in a random direction between two colours
        other = rng.uniform(0, 255, size=3)
        angle = rng.uniform(0, 2 * math.pi)
        y, x = np.mgrid[0:height, 0:width].astype(np.float32)
        t = x * math.cos(angle) + y * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        t = t[..., None]
        out = base.astype(np.float32) * (1 - t) + other.astype(np.float32) * t
    else:  # low-frequency blobs plus fine grain
        coarse = rng.uniform(-60, 60, size=(4, 4, 3)) + base
        coarse_img = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8))
        out = np.asarray(coarse_img.resize((width, height), Image.BILINEAR), np.float32)
        out = out + rng.standard_normal((height, width, 3), dtype=np.float32) * np.float32(12.0)
    return np.clip(out, 0, 255).astype(np.uint8)


def _shape_colour(rng: np.random.Generator, background_mean: np.ndarray) -> np.ndarray:
    colour = rng.integers(0, 256, size=3)
    for _ in range(20):
        if np.linalg.norm(colour - background_mean) >= MIN_COLOUR_DISTANCE:
            break
        colour = rng.integers(0, 256, size=3)
    else:  # fall back to the background's complement, always far enough for a mid-grey-free mean
        colour = 255 - np.round(background_mean)
    return colour.astype(np.uint8)


def _shape_mask(
    rng: np.random.Generator, name: str, height: int, width: int, extent: tuple[float, float]
) -> np.ndarray:
    """Draw one shape of random size, position and rotation; bool mask [height, width]."""
    short = min(height, width)
    low, high = extent
    radius = 0.5 * short * math.exp(rng.uniform(math.log(low), math.log(high)))
    # up to half the radius may stick out of the image, so some shapes are cut by the border
    cx = rng.uniform(0.5 * radius, width - 0.5 * radius)
    cy = rng.uniform(0.5 * radius, height - 0.5 * radius)
    angle = rng.uniform(0, 2 * math.pi)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if name in ("circle", "ring"):
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=255)
        if name == "ring":
            inner = radius * rng.uniform(0.45, 0.7)
            draw.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=0)
    else:
        draw.polygon(_polygon(name, cx, cy, radius, angle), fill=255)
    return np.asarray(canvas) > 0


def _polygon(name: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a square/triangle/star/cross inscribed in a circle of ``radius``, rotated by ``angle``."""
    if name == "square":
        polar = [(radius, math.pi / 4 + i * math.pi / 2) for i in range(4)]
    elif name == "triangle":
        polar = [(radius, i * 2 * math.pi / 3) for i in range(3)]
    elif name == "star":
        polar = [(radius if i % 2 == 0 else 0.45 * radius, i * math.pi / 5) for i in range(10)]
    elif name == "cross":
        a = 0.3 * radius  # half arm width; arm tips are at distance `radius`
        tip = math.sqrt(radius**2 - a**2)
        corners = [
            (tip, -a),
            (tip, a),
            (a, a),
            (a, tip),
            (-a, tip),
            (-a, a),
            (-tip, a),
            (-tip, -a),
            (-a, -a),
            (-a, -tip),
            (a, -tip),
            (a, -a),
        ]
        polar = [(math.hypot(x, y), math.atan2(y, x)) for x, y in corners]
    else:
        raise ConfigError(f"unknown shape {name!r}; known: {list(CLASS_NAMES)}")
    return [(cx + r * math.cos(t + angle), cy + r * math.sin(t + angle)) for r, t in polar]
