"""The torch Dataset for training and evaluation: load, augment, preprocess exactly as inference does.

Per-item randomness is a pure function of ``(seed, epoch, index)`` (see ``DetectionDataset.set_epoch``),
so a run resumed at epoch ``e`` sees exactly the augmentations the uninterrupted run would have seen,
whatever the number of DataLoader workers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypedDict

import numpy as np
import torch

from retina_deploy.core.errors import ConfigError, DatasetError
from retina_deploy.data.coco import CocoDataset
from retina_deploy.runtime.image.image_io import DEFAULT_MAX_PIXELS
from retina_deploy.runtime.image.preprocess import PreprocessConfig, preprocess, resize_bilinear, resize_scale

MIN_BOX_SIDE = 1.0  # input pixels; narrower or shorter boxes after augmentation are dropped
MIN_VISIBLE_FRACTION = 0.25  # a box cut by a random crop is dropped if less than this much of it remains


class DetectionTarget(TypedDict):
    """Annotations of one preprocessed image.

    boxes: FloatTensor [N, 4] xyxy in network-input pixels, inside the non-padded area.
    labels: Int64Tensor [N], contiguous labels 0..C-1.
    iscrowd: BoolTensor [N]; crowd boxes are for ignoring, never positives.
    image_id: the COCO image id.
    scale: input pixels per original pixel. Without augmentation (train=False) original = input / scale;
        with augmentation the flip and crop also apply.
    orig_size: (height, width) of the stored image.
    """

    boxes: torch.Tensor
    labels: torch.Tensor
    iscrowd: torch.Tensor
    image_id: int
    scale: float
    orig_size: tuple[int, int]


class DetectionDataset(torch.utils.data.Dataset):
    """Images of a ``CocoDataset`` as network inputs with their boxes.

    Item ``i`` is ``(image, target)``: image FloatTensor [3, H, W] (``cfg.size``), normalised, zero at the
    bottom/right padding, exactly as ``runtime.image.preprocess.preprocess`` makes it for inference; target a
    ``DetectionTarget``.

    Augmentation (only when ``train``): horizontal flip with probability ``hflip_prob``, then, with
    ``scale_jitter=(lo, hi)``, the letterbox scale multiplied by a factor drawn uniformly from [lo, hi];
    an image that grows past the input size is cut to a random window of it. Boxes follow the image,
    are clipped to the non-padded area, and are dropped when degenerate (side < 1 px) or when less than
    a quarter of them remains inside the window.

    Call ``set_epoch(epoch)`` before each epoch. With DataLoader workers, create the iterator after the
    call (the default ``persistent_workers=False`` does) so the workers' copies see the new epoch.
    """

    def __init__(
        self,
        coco: CocoDataset,
        cfg: PreprocessConfig,
        *,
        train: bool,
        hflip_prob: float = 0.5,
        scale_jitter: tuple[float, float] | None = None,
        seed: int = 0,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if not 0.0 <= float(hflip_prob) <= 1.0:
            raise ConfigError(f"hflip_prob must be in [0, 1], got {hflip_prob!r}")
        if scale_jitter is not None:
            if len(scale_jitter) != 2:
                raise ConfigError(f"scale_jitter must be (low, high), got {scale_jitter!r}")
            lo, hi = (float(v) for v in scale_jitter)
            if not (math.isfinite(lo) and math.isfinite(hi) and 0.0 < lo <= hi):
                raise ConfigError(f"scale_jitter must satisfy 0 < low <= high, got {scale_jitter!r}")
            scale_jitter = (lo, hi)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
        self.coco = coco
        self.cfg = cfg
        self.train = bool(train)
        self.hflip_prob = float(hflip_prob)
        self.scale_jitter = scale_jitter
        self.seed = seed
        self.max_pixels = max_pixels
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentations of ``epoch`` (>= 0); items of one epoch are reproducible."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ConfigError(f"epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.coco.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, DetectionTarget]:
        record = self.coco.records[index]
        image = self.coco.load_image(record, max_pixels=self.max_pixels)
        h, w = image.shape[:2]
        boxes, labels, iscrowd = record.boxes.copy(), record.labels, record.iscrowd
        factor = 1.0
        rng = None
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            if rng.random() < self.hflip_prob:
                image = np.ascontiguousarray(image[:, ::-1])
                boxes = hflip_boxes(boxes, w)
            if self.scale_jitter is not None:
                factor = float(rng.uniform(*self.scale_jitter))
        if rng is None or factor == 1.0:
            chw, scale = preprocess(image, self.cfg)
            content_hw = (
                min(self.cfg.size[0], max(1, round(h * scale))),
                min(self.cfg.size[1], max(1, round(w * scale))),
            )
            offset = (0, 0)
        else:
            chw, scale, content_hw, offset = self._jittered(image, factor, rng)
        boxes = boxes * np.float32(scale) - np.asarray([offset[0], offset[1]] * 2, np.float32)
        boxes, keep = clip_boxes(boxes, content_hw, min_visible=MIN_VISIBLE_FRACTION)
        target: DetectionTarget = {
            "boxes": torch.from_numpy(np.ascontiguousarray(boxes, np.float32)),
            "labels": torch.from_numpy(np.ascontiguousarray(labels[keep], np.int64)),
            "iscrowd": torch.from_numpy(np.ascontiguousarray(iscrowd[keep], bool)),
            "image_id": record.image_id,
            "scale": float(scale),
            "orig_size": (h, w),
        }
        return torch.from_numpy(chw), target

    def _jittered(
        self, image: np.ndarray, factor: float, rng: np.random.Generator
    ) -> tuple[np.ndarray, float, tuple[int, int], tuple[int, int]]:
        """Resize by (letterbox scale * factor), cut a random window no larger than the input, pad.

        Returns (chw float32 [3, H, W], scale, (content_h, content_w), (x0, y0) window offset in resized pixels).
        """
        H, W = self.cfg.size
        h, w = image.shape[:2]
        scale = resize_scale((h, w), self.cfg.size) * factor
        new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
        if (new_h, new_w) != (h, w):  # same resampling as preprocess()
            image = resize_bilinear(image, new_h, new_w)
        crop_h, crop_w = min(new_h, H), min(new_w, W)
        y0 = int(rng.integers(0, new_h - crop_h + 1))
        x0 = int(rng.integers(0, new_w - crop_w + 1))
        canvas = np.zeros((H, W, 3), np.uint8)
        canvas[:crop_h, :crop_w] = image[y0 : y0 + crop_h, x0 : x0 + crop_w]
        # The canvas already has the input size, so preprocess() only normalises (its scale is 1);
        # re-zeroing the padding afterwards gives exactly the padding preprocess() itself would write.
        chw, _ = preprocess(canvas, self.cfg)
        chw[:, crop_h:, :] = 0.0
        chw[:, :, crop_w:] = 0.0
        return chw, scale, (crop_h, crop_w), (x0, y0)


def hflip_boxes(boxes: np.ndarray, width: int) -> np.ndarray:
    """Mirror xyxy boxes [N, 4] of an image ``width`` pixels wide: x1' = width - x2, x2' = width - x1."""
    out = boxes.copy()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


def clip_boxes(
    boxes: np.ndarray, content_hw: tuple[int, int], *, min_visible: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Clip xyxy boxes [N, 4] to [0, w] x [0, h]; drop those with a side < 1 px or < ``min_visible`` of their area left.

    Returns (kept clipped boxes float32 [M, 4], bool keep mask [N]).
    """
    h, w = content_hw
    clipped = np.empty_like(boxes, dtype=np.float32)
    clipped[:, 0::2] = np.clip(boxes[:, 0::2], 0, w)
    clipped[:, 1::2] = np.clip(boxes[:, 1::2], 0, h)
    cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = (cw >= MIN_BOX_SIDE) & (ch >= MIN_BOX_SIDE) & (cw * ch >= min_visible * area)
    return clipped[keep], keep


def collate_detections(
    batch: Sequence[tuple[torch.Tensor, DetectionTarget]],
) -> tuple[torch.Tensor, list[DetectionTarget]]:
    """Stack a list of dataset items into (images FloatTensor [B, 3, H, W], list of B targets)."""
    if len(batch) == 0:
        raise DatasetError("cannot collate an empty batch")
    shapes = {tuple(image.shape) for image, _ in batch}
    if len(shapes) != 1:
        raise DatasetError(f"images in a batch must share one shape, got {sorted(shapes)}")
    return torch.stack([image for image, _ in batch]), [target for _, target in batch]
