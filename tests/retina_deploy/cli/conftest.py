"""Session fixtures of the bad-input suite: one tiny dataset, one 2-iteration run, one ONNX export.

Each case works in its own folder holding hard links to these files (``workspace``), so a command
that wrongly replaced or deleted a file there cannot spoil the next case; ``bad_input_helpers``
fingerprints the folder before and after each command.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from retina_deploy.cli.main import main

SIZE = 128


@pytest.fixture(scope="session")
def pristine(tmp_path_factory) -> Path:
    """data/ (8 shapes images, 128 px), run2/ (ResNet-18, 2 iterations, best/ + last/), m.onnx, r32/ (see below)."""
    root = tmp_path_factory.mktemp("pristine")
    data, run = root / "data", root / "run2"
    assert main(["make-shapes", str(data), "--num-images", "8", "--size", str(SIZE)]) == 0
    args = ["train", "--images", str(data / "images"), "--annotations", str(data / "annotations.json")]
    args += ["--val-images", str(data / "images"), "--val-annotations", str(data / "annotations.json")]
    args += ["--out", str(run), "--backbone", "resnet18", "--backbone-norm", "bn", "--size", str(SIZE), str(SIZE)]
    args += ["--fpn-channels", "64", "--head-norm", "groupnorm", "--iters", "2", "--batch-size", "4"]
    args += ["--workers", "0", "--warmup-iters", "0", "--anchor-sizes", "8", "16", "32", "64", "128"]
    assert main(args) == 0
    export = ["export-onnx", str(run / "last"), str(root / "m.onnx"), "--batch", "1", "2", "4", "--no-simplify"]
    assert main(export) == 0
    _make_r32(root / "r32")
    return root


def _make_r32(out: Path) -> None:
    """A checkpoint whose config pairs GroupNorm on 32 channels with a 128 px input (P7 is 1x1).

    The toolkit no longer writes such a config, so it is saved at 256 px and its size edited.
    """
    from retina_deploy.data.shapes import CLASS_NAMES
    from retina_deploy.model import build_model
    from retina_deploy.model.checkpoint import save_checkpoint
    from retina_deploy.model.config import ModelConfig
    from retina_deploy.runtime.image.preprocess import PreprocessConfig

    cfg = ModelConfig(backbone="resnet18", num_classes=len(CLASS_NAMES), fpn_channels=32, head_norm="groupnorm")
    save_checkpoint(build_model(cfg), out, class_names=CLASS_NAMES, preprocess=PreprocessConfig(size=(256, 256)))
    config = json.loads((out / "config.json").read_text())
    config["preprocess"]["size"] = [SIZE, SIZE]
    (out / "config.json").write_text(json.dumps(config))


@pytest.fixture
def workspace(pristine, tmp_path, monkeypatch) -> Path:
    """A fresh folder (the current directory) holding hard links to the session's files."""
    ws = tmp_path / "ws"
    shutil.copytree(pristine, ws, copy_function=os.link)
    monkeypatch.chdir(ws)
    return ws
