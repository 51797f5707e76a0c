"""Bad input through the Python API: a typed exception (RetinaDeployError or TypeError) naming the value,
never a hang, a spinning thread or a changed file."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from bad_input_helpers import changed_files, fingerprint, temporaries

from retina_deploy.core.errors import ConfigError, RetinaDeployError
from retina_deploy.runtime.batching import BatcherClosedError, BatchingDetector
from retina_deploy.runtime.detector import Detector

TYPED = (RetinaDeployError, TypeError)


@pytest.fixture(scope="module")
def detector(pristine):
    with Detector.load(pristine / "m.onnx") as det:
        yield det


BATCHER_KWARGS = [
    ("max_delay_ms", math.nan),
    ("max_delay_ms", math.inf),
    ("max_delay_ms", -1),
    ("max_delay_ms", "5"),
    ("max_delay_ms", None),
    ("max_delay_ms", True),
    ("max_delay_ms", 1e12),
    ("timeout_s", math.nan),
    ("timeout_s", math.inf),
    ("timeout_s", 0),
    ("timeout_s", -1),
    ("timeout_s", "x"),
    ("timeout_s", True),
    ("max_queue", 0),
    ("max_queue", -1),
    ("max_queue", 1.5),
    ("max_queue", "8"),
    ("max_queue", math.nan),
    ("max_queue", True),
    ("max_batch", 0),
    ("max_batch", 5),
    ("max_batch", 1.5),
    ("max_batch", "2"),
    ("max_batch", math.nan),
]


@pytest.mark.parametrize("name,value", BATCHER_KWARGS, ids=[f"{n}={v!r}" for n, v in BATCHER_KWARGS])
def test_batcher_refuses_bad_settings_at_once(detector, name, value):
    threads = threading.active_count()
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=name):
        BatchingDetector(detector, **{name: value})
    assert time.monotonic() - t0 < 1.0
    assert threading.active_count() == threads  # no worker thread left spinning


@pytest.mark.parametrize("timeout", [math.nan, -1, 0, "soon", math.inf])
def test_detect_one_refuses_bad_timeouts(detector, timeout):
    image = np.zeros((64, 64, 3), np.uint8)
    with BatchingDetector(detector, max_delay_ms=1) as batcher:
        with pytest.raises(ConfigError, match="timeout_s"):
            batcher.detect_one(image, timeout_s=timeout)
        assert batcher.detect_one(image, timeout_s=30).boxes.shape[1] == 4  # still serving


def test_batcher_whose_worker_dies_fails_requests_instead_of_hanging(detector, monkeypatch):
    gate = threading.Event()

    def broken(self):
        gate.wait(5)
        raise OverflowError("simulated worker failure")  # what an infinite delay used to do

    monkeypatch.setattr(BatchingDetector, "_next_batch", broken)
    batcher = BatchingDetector(detector, max_delay_ms=1)
    future = batcher.submit(np.zeros((32, 32, 3), np.uint8))
    gate.set()
    with pytest.raises(BatcherClosedError):
        future.result(timeout=5)
    with pytest.raises(BatcherClosedError):
        batcher.submit(np.zeros((32, 32, 3), np.uint8))


@pytest.mark.parametrize("path", [None, 123, 1.5, ["m.onnx"]], ids=["None", "int", "float", "list"])
def test_detector_load_refuses_non_paths(path):
    with pytest.raises(TypeError, match="path"):
        Detector.load(path)


MODEL_CONFIGS = [
    {"anchor_sizes": "abcde"},
    {"anchor_sizes": [32, 64, -128, 256, 512]},
    {"anchor_sizes": [32.5, 64, 128, 256, 512]},
    {"anchor_sizes": 5},
    {"score_thresh": -1},
    {"score_thresh": math.nan},
    {"nms_thresh": 5},
    {"nms_thresh": math.inf},
    {"num_classes": "6"},
    {"num_classes": 0},
    {"num_classes": True},
    {"fpn_channels": 0},
    {"fpn_channels": 48, "head_norm": "groupnorm"},
    {"prior_prob": 1.0},
    {"focal_loss_alpha": 2.0},
    {"focal_loss_gamma_fg": -1.0},
    {"focal_loss_gamma_fg": math.nan},
    {"bbox_reg_clamp": -1.0},
    {"topk_candidates": 0},
    {"fg_iou_thresh": math.nan},
]


@pytest.mark.parametrize("fields", MODEL_CONFIGS, ids=[repr(f) for f in MODEL_CONFIGS])
def test_model_config_refuses(fields):
    from retina_deploy.model.config import ModelConfig

    with pytest.raises(ConfigError, match=next(iter(fields))):
        ModelConfig(**fields)


def test_groupnorm_with_one_value_per_group_is_refused_for_its_input_size():
    from retina_deploy.model.config import ModelConfig

    cfg = ModelConfig(backbone="resnet18", fpn_channels=32, head_norm="groupnorm")
    cfg.check_input_size((256, 128))  # P7 2x1: two values per group
    with pytest.raises(ConfigError, match="groupnorm"):
        cfg.check_input_size((128, 128))


PREPROCESS = [
    {"size": ("x", "y")},
    {"size": "ab"},
    {"size": (131072, 128)},
    {"size": (128,)},
    {"size": (100, 128, 128)},
    {"std": (math.nan, 0.2, 0.2)},
    {"std": (0.0, 0.2, 0.2)},
    {"std": (math.inf, 0.2, 0.2)},
    {"mean": (math.nan, 0.2, 0.2)},
    {"mean": "abc"},
]


@pytest.mark.parametrize("fields", PREPROCESS, ids=[repr(f) for f in PREPROCESS])
def test_preprocess_config_refuses(fields):
    from retina_deploy.runtime.image.preprocess import PreprocessConfig

    with pytest.raises(ConfigError, match=next(iter(fields))):
        PreprocessConfig(**fields)


@pytest.mark.parametrize("batch_size", [0, -1, 1.5, None])
def test_evaluate_and_predict_refuse_bad_batch_sizes(workspace, batch_size):
    from retina_deploy.data.coco import load_coco
    from retina_deploy.evaluation.loop import evaluate_detector
    from retina_deploy.inference.open import open_model
    from retina_deploy.inference.predict import predict_files

    detector = open_model(workspace / "m.onnx")
    coco = load_coco(workspace / "data/images", workspace / "data/annotations.json")
    with pytest.raises(ConfigError, match="batch size"):
        evaluate_detector(detector, coco, batch_size=batch_size)
    with pytest.raises(ConfigError, match="batch size"):
        predict_files(detector, [workspace / "data/images/000000.png"], workspace / "p", batch_size=batch_size)
    assert not (workspace / "p").exists()


def _refused_without_change(workspace: Path, call, match: str) -> None:
    before = fingerprint(workspace)
    with pytest.raises(TYPED, match=match):
        call()
    assert changed_files(before, fingerprint(workspace)) == []
    assert temporaries(workspace) == []


API_CALLS = {
    "convert_into_own_checkpoint": (
        lambda ws: __import__("retina_deploy.model.convert", fromlist=["x"]).convert_torchvision(
            ws / "run2/best/model.safetensors", ws / "run2/best", overwrite=True
        ),
        "holds the input",
    ),
    "export_over_its_weights": (
        lambda ws: __import__("retina_deploy.export.onnx_export", fromlist=["x"]).export_onnx(
            ws / "run2/last", ws / "run2/last/model.safetensors"
        ),
        "would overwrite the input",
    ),
    "predict_out_is_a_file": (
        lambda ws: __import__("retina_deploy.inference.predict", fromlist=["x"]).predict_files(
            _onnx_detector(ws), [ws / "data/images/000000.png"], ws / "m.onnx"
        ),
        "not a folder",
    ),
    "predict_out_holds_its_images": (
        lambda ws: __import__("retina_deploy.inference.predict", fromlist=["x"]).predict_files(
            _onnx_detector(ws), [ws / "data/images/000000.png"], ws / "data"
        ),
        "holds the input",
    ),
    "predict_out_foreign_folder": (
        lambda ws: __import__("retina_deploy.inference.predict", fromlist=["x"]).predict_files(
            _onnx_detector(ws), [ws / "data/images/000000.png"], ws / "run2"
        ),
        "not empty",
    ),
    "make_shapes_huge": (
        lambda ws: __import__("retina_deploy.data.shapes", fromlist=["x"]).make_shapes(
            ws / "s", num_images=2, size=100_000
        ),
        "size",
    ),
    "make_shapes_into_data": (
        lambda ws: __import__("retina_deploy.data.shapes", fromlist=["x"]).make_shapes(ws / "data", num_images=1),
        "earlier `make-shapes` output; pass --overwrite",
    ),
    "demo_into_a_project": (
        lambda ws: __import__("retina_deploy.demo.pipeline", fromlist=["x"]).run_demo(
            ws / "run2", train_images=8, size=128
        ),
        "was not written by `demo`",
    ),
    "demo_bad_size": (
        lambda ws: __import__("retina_deploy.demo.pipeline", fromlist=["x"]).run_demo(ws / "run2", size=100),
        "100",
    ),
    "load_checkpoint_r32": (
        lambda ws: __import__("retina_deploy.model.checkpoint", fromlist=["x"]).load_checkpoint(ws / "r32"),
        "groupnorm",
    ),
    "read_state_dict_pickle": (lambda ws: _read_evil(ws), "evil.pth"),
    "open_model_device_banana": (
        lambda ws: __import__("retina_deploy.inference.open", fromlist=["x"]).open_model(
            ws / "run2/last", device="banana"
        ),
        "banana",
    ),
    "resume_with_new_length": (
        lambda ws: __import__("retina_deploy.training.config", fromlist=["x"]).TrainConfig.for_resume(
            ws / "run2", iters=40
        ),
        "--iters",
    ),
    "check_output_file_is_input": (
        lambda ws: __import__("retina_deploy.core.outputs", fromlist=["x"]).check_output_file(
            ws / "m.onnx", inputs=(ws / "m.onnx",)
        ),
        "would overwrite",
    ),
    "check_output_dir_holds_input": (
        lambda ws: __import__("retina_deploy.core.outputs", fromlist=["x"]).check_output_dir(
            ws / "data", inputs=(ws / "data/annotations.json",), foreign_ok=True
        ),
        "holds the input",
    ),
}


def _onnx_detector(ws: Path):
    from retina_deploy.inference.open import open_model

    return open_model(ws / "m.onnx")


def _read_evil(ws: Path):
    import os
    import pickle

    from retina_deploy.model.weights import read_state_dict

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    (ws / "evil.pth").write_bytes(pickle.dumps({"model": Evil()}))
    try:
        read_state_dict(ws / "evil.pth")
    finally:
        assert not (ws / "pwned").exists()


@pytest.mark.parametrize("name", sorted(API_CALLS))
def test_api_call_refused_without_changing_files(workspace, name):
    call, match = API_CALLS[name]
    _refused_without_change(workspace, lambda: call(workspace), match)


TRAIN_CONFIGS = [
    {"iters": 0},
    {"batch_size": 0},
    {"lr": math.nan},
    {"hflip": 2.0},
    {"size": (131072, 131072)},
    {"size": (100, 100)},
    {"fpn_channels": 32, "head_norm": "groupnorm", "size": (128, 128)},
    {"anchor_sizes": (-1, 2, 3, 4, 5)},
    {"workers": -1},
    {"scale_jitter": (2.0, 1.0)},
]


@pytest.mark.parametrize("fields", TRAIN_CONFIGS, ids=[repr(f) for f in TRAIN_CONFIGS])
def test_train_config_refuses(fields, tmp_path):
    from retina_deploy.training.config import TrainConfig

    base = dict(images=tmp_path, annotations=tmp_path / "a.json", out=tmp_path / "R", iters=1, backbone="resnet18")
    with pytest.raises(ConfigError):
        TrainConfig(**{**base, **fields})
    assert not (tmp_path / "R").exists()
