"""The demo's recipe: every value its results depend on, in one frozen dataclass (the CLI's defaults come from it)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from retina_deploy.core.errors import ConfigError


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_int(what: str, value: Any, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{what} must be an integer >= {low}, got {value!r}")


_POSITIVE_INTS = ("size", "num_train", "num_val", "train_images", "fpn_channels", "batch_size", "calib_num",
                  "predict_images", "val_every_epochs")  # fmt: skip


@dataclass(frozen=True)
class DemoRecipe:
    """Every value the demo's results depend on: the one place to tune it (the CLI's defaults come from here).

    Data: ``num_train`` / ``num_val`` make-shapes images of longest side ``size`` (seeds ``seed``, ``seed + 1``),
    shapes of diameter ``object_extent`` x the image's shorter side.
    Training: the TrainConfig fields of the same names, the input ``size`` x ``size``, anchor sizes
    ``round(size * anchor_scale) * 2**i`` for P3..P7 (shapes and anchors both scale with ``size``), and
    ``train_images // batch_size`` iterations. From scratch (``backbone_norm`` "bn"): nothing is downloaded.
    Export: the ONNX files' dynamic batch range ``export_batch`` (MIN, OPT, MAX).
    INT8: ``calib_num`` training images, sampled with ``seed``.
    Bench: batch sizes ``bench_batches``, ``bench_warmup_s`` untimed then ``bench_duration_s`` timed seconds each.
    Predict: the first ``predict_images`` validation images.
    """

    size: int = 128  # 1/4 of 256 px's FLOPs an image: a 12-minute demo on 2 AVX2 cores (BENCHMARKS.md, "The demo")
    num_train: int = 1600
    num_val: int = 200
    seed: int = 0
    train_images: int = 7000  # AP50 0.859/0.882/0.877 (3 seeds, FP32); why 7,000: BENCHMARKS.md, "The demo"
    backbone: str = "resnet18"
    backbone_norm: str = "bn"
    head_norm: str = "groupnorm"
    fpn_channels: int = 64
    object_extent: tuple[float, float] = (0.2, 0.6)  # shapes 19-77 px across at 128 (make-shapes' 0.08: from 8 px)
    anchor_scale: float = 0.1875  # anchors 24..384 px at 128: the smallest near the smallest shape
    optimizer: str = "adamw"
    lr: float = 1e-3
    warmup_iters: int = 50
    val_every_epochs: int = 2  # the curve's points at 3,200, 6,400 and 7,000 images: 2 of 5 passes (16 s) less
    batch_size: int = 4  # more updates per image seen than 8; BatchNorm from scratch needs >= 4
    cls_loss_weight: float = 8.0  # the classes are learnt sooner: AP50 at 5,000 images 0.47 -> 0.70, 3 seeds each
    focal_loss_gamma_fg: float = 0.0  # no focal term on objects' anchors: AP50 at 5,000 images 0.70 -> 0.76
    focal_loss_alpha: float = 0.75  # objects weigh more than background: 0.76 -> 0.84 (0.5: 0.83), 3 seeds each
    schedule: str = "flat-cosine"  # the peak lr while the six classes separate: +0.16 AP50 at 4,800 images vs cosine
    workers: int = 0  # decoding a small PNG takes ~7 ms: loader processes would only compete for the CPU
    amp: str = "auto"  # bf16 where the CPU has it natively (1.8x the images/s), else float32
    export_batch: tuple[int, int, int] = (1, 4, 8)
    calib_num: int = 64  # ~0.1 s an image to calibrate on a 2-core CPU, three times (two INT8 forms, two exports)
    bench_batches: tuple[int, ...] = (1, 4)
    bench_warmup_s: float = 0.25  # x 30 runs: 8 models x 2 batch sizes, ONNX files on ONNX Runtime and OpenVINO
    bench_duration_s: float = 1.0  # >= 9 timed batches even for the slowest (checkpoint, batch 4: ~110 ms)
    predict_images: int = 8

    def __post_init__(self) -> None:
        for name in ("export_batch", "bench_batches", "object_extent"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in _POSITIVE_INTS:
            _check_int(_flag(name), getattr(self, name), low=1)
        for name in ("export_batch", "bench_batches"):
            for value in getattr(self, name):
                _check_int(f"{_flag(name)} values", value, low=1)
        for name in ("seed", "warmup_iters", "workers"):
            _check_int(_flag(name), getattr(self, name), low=0)
        for name in ("lr", "cls_loss_weight", "anchor_scale", "bench_warmup_s", "bench_duration_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{_flag(name)} must be a finite number > 0, got {value!r}")
        if self.train_images < self.batch_size:
            raise ConfigError(f"--train-images must be >= the batch size {self.batch_size}, got {self.train_images}")

    @property
    def anchor_sizes(self) -> tuple[int, ...]:
        return tuple(round(self.size * self.anchor_scale) * 2**i for i in range(5))

    @property
    def iters(self) -> int:
        return self.train_images // self.batch_size

    def to_dict(self) -> dict[str, Any]:
        """JSON values (tuples as lists), as recorded in ``summary.json["settings"]``."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


DEMO_RECIPE = DemoRecipe()
