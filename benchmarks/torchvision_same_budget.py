"""Train torchvision's RetinaNet on our data for the same number of images as our recipe, and score it as ours.

The model: ``torchvision.models.detection.RetinaNet`` with a ResNet-{depth} FPN backbone built from scratch
(``weights=None``: nothing is downloaded): P3-P5 from C3-C5 plus P6/P7 from C5 (``LastLevelP6P7``), the
same FPN width, anchors (3 scales x 3 ratios per level; sizes s * 2^(k/3) unrounded, where ours truncate them
to integers as torchvision's own builder does) and GroupNorm head as the recipe it is compared with,
and torchvision's own losses (sigmoid focal loss + L1 box loss, both over foreground anchors). Its transform
is told min_size = max_size = the input size and mean 0 / std 1, so it neither resizes nor normalises: both
models see the same tensors.

The training is ours, so that only the model and its losses differ: ``DetectionDataset`` (hflip, batch order
and augmentation from the seed), AdamW without decay on biases and norms, linear warm-up and the lr
schedule of ``retina-deploy train --schedule`` (cosine by default) ending at the run's length, gradient
clipping at 10, the classification loss's weight (``--cls-loss-weight``), the focal loss's alpha and its
exponent at anchors on an object (``--focal-loss-alpha``, ``--focal-loss-gamma-fg``: torchvision's classification
loss with these values), bf16 autocast (``--amp bf16``), and (with ``--ema-decay``) the same moving average.
Validation uses ``evaluation.loop.evaluate_detector``, the COCO evaluation of ``retina-deploy eval``, every
``--val-every`` iterations and at the end; with an average both the averaged and the trained weights are scored.

    python benchmarks/torchvision_same_budget.py --images train/images --annotations train/annotations.json \\
        --val-images val/images --val-annotations val/annotations.json --iters 1250 --json tv.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import resnet
from torchvision.models.detection import RetinaNet as TorchvisionRetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import sigmoid_focal_loss
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from retina_deploy.data.coco import load_coco
from retina_deploy.data.dataset import DetectionDataset, collate_detections
from retina_deploy.evaluation.loop import evaluate_detector
from retina_deploy.inference.torch_backend import TorchBackend, checkpoint_spec
from retina_deploy.model.config import BACKBONE_CHANNELS
from retina_deploy.runtime.detector import Detector
from retina_deploy.runtime.image.preprocess import PreprocessConfig
from retina_deploy.training.config import SCHEDULES
from retina_deploy.training.distributed import BatchList, epoch_batches
from retina_deploy.training.ema import ModelEMA
from retina_deploy.training.optim import LRSchedule, build_optimizer, clamp_warmup, set_lr

ANCHOR_SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
ASPECT_RATIOS = (0.5, 1.0, 2.0)


def torchvision_retinanet(
    backbone: str, num_classes: int, size: int, *, fpn_channels: int, anchor_sizes: tuple[int, ...]
) -> TorchvisionRetinaNet:
    """torchvision's RetinaNet, random init, ResNet ``backbone`` with trainable BatchNorm, GroupNorm(32) head."""
    body = getattr(resnet, backbone)(weights=None, norm_layer=nn.BatchNorm2d)
    c3, c4, c5 = BACKBONE_CHANNELS[backbone][-3:]
    fpn = BackboneWithFPN(
        body,
        return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
        in_channels_list=[c3, c4, c5],
        out_channels=fpn_channels,
        extra_blocks=LastLevelP6P7(c5, fpn_channels),  # P6 from C5, as in the paper and our model
    )
    anchors = AnchorGenerator(
        sizes=tuple(tuple(s * k for k in ANCHOR_SCALES) for s in anchor_sizes),
        aspect_ratios=(ASPECT_RATIOS,) * len(anchor_sizes),
    )
    head = RetinaNetHead(fpn_channels, anchors.num_anchors_per_location()[0], num_classes, partial(nn.GroupNorm, 32))
    return TorchvisionRetinaNet(
        fpn,
        num_classes,
        min_size=size,
        max_size=size,
        image_mean=[0.0] * 3,
        image_std=[1.0] * 3,
        anchor_generator=anchors,
        head=head,
    )


