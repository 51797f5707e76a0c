"""``TrainConfig``: everything a training run depends on (frozen; unknown keys raise; saved in the run folder)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retina_deploy.core.errors import ConfigError
from retina_deploy.core.strict import from_dict_strict
from retina_deploy.model.config import ModelConfig
from retina_deploy.runtime.image.preprocess import PreprocessConfig
from retina_deploy.training import run_files

SCHEDULES = ("cosine", "flat-cosine", "step")  # the lr decays, see training.optim.LRSchedule

DEFAULT_LR = {"sgd": 0.01, "adamw": 3e-4}
DEFAULT_WEIGHT_DECAY = {"sgd": 1e-4, "adamw": 0.05}
RESUME_OVERRIDABLE = ("workers", "device")  # may differ from the saved config without changing the results
PATH_FIELDS = (
    "images", "annotations", "out", "val_images", "val_annotations", "backbone_weights", "init_weights", "resume",
)  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; saved as ``config.json["train"]`` in the run folder.

    images, annotations: the training set (COCO instances JSON + image folder).
    out: the run folder; must be absent or empty (use ``for_resume`` to continue a run).
    val_images, val_annotations: optional validation set, evaluated (COCO AP) after every
        ``val_every_epochs``-th epoch and at the run's end (best/ is the best of those).
    backbone, backbone_norm, head_norm, box_loss, fpn_channels, p6_from, anchor_sizes, focal_loss_alpha,
        focal_loss_gamma, focal_loss_gamma_fg: the model (see
        ``ModelConfig``, which says when to choose which; "bn" becomes SyncBatchNorm across GPUs).
    backbone_weights: a local torchvision ImageNet ResNet file (.pth or .safetensors), or None (random).
    init_weights: a checkpoint folder (a run's best/ or last/, or convert-weights' output) whose every
        weight starts the model; its architecture (``training.init_model.ARCHITECTURE_FIELDS``) must be
        this config's, and its class layer is re-initialised when its classes are not the dataset's.
        Not with backbone_weights. ``training.init_model.fine_tune_config`` takes the unset
        architecture fields from the checkpoint.
    size: network input (H, W), multiples of 128.
    batch_size: images per process per step.
    epochs, iters, max_minutes: run length; at least one, the first reached ends the run (and completes
        the lr schedule; with max_minutes the lr follows elapsed time, so a run is not reproducible).
    optimizer: "sgd" or "adamw"; lr None -> 0.01 (sgd) / 3e-4 (adamw) for the effective batch;
        weight_decay None -> 1e-4 (sgd) / 0.05 (adamw), never on biases or norm parameters.
    momentum: SGD momentum.
    warmup_iters: linear warmup from lr * 0.001, clamped to a third of the run.
    schedule: "cosine", "flat-cosine" (the peak lr for 3/4 of the run, then a cosine to 0), or "step"
        (x0.1 at 2/3 and 8/9 of the run).
    cls_loss_weight: the classification loss's weight in the total (the box loss's is 1). Above 1 the
        shared backbone and FPN learn the classes sooner: from scratch on make-shapes, 8 lifts AP50 at
        5,000 images seen from 0.47 to 0.70, mean of three seeds (BENCHMARKS.md). 1 is the paper's and torchvision's.
    grad_clip: max global gradient L2 norm, None for no clipping (10 only clips loss spikes).
    ema_decay: keep an exponential moving average of the weights with this decay (ramped up over the
        first updates, see ``training.ema``), None for none. With it, validation, best/ and last/ use the
        averaged weights (the raw weights' AP is logged too) and train_state.pt holds both.
    amp: "auto" (bf16 where native, fp16 on older GPUs, else float32), "none", "bf16", "fp16" (CUDA).
    workers: DataLoader worker processes per training process.
    seed: model init, batch order and augmentation.
    hflip: horizontal flip probability; scale_jitter: (low, high) factor on the letterbox scale, or None.
    checkpoint_every_iters: also save last/ + train_state.pt every this many iterations (besides epoch ends).
    resume: a run folder to continue (``out`` must then be the same folder).
    device: "auto" (CUDA when available), "cpu" or "cuda"; under torchrun, cuda:LOCAL_RANK.
    """

    images: Path
    annotations: Path
    out: Path
    val_images: Path | None = None
    val_annotations: Path | None = None
    backbone: str = "resnet101"
    backbone_norm: str = "frozen_bn"
    backbone_weights: Path | None = None
    init_weights: Path | None = None
    head_norm: str = "none"
    box_loss: str = "l1"
    fpn_channels: int = 256
    p6_from: str = ModelConfig.p6_from
    anchor_sizes: tuple[int, ...] = ModelConfig.anchor_sizes
    focal_loss_alpha: float = ModelConfig.focal_loss_alpha
    focal_loss_gamma: float = ModelConfig.focal_loss_gamma
    focal_loss_gamma_fg: float | None = ModelConfig.focal_loss_gamma_fg
    size: tuple[int, int] = (512, 512)
    batch_size: int = 8
    epochs: int | None = None
    iters: int | None = None
    max_minutes: float | None = None
    optimizer: str = "sgd"
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float | None = None
    warmup_iters: int = 500
    schedule: str = "cosine"
    cls_loss_weight: float = 1.0
    grad_clip: float | None = 10.0
    ema_decay: float | None = None
    amp: str = "auto"
    workers: int = 2
    seed: int = 0
    hflip: float = 0.5
    scale_jitter: tuple[float, float] | None = None
    checkpoint_every_iters: int = 500
    val_every_epochs: int = 1
    resume: Path | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in PATH_FIELDS:
            value = getattr(self, name)
            object.__setattr__(self, name, None if value is None else Path(value))
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        object.__setattr__(self, "anchor_sizes", tuple(int(v) for v in self.anchor_sizes))
        if self.scale_jitter is not None:
            object.__setattr__(self, "scale_jitter", tuple(float(v) for v in self.scale_jitter))
        _validate(self)

    @property
    def base_lr(self) -> float:
        return DEFAULT_LR[self.optimizer] if self.lr is None else self.lr

    @property
    def base_weight_decay(self) -> float:
        return DEFAULT_WEIGHT_DECAY[self.optimizer] if self.weight_decay is None else self.weight_decay

    def model_config(self, num_classes: int) -> ModelConfig:
        return ModelConfig(
            backbone=self.backbone,
            backbone_norm=self.backbone_norm,
            num_classes=num_classes,
            head_norm=self.head_norm,
            box_loss=self.box_loss,
            fpn_channels=self.fpn_channels,
            p6_from=self.p6_from,
            anchor_sizes=self.anchor_sizes,
            focal_loss_alpha=self.focal_loss_alpha,
            focal_loss_gamma=self.focal_loss_gamma,
            focal_loss_gamma_fg=self.focal_loss_gamma_fg,
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        return from_dict_strict(cls, d, "train")

    @classmethod
    def for_resume(cls, run_dir: str | Path, **overrides: Any) -> TrainConfig:
        """The saved config of ``run_dir`` set to resume it; only RESUME_OVERRIDABLE fields may be overridden."""
        bad = sorted(set(overrides) - set(RESUME_OVERRIDABLE))
        if bad:
            flags = ", ".join("--" + name.replace("_", "-") for name in bad)
            raise ConfigError(
                f"--resume {run_dir}: {flags} cannot change a run (its schedule and data are fixed); only"
                f" {', '.join('--' + n for n in RESUME_OVERRIDABLE)} may be given, or start a new run with --out"
            )
        try:
            saved = cls.from_dict(run_files.read_run_config(Path(run_dir))["train"])
        except ConfigError as e:
            message = str(e)
            raise ConfigError(message if str(run_dir) in message else f"--resume {run_dir}: {message}") from e
        return dataclasses.replace(saved, resume=Path(run_dir), out=Path(run_dir), **overrides)


def _validate(cfg: TrainConfig) -> None:
    """ConfigError naming the first bad field of ``cfg``."""
    if cfg.epochs is None and cfg.iters is None and cfg.max_minutes is None:
        raise ConfigError("give the run a length: epochs, iters and/or max_minutes (the first reached ends it)")
    for name in ("epochs", "iters", "batch_size", "checkpoint_every_iters", "val_every_epochs"):
        value = getattr(cfg, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    for name in ("workers", "seed", "warmup_iters"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
    if isinstance(cfg.cls_loss_weight, bool) or not (
        isinstance(cfg.cls_loss_weight, (int, float)) and math.isfinite(cfg.cls_loss_weight) and cfg.cls_loss_weight > 0
    ):
        raise ConfigError(f"cls_loss_weight must be a finite number > 0, got {cfg.cls_loss_weight!r}")
    for name in ("max_minutes", "lr", "grad_clip"):
        value = getattr(cfg, name)
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ConfigError(f"{name} must be a number > 0 or None, got {value!r}")
    for name in ("focal_loss_alpha", "focal_loss_gamma", "focal_loss_gamma_fg"):
        value = getattr(cfg, name)
        if value is None and name == "focal_loss_gamma_fg":  # the same as focal_loss_gamma
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    if cfg.ema_decay is not None and not (
        isinstance(cfg.ema_decay, (int, float)) and not isinstance(cfg.ema_decay, bool) and 0.0 < cfg.ema_decay < 1.0
    ):
        raise ConfigError(f"ema_decay must be a number in (0, 1) or None, got {cfg.ema_decay!r}")
    if cfg.weight_decay is not None and not cfg.weight_decay >= 0:
        raise ConfigError(f"weight_decay must be >= 0, got {cfg.weight_decay!r}")
    if not 0.0 <= cfg.momentum < 1.0:
        raise ConfigError(f"momentum must be in [0, 1), got {cfg.momentum!r}")
    for name, value, choices in (
        ("optimizer", cfg.optimizer, tuple(DEFAULT_LR)),
        ("schedule", cfg.schedule, SCHEDULES),
        ("amp", cfg.amp, ("auto", "none", "bf16", "fp16")),
        ("device", cfg.device, ("auto", "cpu", "cuda")),
    ):
        if value not in choices:
            raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")
    cfg.model_config(num_classes=1)  # ConfigError for a bad model field, before any data is read
    if (cfg.val_images is None) != (cfg.val_annotations is None):
        raise ConfigError("give both val_images and val_annotations, or neither")
    if cfg.init_weights is not None and cfg.backbone_weights is not None:
        raise ConfigError(
            f"give init_weights {cfg.init_weights} (a whole RetinaNet) or backbone_weights {cfg.backbone_weights}"
            " (an ImageNet ResNet), not both: the checkpoint already holds a backbone"
        )
    if cfg.resume is not None and cfg.out.resolve() != cfg.resume.resolve():
        raise ConfigError(f"a resumed run continues in its folder: out {cfg.out} must be resume {cfg.resume}")
    PreprocessConfig(size=cfg.size)  # sizes must be multiples of 128
    cfg.model_config(num_classes=1).check_input_size(cfg.size)  # GroupNorm needs 2+ values per group at P7
    if not 0.0 <= cfg.hflip <= 1.0:
        raise ConfigError(f"hflip must be a probability in [0, 1], got {cfg.hflip!r}")
    if cfg.scale_jitter is not None and not (
        len(cfg.scale_jitter) == 2 and 0 < cfg.scale_jitter[0] <= cfg.scale_jitter[1]
    ):
        raise ConfigError(f"scale_jitter must be (low, high) with 0 < low <= high, got {cfg.scale_jitter!r}")


def train_flag_fields() -> list[str]:
    """The TrainConfig fields that ``retina-deploy train`` sets with a ``--flag`` of the same name: all but the
    training set, the run folder and ``resume`` (tests/retina_deploy/cli/test_cli.py checks each has one)."""
    return [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("images", "annotations", "out", "resume")]
