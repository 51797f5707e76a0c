"""Detector on exported ONNX files: parity with the PyTorch checkpoint, input forms, chunking, threads, wiring."""

import json
import threading

import numpy as np
import pytest
from PIL import Image
from testkit.detector_models import CLASS_NAMES, checkpoint, exported, images, match_detections

from retina_deploy.core.errors import ConfigError, ImageError, ModelFileError
from retina_deploy.runtime.detector import Detector
from retina_deploy.runtime.post.detections import Detections


@pytest.fixture(scope="module")
def torch_detections():
    from retina_deploy.inference.open import open_model

    with open_model(checkpoint()) as torch_detector:  # the checkpoint in PyTorch
        return [torch_detector.detect_one(img) for img in images()]


@pytest.fixture(scope="module", params=["onnx", "none"])
def detector(request):
    """One Detector per export variant (NMS in the graph / on the host), for the parity tests."""
    with Detector.load(exported(request.param), backend="ort-cpu") as det:
        yield det


@pytest.fixture(scope="module")
def det():
    """The NMS-in-graph variant, for the tests of input handling."""
    with Detector.load(exported("onnx"), backend="ort-cpu") as d:
        yield d


def test_metadata_reaches_the_detector(detector):
    assert detector.class_names == CLASS_NAMES
    assert detector.preprocess_cfg.size == (256, 256)
    assert (detector.min_batch, detector.max_batch) == (1, 4)
    assert detector.backend.name == "onnxruntime-cpu"


@pytest.mark.parametrize("batch", [1, 4])
def test_parity_with_pytorch_on_original_images(detector, torch_detections, batch):
    # 6 images of several aspect ratios; batch 4 runs them as 4 + 2
    imgs = images()
    got = []
    for start in range(0, len(imgs), batch):
        got.extend(detector.detect(imgs[start : start + batch]))
    assert len(got) == len(torch_detections)
    for ours, ref, img in zip(got, torch_detections, imgs, strict=True):
        assert len(ref) > 10  # the test model really detects
        match_detections(ref, ours, box_tol=0.5, score_tol=1e-3)
        h, w = img.shape[:2]
        assert ours.boxes.dtype == np.float32 and ours.class_ids.dtype == np.int64
        assert (ours.boxes[:, [0, 2]] <= w).all() and (ours.boxes[:, [1, 3]] <= h).all() and (ours.boxes >= 0).all()
        assert np.all(np.diff(ours.scores) <= 0)


@pytest.mark.parametrize("variant", ["none", "efficient"])
def test_every_export_variant_gives_the_same_detections(variant):
    # "efficient" runs in ONNX Runtime through the plugin's CPU reference (onnxruntime-extensions)
    if variant == "efficient":
        pytest.importorskip("onnxruntime_extensions")
    imgs = images()
    with Detector.load(exported("onnx")) as a, Detector.load(exported(variant)) as b:
        for da, db in zip(a.detect(imgs), b.detect(imgs), strict=True):
            match_detections(da, db, box_tol=1e-3, score_tol=1e-5)


def test_lists_longer_than_max_batch_are_chunked(det):
    imgs = images()[:3] * 2  # 6 images, max batch 4: chunks of 4 and 2
    batched = det.detect(imgs)
    single = [det.detect_one(img) for img in imgs[:3]]
    assert len(batched) == 6
    for a, b in zip(batched[3:], single, strict=True):
        match_detections(a, b, box_tol=1e-3, score_tol=1e-5)
    assert det.detect([]) == []


def test_paths_bytes_bgr_and_4d_arrays_are_the_same_image(det, tmp_path):
    img = images()[0]
    path = tmp_path / "x.png"
    Image.fromarray(img).save(path)
    ref = det.detect_one(img)
    for result in (
        det.detect([path])[0],
        det.detect([str(path)])[0],
        det.detect([path.read_bytes()])[0],
        det.detect([img[..., ::-1]], channel_order="bgr")[0],
        det.detect(np.stack([img, img]))[1],
    ):
        match_detections(ref, result, box_tol=1e-4, score_tol=1e-6)


def test_detections_convert_to_json(det):
    dets = det.detect_one(images()[1])
    assert isinstance(dets, Detections)
    d = json.loads(json.dumps(dets.to_dict()))
    assert len(d["detections"]) == len(dets)
    first = d["detections"][0]
    assert set(first) == {"box", "score", "class_id", "class_name"}
    assert first["class_name"] == CLASS_NAMES[first["class_id"]]


def test_threads_share_one_detector(det):
    imgs = images()[:4]
    expected = det.detect(imgs)
    results, errors = {}, []

    def worker(k):
        try:
            results[k] = det.detect([imgs[k % len(imgs)]])[0]
        except Exception as e:  # surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for k, dets in results.items():
        match_detections(expected[k % len(imgs)], dets, box_tol=1e-3, score_tol=1e-5)


def test_bad_call_forms_are_typed_errors(det):
    with pytest.raises(ImageError, match="detect_one"):
        det.detect(images()[0])
    with pytest.raises(ImageError, match="detect_one"):
        det.detect("some.png")
    with pytest.raises(ImageError, match=r"images\[1\].*uint8"):
        det.detect([images()[0], images()[0].astype(np.float32)])
    with pytest.raises(ImageError, match=r"images\[0\].*\[h, w, 3\]"):
        det.detect([np.zeros((10, 10, 4), np.uint8)])
    with pytest.raises(ImageError, match=r"images\[0\].*int"):
        det.detect([42])
    with pytest.raises(ConfigError, match="channel_order"):
        det.detect([images()[0]], channel_order="rgba")


def test_backend_choice_is_checked(tmp_path):
    onnx_path = exported("onnx")
    with pytest.raises(ConfigError, match="backend must be one of"):
        Detector.load(onnx_path, backend="magic")
    with pytest.raises(ConfigError, match="build-engine"):
        Detector.load(onnx_path, backend="tensorrt")
    with pytest.raises(ConfigError, match="CUDAExecutionProvider|TensorrtExecutionProvider"):
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            pytest.skip("onnxruntime-gpu is installed here")
        Detector.load(onnx_path, backend="ort-cuda")
    with pytest.raises(ModelFileError, match="no such model file"):
        Detector.load(tmp_path / "missing.onnx")
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ModelFileError, match="expected .onnx or .engine"):
        Detector.load(tmp_path / "m.txt")


def test_ort_provider_chains(monkeypatch):
    import onnxruntime as ort

    from retina_deploy.runtime import backends

    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: gpu)
    cuda, trt = ("CUDAExecutionProvider", {"device_id": 1}), ("TensorrtExecutionProvider", {"device_id": 1})
    assert backends._ort_providers("auto", 1) == ("ort-cuda", [cuda, "CPUExecutionProvider"])
    assert backends._ort_providers("ort-tensorrt", 1) == ("ort-tensorrt", [trt, cuda, "CPUExecutionProvider"])
    assert backends._ort_providers("ort-cpu", 1) == ("ort-cpu", ["CPUExecutionProvider"])
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert backends._ort_providers("auto", 0) == ("ort-cpu", ["CPUExecutionProvider"])
    with pytest.raises(ConfigError, match="TensorrtExecutionProvider, which is not installed"):
        backends._ort_providers("ort-tensorrt", 0)
