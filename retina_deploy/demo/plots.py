"""The demo report's pictures: the training curve and a grid of validation images (torch-free).

``training_plot`` reads ``metrics.csv`` (``retina_deploy.training.loop.METRICS_FIELDS``) and draws the
smoothed losses and the validation AP50 against images seen; it needs matplotlib (Agg backend).
``val_grid`` draws ground truth beside prediction for the first validation images with
``retina_deploy.runtime.image.visualize.draw_detections`` and tiles them into one picture with PIL.
Each returns None when its input is missing, and writes its PNG atomically.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

SMOOTH_WINDOW = 50  # iterations in the moving average of the training losses
GRID_IMAGES = 8
GRID_PAIRS_PER_ROW = 2  # each pair is (ground truth, prediction): 4 columns
CELL = 256  # pixels of each cell's longer side
GAP = 8
PAIR_GAP = 28  # wider than GAP, so that each (ground truth, prediction) pair reads as one
HEADER = 28


@dataclass
class Curves:
    """The columns of ``metrics.csv`` that the plot needs; images = iteration * batch_size."""

    train_images: list[float] = field(default_factory=list)
    loss_cls: list[float] = field(default_factory=list)
    loss_box: list[float] = field(default_factory=list)
    val_images: list[float] = field(default_factory=list)
    val_ap50: list[float] = field(default_factory=list)
    raw_images: list[float] = field(default_factory=list)
    raw_ap50: list[float] = field(default_factory=list)


def read_curves(metrics_csv: Path, batch_size: int) -> Curves:
    """Rows of ``metrics.csv`` as curves; rows with an empty or non-numeric value are skipped."""
    curves = Curves()
    with open(metrics_csv, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            kind = row.get("kind")
            try:
                images = float(row["iteration"]) * batch_size
                if kind == "train":
                    cls, box = float(row["loss_cls"]), float(row["loss_box"])
                    curves.train_images.append(images)
                    curves.loss_cls.append(cls)
                    curves.loss_box.append(box)
                elif kind in ("val", "val_raw"):
                    ap50 = float(row["AP50"])
                    xs, ys = (
                        (curves.val_images, curves.val_ap50) if kind == "val" else (curves.raw_images, curves.raw_ap50)
                    )
                    xs.append(images)
                    ys.append(ap50)
            except (KeyError, TypeError, ValueError):
                continue
    return curves


def smooth(values: Sequence[float], window: int = SMOOTH_WINDOW) -> np.ndarray:
    """Trailing moving average of ``values`` (float [N]); the first points average what exists so far."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return x
    finite = np.where(np.isfinite(x), x, 0.0)
    csum = np.cumsum(np.insert(finite, 0, 0.0))
    counts = np.cumsum(np.insert(np.isfinite(x).astype(np.float64), 0, 0.0))
    idx = np.arange(1, x.size + 1)
    lo = np.maximum(idx - window, 0)
    n = counts[idx] - counts[lo]
    return np.where(n > 0, (csum[idx] - csum[lo]) / np.maximum(n, 1), np.nan)


