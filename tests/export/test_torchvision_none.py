"""``--nms none`` outputs of converted torchvision weights == torchvision's decoded head outputs.

torchvision: boxes = box_coder.decode_single(bbox_regression, anchors) clipped to the image
(postprocess_detections clips before NMS), scores = sigmoid(cls_logits), every anchor in its order.
"""

from __future__ import annotations

import numpy as np
import torch
from testkit.export_helpers import noise_images
from testkit.torchvision_models import make_torchvision_retinanet
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import boxes as box_ops

from retina_deploy.export.onnx_export import ExportConfig, export_onnx
from retina_deploy.model.convert import convert_torchvision
from retina_deploy.runtime.backends.ort import OnnxModel
from retina_deploy.runtime.image.preprocess import PreprocessConfig

SIZE = (128, 256)


def test_none_outputs_equal_torchvision_decoded_head(tmp_path):
    tv = make_torchvision_retinanet(18, num_classes=5, v2=False, seed=3, box_bias_std=0.5)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    ckpt = convert_torchvision(tmp_path / "tv.pth", tmp_path / "ckpt", preprocess=PreprocessConfig(size=SIZE))
    path = export_onnx(ckpt, tmp_path / "none.onnx", ExportConfig(nms="none", batch=(1, 2, 2), simplify=False))

    images = torch.from_numpy(noise_images(2, size=SIZE, seed=21))
    with torch.no_grad():
        features = list(tv.backbone(images).values())
        head = tv.head(features)
        anchors = tv.anchor_generator(ImageList(images, [SIZE] * 2), features)
    expected_boxes = torch.stack(
        [
            box_ops.clip_boxes_to_image(tv.box_coder.decode_single(head["bbox_regression"][i], anchors[i]), SIZE)
            for i in range(2)
        ]
    )
    out = OnnxModel.load(path, threads=2).run(images.numpy())
    assert out["boxes"].shape == tuple(expected_boxes.shape) and out["scores"].shape == tuple(head["cls_logits"].shape)
    # Head outputs differ by ~1e-5 (FrozenBatchNorm vs BatchNorm arithmetic); exp() in the decode
    # scales that with the box size, so boxes are compared relative to it.
    np.testing.assert_allclose(out["boxes"], expected_boxes.numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(out["scores"], torch.sigmoid(head["cls_logits"]).numpy(), rtol=0, atol=1e-4)
