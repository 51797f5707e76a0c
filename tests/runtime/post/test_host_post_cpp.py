"""The C++ host post-processing (runtime/post/native.py over runtime/cpp/src/postprocess.cpp) against numpy's.

Bit for bit, equal scores included: both rank equal scores by index and compute the same float32 operations in the
same order. The sets are the adversarial ones of nms_cases (ties, identical boxes, empty sets, one class, thousands
of candidates, degenerate and extreme boxes) and dense outputs shaped like the demo's and like a 256-px 80-class
model's, with the top-k binding, the sampled score floor and its fallback.
"""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from nms_cases import CASES, LEVELS_128, candidate_set, dense_outputs
from testkit.detector_models import exported, images

from retina_deploy.core.errors import ConfigError
from retina_deploy.runtime.detector import Detector
from retina_deploy.runtime.post import host_nms, native

needs_cpp = pytest.mark.skipif(
    not native.available(), reason="the C++ extension is not built (install the package with a C++17 compiler)"
)
LEVELS_256 = [9216, 2304, 576, 144, 36]  # 256 px: 32x32 .. 2x2 cells, 9 anchors each


def test_the_extension_is_built_where_a_compiler_and_the_headers_are():
    compiler = (sysconfig.get_config_var("CXX") or "c++").split()[0]
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    if shutil.which(compiler) is None or not headers.is_file():
        pytest.skip(f"no {compiler} or no Python.h here: the install leaves the extension out, by design")
    assert native.available(), "setup.py's optional extension did not build; `pip install -e .` prints why"


@needs_cpp
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("iou_thresh, max_keep", [(0.5, 300), (0.3, 7), (0.7, 1), (0.0, 50), (1.0, 10_000), (0.5, 0)])
def test_batched_nms_equals_numpy(case, iou_thresh, max_keep):
    boxes, scores, classes = candidate_set(case, np.random.default_rng(len(case)))
    expected = host_nms.batched_nms(boxes, scores, classes, iou_thresh, max_keep)
    got = native.batched_nms(boxes, scores, classes, iou_thresh, max_keep)
    assert got.dtype == np.int64 and got.tolist() == expected.tolist()


@needs_cpp
def test_batched_nms_equal_scores_and_class_ids_of_any_size():
    boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [0, 0, 10, 10], [1, 1, 11, 11]], np.float32)
    scores = np.array([0.5, 0.5, -0.0, 0.0], np.float32)  # equal scores by index; -0.0 equals 0.0
    for classes in (np.array([1, 0, 0, 0]), np.array([2**40, -(2**40), 7, 7])):  # ids past int32 are remapped
        expected = host_nms.batched_nms(boxes, scores, classes, 0.5, 10)
        assert native.batched_nms(boxes, scores, classes, 0.5, 10).tolist() == expected.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="NaN"):
        native.batched_nms(boxes, np.array([0.5, np.nan, 0.1, 0.2], np.float32), np.zeros(4), 0.5, 10)


def assert_same(got: dict, expected: dict) -> None:
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        np.testing.assert_array_equal(got[name], value, err_msg=name)


@needs_cpp
@pytest.mark.parametrize(
    "num_classes, topk, score_thresh, iou_thresh, max_dets, distinct",
    [(6, 1000, 0.05, 0.5, 300, False), (6, 1000, 0.001, 0.5, 300, False), (6, 1000, 0.05, 0.5, 300, True),
     (1, 1000, 0.05, 0.45, 100, True), (6, 50, 0.3, 0.6, 20, True), (6, 50, 0.01, 0.5, 300, False),
     (6, 1000, 0.999, 0.5, 300, True), (3, 5000, 0.0, 0.5, 1000, True), (6, 0, 0.05, 0.5, 300, False),
     (6, 1000, 0.05, 0.5, 0, False)],
    ids=["demo-sigmoid", "demo-0.001", "demo-distinct", "one-class", "topk-binds-sampled-floor",
         "sampled-floor-sigmoid", "all-below-threshold", "thousands", "topk-0", "max-dets-0"],
)  # fmt: skip
def test_dense_outputs_equal_numpy(num_classes, topk, score_thresh, iou_thresh, max_dets, distinct):
    boxes, scores = dense_outputs(np.random.default_rng(topk + num_classes), 3, LEVELS_128, num_classes,
                                  distinct=distinct)  # fmt: skip
    if score_thresh == 0.999:
        scores *= np.float32(0.99)
    run = dict(level_sizes=LEVELS_128, topk=topk, score_thresh=score_thresh, iou_thresh=iou_thresh, max_dets=max_dets)
    expected = host_nms.detections_from_dense(boxes, scores, **run)
    assert_same(native.detections_from_dense(boxes, scores, **run), expected)
    real = max_dets > 0 and topk > 0 and score_thresh < 0.999
    assert (expected["num_dets"] > 5).all() if real else (expected["num_dets"] == 0).all()


