"""Session fixtures of the precision tests: one small ``--nms none`` export and tiny image sets (see calib_helpers)."""

from __future__ import annotations

from pathlib import Path

import pytest
from calib_helpers import export_none, pseudo_labels, shapes_images


@pytest.fixture(scope="session")
def r18_none(tmp_path_factory) -> Path:
    return export_none(tmp_path_factory.mktemp("r18_none"))


@pytest.fixture(scope="session")
def calib_images(tmp_path_factory) -> Path:
    return shapes_images(tmp_path_factory.mktemp("calib") / "shapes", num=6, seed=3)


@pytest.fixture(scope="session")
def val_set(tmp_path_factory, r18_none) -> tuple[Path, Path]:
    """(images, annotations): 6 images whose ground truth is the FP32 export's own detections."""
    root = tmp_path_factory.mktemp("val")
    images = shapes_images(root / "shapes", num=6, seed=5)
    return images, pseudo_labels(r18_none, images, root / "pseudo.json")