def training_plot(metrics_csv: Path, batch_size: int, out_png: Path) -> Path | None:
    """Draw losses (left axis, log scale) and val AP50 (right axis) against images seen into ``out_png``.

    Returns ``out_png``, or None when the CSV holds no training row. ImportError without matplotlib.
    """
    curves = read_curves(metrics_csv, batch_size)
    if not curves.train_images and not curves.val_images:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(9, 4.4), dpi=110)
    try:
        window = max(1, min(SMOOTH_WINDOW, len(curves.train_images) // 10))
        ax.plot(curves.train_images, smooth(curves.loss_cls, window), color="tab:blue", label="classification loss")
        ax.plot(curves.train_images, smooth(curves.loss_box, window), color="tab:orange", label="box loss")
        ax.set_xlabel("images seen")
        ax.set_ylabel(f"loss (mean of last {window} iterations)" if window > 1 else "loss")
        ax.set_ylim(bottom=0)
        ax.xaxis.set_major_formatter(matplotlib.ticker.StrMethodFormatter("{x:,.0f}"))
        ax.grid(True, alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if curves.val_images or curves.raw_images:
            ap_ax = ax.twinx()
            if curves.val_images:
                ap_ax.plot(curves.val_images, curves.val_ap50, "o-", color="tab:green", label="val AP50")
            if curves.raw_images:
                ap_ax.plot(curves.raw_images, curves.raw_ap50, "s--", color="tab:olive", label="val AP50 (raw weights)")
            ap_ax.set_ylabel("val AP50", color="tab:green")
            ap_ax.set_ylim(0, 1)
            more_handles, more_labels = ap_ax.get_legend_handles_labels()
            handles, labels = handles + more_handles, labels + more_labels
        # below the axes, so that it never hides a curve
        fig.legend(handles, labels, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
        ax.set_title("Training: losses and validation AP50")
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        _save_figure(fig, out_png)
    finally:
        plt.close(fig)
    return out_png


def _save_figure(fig: Any, out_png: Path) -> None:
    from retina_deploy.core.fileio import atomic_path

    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")


def _coco_ground_truth(annotations_json: Path) -> tuple[list[dict], dict[int, list[dict]], dict[int, str]]:
    """(images sorted by file name, annotations per image id, class name per category id)."""
    coco = json.loads(annotations_json.read_text(encoding="utf-8"))
    names = {int(c["id"]): str(c["name"]) for c in coco.get("categories", [])}
    per_image: dict[int, list[dict]] = {}
    for ann in coco.get("annotations", []):
        per_image.setdefault(int(ann["image_id"]), []).append(ann)
    images = sorted(coco.get("images", []), key=lambda im: str(im["file_name"]))
    return images, per_image, names


def _prediction_records(detections_json: Path) -> dict[str, dict]:
    """predict_files' records keyed by image file name; records with an error are left out."""
    records = json.loads(detections_json.read_text(encoding="utf-8"))
    return {Path(r["image"]).name: r for r in records if isinstance(r, dict) and "detections" in r}


def val_grid(
    images_dir: Path,
    annotations_json: Path,
    detections_json: Path,
    out_png: Path,
    *,
    score_thresh: float,
    num_images: int = GRID_IMAGES,
) -> tuple[Path, int, int] | None:
    """Tile (ground truth, prediction) pairs of the first ``num_images`` predicted val images into ``out_png``.

    Ground-truth boxes (COCO xywh) are drawn as xyxy with score 1; predictions at score >= ``score_thresh``.
    Returns (``out_png``, images shown, predicted boxes drawn), or None when no val image has a prediction record.
    """
    from retina_deploy.runtime.image.image_io import load_image
    from retina_deploy.runtime.image.visualize import draw_detections, save_image_atomic

    images, per_image, names = _coco_ground_truth(annotations_json)
    predicted = _prediction_records(detections_json)
    pairs, drawn = [], 0
    for im in images:
        record = predicted.get(Path(im["file_name"]).name)
        if record is None or not (images_dir / im["file_name"]).is_file():
            continue
        pixels, scale = _fit(load_image(images_dir / im["file_name"]))
        anns = per_image.get(int(im["id"]), [])
        gt_boxes = (
            np.array(
                [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns],
                dtype=np.float64,
            ).reshape(-1, 4)
            * scale
        )
        gt_names = [names.get(int(a["category_id"]), str(a["category_id"])) for a in anns]
        gt = draw_detections(pixels, gt_boxes, np.ones(len(anns)), gt_names)
        dets = record["detections"]
        boxes = np.array([d["box"] for d in dets], dtype=np.float64).reshape(-1, 4) * scale
        scores = np.array([d["score"] for d in dets], dtype=np.float64)
        pred = draw_detections(pixels, boxes, scores, [str(d["class_name"]) for d in dets], score_thresh=score_thresh)
        pairs.append((gt, pred))
        drawn += int((scores >= score_thresh).sum())
        if len(pairs) == num_images:
            break
    if not pairs:
        return None
    save_image_atomic(_tile(pairs), out_png)
    return out_png, len(pairs), drawn


def _tile(pairs: list[tuple[Image.Image, Image.Image]]) -> Image.Image:
    """Cells of CELL x CELL pixels, GRID_PAIRS_PER_ROW pairs a row, under a "ground truth" / "prediction" header."""
    from retina_deploy.runtime.image.visualize import _default_font

    cols = 2 * min(GRID_PAIRS_PER_ROW, len(pairs))
    rows = math.ceil(len(pairs) / GRID_PAIRS_PER_ROW)
    width = cols * CELL + (cols + 1) * GAP + (cols // 2 - 1) * (PAIR_GAP - GAP)
    height = HEADER + rows * CELL + (rows + 1) * GAP
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _default_font(16)
    for c in range(cols):
        text = "ground truth" if c % 2 == 0 else "prediction"
        x0 = _cell_x(c)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        draw.text(
            (x0 + (CELL - (right - left)) / 2 - left, (HEADER - (bottom - top)) / 2 + GAP / 2 - top),
            text,
            fill=(30, 30, 30),
            font=font,
        )
    for i, pair in enumerate(pairs):
        row, slot = divmod(i, GRID_PAIRS_PER_ROW)
        for j, img in enumerate(pair):
            c = 2 * slot + j
            x0 = _cell_x(c) + (CELL - img.width) // 2
            y0 = HEADER + GAP + row * (CELL + GAP) + (CELL - img.height) // 2
            canvas.paste(img, (x0, y0))
    return canvas


def _cell_x(column: int) -> int:
    return GAP + column * (CELL + GAP) + (column // 2) * (PAIR_GAP - GAP)


def _fit(pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """``pixels`` (uint8 [H, W, 3]) resized so that its longer side is CELL, and the scale applied;
    resizing before drawing keeps the labels' text sharp."""
    height, width = pixels.shape[:2]
    scale = CELL / max(height, width)
    size = (max(1, min(CELL, round(width * scale))), max(1, min(CELL, round(height * scale))))
    resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(pixels).resize(size, resample)), scale


def copy_file_atomic(src: str | os.PathLike, dst: Path) -> None:
    from retina_deploy.core.fileio import write_bytes_atomic

    write_bytes_atomic(dst, Path(src).read_bytes())