@needs_cpp
def test_dense_outputs_of_a_256px_80_class_model_equal_numpy():
    # Scores around sigmoid(-3) = 0.047 as a freshly initialised head makes them: every level's top-k passes 0.05.
    rng = np.random.default_rng(5)
    n = sum(LEVELS_256)
    boxes = np.clip(rng.uniform(0, 256, (1, n, 2)), 0, 240).astype(np.float32)
    boxes = np.concatenate([boxes, boxes + rng.uniform(4, 64, (1, n, 2)).astype(np.float32)], 2)
    scores = (1 / (1 + np.exp(-rng.normal(-3, 0.3, (1, n, 80))))).astype(np.float32)
    for thresh in (0.05, 0.001):
        run = dict(level_sizes=LEVELS_256, topk=1000, score_thresh=thresh, iou_thresh=0.5, max_dets=300)
        expected = host_nms.detections_from_dense(boxes, scores, **run)
        assert expected["num_dets"][0, 0] == 300
        assert_same(native.detections_from_dense(boxes, scores, **run), expected)


@needs_cpp
def test_an_unlucky_sample_falls_back_to_the_exact_top_k():
    # Only every 7th pair scores high: the sampled floor is reached by fewer than k pairs, so both implementations
    # must fall back to ranking every pair above the threshold.
    n, k = 40_000, 100
    scores = np.full((1, n, 1), 0.2, np.float32)
    scores[0, ::7, 0] = np.linspace(0.9, 0.99, len(scores[0, ::7, 0]), dtype=np.float32)
    scores[0, 3::7, 0] = np.linspace(0.3, 0.89, len(scores[0, 3::7, 0]), dtype=np.float32)
    boxes = np.tile(np.array([0, 0, 1, 1], np.float32), (1, n, 1)) + np.arange(n, dtype=np.float32)[None, :, None] * 2
    run = dict(level_sizes=[n], topk=k, score_thresh=0.1, iou_thresh=0.5, max_dets=k)
    expected = host_nms.detections_from_dense(boxes, scores, **run)
    assert expected["num_dets"][0, 0] == k and expected["scores"][0, -1] > 0.8
    assert_same(native.detections_from_dense(boxes, scores, **run), expected)


@needs_cpp
def test_bad_arguments_are_errors_not_crashes():
    boxes, scores = dense_outputs(np.random.default_rng(0), 1, LEVELS_128, 6, distinct=False)
    run = dict(topk=1000, score_thresh=0.05, iou_thresh=0.5, max_dets=300)
    with pytest.raises(ValueError, match="sum to"):
        native.detections_from_dense(boxes, scores, level_sizes=[2304, 576], **run)
    with pytest.raises(ValueError, match=r"\[B, N, 4\]"):
        native.detections_from_dense(boxes[0], scores, level_sizes=LEVELS_128, **run)
    with pytest.raises(ValueError, match="negative"):
        native.detections_from_dense(boxes, scores, level_sizes=[3069 + 10, -10], **run)
    with pytest.raises(ValueError, match="must be >= 0"):
        native.detections_from_dense(boxes, scores, level_sizes=LEVELS_128, **{**run, "topk": -1})
    # non-contiguous float64 inputs are converted, not misread
    got = native.detections_from_dense(boxes.astype(np.float64)[:, :, :], np.asfortranarray(scores),
                                       level_sizes=LEVELS_128, **run)  # fmt: skip
    assert_same(got, host_nms.detections_from_dense(boxes, scores, level_sizes=LEVELS_128, **run))


def test_the_choice_of_implementation(monkeypatch):
    monkeypatch.delenv(native.HOST_POST_ENV, raising=False)
    assert native.host_post().name == ("cpp" if native.available() else "numpy")
    assert native.host_post("numpy").detections_from_dense is host_nms.detections_from_dense
    monkeypatch.setenv(native.HOST_POST_ENV, "numpy")
    assert native.host_post().name == "numpy"
    monkeypatch.setenv(native.HOST_POST_ENV, "fast")
    with pytest.raises(ConfigError, match="RETINA_DEPLOY_HOST_POST 'fast': expected one of auto, cpp, numpy"):
        native.host_post()
    monkeypatch.setattr(native, "_native", None)  # an install without the extension
    assert native.host_post("auto").name == "numpy"
    with pytest.raises(ConfigError, match="not built in this install"):
        native.host_post("cpp")


@needs_cpp
def test_a_detector_gives_the_same_detections_with_either(monkeypatch):
    results = {}
    for choice in ("cpp", "numpy"):
        monkeypatch.setenv(native.HOST_POST_ENV, choice)
        with Detector.load(exported(nms="none"), backend="ort-cpu") as det:
            assert det.host_post.name == choice
            results[choice] = det.detect(images())
    for a, b in zip(results["cpp"], results["numpy"], strict=True):
        assert len(a) > 0
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.class_ids, b.class_ids)
