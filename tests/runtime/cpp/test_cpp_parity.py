"""The C++ runtime (runtime/cpp) against the Python runtime, through its test tool ``retina_parity``.

Preprocessing: images of many sizes and aspect ratios (portrait, landscape, smaller than the input,
1x1, odd sizes, padded row strides, BGR) go through both implementations of the one definition
(``runtime/image/preprocess.py``'s docstring); the network inputs must be equal to <= 1e-5.
Post-processing: a real ``--nms none`` export runs in ONNX Runtime inside the Python ``Detector``;
each backend call (input batch and dense outputs) is recorded and replayed to the C++ ``Detector``,
which must get the same input batches and the same detections (count, classes, boxes within 1e-3 px,
scores within 1e-6) in each original image's pixels; so must crowded synthetic outputs (clustered boxes,
boxes crossing the border) under several IoU thresholds and top-k sizes.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from cpp_build import build_target
from PIL import Image
from testkit.detector_models import exported

from retina_deploy.runtime.backends.ort import OnnxModel
from retina_deploy.runtime.contract.manifest import EngineManifest, fields_from_onnx_metadata, write_manifest
from retina_deploy.runtime.contract.onnx_metadata import NmsSettings
from retina_deploy.runtime.contract.spec import ModelSpec
from retina_deploy.runtime.detector import Detector
from retina_deploy.runtime.image.image_io import as_rgb_array
from retina_deploy.runtime.image.preprocess import PreprocessConfig, preprocess

# (height, width, channel order, extra bytes per row): portrait, landscape, smaller than the input, 1x1,
# odd sizes, extreme aspect ratios, exactly the input size, larger than the input.
IMAGES = [
    (300, 120, "rgb", 0),
    (200, 300, "bgr", 5),
    (37, 41, "rgb", 3),
    (1, 1, "rgb", 0),
    (333, 517, "bgr", 0),
    (90, 400, "rgb", 1),
    (256, 256, "rgb", 0),
    (480, 640, "bgr", 7),
    (1000, 3, "rgb", 0),
    (2, 999, "rgb", 0),
    (129, 255, "rgb", 0),
]


@pytest.fixture(scope="module")
def parity_tool() -> Path:
    return build_target("retina_parity")


def smooth_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """RGB uint8 [h, w, 3]: blocks of noise (features vary) with fine noise on top (no flat runs)."""
    block = rng.integers(0, 256, size=(-(-h // 8), -(-w // 8), 3)).repeat(8, 0).repeat(8, 1)[:h, :w]
    return np.clip(block + rng.integers(-20, 21, size=(h, w, 3)), 0, 255).astype(np.uint8)


def write_images(folder: Path, images: list[np.ndarray], orders: list[str], pads: list[int]) -> list[dict]:
    """Raw files as the C++ ImageView sees them: rows of 3 * w + pad bytes, channels in ``order``."""
    entries = []
    for i, (rgb, order, pad) in enumerate(zip(images, orders, pads, strict=True)):
        h, w = rgb.shape[:2]
        pixels = rgb[..., ::-1] if order == "bgr" else rgb
        rows = np.zeros((h, 3 * w + pad), np.uint8)
        rows[:, : 3 * w] = pixels.reshape(h, 3 * w)
        path = folder / f"image_{i}.u8"
        rows.tofile(path)
        entries.append({"path": str(path), "height": h, "width": w, "stride": 3 * w + pad, "order": order})
    return entries


def manifest_for(onnx_meta: dict, path: Path) -> Path:
    """An engine manifest as build-engine writes it, for the ONNX file's metadata (no engine is involved)."""
    fields = fields_from_onnx_metadata(onnx_meta)
    manifest = EngineManifest(
        engine_sha256="0" * 64, flavour="tensorrt", trt_version="10.13.0", onnx_sha256="0" * 64, **fields
    )
    path.write_text(json.dumps(manifest.to_dict()))
    return path


