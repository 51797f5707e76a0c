"""The C++ TensorRT backend against the Python runtime on one engine (needs a GPU and TensorRT).

One engine built by ``build-engine`` from a ``--nms none`` export; the Python ``Detector`` and
``retina_infer --json`` (C++, CUDA graphs off and on) detect the same PNG images and must agree: same
count and classes, boxes within 1e-3 px, scores within 1e-5. ``RETINA_INFER`` names a retina_infer built
with the TensorRT backend; without it the test builds one, finding TensorRT through ``TENSORRT_ROOT`` (or the
system paths) and CUDA through the toolkit or the venv's CUDA wheel.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess

import numpy as np
import pytest
from cpp_build import build_target, configure, wheel_cuda_args
from PIL import Image
from testkit.detector_models import exported, images


def _gpu_count() -> int:
    if importlib.util.find_spec("cuda") is None:
        return 0
    from retina_deploy.runtime.backends.cuda_mem import import_cudart

    cudart = import_cudart()
    err, count = cudart.cudaGetDeviceCount()
    return count if err == cudart.cudaError_t.cudaSuccess else 0


pytestmark = pytest.mark.skipif(_gpu_count() == 0, reason="no CUDA device: TensorRT engines only execute on a GPU")


@pytest.fixture(scope="module")
def retina_infer() -> str:
    if os.environ.get("RETINA_INFER"):  # a build made elsewhere (the GPU check's)
        return os.environ["RETINA_INFER"]
    args = [f"-DTensorRT_ROOT={os.environ['TENSORRT_ROOT']}"] if os.environ.get("TENSORRT_ROOT") else []
    _, log = configure("trt", (*args, *wheel_cuda_args()))
    if "TensorRT backend ON" not in log:
        pytest.skip("CMake found no TensorRT headers/library (set TENSORRT_ROOT to a TensorRT install)")
    return str(build_target("retina_infer", "trt"))


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_cpp_engine_detections_equal_python(retina_infer, tmp_path, cuda_graphs):
    from retina_deploy.export.engine.builder import EngineBuildConfig, build_engine
    from retina_deploy.runtime.detector import Detector

    engine = build_engine(exported("none"), tmp_path / "model.engine", EngineBuildConfig(batch=(1, 2, 4))).engine_path
    paths = []
    for i, image in enumerate(images(seed=3)):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    from retina_deploy.runtime.backends.tensorrt import UnsupportedGpuError

    try:
        detector = Detector.load(engine, cuda_graphs=cuda_graphs)
    except UnsupportedGpuError as e:  # TensorRT-RTX only, on e.g. an H100
        pytest.skip(f"the installed flavour does not run on this GPU: {e}")
    with detector:
        expected = detector.detect([str(p) for p in paths])
    cmd = [retina_infer, str(engine), *map(str, paths), "--json"] + (["--cuda-graphs"] if cuda_graphs else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr
    ours = json.loads(done.stdout)["images"]
    total = 0
    for got, ref in zip(ours, expected, strict=True):
        dets = got["detections"]
        assert len(dets) == len(ref)
        total += len(ref)
        if not dets:
            continue
        np.testing.assert_array_equal([d["class_id"] for d in dets], ref.class_ids)
        np.testing.assert_allclose([d["box"] for d in dets], ref.boxes, rtol=0, atol=1e-3)
        np.testing.assert_allclose([d["score"] for d in dets], ref.scores, rtol=0, atol=1e-5)
    assert total > 0
