"""Model pieces against hand-computed values: anchors, box coding, focal loss, matching, shapes."""

import math

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss as tv_focal

from retina_deploy.core.errors import ConfigError
from retina_deploy.model import box_coder, build_model
from retina_deploy.model.anchors import anchors_for_grids, cell_anchors, grids_for_input, level_scales
from retina_deploy.model.config import ModelConfig
from retina_deploy.model.loss import focal_loss_per_anchor, sigmoid_focal_loss
from retina_deploy.model.matcher import BACKGROUND, IGNORE, match_anchors


def test_level_scales_truncate_like_torchvision():
    # 32 * 2^(1/3) = 40.3 -> 40, 32 * 2^(2/3) = 50.8 -> 50; 512 * 2^(1/3) = 645.1, 512 * 2^(2/3) = 812.7
    assert level_scales(32) == (32, 40, 50)
    assert level_scales(512) == (512, 645, 812)


def test_cell_anchors_hand_computed():
    # ratio h/w = 0.5: w = s * sqrt(2), h = s / sqrt(2); s = 32 -> 45.25 x 22.63 -> half 22.6, 11.3 -> round 23, 11
    # ratio 1: half = s / 2 -> 16, 20, 25; ratio 2 is ratio 0.5 transposed. Ratio-major order.
    expected = torch.tensor(
        [
            [-23, -11, 23, 11], [-28, -14, 28, 14], [-35, -18, 35, 18],
            [-16, -16, 16, 16], [-20, -20, 20, 20], [-25, -25, 25, 25],
            [-11, -23, 11, 23], [-14, -28, 14, 28], [-18, -35, 18, 35],
        ],
        dtype=torch.float32,
    )  # fmt: skip
    torch.testing.assert_close(cell_anchors(32), expected)


def test_grid_anchor_order_and_shift():
    # 256 x 256 input: P3 grid 32 x 32, stride 8. Cell (y=1, x=2), anchor 4 (ratio 1, scale 40):
    # centre (2 * 8, 1 * 8) = (16, 8), half size 20 -> [-4, -12, 36, 28].
    grids = grids_for_input((256, 256))
    assert grids == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    levels = anchors_for_grids((32, 64, 128, 256, 512), (256, 256), grids)
    assert [a.shape[0] for a in levels] == [32 * 32 * 9, 16 * 16 * 9, 8 * 8 * 9, 4 * 4 * 9, 2 * 2 * 9]
    torch.testing.assert_close(levels[0][(1 * 32 + 2) * 9 + 4], torch.tensor([-4.0, -12.0, 36.0, 28.0]))
    # P7 stride 128, cell (1, 1), anchor 0 (ratio 0.5, scale 512): half w 362.04 -> 362, half h 181.02 -> 181
    torch.testing.assert_close(levels[4][3 * 9 + 0], torch.tensor([128 - 362.0, 128 - 181.0, 128 + 362.0, 128 + 181.0]))


def test_box_coder_hand_computed_and_round_trip():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 20.0]])  # w 10, h 20, centre (5, 10)
    boxes = torch.tensor([[2.0, 4.0, 12.0, 24.0], [0.0, 0.0, 20.0, 10.0]])
    # box 1: centre (7, 14) -> dx 2/10, dy 4/20, same size; box 2: centre (10, 5), w 20, h 10
    expected = torch.tensor([[0.2, 0.2, 0.0, 0.0], [0.5, -0.25, math.log(2.0), math.log(0.5)]])
    deltas = box_coder.encode(boxes, anchors)
    torch.testing.assert_close(deltas, expected)
    torch.testing.assert_close(box_coder.decode(deltas, anchors), boxes)
    g = torch.Generator().manual_seed(0)
    a = torch.rand(100, 2, generator=g) * 100
    anchors = torch.cat([a, a + 1 + torch.rand(100, 2, generator=g) * 50], 1)
    d = torch.randn(100, 4, generator=g)
    torch.testing.assert_close(box_coder.encode(box_coder.decode(d, anchors), anchors), d, atol=1e-4, rtol=1e-4)


def test_box_coder_clamps_width_and_height():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    boxes = box_coder.decode(torch.tensor([[0.0, 0.0, 10.0, 50.0]]), anchors)
    # exp(clamp) = 1000 / 16 = 62.5 -> 625 px wide and tall around the centre (5, 5)
    torch.testing.assert_close(boxes, torch.tensor([[5 - 312.5, 5 - 312.5, 5 + 312.5, 5 + 312.5]]))
    assert torch.isfinite(box_coder.decode(torch.full((1, 4), 1e4), anchors)).all()


