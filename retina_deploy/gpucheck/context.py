"""What every part of the GPU check shares: the output folder, the mode's sizes, the device, lazy artifacts.

Three modes: ``full`` (under 8 minutes on a GPU), ``quick`` (under 3) and ``cpu-dry-run`` (the tiny
sizes on the CPU, so that tests prove the code paths run on a machine without a GPU). Artifacts
(the synthetic images, a random-weights checkpoint, its ONNX exports) are made once, inside the
output folder, by the first part that needs them.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from retina_deploy.gpucheck.report import Skip

# pip names of the modules the parts import, for "missing package" reasons.
PIP_NAMES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "safetensors": "safetensors",
    "tqdm": "tqdm",
    "onnx": "onnx",
    "onnxslim": "onnxslim",
    "onnxruntime": "onnxruntime-gpu",
    "tensorrt": "tensorrt",
    "tensorrt_rtx": "tensorrt-rtx-cu13",
    "cuda": "cuda-python",
    "retina_deploy.export": "retina-deploy (pip install --no-deps -e . in the repository)",
    "retina_deploy.runtime": "retina-deploy (pip install --no-deps -e . in the repository)",
}


@dataclass(frozen=True)
class Plan:
    """The sizes of one mode.

    train: (backbone, (H, W), batch, amp) training-step configurations; train_warmup/train_steps: steps each.
    resume: (backbone, side, images, batch, iters, checkpoint_every, kill_after, fpn_channels) of the resume run.
    infer_backbone/infer_size/infer_batches/infer_precisions: the PyTorch latency grid; infer_iters: timed runs;
        infer_fpn: FPN and head channels (256 but in the dry run).
    compile: (precision, batch) pairs compiled with torch.compile, in order, while time is left.
    engine_backbone/engine_size/engine_batch: the model exported for ONNX Runtime and TensorRT.
    engine_precisions: engines built; calib_num: INT8 calibration images; engine_opt_level: builder level.
    images: synthetic test images for parity; budgets: seconds per part.
    """

    train: tuple[tuple[str, tuple[int, int], int, str], ...]
    train_warmup: int
    train_steps: int
    resume: tuple[str, int, int, int, int, int, int, int]
    infer_backbone: str
    infer_size: tuple[int, int]
    infer_batches: tuple[int, ...]
    infer_precisions: tuple[str, ...]
    infer_iters: int
    infer_fpn: int
    compile: tuple[tuple[str, int], ...]
    engine_backbone: str
    engine_size: tuple[int, int]
    engine_batch: tuple[int, int, int]
    engine_precisions: tuple[str, ...]
    calib_num: int
    engine_opt_level: int | None
    images: int
    budgets: dict[str, float] = field(default_factory=dict)


FULL = Plan(
    train=tuple(
        (backbone, size, batch, amp)
        for backbone in ("resnet18", "resnet101")
        for size, batch in (((512, 512), 8), ((800, 1344), 4))
        for amp in ("bf16", "fp16")
    ),
    train_warmup=3,
    train_steps=10,
    resume=("resnet18", 256, 8, 2, 4, 2, 3, 256),
    infer_backbone="resnet101",
    infer_size=(800, 1344),
    infer_batches=(1, 8),
    infer_precisions=("fp32", "tf32", "fp16"),
    infer_iters=20,
    infer_fpn=256,
    compile=(("fp16", 1), ("fp16", 8), ("tf32", 1), ("tf32", 8), ("fp32", 1), ("fp32", 8)),
    engine_backbone="resnet18",
    engine_size=(512, 512),
    engine_batch=(1, 8, 8),
    engine_precisions=("fp32", "fp16", "int8"),
    calib_num=16,
    engine_opt_level=None,
    images=8,
    budgets={
        "env": 20,
        "train.throughput": 75,
        "train.ddp": 20,
        "train.resume": 45,
        "train.detector": 45,
        "infer.eager": 40,
        "infer.compile": 130,
        "ort.gpu": 50,
        "trt.engines": 150,
        "cpp.trt": 100,
    },
)

QUICK = replace(
    FULL,
    train=(
        ("resnet18", (512, 512), 8, "bf16"),
        ("resnet18", (512, 512), 8, "fp16"),
        ("resnet101", (800, 1344), 4, "bf16"),
    ),
    train_warmup=2,
    train_steps=4,
    resume=("resnet18", 128, 4, 2, 4, 2, 3, 64),
    infer_iters=10,
    compile=(("fp16", 1),),
    engine_size=(256, 256),
    calib_num=8,
    engine_opt_level=1,
    images=4,
    budgets={  # about 140 s before cpp.trt and infer.compile, which get what is left
        "env": 10,
        "train.throughput": 18,
        "train.ddp": 8,
        "train.resume": 12,
        "train.detector": 20,
        "infer.eager": 12,
        "infer.compile": 45,
        "ort.gpu": 12,
        "trt.engines": 60,
        "cpp.trt": 30,
    },
)

# The smallest sizes that still run every line of the training and inference parts (on the CPU).
DRY_RUN = Plan(
    train=(("resnet18", (64, 64), 1, "none"), ("resnet18", (64, 64), 1, "fp16")),
    train_warmup=0,
    train_steps=1,
    resume=("resnet18", 128, 2, 1, 3, 1, 2, 64),
    infer_backbone="resnet18",
    infer_size=(64, 64),
    infer_batches=(1,),
    infer_precisions=("fp32",),
    infer_iters=2,
    infer_fpn=64,
    compile=(),
    engine_backbone="resnet18",
    engine_size=(128, 128),
    engine_batch=(1, 2, 2),
    engine_precisions=("fp32",),
    calib_num=2,
    engine_opt_level=0,
    images=2,
    budgets={
        "env": 10,
        "train.throughput": 60,
        "train.ddp": 30,
        "train.resume": 60,
        "train.detector": 10,
        "infer.eager": 30,
        "infer.compile": 10,
        "ort.gpu": 60,
        "trt.engines": 120,
        "cpp.trt": 60,
    },
)

PLANS = {"full": FULL, "quick": QUICK, "cpu-dry-run": DRY_RUN}


def require_modules(*names: str) -> None:
    """Skip (naming the pip package) unless every module in ``names`` imports."""
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise Skip(f"missing package: {PIP_NAMES.get(name, name)} (module {name} not importable)")


@dataclass
class CheckContext:
    """Shared state of one check run. mode: a PLANS key; out: the output folder (everything is written there)."""

    out: Path
    mode: str
    artifacts: dict[str, Any] = field(default_factory=dict)

    @property
    def plan(self) -> Plan:
        return PLANS[self.mode]

    @property
    def dry_run(self) -> bool:
        return self.mode == "cpu-dry-run"

    def torch_device(self):
        """The device the torch parts run on: cuda:0, or the CPU in the dry run; Skip when there is none."""
        require_modules("torch", "retina_deploy.runtime")  # an uninstalled checkout lacks the folder mapping
        import torch

        if self.dry_run:
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise Skip(f"no CUDA GPU (torch {torch.__version__}: torch.cuda.is_available() is False)")
        return torch.device("cuda", 0)

    def require_gpu(self) -> None:
        """Skip unless a CUDA GPU is visible to torch (also in the dry run: parts that need a real GPU)."""
        require_modules("torch", "retina_deploy.runtime")
        import torch

        if not torch.cuda.is_available():
            raise Skip(f"no CUDA GPU (torch {torch.__version__}: torch.cuda.is_available() is False)")

    def shapes(self, side: int, num: int) -> Path:
        """A synthetic shapes dataset (COCO format) under out/data, made once per (side, num)."""
        key = f"shapes-{side}-{num}"
        if key not in self.artifacts:
            from retina_deploy.data.shapes import make_shapes

            self.artifacts[key] = make_shapes(self.out / "data" / key, num_images=num, size=side, seed=0)
        return self.artifacts[key]

    def checkpoint(self) -> Path:
        """The model the ONNX Runtime and TensorRT parts export: the detector ``train.detector`` fitted, or
        (when that part did not run) a random-weights 80-class one whose scores spread (made once)."""
        if "checkpoint" not in self.artifacts:
            from retina_deploy.gpucheck.models import random_checkpoint

            plan = self.plan
            self.artifacts["checkpoint"] = random_checkpoint(
                self.out / "models" / "checkpoint", backbone=plan.engine_backbone, size=plan.engine_size
            )
        return self.artifacts["checkpoint"]

    def onnx(self, nms: str) -> Path:
        """The checkpoint exported with ``--nms nms`` at the engine size and batch range (made once per mode)."""
        key = f"onnx-{nms}"
        if key not in self.artifacts:
            require_modules("onnx", "onnxslim", "retina_deploy.export")
            from retina_deploy.export.onnx_export import ExportConfig, export_onnx

            plan = self.plan
            cfg = ExportConfig(size=plan.engine_size, batch=plan.engine_batch, nms=nms)
            self.artifacts[key] = export_onnx(self.checkpoint(), self.out / "models" / f"model-{nms}.onnx", cfg)
        return self.artifacts[key]

    def test_images(self) -> list:
        """The parity images: uint8 RGB arrays [h, w, 3] of the synthetic set at the engine size."""
        import numpy as np
        from PIL import Image

        side = max(self.plan.engine_size)
        folder = self.shapes(side, max(self.plan.images, self.plan.calib_num)) / "images"
        paths = sorted(folder.glob("*.png"))[: self.plan.images]
        return [np.asarray(Image.open(p).convert("RGB")) for p in paths]
