"""OnnxModel and Detector on ONNX files: every --nms variant gives the same detections, batches are chunked,
bad files and inputs are refused.

The files are exported once per module (needs torch); the runner itself is also run in a
subprocess where torch cannot be imported.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from testkit.detection_compare import compare_detections
from testkit.model_factory import write_foreign_onnx

from retina_deploy.core.errors import ImageError, ModelFileError
from retina_deploy.runtime.backends.ort import OnnxModel
from retina_deploy.runtime.detector import Detector
from retina_deploy.runtime.image.preprocess import PreprocessConfig, preprocess

SIZE = (128, 128)
MAX_BATCH = 2
K = 300  # more than this model's survivors: the outputs end in padding


def export_variants(out_dir):
    """A seeded ResNet-18 whose head gives spread-out scores, exported with each --nms mode.

    Not simplified: onnxslim is tested by the export tests, the runner does not depend on it.
    """
    pytest.importorskip("torch")
    from testkit.model_factory import make_detector

    from retina_deploy.export.onnx_export import ExportConfig, export_onnx
    from retina_deploy.model.checkpoint import save_checkpoint
    from retina_deploy.model.config import ModelConfig

    cfg = ModelConfig(backbone="resnet18", num_classes=3, score_thresh=0.5, topk_candidates=150, detections_per_img=K)
    model = make_detector(cfg, seed=0, size=SIZE)
    ckpt = save_checkpoint(model, out_dir / "ckpt", class_names=["a", "b", "c"], preprocess=PreprocessConfig(SIZE))
    return {
        nms: export_onnx(ckpt, out_dir / f"{nms}.onnx", ExportConfig(nms=nms, batch=(1, 1, MAX_BATCH), simplify=False))
        for nms in ("onnx", "efficient", "none")
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The exported files; without onnxruntime-extensions ONNX Runtime cannot run the efficient one."""
    files = export_variants(tmp_path_factory.mktemp("runner"))
    if importlib.util.find_spec("onnxruntime_extensions") is None:
        del files["efficient"]
    return files


def images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    cfg = PreprocessConfig(size=SIZE)
    return np.stack([preprocess(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), cfg)[0] for _ in range(n)])


def detect(path, batch: np.ndarray, threads: int = 2) -> dict[str, np.ndarray]:
    """The padded detection outputs of every image in ``batch`` through the Detector (chunked to MAX_BATCH)."""
    with Detector.load(path, backend="ort-cpu", num_threads=threads) as det:
        rows = [det.run_batch(batch[i : i + MAX_BATCH]) for i in range(0, len(batch), MAX_BATCH)]
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


def assert_same(a: dict, b: dict) -> None:
    """Same detections image by image: tight tolerances, only the NMS flips they explain."""
    for i in range(a["num_dets"].shape[0]):
        row = {k: v[i] for k, v in a.items()}
        ref = {k: v[i] for k, v in b.items()}
        compare_detections(row, ref, nms_thresh=0.5, box_tol=1e-4, box_rtol=1e-5, score_tol=1e-6, score_thresh=0.5)


def test_every_variant_gives_the_same_detections(files):
    batch = images(3)
    results = {nms: detect(path, batch) for nms, path in files.items()}
    num = results["onnx"]["num_dets"][:, 0]
    assert (num > 10).all() and (num < K).all(), num
    assert results["onnx"]["boxes"].shape == (3, K, 4) and results["onnx"]["classes"].dtype == np.int32
    assert_same(results["none"], results["onnx"])
    if "efficient" in results:
        assert_same(results["efficient"], results["onnx"])


def test_batches_above_max_are_chunked(files):
    model = OnnxModel.load(files["onnx"], threads=2)
    assert model.max_batch == MAX_BATCH
    batch = images(5, seed=1)
    whole = model.run(batch)
    assert whole["scores"].shape == (5, K)
    for i in range(5):
        single = model.run(batch[i : i + 1])
        for k in whole:
            np.testing.assert_allclose(whole[k][i], single[k][0], rtol=1e-5, atol=1e-5)


def test_worker_threads_spin_as_onnx_runtime_sets_them(files):
    # Spinning is ONNX Runtime's default and the faster one on an idle CPU (BENCHMARKS.md): the session keeps it.
    options = OnnxModel.load(files["none"], threads=2).session.get_session_options()
    with pytest.raises(RuntimeError, match="does not have configuration"):
        options.get_session_config_entry("session.intra_op.allow_spinning")
    assert options.intra_op_num_threads == 2


def test_metadata_is_read_back(files):
    model = OnnxModel.load(files["none"])
    meta = model.metadata
    assert meta.class_names == ("a", "b", "c") and meta.input_size == SIZE and meta.batch == (1, 1, MAX_BATCH)
    assert meta.nms.mode == "none" and meta.nms.max_dets == K and meta.nms.topk_per_level == 150
    assert meta.preprocess == PreprocessConfig(size=SIZE)
    assert sum(meta.anchors_per_level) == model.run(images(1))["boxes"].shape[1]


def test_bad_files_raise_model_file_error(files, tmp_path):
    onnx = pytest.importorskip("onnx")
    with pytest.raises(ModelFileError, match="no such ONNX file"):
        OnnxModel.load(tmp_path / "missing.onnx")
    data = files["onnx"].read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="not a loadable ONNX file"):
        OnnxModel.load(tmp_path / "truncated.onnx")
    (tmp_path / "text.onnx").write_text("not onnx")
    with pytest.raises(ModelFileError):
        OnnxModel.load(tmp_path / "text.onnx")
    write_foreign_onnx(tmp_path / "foreign.onnx")
    with pytest.raises(ModelFileError, match="not a retina-deploy ONNX file"):
        OnnxModel.load(tmp_path / "foreign.onnx")
    model = onnx.load(files["none"])
    for p in model.metadata_props:
        if p.key == "format_version":
            p.value = "99"
    onnx.save(model, tmp_path / "future.onnx")
    with pytest.raises(ModelFileError, match="format_version 99"):
        OnnxModel.load(tmp_path / "future.onnx")


def test_bad_images_raise_image_error(files):
    model = OnnxModel.load(files["onnx"])
    with pytest.raises(ImageError, match="float32"):
        model.run(images(1).astype(np.float64))
    with pytest.raises(ImageError, match=r"\[B, 3, 128, 128\]"):
        model.run(np.zeros((1, 3, 128, 256), np.float32))
    with pytest.raises(ImageError):
        model.run(np.zeros((0, 3, 128, 128), np.float32))


def test_runner_works_without_torch(files, tmp_path):
    expected = detect(files["onnx"], images(2, seed=3))
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["torch"] = None  # any import of torch now raises ImportError
        import numpy as np
        from retina_deploy.runtime import Detector
        from retina_deploy.runtime.image.preprocess import PreprocessConfig, preprocess
        rng = np.random.default_rng(3)
        cfg = PreprocessConfig(size={SIZE})
        batch = np.stack([preprocess(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), cfg)[0] for _ in range(2)])
        out = {{}}
        for nms, path in json.loads(sys.argv[1]).items():
            out[nms] = Detector.load(path, backend="ort-cpu", num_threads=1).run_batch(batch)["scores"].tolist()
        print(json.dumps(out))
        """
    )
    paths = json.dumps({k: str(v) for k, v in files.items()})
    proc = subprocess.run([sys.executable, "-c", script, paths], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for nms, scores in json.loads(proc.stdout.splitlines()[-1]).items():
        np.testing.assert_allclose(np.asarray(scores, np.float32), expected["scores"], atol=1e-6, err_msg=nms)