def test_focal_loss_matches_torchvision():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 7, generator=g) * 3
    targets = (torch.rand(64, 7, generator=g) > 0.8).float()
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets), tv_focal(logits, targets, reduction="none"))
    torch.testing.assert_close(
        sigmoid_focal_loss(logits, targets, alpha=-1, gamma=0.5), tv_focal(logits, targets, alpha=-1, gamma=0.5)
    )


@pytest.mark.parametrize("gamma_fg", [None, 2.0, 0.0, 0.5])
def test_focal_loss_per_anchor_is_the_element_wise_sum(gamma_fg):
    # Two images of 30 anchors, 4 classes; on foreground anchors the exponent is gamma_fg (None: gamma).
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 30, 4, generator=g) * 3
    foreground = torch.rand(2, 30, generator=g) > 0.7
    b, n = foreground.nonzero(as_tuple=True)
    fg_classes = torch.randint(0, 4, (b.numel(),), generator=g)
    one_hot = torch.zeros_like(logits)
    one_hot[b, n, fg_classes] = 1.0
    expected = sigmoid_focal_loss(logits, one_hot, alpha=0.25, gamma=2.0).sum(-1)
    on_objects = sigmoid_focal_loss(logits, one_hot, alpha=0.25, gamma=2.0 if gamma_fg is None else gamma_fg)
    expected[foreground] = on_objects.sum(-1)[foreground]
    got = focal_loss_per_anchor(logits, foreground, fg_classes, 0.25, 2.0, gamma_fg)
    torch.testing.assert_close(got, expected)


def test_gamma_fg_0_gives_wrong_classes_on_an_object_the_cross_entropy_gradient():
    # One anchor on an object of class 0 where class 1 scores p = 0.2. Cross-entropy pushes class 1's logit
    # down by (1 - alpha) p = 0.15; the focal term (gamma 2) by 0.0167, nine times less.
    p = 0.2
    for gamma_fg, expected in ((0.0, 0.75 * p), (None, 0.75 * (2 * p * p * (1 - p) * -math.log(1 - p) + p**3))):
        logits = torch.tensor([[[0.0, math.log(p / (1 - p))]]], requires_grad=True)
        loss = focal_loss_per_anchor(logits, torch.tensor([[True]]), torch.tensor([0]), 0.25, 2.0, gamma_fg)
        loss.sum().backward()
        assert logits.grad[0, 0, 1].item() == pytest.approx(expected, rel=1e-5)


ANCHORS = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],  # IoU 1.0 with the box
        [0.0, 0.0, 10.0, 5.0],  # IoU 0.5 -> foreground (>= 0.5)
        [0.0, 0.0, 10.0, 4.5],  # IoU 0.45 -> ignored
        [0.0, 0.0, 10.0, 3.0],  # IoU 0.3 -> background
        [50.0, 50.0, 60.0, 60.0],  # no overlap -> background
    ]
)


def test_matching_thresholds():
    m = match_anchors(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), ANCHORS, fg_iou_thresh=0.5, bg_iou_thresh=0.4)
    assert m.tolist() == [0, 0, IGNORE, BACKGROUND, BACKGROUND]


def test_matching_low_quality_match_and_empty_targets():
    # The box's best anchor has IoU 0.3 only, but it still gets that anchor (low-quality match).
    m = match_anchors(torch.tensor([[0.0, 0.0, 10.0, 3.0]]), ANCHORS[3:], fg_iou_thresh=0.5, bg_iou_thresh=0.4)
    assert m.tolist() == [0, BACKGROUND]
    m = match_anchors(torch.zeros(0, 4), ANCHORS, fg_iou_thresh=0.5, bg_iou_thresh=0.4)
    assert m.tolist() == [BACKGROUND] * 5


def test_matching_degenerate_box_claims_nothing():
    gt = torch.tensor([[100.0, 100.0, 100.0, 120.0], [0.0, 0.0, 10.0, 10.0]])  # first box has zero width
    m = match_anchors(gt, ANCHORS, fg_iou_thresh=0.5, bg_iou_thresh=0.4)
    assert m.tolist() == [1, 1, IGNORE, BACKGROUND, BACKGROUND]


def test_matching_crowd_region_is_ignored():
    crowd = torch.tensor([[50.0, 50.0, 60.0, 60.0]])
    m = match_anchors(torch.zeros(0, 4), ANCHORS, fg_iou_thresh=0.5, bg_iou_thresh=0.4, crowd_boxes=crowd)
    assert m.tolist() == [BACKGROUND] * 4 + [IGNORE]


