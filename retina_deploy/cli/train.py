"""The ``train`` verb's arguments (a module of its own: it has as many flags as TrainConfig has fields)."""

from __future__ import annotations

from pathlib import Path

from retina_deploy.core.errors import RetinaDeployError


def run_train(args) -> int:
    from retina_deploy.training.config import TrainConfig, train_flag_fields
    from retina_deploy.training.init_model import fine_tune_config
    from retina_deploy.training.run import train

    if args.resume and args.init_weights:
        raise RetinaDeployError(
            f"--init-weights {args.init_weights} starts a new run from a checkpoint; --resume {args.resume} continues"
            " a run from its own weights: give one of them"
        )
    if args.resume:
        if args.out is not None and args.out.resolve() != args.resume.resolve():
            raise RetinaDeployError(
                f"--out {args.out} differs from --resume {args.resume}; a run continues in its folder"
            )
        # Every flag given goes to for_resume, which refuses those that would change the run (never ignored).
        fields = ("images", "annotations", *train_flag_fields())
        overrides = {k: getattr(args, k) for k in fields if getattr(args, k) is not None}
        cfg = TrainConfig.for_resume(args.resume, **overrides)
    else:
        if args.images is None or args.annotations is None or args.out is None:
            raise RetinaDeployError("--images, --annotations and --out are required (or --resume RUN/)")
        given = {k: getattr(args, k) for k in train_flag_fields() if getattr(args, k) is not None}
        make = TrainConfig if args.init_weights is None else fine_tune_config  # unset architecture: the checkpoint's
        cfg = make(images=args.images, annotations=args.annotations, out=args.out, **given)
    run_dir = train(cfg)
    written = [f"{name}/" for name in ("best", "last") if (cfg.out / name / "config.json").is_file()]
    print(f"run folder {run_dir}: {' and '.join(written) or 'no'} checkpoint(s), metrics.csv")
    return 0