def set_focal_loss(model: TorchvisionRetinaNet, alpha: float, gamma_fg: float) -> None:
    """torchvision's classification loss with ``alpha`` (not 0.25) and exponent ``gamma_fg`` (not 2) on the anchors
    matched to an object, as ``retina-deploy train --focal-loss-alpha --focal-loss-gamma-fg``; otherwise the same:
    summed over the non-ignored anchors and classes, divided by the image's foreground anchors, averaged over images.
    """
    head = model.head.classification_head

    def compute_loss(targets, head_outputs, matched_idxs):
        losses = []
        for target, logits, matched in zip(targets, head_outputs["cls_logits"], matched_idxs, strict=True):
            fg = matched >= 0
            one_hot = torch.zeros_like(logits)
            one_hot[fg, target["labels"][matched[fg]]] = 1.0
            bg = (matched != head.BETWEEN_THRESHOLDS) & ~fg
            on_bg = sigmoid_focal_loss(logits[bg], one_hot[bg], alpha=alpha, reduction="sum")
            on_fg = sigmoid_focal_loss(logits[fg], one_hot[fg], alpha=alpha, gamma=gamma_fg, reduction="sum")
            losses.append((on_bg + on_fg) / max(1, int(fg.sum())))
        return sum(losses) / len(targets)

    head.compute_loss = compute_loss


