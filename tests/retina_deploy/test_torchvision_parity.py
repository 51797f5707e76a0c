"""torchvision RetinaNet weights -> convert_torchvision -> our model gives torchvision's outputs.

Seeded random weights (no download); BatchNorm statistics and classifier biases are randomised so
that the comparison covers every parameter and produces detections above the score threshold.
"""

import pytest
import torch
from torchvision.models.detection import RetinaNet as TVRetinaNet
from torchvision.models.detection.image_list import ImageList
from torchvision_models import make_torchvision_retinanet

from retina_deploy.checkpoint import load_checkpoint
from retina_deploy.convert import convert_torchvision

TOL = 1e-4


def torchvision_outputs(model: TVRetinaNet, images: torch.Tensor):
    """Head outputs, anchors and detections of torchvision's model on already-normalised images."""
    sizes = [tuple(images.shape[-2:])] * images.shape[0]
    with torch.no_grad():
        features = list(model.backbone(images).values())
        head = model.head(features)
        anchors = model.anchor_generator(ImageList(images, sizes), features)
        per_level = [f.shape[-2] * f.shape[-1] * 9 for f in features]
        split_head = {k: list(v.split(per_level, dim=1)) for k, v in head.items()}
        split_anchors = [list(a.split(per_level)) for a in anchors]
        dets = model.postprocess_detections(split_head, split_anchors, sizes)
    return head, anchors[0], dets


def assert_same_detections(ours: dict, theirs: dict, box_tol: float) -> None:
    """Same detections one to one: label equal, score within TOL, box within box_tol px.

    Scores that tie to ~1e-7 may come out in either order, so detections are paired, not zipped.
    """
    assert ours["boxes"].shape == theirs["boxes"].shape
    torch.testing.assert_close(ours["scores"], theirs["scores"], rtol=0, atol=TOL)
    unused = set(range(theirs["boxes"].shape[0]))
    for i in range(ours["boxes"].shape[0]):
        near = [
            j
            for j in unused
            if theirs["labels"][j] == ours["labels"][i]
            and abs(theirs["scores"][j] - ours["scores"][i]) <= TOL
            and (theirs["boxes"][j] - ours["boxes"][i]).abs().max() <= box_tol
        ]
        assert near, f"detection {i} ({ours['labels'][i]}, {ours['scores'][i]:.4f}, {ours['boxes'][i]}) has no twin"
        unused.remove(near[0])


@pytest.mark.parametrize(
    "depth,v2,size",
    [(50, False, (256, 384)), (50, True, (256, 256)), pytest.param(101, False, (256, 256), marks=pytest.mark.slow)],
    ids=["resnet50-v1", "resnet50-v2-groupnorm", "resnet101-v1"],
)
def test_converted_weights_match_torchvision(tmp_path, depth, v2, size, record_property):
    tv = make_torchvision_retinanet(depth, num_classes=7, v2=v2, seed=depth)
    src = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), src)
    model, info = load_checkpoint(convert_torchvision(src, tmp_path / "ckpt"))
    assert info.model.backbone == f"resnet{depth}"
    assert info.model.p6_from == ("c5" if v2 else "p5")
    assert info.model.head_norm == ("groupnorm" if v2 else "none")

    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(3))
    head, tv_anchors, tv_dets = torchvision_outputs(tv, images)
    with torch.no_grad():
        cls, box, anchors = model.forward_levels(images)
        ours = model(images)
    cls_diff = (torch.cat(cls, 1) - head["cls_logits"]).abs().max().item()
    box_diff = (torch.cat(box, 1) - head["bbox_regression"]).abs().max().item()
    record_property("max_abs_diff_cls_logits", cls_diff)
    record_property("max_abs_diff_bbox_regression", box_diff)
    print(f"resnet{depth} v2={v2}: max |cls diff| {cls_diff:.2e}, max |box diff| {box_diff:.2e}")
    assert cls_diff < TOL and box_diff < TOL
    torch.testing.assert_close(torch.cat(anchors), tv_anchors, rtol=0, atol=0)

    for d, t in zip(ours, tv_dets, strict=True):
        assert t["boxes"].shape[0] > 10, "the test needs detections to compare"
        # Head outputs differ by ~1e-5 (FrozenBatchNorm vs BatchNorm arithmetic); exp() in the box
        # decode scales that by the box size, so boxes are compared relative to the image size.
        assert_same_detections(d, t, box_tol=TOL * max(size))


def test_old_torchvision_key_names_convert(tmp_path):
    """Files saved by torchvision < 0.13 (the published COCO weights) use older head/FPN key names."""
    tv = make_torchvision_retinanet(50, num_classes=3, v2=False, seed=5)
    state = tv.state_dict()
    old = {}
    for k, v in state.items():
        k = k.replace(".conv.0.0.", ".conv.0.").replace(".conv.1.0.", ".conv.2.")
        k = k.replace(".conv.2.0.", ".conv.4.").replace(".conv.3.0.", ".conv.6.")
        for blocks in ("inner_blocks", "layer_blocks"):
            for i in range(3):
                k = k.replace(f"fpn.{blocks}.{i}.0.", f"fpn.{blocks}.{i}.")
        old[k] = v
    assert "head.classification_head.conv.6.weight" in old and "backbone.fpn.inner_blocks.2.weight" in old
    torch.save({"model": old, "epoch": 3}, tmp_path / "old.pth")  # reference-training layout
    model, _ = load_checkpoint(convert_torchvision(tmp_path / "old.pth", tmp_path / "ckpt"))
    ours = model.state_dict()
    for k, v in state.items():
        if not k.endswith("num_batches_tracked"):
            assert torch.equal(ours[k], v), k