def add_train_arguments(p) -> None:
    from retina_deploy.training.config import SCHEDULES, TrainConfig

    d = TrainConfig.__dataclass_fields__
    p.add_argument("--images", type=Path, help="training images folder")
    p.add_argument("--annotations", type=Path, help="training COCO instances JSON")
    p.add_argument("--val-images", type=Path, help="validation images folder (mAP every epoch)")
    p.add_argument("--val-annotations", type=Path, help="validation COCO instances JSON")
    p.add_argument("--out", type=Path, help="run folder to create (must be absent or empty)")
    p.add_argument("--resume", type=Path, help="continue the run in this folder exactly where it stopped")
    m = p.add_argument_group("model")
    m.add_argument(
        "--backbone",
        choices=["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"],
        help=f"ResNet depth (default: {d['backbone'].default})",
    )
    m.add_argument(
        "--backbone-norm",
        choices=["frozen_bn", "bn"],
        help="frozen_bn to fine-tune ImageNet weights; bn to train from scratch with batch >= 4"
        f" (default: {d['backbone_norm'].default})",
    )
    m.add_argument("--backbone-weights", type=Path, help="local torchvision ImageNet ResNet file (never downloaded)")
    m.add_argument(
        "--init-weights",
        type=Path,
        metavar="CHECKPOINT",
        help="fine-tune a whole RetinaNet: a checkpoint folder (a run's best/ or last/, or convert-weights' OUT);"
        " architecture flags left out are the checkpoint's, given ones must match it; the class layer is"
        " re-initialised when the dataset's classes differ (default: none)",
    )
    m.add_argument("--head-norm", choices=["none", "groupnorm"], help=f"(default: {d['head_norm'].default})")
    m.add_argument("--box-loss", choices=["l1", "giou"], help=f"(default: {d['box_loss'].default})")
    m.add_argument(
        "--fpn-channels", type=int, help=f"channels of P3-P7 and the head (default: {d['fpn_channels'].default})"
    )
    m.add_argument(
        "--p6-from",
        choices=["c5", "p5"],
        help=f"P6 from C5 (the paper) or from P5 (torchvision's v1 COCO weights) (default: {d['p6_from'].default})",
    )
    m.add_argument(
        "--anchor-sizes",
        type=int,
        nargs=5,
        metavar="S",
        help="base anchor size per level P3..P7; scale with the input size"
        f" (default: {' '.join(map(str, d['anchor_sizes'].default))}, for 512-800 px)",
    )
    m.add_argument(
        "--focal-loss-alpha", type=float, help=f"positive-entry weight (default: {d['focal_loss_alpha'].default})"
    )
    m.add_argument(
        "--focal-loss-gamma", type=float, help=f"focusing exponent (default: {d['focal_loss_gamma'].default})"
    )
    m.add_argument(
        "--focal-loss-gamma-fg",
        type=float,
        help="focusing exponent at anchors on an object, all classes there; 0 (the CPU recipe) learns the classes"
        " apart in fewer images (default: --focal-loss-gamma)",
    )
    m.add_argument(
        "--cls-loss-weight",
        type=float,
        help="the classification loss's weight; the box loss's is 1. 8 (the CPU recipe) learns the classes from"
        f" scratch in fewer images (default: {d['cls_loss_weight'].default})",
    )
    m.add_argument(
        "--size",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help=f"input size, multiples of 128 (default: {' '.join(map(str, d['size'].default))})",
    )
    o = p.add_argument_group("schedule (the first length reached ends the run)")
    o.add_argument("--epochs", type=int, help="length in epochs")
    o.add_argument("--iters", type=int, help="length in iterations")
    o.add_argument("--max-minutes", type=float, help="length in minutes of wall time")
    o.add_argument("--batch-size", type=int, help=f"images per process per step (default: {d['batch_size'].default})")
    o.add_argument("--optimizer", choices=["sgd", "adamw"], help=f"(default: {d['optimizer'].default})")
    o.add_argument("--lr", type=float, help="base learning rate (default: 0.01 sgd, 3e-4 adamw)")
    o.add_argument("--momentum", type=float, help=f"SGD momentum (default: {d['momentum'].default})")
    o.add_argument("--weight-decay", type=float, help="(default: 1e-4 sgd, 0.05 adamw)")
    o.add_argument("--warmup-iters", type=int, help=f"linear warm-up (default: {d['warmup_iters'].default})")
    o.add_argument("--schedule", choices=list(SCHEDULES), help=f"(default: {d['schedule'].default})")
    o.add_argument("--grad-clip", type=float, help=f"max gradient norm (default: {d['grad_clip'].default})")
    o.add_argument(
        "--ema-decay",
        type=float,
        help="evaluate and save an exponential moving average of the weights with this decay, e.g. 0.998"
        " (default: none)",
    )
    o.add_argument(
        "--amp",
        choices=["auto", "none", "bf16", "fp16"],
        help=f"mixed precision; auto = bf16 where native (default: {d['amp'].default})",
    )
    o.add_argument("--hflip", type=float, help=f"horizontal flip probability (default: {d['hflip'].default})")
    o.add_argument("--scale-jitter", type=float, nargs=2, metavar=("LOW", "HIGH"), help="random scale range")
    r = p.add_argument_group("run")
    r.add_argument("--workers", type=int, help=f"data loader processes (default: {d['workers'].default})")
    r.add_argument("--seed", type=int, help=f"(default: {d['seed'].default})")
    r.add_argument(
        "--checkpoint-every-iters",
        type=int,
        help=f"save last/ for --resume this often (default: {d['checkpoint_every_iters'].default})",
    )
    r.add_argument(
        "--val-every-epochs",
        type=int,
        help=f"validate after every N-th epoch and at the end (default: {d['val_every_epochs'].default})",
    )
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], help=f"(default: {d['device'].default})")
