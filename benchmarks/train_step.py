"""Time training steps of our RetinaNet against torchvision's, on the same synthetic batch.

Both models: ResNet-{depth} + FPN P3-P7 (P6 from C5), trainable BatchNorm, 9 anchors, 4x256 heads,
focal loss + L1 box loss, SGD; each step is forward + loss + backward + optimizer step. torchvision is
given min_size = max_size = the input size and mean 0 / std 1, so its transform neither resizes nor
normalises (``--torchvision-call internals`` skips the transform altogether and calls backbone, head,
anchor generator and compute_loss as its forward does). Steps alternate between the two models (and
which goes first), so machine noise hits both alike.

    python benchmarks/train_step.py                       # resnet18, 256 px, batch 8, bf16 if native
    python benchmarks/train_step.py --amp none --json out.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.detection import RetinaNet as TorchvisionRetinaNet
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.image_list import ImageList
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from retina_deploy.model import build_model
from retina_deploy.model.config import BACKBONE_CHANNELS, ModelConfig
from retina_deploy.training.loop import cpu_supports_bf16


def synthetic_batch(batch: int, size: int, num_classes: int, seed: int) -> tuple[torch.Tensor, list[dict]]:
    """Images [B, 3, S, S] ~ N(0, 1) and 1..6 boxes per image (xyxy, sides 16..S/2 px), labels in 0..C-1."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    targets = []
    for _ in range(batch):
        n = int(torch.randint(1, 7, (1,), generator=g))
        wh = 16 + torch.rand(n, 2, generator=g) * (size / 2 - 16)
        xy = torch.rand(n, 2, generator=g) * (size - wh)
        labels = torch.randint(0, num_classes, (n,), generator=g)
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": labels})
    return images, targets


def torchvision_model(backbone: str, num_classes: int, size: int) -> TorchvisionRetinaNet:
    body = resnet_fpn_backbone(
        backbone_name=backbone,
        weights=None,
        norm_layer=nn.BatchNorm2d,
        trainable_layers=5,
        returned_layers=[2, 3, 4],
        extra_blocks=LastLevelP6P7(BACKBONE_CHANNELS[backbone][-1], 256),
    )
    return TorchvisionRetinaNet(
        body, num_classes, min_size=size, max_size=size, image_mean=[0.0] * 3, image_std=[1.0] * 3
    )


def torchvision_losses_internal(model: TorchvisionRetinaNet, images: torch.Tensor, targets: list[dict]) -> dict:
    """torchvision's training forward without its transform (the input is already the network input)."""
    features = list(model.backbone(images).values())
    head_outputs = model.head(features)
    image_list = ImageList(images, [tuple(images.shape[-2:])] * images.shape[0])
    anchors = model.anchor_generator(image_list, features)
    return model.compute_loss(targets, head_outputs, anchors)


def make_step(
    model: nn.Module, losses: Callable[[], dict], device: torch.device, amp: torch.dtype | None
) -> Callable[[], float]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext():
            loss = sum(losses().values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return step


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backbone", default="resnet18", help="default: %(default)s")
    p.add_argument("--size", type=int, default=256, help="input side in pixels (multiple of 128); default: %(default)s")
    p.add_argument("--batch", type=int, default=8, help="default: %(default)s")
    p.add_argument("--num-classes", type=int, default=80, help="default: %(default)s")
    p.add_argument("--amp", choices=("auto", "none", "bf16"), default="auto", help="auto: bf16 where native")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per model; default: %(default)s")
    p.add_argument("--steps", type=int, default=10, help="timed steps per model; default: %(default)s")
    p.add_argument("--torchvision-call", choices=("forward", "internals"), default="forward", help="see above")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="default: %(default)s")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p.parse_args(argv)


def time_steps(steps: dict[str, Callable[[], float]], warmup: int, timed: int) -> dict[str, list[float]]:
    """Seconds of each timed step per model; the models alternate, and so does which one goes first."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    order = list(steps)
    for i in range(warmup + timed):
        for name in order if i % 2 == 0 else order[::-1]:
            seconds = steps[name]()
            if i >= warmup:
                times[name].append(seconds)
    return times


def run(args: argparse.Namespace) -> dict:
    """Build both models on one synthetic batch, time them, return the results record."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    native_bf16 = device.type == "cuda" or cpu_supports_bf16()
    amp = torch.bfloat16 if args.amp == "bf16" or (args.amp == "auto" and native_bf16) else None
    torch.manual_seed(0)
    ours = build_model(ModelConfig(backbone=args.backbone, backbone_norm="bn", num_classes=args.num_classes))
    theirs = torchvision_model(args.backbone, args.num_classes, args.size)
    ours.to(device).train()
    theirs.to(device).train()
    images, targets = synthetic_batch(args.batch, args.size, args.num_classes, seed=0)
    images = images.to(device)
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    if args.torchvision_call == "forward":
        theirs_losses = lambda: theirs(list(images), targets)  # noqa: E731
    else:
        theirs_losses = lambda: torchvision_losses_internal(theirs, images, targets)  # noqa: E731
    steps = {
        "ours": make_step(ours, lambda: ours(images, targets), device, amp),
        "torchvision": make_step(theirs, theirs_losses, device, amp),
    }
    result = {
        "config": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "autocast": str(amp)},
        "env": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        },
    }
    for name, ts in time_steps(steps, args.warmup, args.steps).items():
        median = statistics.median(ts)
        result[name] = {"images_per_s": args.batch / median, "step_s_median": median, "step_s": ts}
    result["ratio_ours_over_torchvision"] = result["ours"]["images_per_s"] / result["torchvision"]["images_per_s"]
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    result = run(args)
    print(f"{args.backbone} {args.size}px batch {args.batch} {args.device} autocast {result['config']['autocast']}")
    for name in ("ours", "torchvision"):
        r = result[name]
        median = r["step_s_median"]
        print(f"  {name:12s} {r['images_per_s']:8.2f} images/s  (median of {args.steps} steps: {median:.3f} s)")
    print(f"  ours / torchvision: {result['ratio_ours_over_torchvision']:.3f}x")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
