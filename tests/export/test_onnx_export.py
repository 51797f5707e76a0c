"""export_onnx: PyTorch eval == ONNX Runtime on images other than the traced one, file checks, metadata, errors."""

from __future__ import annotations

import collections
import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch
from testkit.export_helpers import BATCH, SIZE, assert_same_detections, make_checkpoint, noise_images
from testkit.model_factory import write_foreign_onnx

from retina_deploy import __version__
from retina_deploy.core.errors import CheckpointError, ConfigError, ModelFileError
from retina_deploy.export.onnx_export import ExportConfig, export_onnx
from retina_deploy.model import build_model
from retina_deploy.model.checkpoint import load_checkpoint, sha256_file
from retina_deploy.model.config import ModelConfig
from retina_deploy.runtime.backends.ort import OnnxModel
from retina_deploy.runtime.contract.onnx_files import read_onnx_metadata


def torch_detections(checkpoint, images: np.ndarray) -> list[dict]:
    model, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        return model(torch.from_numpy(images))


def row(out: dict, i: int) -> dict:
    return {k: v[i] for k, v in out.items()}


@pytest.mark.parametrize("nms", ["onnx", "efficient"])
def test_resnet18_parity_batch_1_and_3(r18_exports, r18_checkpoint, nms, record_property):
    if nms == "efficient":  # ONNX Runtime runs the plugin node through the CPU reference op
        pytest.importorskip("onnxruntime_extensions", reason="the EfficientNMS_TRT reference needs it")
    images = noise_images(3, seed=11)
    expected = torch_detections(r18_checkpoint, images)
    assert all(len(d["scores"]) == 100 for d in expected), "the max-dets cap should bind for this model"
    model = OnnxModel.load(r18_exports[nms], threads=2)
    batch3 = model.run(images)
    for i in range(3):
        single = model.run(images[i : i + 1])
        assert_same_detections(row(single, 0), expected[i])
        assert_same_detections(row(batch3, i), expected[i])
        for k in single:  # batch rows are independent
            np.testing.assert_allclose(batch3[k][i], single[k][0], rtol=1e-5, atol=1e-5)
    record_property("export_seconds", round(r18_exports["times"][nms], 1))
    record_property("nodes", len(onnx.load(r18_exports[nms]).graph.node))


@pytest.mark.slow
def test_resnet101_parity_batch_1_and_3(tmp_path):
    size = (128, 128)
    ckpt = make_checkpoint(tmp_path / "ckpt", backbone="resnet101", seed=1, size=size)
    path = export_onnx(ckpt, tmp_path / "r101.onnx", ExportConfig(batch=(1, 1, 4)))
    images = noise_images(3, size=size, seed=12)
    expected = torch_detections(ckpt, images)
    assert any(len(d["scores"]) < 100 for d in expected), "some image should have fewer than K detections"
    model = OnnxModel.load(path, threads=2)
    batch3 = model.run(images)
    for i in range(3):
        assert_same_detections(row(model.run(images[i : i + 1]), 0), expected[i])
        assert_same_detections(row(batch3, i), expected[i])


def test_none_outputs_equal_pytorch_decode(r18_exports, r18_checkpoint):
    """Every anchor, torchvision's order: boxes = decode(deltas, anchors) clipped to the input, scores = sigmoid."""
    from retina_deploy.model import box_coder

    images = noise_images(2, seed=13)
    model, info = load_checkpoint(r18_checkpoint)
    with torch.no_grad():
        cls, box, anchors = model.forward_levels(torch.from_numpy(images))
    h, w = SIZE
    boxes = box_coder.decode(torch.cat(box, 1), torch.cat(anchors), info.model.bbox_reg_clamp)
    boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([w, h, w, h], dtype=torch.float32))
    out = OnnxModel.load(r18_exports["none"], threads=2).run(images)
    assert out["boxes"].shape == (2, sum(a.shape[0] for a in anchors), 4)
    np.testing.assert_allclose(out["boxes"], boxes.numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(out["scores"], torch.sigmoid(torch.cat(cls, 1)).numpy(), rtol=0, atol=1e-4)


def test_file_structure(r18_exports, record_property):
    h, w = SIZE
    for nms in ("onnx", "efficient", "none"):
        model = onnx.load(r18_exports[nms], load_external_data=False)
        onnx.checker.check_model(model, full_check=True)
        ops = collections.Counter(n.op_type for n in model.graph.node)
        record_property(f"{nms}_nodes", sum(ops.values()))
        assert "NonZero" not in ops
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
        (inp,) = model.graph.input
        assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 3, h, w]
        outputs = {
            o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output
        }
        if nms == "none":
            assert list(outputs) == ["boxes", "scores"]
            assert outputs["scores"][2] == 4 and outputs["boxes"][2] == 4
            assert "TopK" not in ops
            continue
        assert ops["TopK"] == (6 if nms == "onnx" else 5)  # per level, then the final K (the plugin does its own)
        assert outputs == {"num_dets": ["batch", 1], "boxes": ["batch", 100, 4], "scores": ["batch", 100],
                           "classes": ["batch", 100]}  # fmt: skip
        dtypes = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
        assert dtypes["num_dets"] == dtypes["classes"] == onnx.TensorProto.INT32
        if nms == "onnx":
            assert ops["NonMaxSuppression"] == 1
        else:
            (node,) = [n for n in model.graph.node if n.op_type == "EfficientNMS_TRT"]
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert node.domain == "TRT" and attrs["max_output_boxes"] == 100 and attrs["background_class"] == -1
            assert attrs["score_threshold"] == pytest.approx(0.5) and attrs["iou_threshold"] == pytest.approx(0.5)
            assert "NonMaxSuppression" not in ops


