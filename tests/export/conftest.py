"""Session fixtures of the export tests: a ResNet-18 checkpoint and its three exports (see export_helpers)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from testkit.export_helpers import BATCH, make_checkpoint

from retina_deploy.export.onnx_export import ExportConfig, export_onnx


@pytest.fixture(scope="session")
def r18_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("r18") / "ckpt")


@pytest.fixture(scope="session")
def r18_exports(tmp_path_factory, r18_checkpoint) -> dict[str, Any]:
    """The ResNet-18 checkpoint exported with each --nms mode; export seconds in ``times``."""
    out = tmp_path_factory.mktemp("r18_onnx")
    files, times = {}, {}
    for nms in ("onnx", "efficient", "none"):
        start = time.perf_counter()
        files[nms] = export_onnx(r18_checkpoint, out / f"r18_{nms}.onnx", ExportConfig(nms=nms, batch=BATCH))
        times[nms] = time.perf_counter() - start
    files["times"] = times
    return files


@pytest.fixture(scope="session")
def none_export(r18_exports) -> Path:
    """The ``--nms none`` export (the variant TensorRT-RTX builds)."""
    return r18_exports["none"]


@pytest.fixture(scope="session")
def calib_dir(tmp_path_factory) -> Path:
    """Four 128-px make-shapes images for calibration."""
    from retina_deploy.data.shapes import make_shapes

    return make_shapes(tmp_path_factory.mktemp("calib") / "shapes", num_images=4, size=128, seed=2) / "images"