def run_tool(tool: Path, job: dict, folder: Path) -> dict:
    job_path = folder / "job.json"
    job_path.write_text(json.dumps(job))
    done = subprocess.run([str(tool), str(job_path)], capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(Path(job["result"]).read_text())


def test_preprocessing_equals_python(parity_tool, tmp_path):
    rng = np.random.default_rng(0)
    images = [smooth_image(rng, h, w) for h, w, _, _ in IMAGES]
    orders = [o for _, _, o, _ in IMAGES]
    pads = [p for _, _, _, p in IMAGES]
    cfg = PreprocessConfig(size=(256, 384), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    meta = {
        "class_names": ["a"],
        "input_size": list(cfg.size),
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "channel_order": "rgb",
        "nms": {"mode": "none", "max_dets": 10, "score_thresh": 0.05, "iou_thresh": 0.5, "topk_per_level": 10},
        "anchors_per_level": [1],
        "batch": {"min": 1, "opt": 1, "max": 1},
        "precision": "fp32",
    }
    job = {
        "manifest": str(manifest_for(meta, tmp_path / "m.json")),
        "images": write_images(tmp_path, images, orders, pads),
        "preprocess_dir": str(tmp_path),
        "result": str(tmp_path / "result.json"),
    }
    result = run_tool(parity_tool, job, tmp_path)
    worst = 0.0
    for i, (rgb, order) in enumerate(zip(images, orders, strict=True)):
        caller_array = np.ascontiguousarray(rgb[..., ::-1]) if order == "bgr" else rgb
        expected, scale = preprocess(as_rgb_array(caller_array, order), cfg)
        got = np.fromfile(tmp_path / f"pre_{i}.f32", np.float32).reshape(expected.shape)
        diff = float(np.abs(got - expected).max())
        worst = max(worst, diff)
        assert diff <= 1e-5, f"image {i} {rgb.shape[:2]}: max |C++ - Python| = {diff}"
        assert result["letterbox"][i]["scale"] == scale
    print(f"\nC++ vs Python preprocessing, {len(images)} images: max |difference| = {worst:.3g}")


class RecordingBackend:
    """Passes batches to a backend and saves each call's input and outputs as raw files."""

    def __init__(self, inner, folder: Path) -> None:
        self.inner, self.folder, self.calls = inner, folder, []
        self.input_size, self.batch_range = inner.input_size, inner.batch_range

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        out = self.inner.run(batch)
        n = len(self.calls)
        batch.astype("<f4").tofile(self.folder / f"call{n}_input.f32")
        outputs = {}
        for name, value in out.items():
            value = np.ascontiguousarray(value)
            dtype = "int32" if value.dtype == np.int32 else "float32"
            path = self.folder / f"call{n}_{name}.raw"
            value.astype("<i4" if dtype == "int32" else "<f4").tofile(path)
            outputs[name] = {"path": str(path), "dtype": dtype, "shape": list(value.shape)}
        self.calls.append({"input": str(self.folder / f"call{n}_input.f32"), "outputs": outputs})
        return out

    def close(self) -> None:
        self.inner.close()


def test_detections_of_a_real_none_export_equal_python(parity_tool, tmp_path):
    path = exported("none")
    opened = Detector.load(path, backend="ort-cpu", num_threads=2)
    recorder = RecordingBackend(opened.backend, tmp_path)
    detector = Detector(recorder, opened.spec)
    rng = np.random.default_rng(1)
    shapes = [(200, 300), (300, 120), (37, 41), (1, 1), (333, 517), (256, 256), (90, 400), (480, 640), (129, 255)]
    images = [smooth_image(rng, h, w) for h, w in shapes]
    expected = detector.detect(images)  # 9 images at max batch 4: calls of 4, 4, 1
    assert len(recorder.calls) == 3

    meta = OnnxModel.load(path, ["CPUExecutionProvider"]).metadata.to_dict()
    job = {
        "manifest": str(manifest_for(meta, tmp_path / "m.json")),
        "images": write_images(tmp_path, images, ["rgb"] * len(images), [i % 3 for i in range(len(images))]),
        "preprocess_dir": str(tmp_path),
        "replay": recorder.calls,
        "result": str(tmp_path / "result.json"),
    }
    result = run_tool(parity_tool, job, tmp_path)
    assert result["max_input_diff"] <= 1e-5  # the C++ batches are the inputs Python gave the model
    total, worst_box, worst_score = 0, 0.0, 0.0
    for i, (ours, ref) in enumerate(zip(result["detections"], expected, strict=True)):
        assert len(ours) == len(ref), f"image {i}: {len(ours)} C++ detections vs {len(ref)} Python"
        if not ours:
            continue
        total += len(ours)
        np.testing.assert_array_equal([d["class_id"] for d in ours], ref.class_ids)
        assert [d["class_name"] for d in ours] == list(ref.class_names)
        boxes = np.asarray([d["box"] for d in ours], np.float32)
        scores = np.asarray([d["score"] for d in ours], np.float32)
        worst_box = max(worst_box, float(np.abs(boxes - ref.boxes).max()))
        worst_score = max(worst_score, float(np.abs(scores - ref.scores).max()))
    assert worst_box <= 1e-3 and worst_score <= 1e-6, (worst_box, worst_score)
    assert total >= 20, f"only {total} detections: the comparison would be weak"
    print(
        f"\nC++ vs Python detections ({total} over {len(images)} images, --nms none, ONNX Runtime outputs): "
        f"max |box diff| {worst_box:.3g} px, max |score diff| {worst_score:.3g}, "
        f"max |input diff| {result['max_input_diff']:.3g}"
    )


def test_retina_infer_checks_images_and_engine_before_running(tmp_path):
    """retina_infer decodes a PNG, checks the manifest and the engine's sha256, then stops with one line where
    nothing can run the engine (a build without TensorRT, or no GPU)."""
    infer = build_target("retina_infer")
    Image.fromarray(smooth_image(np.random.default_rng(2), 40, 60)).save(tmp_path / "a.png")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not a real engine")
    meta = OnnxModel.load(exported("none"), ["CPUExecutionProvider"]).metadata.to_dict()
    write_manifest(
        engine, flavour="tensorrt", trt_version="10.13.0", onnx_sha256="0" * 64, **fields_from_onnx_metadata(meta)
    )
    done = subprocess.run([str(infer), str(engine), str(tmp_path / "a.png"), "--json"], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "retina_infer: " in done.stderr
    assert "without TensorRT" in done.stderr or "GPU" in done.stderr or "rebuild" in done.stderr, done.stderr
    engine.write_bytes(b"tampered")
    done = subprocess.run([str(infer), str(engine), str(tmp_path / "a.png")], capture_output=True, text=True)
    assert done.returncode == 1 and "differs from its manifest's" in done.stderr


class DenseFake:
    """A backend whose dense outputs are crowded on purpose: boxes in clusters (many overlaps near the IoU
    threshold), boxes crossing the image border, 4 classes, distinct scores around the threshold."""

    input_size, batch_range = (128, 128), (1, 2)

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        b, n = batch.shape[0], 400
        centres = self.rng.uniform(-10, 140, (b, 12, 2))[:, self.rng.integers(0, 12, n)]
        centres += self.rng.normal(0, 3, (b, n, 2))
        half = self.rng.uniform(2, 30, (b, n, 2))
        boxes = np.concatenate([centres - half, centres + half], axis=2).astype(np.float32)
        scores = self.rng.permutation(np.linspace(0.01, 0.99, b * n * 4)).reshape(b, n, 4).astype(np.float32)
        return {"boxes": boxes, "scores": scores}

    def close(self) -> None:
        pass


@pytest.mark.parametrize("iou_thresh, topk", [(0.5, 40), (0.3, 1000), (0.7, 5)])
def test_host_nms_on_crowded_outputs_equals_python(parity_tool, tmp_path, iou_thresh, topk):
    nms = NmsSettings(mode="none", max_dets=60, score_thresh=0.3, iou_thresh=iou_thresh, topk_per_level=topk)
    spec = ModelSpec(("a", "b", "c", "d"), PreprocessConfig(size=(128, 128)), nms, (300, 80, 20))
    recorder = RecordingBackend(DenseFake(seed=int(iou_thresh * 10) + topk), tmp_path)
    rng = np.random.default_rng(5)
    images = [smooth_image(rng, h, w) for h, w in [(100, 60), (64, 200), (128, 128)]]
    expected = Detector(recorder, spec).detect(images)
    meta = {
        "class_names": list(spec.class_names),
        "input_size": [128, 128],
        "mean": list(spec.preprocess.mean),
        "std": list(spec.preprocess.std),
        "channel_order": "rgb",
        "nms": nms.to_dict(),
        "anchors_per_level": list(spec.anchors_per_level),
        "batch": {"min": 1, "opt": 1, "max": 2},
        "precision": "fp32",
    }
    job = {
        "manifest": str(manifest_for(meta, tmp_path / "m.json")),
        "images": write_images(tmp_path, images, ["rgb"] * 3, [0, 0, 0]),
        "preprocess_dir": str(tmp_path),
        "replay": recorder.calls,
        "result": str(tmp_path / "result.json"),
    }
    result = run_tool(parity_tool, job, tmp_path)
    for ours, ref in zip(result["detections"], expected, strict=True):
        assert len(ours) == len(ref) > 0
        np.testing.assert_array_equal([d["class_id"] for d in ours], ref.class_ids)
        np.testing.assert_array_equal(np.asarray([d["box"] for d in ours], np.float32), ref.boxes)
        np.testing.assert_array_equal(np.asarray([d["score"] for d in ours], np.float32), ref.scores)
