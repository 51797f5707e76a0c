"""benchmarks/torchvision_same_budget.py: its focal loss with alpha 0.25 and gamma 2 on objects is torchvision's own."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
try:
    import torchvision_same_budget as tsb
finally:
    sys.path.pop(0)


def _classification_loss(gamma_fg: float | None, alpha: float = 0.25) -> float:
    torch.manual_seed(0)
    model = tsb.torchvision_retinanet("resnet18", 3, 128, fpn_channels=64, anchor_sizes=(16, 32, 64, 128, 256))
    if gamma_fg is not None:
        tsb.set_focal_loss(model, alpha, gamma_fg)
    images = list(torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1)))
    targets = [
        {"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0], [70.0, 20.0, 120.0, 50.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[30.0, 40.0, 50.0, 64.0]]), "labels": torch.tensor([1])},
    ]
    with torch.no_grad():
        return model.train()(images, targets)["classification"].item()


def test_alpha_025_gamma_fg_2_is_torchvisions_own_loss_and_others_change_it():
    own = _classification_loss(None)
    assert _classification_loss(2.0) == pytest.approx(own, rel=1e-5)
    assert _classification_loss(2.0, alpha=0.5) != pytest.approx(own, rel=1e-3)
    assert _classification_loss(0.0) > own * 1.01  # (1 - p_t)^gamma < 1: without it on the objects, more loss