def test_metadata(r18_exports, r18_checkpoint):
    meta = read_onnx_metadata(r18_exports["onnx"]).to_dict()
    assert json.loads(json.dumps(meta)) == meta  # plain JSON values
    assert meta["format"] == "retina-deploy/onnx" and meta["toolkit_version"] == __version__
    assert meta["class_names"] == ["class_0", "class_1", "class_2", "class_3"]
    assert meta["input_size"] == list(SIZE) and meta["channel_order"] == "rgb"
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406]) and meta["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert meta["nms"] == {
        "mode": "onnx",
        "max_dets": 100,
        "score_thresh": 0.5,
        "iou_thresh": 0.5,
        "topk_per_level": 200,
    }
    assert meta["batch"] == dict(zip(("min", "opt", "max"), BATCH, strict=True))
    assert meta["checkpoint_sha256"] == sha256_file(r18_checkpoint / "model.safetensors")
    assert meta["anchors_per_level"] == [16 * 32 * 9, 8 * 16 * 9, 4 * 8 * 9, 2 * 4 * 9, 1 * 2 * 9]
    assert read_onnx_metadata(r18_exports["none"]).nms.mode == "none"


def test_flags_override_the_checkpoint(r18_checkpoint, tmp_path):
    """Flags beat the checkpoint's settings; with K > the candidates (5 levels x k=5 = 25 < 30) the tail is padding."""
    cfg = ExportConfig(nms="onnx", size=(128, 128), batch=(2, 2, 2), max_dets=30, score_thresh=0.6, iou_thresh=0.4,
                       topk_per_level=5, opset=19)  # fmt: skip
    path = export_onnx(r18_checkpoint, tmp_path / "sub" / "m.onnx", cfg)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["m.onnx"]  # no temp file left behind
    meta = read_onnx_metadata(path).to_dict()
    assert meta["nms"] == {"mode": "onnx", "max_dets": 30, "score_thresh": 0.6, "iou_thresh": 0.4, "topk_per_level": 5}
    assert meta["input_size"] == [128, 128] and meta["opset"] == 19 and meta["batch"]["min"] == 2
    assert onnx.load(path).opset_import[0].version == 19

    model, info = load_checkpoint(r18_checkpoint)
    same_settings = dataclasses.replace(
        info.model, score_thresh=0.6, nms_thresh=0.4, topk_candidates=5, detections_per_img=30
    )
    reference = build_model(same_settings).eval()
    reference.load_state_dict(model.state_dict())
    images = noise_images(3, size=(128, 128), seed=14)  # 3 > MAX 2: the runner runs two chunks
    with torch.no_grad():
        expected = reference(torch.from_numpy(images))
    out = OnnxModel.load(path, threads=2).run(images)
    assert out["boxes"].shape == (3, 30, 4) and not out["scores"][:, 25:].any()
    for i in range(3):
        assert 0 < len(expected[i]["scores"]) <= 25
        assert_same_detections(row(out, i), expected[i])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(size=(130, 256)), "input height 130 is not a multiple of 128 (the P7 stride); nearest valid: 128 or 256"),
        (dict(size=(512, 700)), "nearest valid: 640 or 768"),
        (dict(size=(64, 128)), "nearest valid: 128 or 128"),
        (dict(batch=(4, 2, 2)), "batch MIN 4 > MAX 2"),
        (dict(batch=(1, 8, 4)), "batch OPT 8 is outside MIN..MAX (1..4)"),
        (dict(batch=(0, 1, 1)), "batch MIN must be >= 1"),
        (dict(max_dets=0), "max-dets must be >= 1, got 0"),
        (dict(topk_per_level=0), "topk-per-level must be >= 1"),
        (dict(score_thresh=1.5), "score-thresh must be in [0, 1)"),
        (dict(nms="fast"), "nms must be one of onnx, efficient, none"),
        (dict(opset=11), "opset must be in 13..20"),
    ],
)
def test_bad_options_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError) as e:
        ExportConfig(**kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_tensorrt_topk_limit():
    with pytest.raises(ConfigError, match="TensorRT's largest TopK"):
        ExportConfig(nms="onnx", topk_per_level=5000).nms_settings(ModelConfig())
    assert ExportConfig(nms="none", topk_per_level=5000).nms_settings(ModelConfig()).topk_per_level == 5000


def test_bad_checkpoints_raise_checkpoint_error(tmp_path):
    out = tmp_path / "out.onnx"
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        export_onnx(tmp_path / "missing", out)
    (tmp_path / "weights.pth").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="PyTorch pickle"):
        export_onnx(tmp_path / "weights.pth", out)
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError, match="not a retina-deploy checkpoint"):
        export_onnx(tmp_path / "folder", out)
    assert not out.exists()


def test_foreign_onnx_metadata_raises_model_file_error(tmp_path):
    write_foreign_onnx(tmp_path / "foreign.onnx")
    with pytest.raises(ModelFileError, match="not a retina-deploy ONNX file"):
        read_onnx_metadata(tmp_path / "foreign.onnx")
    (tmp_path / "text.onnx").write_text("hello")
    with pytest.raises(ModelFileError):
        read_onnx_metadata(tmp_path / "text.onnx")
