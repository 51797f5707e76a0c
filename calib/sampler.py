"""Calibration images: a seeded random subset of a folder or a COCO set, preprocessed as at runtime.

``sample_calibration_images`` picks the files (JPEG/PNG only) and hashes what calibration will see:
each chosen file's bytes, their order and the preprocessing. That hash keys the calibration cache,
so changing an image, the subset or the input size recalibrates, and nothing else does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retina_deploy.core.errors import ConfigError, DatasetError
from retina_deploy.runtime.image.image_io import load_image
from retina_deploy.runtime.image.preprocess import PreprocessConfig, preprocess

log = logging.getLogger(__name__)

CALIB_EXTENSIONS = (".jpg", ".jpeg", ".png")
DEFAULT_CALIB_NUM = 512


@dataclass(frozen=True)
class CalibSet:
    """The images calibration runs on.

    paths: the chosen files, in sampling order (sorted by path, so the order does not depend on the OS).
    preprocess: the runtime preprocessing of the model being calibrated.
    sha256: hash of the files' bytes, their order and ``preprocess`` (the calibration cache key).
    """

    paths: tuple[Path, ...]
    preprocess: PreprocessConfig
    sha256: str

    def __len__(self) -> int:
        return len(self.paths)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Preprocessed batches float32 [B, 3, H, W], B <= batch_size (the last may be smaller)."""
        if batch_size < 1:
            raise ConfigError(f"calibration batch size must be >= 1, got {batch_size}")
        for start in range(0, len(self.paths), batch_size):
            chunk = self.paths[start : start + batch_size]
            yield np.stack([preprocess(load_image(p), self.preprocess)[0] for p in chunk])


def sample_calibration_images(
    images: str | os.PathLike,
    preprocess_cfg: PreprocessConfig,
    *,
    annotations: str | os.PathLike | None = None,
    num: int = DEFAULT_CALIB_NUM,
    seed: int = 0,
) -> CalibSet:
    """Choose ``num`` calibration images (all of them if fewer) with a seeded random generator.

    Args:
        images: a folder, searched recursively for .jpg/.jpeg/.png files (hidden entries skipped); or,
            with ``annotations``, the images folder of a COCO set.
        preprocess_cfg: the model's preprocessing (from its ONNX metadata).
        annotations: a COCO instances file; its images (any annotations, or none) are the candidates.
        num: how many images to use (>= 1).
        seed: the subset is ``numpy.random.default_rng(seed)``'s choice, the same on every machine.

    Raises DatasetError for a missing, unreadable or empty folder or COCO set, ConfigError for num < 1.
    Images are decoded later (``CalibSet.batches``); a corrupt one raises ImageError naming it.
    """
    if int(num) < 1:
        raise ConfigError(f"calib-num must be >= 1, got {num}")
    candidates = _coco_images(images, annotations) if annotations is not None else _folder_images(images)
    if len(candidates) < num:
        log.warning("calibrating on all %d images of %s (asked for %d)", len(candidates), images, num)
        chosen = candidates
    else:
        rng = np.random.default_rng(seed)
        chosen = [candidates[i] for i in sorted(rng.choice(len(candidates), size=int(num), replace=False))]
    return CalibSet(paths=tuple(chosen), preprocess=preprocess_cfg, sha256=_hash(chosen, preprocess_cfg))


def _folder_images(folder: str | os.PathLike) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise DatasetError(f"{root}: calibration folder does not exist or is not a folder")
    if not os.access(root, os.R_OK | os.X_OK):
        raise DatasetError(f"{root}: calibration folder is not readable")
    try:
        files = sorted(
            p
            for p in root.rglob("*")
            if p.suffix.lower() in CALIB_EXTENSIONS
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        )
    except OSError as e:
        raise DatasetError(f"{root}: cannot read the calibration folder ({e.strerror or e})") from e
    if not files:
        raise DatasetError(
            f"{root}: no JPEG or PNG images found (searched recursively for {', '.join(CALIB_EXTENSIONS)})"
        )
    return files


def _coco_images(images: str | os.PathLike, annotations: str | os.PathLike) -> list[Path]:
    from retina_deploy.data.coco import load_coco  # numpy only; validates the file and that images exist

    coco = load_coco(images, annotations)
    files = sorted(r.path for r in coco.records if r.path.suffix.lower() in CALIB_EXTENSIONS)
    if not files:
        raise DatasetError(f"{annotations}: the COCO set has no JPEG or PNG images")
    return files


def _hash(paths: list[Path], preprocess_cfg: PreprocessConfig) -> str:
    """sha256 over the preprocessing and each file's content hash, in order."""
    h = hashlib.sha256(json.dumps(preprocess_cfg.to_dict(), sort_keys=True).encode())
    for path in paths:
        try:
            h.update(hashlib.sha256(path.read_bytes()).digest())
        except OSError as e:
            raise DatasetError(f"{path}: cannot read calibration image ({e.strerror or e})") from e
    return h.hexdigest()


__all__ = ["CALIB_EXTENSIONS", "DEFAULT_CALIB_NUM", "CalibSet", "sample_calibration_images"]
