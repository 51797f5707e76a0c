"""Models and inputs the GPU check measures: the project's own ``build_model``, synthetic batches, FLOP counts."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from retina_deploy.model import build_model
from retina_deploy.model.config import ModelConfig

NUM_CLASSES = 80


def random_checkpoint(out_dir: Path, *, backbone: str, size: tuple[int, int]) -> Path:
    """A seeded random-weights 80-class checkpoint whose scores spread above the threshold (many NMS candidates)."""
    from retina_deploy.model.checkpoint import save_checkpoint
    from retina_deploy.runtime.image.preprocess import PreprocessConfig

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, num_classes=NUM_CLASSES))
    with torch.no_grad():
        model.head.classification_head.cls_logits.weight.normal_(0, 0.02)
        model.head.classification_head.cls_logits.bias.fill_(-3.0)
    names = [f"class{i}" for i in range(NUM_CLASSES)]
    return save_checkpoint(model, out_dir, class_names=names, preprocess=PreprocessConfig(size=size))


class NetworkCore(nn.Module):
    """Backbone + FPN + head of a RetinaNet: images [B, 3, H, W] -> (logits, deltas) [B, N, C], [B, N, 4].

    The part every backend runs (post-processing aside); what the latency and FLOP figures measure.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.head = model.head

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        cls_per_level, box_per_level = self.head(self.backbone(images))
        return torch.cat(cls_per_level, 1), torch.cat(box_per_level, 1)


def network_core(backbone: str, *, fpn_channels: int = 256) -> NetworkCore:
    """The inference core of a seeded random ``build_model`` RetinaNet (80 classes), in eval mode."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, num_classes=NUM_CLASSES, fpn_channels=fpn_channels))
    return NetworkCore(model).eval()


def count_flops(module: nn.Module, example: Tensor) -> int:
    """FLOPs of one forward of ``module`` on ``example`` (a multiply-add counts 2), by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(example)
    return int(counter.get_total_flops())


def synthetic_batch(
    batch: int, size: tuple[int, int], device: torch.device, *, seed: int = 0
) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """Images [B, 3, H, W] ~ N(0, 1) and 1..6 boxes per image (xyxy input pixels, sides >= 16 px), labels 0..79."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    images = torch.randn(batch, 3, h, w, generator=g)
    targets = []
    for _ in range(batch):
        n = int(torch.randint(1, 7, (1,), generator=g))
        wh = 16 + torch.rand(n, 2, generator=g) * (torch.tensor([w, h]) / 2 - 16)
        xy = torch.rand(n, 2, generator=g) * (torch.tensor([w, h]) - wh)
        targets.append(
            {
                "boxes": torch.cat([xy, xy + wh], 1).to(device),
                "labels": torch.randint(0, NUM_CLASSES, (n,), generator=g).to(device),
                "iscrowd": torch.zeros(n, dtype=torch.bool, device=device),
            }
        )
    return images.to(device), targets
