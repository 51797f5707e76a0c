"""The runtime and the package root import without torch (a sys.modules block in a subprocess)."""

import subprocess
import sys

BLOCK_TORCH = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, _Block())
"""


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True, timeout=120)


def test_block_works():
    assert run_without_torch("import torch").returncode != 0


def test_runtime_and_calib_import_without_torch():
    code = """
import importlib, pkgutil
import retina_deploy, retina_deploy.runtime, retina_deploy.calib
import retina_deploy.core
for pkg in (retina_deploy.core, retina_deploy.runtime, retina_deploy.calib):
    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(m.name)
import retina_deploy.core.artifacts, retina_deploy.inference.predict, retina_deploy.inference.open
import retina_deploy.core.errors, retina_deploy.core.fileio, retina_deploy.model.config
import retina_deploy.evaluation.metrics, retina_deploy.evaluation.loop
print("ok", "torch" in sys.modules)
"""
    result = run_without_torch(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok False"


def test_detector_end_to_end_without_torch(tmp_path):
    """Export with torch here; run Detector and BatchingDetector on the file in a torch-blocked subprocess."""
    import json

    import numpy as np
    import torch
    from PIL import Image

    from retina_deploy.export.onnx_export import ExportConfig, export_onnx
    from retina_deploy.inference.open import open_model
    from retina_deploy.model import build_model
    from retina_deploy.model.checkpoint import save_checkpoint
    from retina_deploy.model.config import ModelConfig
    from retina_deploy.runtime.image.preprocess import PreprocessConfig

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18", num_classes=2, head_norm="groupnorm"))
    with torch.no_grad():  # spread the scores: many detections, few near-ties
        model.head.classification_head.cls_logits.weight.normal_(0, 0.02)
        model.head.classification_head.cls_logits.bias.fill_(-3.0)
    ckpt = save_checkpoint(model, tmp_path / "ck", class_names=["a", "b"], preprocess=PreprocessConfig(size=(128, 128)))
    # --nms none: the subprocess also runs the host top-k + NMS
    onnx_path = export_onnx(ckpt, tmp_path / "m.onnx", ExportConfig(nms="none", batch=(1, 1, 2), simplify=False))
    image = np.random.default_rng(0).integers(0, 256, size=(90, 160, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    with open_model(ckpt) as torch_detector:  # the checkpoint in PyTorch
        expected = torch_detector.detect_one(image)
    code = f"""
import json
from retina_deploy.runtime.batching import BatchingDetector
from retina_deploy.runtime.detector import Detector
with Detector.load({str(onnx_path)!r}) as det:
    dets = det.detect([{str(tmp_path / "x.png")!r}] * 3)  # 3 images, max batch 2: chunked
    with BatchingDetector(det, max_delay_ms=1) as batcher:
        one = batcher.detect_one({str(tmp_path / "x.png")!r})
print(json.dumps([d.to_dict() for d in dets + [one]]))
print("torch" in sys.modules)
"""
    result = run_without_torch(code)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "False"
    records = json.loads(lines[-2])
    assert len(records) == 4 and len(expected) > 0
    for record in records:
        got = record["detections"]
        assert len(got) == len(expected)
        for box, score, cid in zip(expected.boxes, expected.scores, expected.class_ids, strict=True):
            assert any(
                d["class_id"] == cid
                and abs(d["score"] - score) <= 1e-3
                and np.abs(np.subtract(d["box"], box)).max() <= 0.5
                for d in got
            ), (box, score, cid)