class BatchedInput(nn.Module):
    """torchvision's model behind our models' inference call: images [B, 3, H, W] -> list of dicts."""

    def __init__(self, model: TorchvisionRetinaNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return self.model(list(images))


def evaluate(model: TorchvisionRetinaNet, class_names, preprocess: PreprocessConfig, val_coco) -> dict:
    was_training = model.training
    spec = checkpoint_spec(model, class_names, preprocess)  # torchvision's post-processing settings
    backend = TorchBackend(BatchedInput(model), input_size=preprocess.size, max_dets=spec.nms.max_dets)
    try:
        metrics, _ = evaluate_detector(Detector(backend, spec), val_coco, batch_size=4)
    finally:
        model.train(was_training)
    return {"AP": metrics["AP"], "AP50": metrics["AP50"]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--annotations", type=Path, required=True)
    p.add_argument("--val-images", type=Path, required=True)
    p.add_argument("--val-annotations", type=Path, required=True)
    p.add_argument("--backbone", default="resnet18", help="default: %(default)s")
    p.add_argument("--size", type=int, default=256, help="square input side, multiple of 128; default: %(default)s")
    p.add_argument("--fpn-channels", type=int, default=64, help="default: %(default)s")
    p.add_argument("--anchor-sizes", type=int, nargs=5, default=[16, 32, 64, 128, 256], help="default: 16 .. 256")
    p.add_argument("--batch-size", type=int, default=4, help="default: %(default)s")
    p.add_argument("--iters", type=int, default=1250, help="run length; default: %(default)s (5,000 images)")
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW peak lr; default: %(default)s")
    p.add_argument("--schedule", choices=SCHEDULES, default="cosine", help="lr decay; default: %(default)s")
    p.add_argument("--weight-decay", type=float, default=0.05, help="default: %(default)s")
    p.add_argument("--warmup-iters", type=int, default=50, help="default: %(default)s")
    p.add_argument(
        "--cls-loss-weight", type=float, default=1.0, help="weight of the classification loss; default: %(default)s"
    )
    p.add_argument("--focal-loss-alpha", type=float, default=0.25, help="default: %(default)s")
    p.add_argument(
        "--focal-loss-gamma-fg",
        type=float,
        default=None,
        help="focal exponent at anchors on an object (default: 2, torchvision's everywhere)",
    )
    p.add_argument(
        "--amp", choices=["none", "bf16"], default="none", help="bf16 autocast (CPUs with native bf16); default: none"
    )
    p.add_argument("--grad-clip", type=float, default=10.0, help="default: %(default)s")
    p.add_argument("--ema-decay", type=float, default=None, help="also average the weights (default: none)")
    p.add_argument("--hflip", type=float, default=0.5, help="default: %(default)s")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.add_argument("--val-every", type=int, default=400, help="iterations between validations; default: %(default)s")
    p.add_argument("--json", type=Path, default=None, help="write the curve here (rewritten after each validation)")
    args = p.parse_args(argv)
    if not (args.cls_loss_weight > 0 and args.cls_loss_weight != float("inf")):
        p.error(f"--cls-loss-weight must be a finite number > 0, got {args.cls_loss_weight}")
    if args.focal_loss_gamma_fg is not None and not 0 <= args.focal_loss_gamma_fg < float("inf"):
        p.error(f"--focal-loss-gamma-fg must be a finite number >= 0, got {args.focal_loss_gamma_fg}")
    if not 0 <= args.focal_loss_alpha <= 1:
        p.error(f"--focal-loss-alpha must be in [0, 1], got {args.focal_loss_alpha}")
    return args


def run(args: argparse.Namespace) -> dict:
    """Train for ``args.iters`` iterations, validating along the way; the record of the run."""
    preprocess = PreprocessConfig(size=(args.size, args.size))
    train_coco = load_coco(args.images, args.annotations)
    val_coco = load_coco(args.val_images, args.val_annotations)
    dataset = DetectionDataset(train_coco, preprocess, train=True, hflip_prob=args.hflip, seed=args.seed)
    torch.manual_seed(args.seed)
    model = torchvision_retinanet(
        args.backbone,
        train_coco.num_classes,
        args.size,
        fpn_channels=args.fpn_channels,
        anchor_sizes=tuple(args.anchor_sizes),
    ).train()
    if args.focal_loss_gamma_fg is not None or args.focal_loss_alpha != 0.25:
        gamma_fg = 2.0 if args.focal_loss_gamma_fg is None else args.focal_loss_gamma_fg
        set_focal_loss(model, args.focal_loss_alpha, gamma_fg)
    optimizer = build_optimizer(model, name="adamw", lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    schedule = LRSchedule(args.lr, args.schedule, args.iters, clamp_warmup(args.warmup_iters, args.iters))
    ema = None if args.ema_decay is None else ModelEMA(model, args.ema_decay)
    record = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "env": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        },
        "curve": [],
    }
    iteration, epoch, start = 0, 0, time.perf_counter()
    while iteration < args.iters:
        dataset.set_epoch(epoch)
        batches = epoch_batches(len(dataset), batch_size=args.batch_size, seed=args.seed, epoch=epoch)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=BatchList(batches), collate_fn=collate_detections, generator=torch.Generator()
        )
        for images, targets in loader:
            set_lr(optimizer, schedule.lr(iteration))
            tv_targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp == "bf16"):
                losses = model(list(images), tv_targets)
            total = args.cls_loss_weight * losses["classification"] + losses["bbox_regression"]
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            iteration += 1
            if ema is not None:
                ema.update(model)
            if iteration % 50 == 0:
                print(
                    f"iteration {iteration}: loss {total.item():.4f} ({time.perf_counter() - start:.0f} s)", flush=True
                )
            if iteration % args.val_every == 0 or iteration == args.iters:
                point = {"iteration": iteration, "images_seen": iteration * args.batch_size}
                point["raw"] = evaluate(model, train_coco.class_names, preprocess, val_coco)
                if ema is not None:
                    point["ema"] = evaluate(ema.module, train_coco.class_names, preprocess, val_coco)
                point["seconds"] = round(time.perf_counter() - start, 1)
                record["curve"].append(point)
                print(json.dumps(point), flush=True)
                if args.json is not None:
                    args.json.write_text(json.dumps(record, indent=2) + "\n")
            if iteration >= args.iters:
                break
        epoch += 1
    return record


def main(argv: list[str] | None = None) -> dict:
    return run(parse_args(argv))


if __name__ == "__main__":
    main()