def _targets(boxes, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}


def test_losses_empty_targets_and_gradients():
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18", num_classes=3)).train()
    images = torch.randn(2, 3, 128, 128)
    losses = model(images, [_targets([], []), _targets([], [])])
    assert losses["loss_box"].item() == 0.0
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"].item() > 0
    losses = model(images, [_targets([[10, 10, 60, 70]], [2]), _targets([], [])])
    assert losses["loss_box"].item() > 0
    (losses["loss_cls"] + losses["loss_box"]).backward()
    assert model.head.regression_head.bbox_reg.weight.grad.abs().sum() > 0


def test_box_head_gets_a_gradient_without_foreground():
    # DistributedDataParallel fails on the next step if a parameter got no gradient in this one.
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18", num_classes=3)).train()
    losses = model(torch.randn(2, 3, 128, 128), [_targets([], []), _targets([], [])])
    (losses["loss_cls"] + losses["loss_box"]).backward()
    assert losses["loss_box"].item() == 0.0
    assert all(p.grad is not None for p in model.parameters())


def test_giou_loss_zero_for_perfect_boxes():
    from retina_deploy.model.loss import _box_loss

    cfg = ModelConfig(backbone="resnet18", num_classes=1, box_loss="giou")
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[2.0, 2.0, 14.0, 12.0]])
    perfect = box_coder.encode(gt, anchors)
    assert _box_loss(perfect, gt, anchors, cfg).item() == pytest.approx(0.0, abs=1e-6)
    assert _box_loss(torch.zeros(1, 4), gt, anchors, cfg).item() > 0


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_output_shapes_every_depth(backbone):
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, num_classes=4)).eval()
    with torch.no_grad():
        cls, box, anchors = model.forward_levels(torch.randn(1, 3, 128, 256))
    # 128 x 256 input: grids (16, 32), (8, 16), (4, 8), (2, 4), (1, 2) -> 9 anchors each cell
    cells = [16 * 32, 8 * 16, 4 * 8, 2 * 4, 1 * 2]
    assert [c.shape for c in cls] == [torch.Size([1, n * 9, 4]) for n in cells]
    assert [b.shape for b in box] == [torch.Size([1, n * 9, 4]) for n in cells]
    assert [a.shape[0] for a in anchors] == [n * 9 for n in cells]


def test_eval_detections_contract():
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet18", num_classes=3, detections_per_img=20)
    model = build_model(cfg).eval()
    torch.nn.init.constant_(model.head.classification_head.cls_logits.bias, 0.0)  # scores around 0.5
    with torch.no_grad():
        dets = model(torch.randn(2, 3, 128, 128), image_sizes=[(128, 128), (100, 60)])
    for d, (h, w) in zip(dets, [(128, 128), (100, 60)], strict=True):
        assert 0 < d["boxes"].shape[0] <= 20
        assert (d["scores"][:-1] >= d["scores"][1:]).all()
        assert (d["boxes"][:, 0::2] <= w).all() and (d["boxes"][:, 1::2] <= h).all() and (d["boxes"] >= 0).all()
        assert d["labels"].min() >= 0 and d["labels"].max() < 3


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ConfigError, match="unknown model config key"):
        ModelConfig.from_dict({"backbone": "resnet18", "num_clases": 3})
    with pytest.raises(ConfigError, match="resnet99"):
        ModelConfig(backbone="resnet99")
    with pytest.raises(ConfigError, match="bg_iou_thresh"):
        ModelConfig(fg_iou_thresh=0.3, bg_iou_thresh=0.4)
    assert ModelConfig.from_dict(ModelConfig(backbone="resnet18").to_dict()) == ModelConfig(backbone="resnet18")


@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
def test_backbone_weights_from_a_torchvision_resnet_file(tmp_path, norm):
    """An ImageNet-style torchvision file loads into the body (fc dropped); a file of another depth is refused."""
    from torchvision.models import resnet18, resnet34

    from retina_deploy.core.errors import CheckpointError

    torch.manual_seed(0)
    resnet = resnet18(weights=None)
    torch.save(resnet.state_dict(), tmp_path / "r18.pth")
    cfg = ModelConfig(backbone="resnet18", backbone_norm=norm)
    model = build_model(cfg, backbone_weights=str(tmp_path / "r18.pth"))
    body = model.backbone.body.state_dict()
    for k, v in resnet.state_dict().items():
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked"):
            assert torch.equal(body[k], v), k
    torch.save(resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(CheckpointError, match="r34.pth"):
        build_model(cfg, backbone_weights=str(tmp_path / "r34.pth"))
