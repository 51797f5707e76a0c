"""Each calibration method gives finite, ordered input ranges for every Conv (a two-conv graph, seconds per method)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from retina_deploy.calib.int8 import CALIB_METHODS, CalibConfig, activation_ranges
from retina_deploy.calib.sampler import sample_calibration_images
from retina_deploy.runtime.image.preprocess import PreprocessConfig


@pytest.fixture(scope="module")
def two_convs(tmp_path_factory):
    root = tmp_path_factory.mktemp("methods")
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.3, (2, 4, 3, 3)).astype(np.float32), "w2")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["images", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
            helper.make_node("Conv", ["r1", "w2"], ["out"], name="conv2", pads=[1, 1, 1, 1]),
        ],
        "two_convs",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 128, 128])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 2, 128, 128])],
        initializer=[w1, w2],
    )
    path = root / "two_convs.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    images = root / "images"
    images.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images / f"{i}.png")
    calib = sample_calibration_images(images, PreprocessConfig(size=(128, 128)), num=6)
    return path, calib


@pytest.mark.parametrize("method", CALIB_METHODS)
def test_every_method_gives_ranges_for_every_conv_input(two_convs, method, tmp_path):
    path, calib = two_convs
    result = activation_ranges(path, calib, CalibConfig(method=method, num=6, batch=3), tmp_path / "cache.json")
    assert not result.from_cache
    for name in ("images", "r1"):
        low, high = (float(np.ravel(v)[0]) for v in result.ranges[name].range_value)
        assert np.isfinite([low, high]).all() and low < high, (method, name, low, high)
    assert float(np.ravel(result.ranges["r1"].range_value[1])[0]) > 0  # a Relu output's range reaches above 0
