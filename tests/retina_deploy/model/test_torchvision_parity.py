"""torchvision RetinaNet weights -> convert_torchvision -> our model gives torchvision's outputs.

Seeded random weights (no download); BatchNorm statistics and classifier biases are randomised so
that the comparison covers every parameter and produces detections above the score threshold.
What is defined is compared tightly (head outputs, anchors, decoded boxes before NMS); after NMS
only the flips that tolerance explains are allowed (tests/testkit/detection_compare.py): with random weights
hundreds of boxes overlap near the NMS threshold, and CPUs whose kernels round differently (AVX2 vs
AVX-512) decide some of them differently.
"""

import pytest
import torch
from testkit.detection_compare import compare_detections
from testkit.torchvision_models import make_torchvision_retinanet
from torchvision.models.detection import RetinaNet as TVRetinaNet
from torchvision.models.detection.image_list import ImageList

from retina_deploy.model.box_coder import decode
from retina_deploy.model.checkpoint import load_checkpoint
from retina_deploy.model.convert import convert_torchvision

TOL = 1e-4


def torchvision_outputs(model: TVRetinaNet, images: torch.Tensor):
    """Head outputs, anchors and detections of torchvision's model on already-normalised images."""
    sizes = [tuple(images.shape[-2:])] * images.shape[0]
    with torch.no_grad():
        features = list(model.backbone(images).values())
        head = model.head(features)
        anchors = model.anchor_generator(ImageList(images, sizes), features)
    per_level = [f.shape[-2] * f.shape[-1] * 9 for f in features]
    return head, anchors[0], torchvision_postprocess(model, head, anchors, per_level, sizes)


def torchvision_postprocess(model: TVRetinaNet, head: dict, anchors: list, per_level: list[int], sizes: list) -> list:
    """torchvision's own score threshold, top-k per level, decode and NMS on given head outputs and anchors."""
    split_head = {k: list(v.split(per_level, dim=1)) for k, v in head.items()}
    split_anchors = [list(a.split(per_level)) for a in anchors]
    with torch.no_grad():
        return model.postprocess_detections(split_head, split_anchors, sizes)


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

    # decoded boxes before NMS: torchvision's coder on its head vs ours on ours
    for n in range(images.shape[0]):
        theirs = tv.box_coder.decode_single(head["bbox_regression"][n], tv_anchors)
        mine = decode(torch.cat(box, 1)[n], torch.cat(anchors))
        torch.testing.assert_close(mine, theirs, rtol=TOL, atol=TOL * max(size))

    for d, t in zip(ours, tv_dets, strict=True):
        assert t["boxes"].shape[0] > 10, "the test needs detections to compare"
        # Head outputs differ by ~1e-5 (FrozenBatchNorm vs BatchNorm arithmetic); exp() in the box
        # decode scales that by the box size, so boxes are compared relative to the image size.
        result = compare_detections(
            d,
            t,
            nms_thresh=tv.nms_thresh,
            box_tol=TOL * max(size),
            score_tol=TOL,
            score_thresh=tv.score_thresh,
            max_dets=tv.detections_per_img,
        )
        print(f"resnet{depth} v2={v2}: {result.summary()}")
        record_property("nms_flips", len(result.flips))


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


def test_detection_comparison_allows_tolerance_flips_and_catches_real_errors(record_property):
    """Noise of 1e-5 on the head outputs (what another CPU's kernels do) passes; a real error fails.

    Real errors: anchors in the wrong order within a location, a decode that swaps x and y, class ids
    off by one. Each changes the detections beyond anything tolerance explains.
    """
    tv = make_torchvision_retinanet(18, num_classes=7, v2=False, seed=18)
    images = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(4))
    head, anchors, (ref,) = torchvision_outputs(tv, images)
    assert ref["boxes"].shape[0] > 50, "the test needs many overlapping detections"
    per_level = [n * 9 for n in (32 * 32, 16 * 16, 8 * 8, 4 * 4, 2 * 2)]
    assert sum(per_level) == anchors.shape[0]

    def compare(dets: dict):
        return compare_detections(
            dets,
            ref,
            nms_thresh=tv.nms_thresh,
            box_tol=TOL * 256,
            score_tol=TOL,
            score_thresh=tv.score_thresh,
            max_dets=tv.detections_per_img,
        )

    def run(head_: dict, anchors_: torch.Tensor) -> dict:
        return torchvision_postprocess(tv, head_, [anchors_], per_level, [(256, 256)])[0]

    flips = []
    for seed in range(4):
        g = torch.Generator().manual_seed(100 + seed)
        noisy = {k: v + 1e-5 * torch.randn(v.shape, generator=g) for k, v in head.items()}
        flips.append(len(compare(run(noisy, anchors)).flips))
    record_property("flips_under_1e-5_noise", flips)
    print(f"{ref['boxes'].shape[0]} detections; tolerance flips under 1e-5 noise, 4 seeds: {flips}")

    anchors_reversed = anchors.reshape(-1, 9, 4).flip(1).reshape(-1, 4)
    swapped_xy = {**head, "bbox_regression": head["bbox_regression"][..., [1, 0, 3, 2]]}
    class_shift = {**head, "cls_logits": head["cls_logits"].roll(1, dims=-1)}
    for broken in (run(head, anchors_reversed), run(swapped_xy, anchors), run(class_shift, anchors)):
        with pytest.raises(AssertionError):
            compare(broken)
