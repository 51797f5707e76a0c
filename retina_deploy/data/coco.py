"""COCO instances annotations -> per-image boxes in the toolkit's convention (numpy, no torch).

Inside the toolkit a box is ``[x1, y1, x2, y2]`` in absolute pixel-edge coordinates of the stored image
(COCO ``[x, y, w, h]`` -> ``[x, y, x + w, y + h]``), and a class is a contiguous label ``0..C-1``: COCO
category ids sorted ascending map to labels in order (``CocoDataset.category_ids[label]`` is the id).

Loading validates the whole file and checks that every image file exists (it decodes none). Malformed
input raises ``DatasetError`` naming the file and the record; boxes that stick out of their image are
clipped and degenerate ones dropped, with one logged warning and the counts kept in ``CocoDataset.stats``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retina_deploy.core.errors import DatasetError

log = logging.getLogger(__name__)

MIN_BOX_SIDE = 1.0  # pixels; a box narrower or shorter than this after clipping is dropped


@dataclass(frozen=True)
class ImageRecord:
    """One image and its annotations.

    image_id: the COCO image id.
    path: the image file (images_dir / file_name).
    width, height: the image size in pixels, as the annotation file states it.
    boxes: float32 [N, 4] xyxy absolute pixels, 0 <= x1 < x2 <= width, 0 <= y1 < y2 <= height.
    labels: int64 [N], contiguous labels in 0..C-1.
    iscrowd: bool [N]; crowd regions are kept so that matching can ignore them, never as positives.
    """

    image_id: int
    path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray


@dataclass(frozen=True)
class CocoDataset:
    """A validated COCO dataset.

    records: one per image, in file order; images without annotations are kept (negatives).
    class_names: [C] category names, indexed by label.
    category_ids: [C] COCO category ids, indexed by label, ascending.
    stats: counts: images, negatives, boxes (kept), crowd (kept crowd boxes), clipped, dropped.
    """

    records: list[ImageRecord]
    class_names: list[str]
    category_ids: list[int]
    annotations_path: Path
    images_dir: Path
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    @property
    def label_to_category_id(self) -> dict[int, int]:
        return dict(enumerate(self.category_ids))

    @property
    def category_id_to_label(self) -> dict[int, int]:
        return {cid: label for label, cid in enumerate(self.category_ids)}

    def __len__(self) -> int:
        return len(self.records)

    def load_image(
        self, record: ImageRecord, *, max_pixels: int | None = None, exif_orientation: bool = True
    ) -> np.ndarray:
        """RGB uint8 [h, w, 3] of ``record``, upright as its EXIF orientation says (``exif_orientation``
        False: as stored); DatasetError when the decoded size is not the one the annotations state (its
        boxes would be misplaced), ImageError for an unreadable file."""
        from retina_deploy.runtime.image.image_io import DEFAULT_MAX_PIXELS, load_image

        image = load_image(record.path, max_pixels=max_pixels or DEFAULT_MAX_PIXELS, exif_orientation=exif_orientation)
        if image.shape[:2] != (record.height, record.width):
            hint = ""
            if exif_orientation and image.shape[:2] == (record.width, record.height):
                hint = (
                    "; its EXIF orientation turns it by 90 degrees: annotations made on the stored pixels need"
                    " exif_orientation=False"
                )
            raise DatasetError(
                f"{record.path}: decoded size {image.shape[1]}x{image.shape[0]} differs from the "
                f"{record.width}x{record.height} that {self.annotations_path} gives for image id {record.image_id}"
                + hint
            )
        return image


def load_coco(images_dir: str | os.PathLike, annotations_json: str | os.PathLike) -> CocoDataset:
    """Load and validate a COCO instances file.

    Args:
        images_dir: folder that the images' ``file_name`` entries are relative to.
        annotations_json: the COCO instances JSON file.

    Raises:
        DatasetError: missing folder/file, invalid JSON, missing top-level keys, a malformed record, an
            annotation naming an unknown image_id or category_id, a missing image file, or no images.
    """
    images_dir, ann_path = Path(images_dir), Path(annotations_json)
    src = str(ann_path)
    if not images_dir.is_dir():
        raise DatasetError(f"images folder {images_dir} does not exist or is not a folder")
    data = _read_json(ann_path)
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise DatasetError(f"{src}: not a COCO instances file, missing key(s) {missing}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data[key], list):
            raise DatasetError(f"{src}: '{key}' must be a list, got {type(data[key]).__name__}")
    category_ids, class_names = _parse_categories(data["categories"], src)
    images = _parse_images(data["images"], src, images_dir)
    per_image, counts = _parse_annotations(data["annotations"], src, images, category_ids)
    records = []
    for image_id, (path, width, height) in images.items():
        boxes, labels, crowd = per_image.get(image_id, ([], [], []))
        records.append(
            ImageRecord(
                image_id=image_id,
                path=path,
                width=width,
                height=height,
                boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                labels=np.asarray(labels, np.int64),
                iscrowd=np.asarray(crowd, bool),
            )
        )
    stats = {
        "images": len(records),
        "negatives": sum(1 for r in records if len(r.labels) == 0),
        "boxes": sum(len(r.labels) for r in records),
        "crowd": sum(int(r.iscrowd.sum()) for r in records),
        **counts,
    }
    if counts["clipped"] or counts["dropped"]:
        log.warning(
            "%s: clipped %d box(es) to their image, dropped %d degenerate box(es) (side < %g px or non-finite)",
            src,
            counts["clipped"],
            counts["dropped"],
            MIN_BOX_SIDE,
        )
    return CocoDataset(
        records=records,
        class_names=class_names,
        category_ids=category_ids,
        annotations_path=ann_path,
        images_dir=images_dir,
        stats=stats,
    )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"annotations file {path} does not exist")
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON: {e}") from e
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON (not UTF-8 text): {e}") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: top level must be a JSON object, got {type(data).__name__}")
    return data


def _int(record: Any, key: str, where: str, *, minimum: int | None = None) -> int:
    """record[key] as an int (integral floats accepted), else DatasetError naming ``where``."""
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: must be a JSON object, got {type(record).__name__}")
    if key not in record:
        raise DatasetError(f"{where}: missing '{key}'")
    value = record[key]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DatasetError(f"{where}: '{key}' must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise DatasetError(f"{where}: '{key}' must be >= {minimum}, got {value}")
    return value


def _parse_categories(categories: list[Any], src: str) -> tuple[list[int], list[str]]:
    if not categories:
        raise DatasetError(f"{src}: 'categories' is empty; a detector needs at least one class")
    names: dict[int, str] = {}
    for i, cat in enumerate(categories):
        cid = _int(cat, "id", f"{src}: categories[{i}]")
        name = cat.get("name")
        if not isinstance(name, str) or not name:
            raise DatasetError(f"{src}: category id {cid}: 'name' must be a non-empty string, got {name!r}")
        if cid in names:
            raise DatasetError(f"{src}: category id {cid} appears twice")
        names[cid] = name
    ids = sorted(names)
    return ids, [names[c] for c in ids]


def _parse_images(images: list[Any], src: str, images_dir: Path) -> dict[int, tuple[Path, int, int]]:
    if not images:
        raise DatasetError(f"{src}: 'images' is empty; nothing to train or evaluate on")
    out: dict[int, tuple[Path, int, int]] = {}
    missing: list[str] = []
    for i, img in enumerate(images):
        image_id = _int(img, "id", f"{src}: images[{i}]")
        where = f"{src}: image id {image_id}"
        if image_id in out:
            raise DatasetError(f"{where}: appears twice")
        file_name = img.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise DatasetError(f"{where}: 'file_name' must be a non-empty string, got {file_name!r}")
        width = _int(img, "width", where, minimum=1)
        height = _int(img, "height", where, minimum=1)
        path = images_dir / file_name
        if not os.path.isfile(path):
            missing.append(f"image id {image_id}: {path}")
        out[image_id] = (path, width, height)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatasetError(f"{src}: {missing[0]}: image file not found{more}")
    return out


def _parse_annotations(
    annotations: list[Any], src: str, images: dict[int, tuple[Path, int, int]], category_ids: list[int]
) -> tuple[dict[int, tuple[list, list, list]], dict[str, int]]:
    """Group annotations per image as (xyxy boxes, labels, crowd flags) lists; count clipped/dropped."""
    label_of = {cid: label for label, cid in enumerate(category_ids)}
    per_image: dict[int, tuple[list, list, list]] = {}
    seen_ids: set[int] = set()
    clipped = dropped = 0
    for i, ann in enumerate(annotations):
        ann_id = _int(ann, "id", f"{src}: annotations[{i}]")
        where = f"{src}: annotation id {ann_id}"
        if ann_id in seen_ids:
            raise DatasetError(f"{where}: appears twice")
        seen_ids.add(ann_id)
        image_id = _int(ann, "image_id", where)
        if image_id not in images:
            raise DatasetError(f"{where}: unknown image_id {image_id}")
        category_id = _int(ann, "category_id", where)
        if category_id not in label_of:
            raise DatasetError(f"{where}: unknown category_id {category_id}")
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1):  # also accepts True/False
            raise DatasetError(f"{where}: 'iscrowd' must be 0 or 1, got {crowd!r}")
        bbox = ann.get("bbox")
        if (
            not isinstance(bbox, list)
            or len(bbox) != 4
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in bbox)
        ):
            raise DatasetError(f"{where}: 'bbox' must be 4 numbers [x, y, w, h], got {bbox!r}")
        _, width, height = images[image_id]
        box, was_clipped = _clip_xywh(bbox, width, height)
        if box is None:
            dropped += 1
            continue
        clipped += was_clipped
        boxes, labels, crowds = per_image.setdefault(image_id, ([], [], []))
        boxes.append(box)
        labels.append(label_of[category_id])
        crowds.append(bool(crowd))
    return per_image, {"clipped": clipped, "dropped": dropped}


def _clip_xywh(bbox: list[float], width: int, height: int) -> tuple[list[float] | None, bool]:
    """COCO [x, y, w, h] -> (clipped [x1, y1, x2, y2] or None when degenerate, whether clipping changed it)."""
    x, y, w, h = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None, False
    raw = [x, y, x + w, y + h]
    box = [
        min(max(raw[0], 0.0), width),
        min(max(raw[1], 0.0), height),
        min(max(raw[2], 0.0), width),
        min(max(raw[3], 0.0), height),
    ]
    if box[2] - box[0] < MIN_BOX_SIDE or box[3] - box[1] < MIN_BOX_SIDE:
        return None, False
    return box, box != raw
