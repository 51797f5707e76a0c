"""Checkpoint -> ONNX with decode and NMS in the graph (``retina-deploy export-onnx``).

One input, ``images`` float32 [B, 3, H, W], preprocessed by ``retina_deploy.runtime.image.preprocess``;
H and W are fixed per file (multiples of 128), B is dynamic in [MIN, MAX] (recorded in the
metadata for the TensorRT profile). Outputs per ``--nms`` mode:

- onnx, efficient: num_dets [B, 1] int32, boxes [B, K, 4] float32 xyxy input pixels, scores [B, K]
  float32 (descending), classes [B, K] int32, zero-padded past num_dets.
- none: boxes [B, N, 4] float32 xyxy (decoded, clipped), scores [B, N, C] float32 (sigmoid), every
  anchor in torchvision's order.

The file passes ``onnx.checker`` (full check), is simplified by onnxslim, holds no external data
and is written atomically. The TorchScript-based exporter (``dynamo=False``) is used: the NMS ops
are emitted by ``symbolic`` functions, which the dynamo exporter does not take.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import Tensor, nn

from retina_deploy import __version__
from retina_deploy.core.errors import ConfigError
from retina_deploy.core.outputs import check_output_file
from retina_deploy.core.strict import from_dict_strict
from retina_deploy.export.postprocess import (
    CandidatesPerLevel,
    DenseHead,
    EfficientNmsHead,
    OnnxNmsHead,
)
from retina_deploy.model.anchors import anchors_for_grids, grids_for_input
from retina_deploy.model.checkpoint import CheckpointInfo, load_checkpoint
from retina_deploy.model.config import ModelConfig
from retina_deploy.runtime.contract.onnx_files import save_onnx
from retina_deploy.runtime.contract.onnx_metadata import (
    DENSE_OUTPUTS,
    DETECTION_OUTPUTS,
    INPUT_NAME,
    NMS_MODES,
    NmsSettings,
    OnnxMetadata,
    check_batch_range,
)
from retina_deploy.runtime.image.preprocess import check_input_size

MIN_OPSET, MAX_OPSET = 13, 20  # NonMaxSuppression/TopK need >= 11; the TorchScript exporter stops at 20
TENSORRT_MAX_TOPK = 3840  # TensorRT's TopK layer takes k <= 3840


@dataclass(frozen=True)
class ExportConfig:
    """Options of ``export_onnx``; None takes the checkpoint's value.

    size: (H, W) of the input, multiples of 128 (None: the checkpoint's preprocessing size).
    batch: (MIN, OPT, MAX) batch sizes; the batch axis is dynamic, the range goes in the metadata.
    nms: "onnx" (NonMaxSuppression op), "efficient" (EfficientNMS_TRT plugin, TensorRT only) or
        "none" (decoded boxes and scores of every anchor).
    max_dets: K detections per image (None: ModelConfig.detections_per_img).
    score_thresh, iou_thresh, topk_per_level: None: ModelConfig.score_thresh, nms_thresh, topk_candidates.
    opset: ONNX opset, 13..20.
    simplify: run onnxslim (constant folding, dead-node removal).
    """

    size: tuple[int, int] | None = None
    batch: tuple[int, int, int] = (1, 1, 8)
    nms: str = "onnx"
    max_dets: int | None = None
    score_thresh: float | None = None
    iou_thresh: float | None = None
    topk_per_level: int | None = None
    opset: int = 17
    simplify: bool = True

    def __post_init__(self) -> None:
        if self.size is not None:
            if len(self.size) != 2:
                raise ConfigError(f"size needs two values H W, got {list(self.size)}")
            object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
            check_input_size(*self.size)
        object.__setattr__(self, "batch", check_batch_range(tuple(self.batch)))
        if not MIN_OPSET <= int(self.opset) <= MAX_OPSET:
            raise ConfigError(f"opset must be in {MIN_OPSET}..{MAX_OPSET}, got {self.opset}")
        # Validate the NMS flags now (placeholders for the values the checkpoint will give).
        NmsSettings(
            mode=self.nms,
            max_dets=1 if self.max_dets is None else self.max_dets,
            score_thresh=0.0 if self.score_thresh is None else self.score_thresh,
            iou_thresh=0.5 if self.iou_thresh is None else self.iou_thresh,
            topk_per_level=1 if self.topk_per_level is None else self.topk_per_level,
        )

    def nms_settings(self, model_cfg: ModelConfig) -> NmsSettings:
        """The NMS settings, taking unset values from the checkpoint's model config."""
        nms = NmsSettings(
            mode=self.nms,
            max_dets=model_cfg.detections_per_img if self.max_dets is None else self.max_dets,
            score_thresh=model_cfg.score_thresh if self.score_thresh is None else self.score_thresh,
            iou_thresh=model_cfg.nms_thresh if self.iou_thresh is None else self.iou_thresh,
            topk_per_level=model_cfg.topk_candidates if self.topk_per_level is None else self.topk_per_level,
        )
        if nms.mode != "none" and max(nms.topk_per_level, nms.max_dets) > TENSORRT_MAX_TOPK:
            raise ConfigError(
                f"topk-per-level {nms.topk_per_level} and max-dets {nms.max_dets} must be <= {TENSORRT_MAX_TOPK},"
                " TensorRT's largest TopK (use --nms none for more)"
            )
        return nms

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExportConfig:
        return from_dict_strict(cls, d, "export")


class ExportModel(nn.Module):
    """RetinaNet backbone + head + an export-friendly post-processing head, for one fixed input size.

    forward(images float32 [B, 3, H, W]) returns the outputs named by ``output_names``.
    """

    def __init__(self, model: nn.Module, image_hw: tuple[int, int], nms: NmsSettings) -> None:
        super().__init__()
        cfg: ModelConfig = model.cfg
        self.backbone = model.backbone
        self.head = model.head
        anchors = anchors_for_grids(cfg.anchor_sizes, image_hw, grids_for_input(image_hw))
        self.anchors_per_level = tuple(a.shape[0] for a in anchors)
        self.nms_mode = nms.mode
        if nms.mode == "none":
            self.post = DenseHead(anchors, image_hw, bbox_reg_clamp=cfg.bbox_reg_clamp)
            self.nms = None
            self.output_names = DENSE_OUTPUTS
            return
        self.post = CandidatesPerLevel(
            anchors,
            image_hw,
            num_classes=cfg.num_classes,
            topk_per_level=nms.topk_per_level,
            bbox_reg_clamp=cfg.bbox_reg_clamp,
        )
        common = dict(
            num_classes=cfg.num_classes,
            max_dets=nms.max_dets,
            score_thresh=nms.score_thresh,
            iou_thresh=nms.iou_thresh,
        )
        if nms.mode == "onnx":
            self.nms = OnnxNmsHead(num_candidates=self.post.num_candidates, **common)
        else:
            self.nms = EfficientNmsHead(**common)
        self.output_names = DETECTION_OUTPUTS

    def forward(self, images: Tensor):
        cls_per_level, box_per_level = self.head(self.backbone(images))
        out = self.post(cls_per_level, box_per_level)
        return out if self.nms is None else self.nms(*out)


def export_onnx(
    checkpoint_path: str | os.PathLike, out_path: str | os.PathLike, cfg: ExportConfig | None = None
) -> Path:
    """Export a checkpoint to ``out_path`` (written atomically); returns ``out_path``.

    Args:
        checkpoint_path: a checkpoint folder (or its config.json / model.safetensors).
        out_path: the ``.onnx`` file to write; its folder is created if needed.
        cfg: the export options; None: ``ExportConfig()`` (the checkpoint's size and NMS settings).

    Raises CheckpointError for a missing or foreign checkpoint, ConfigError for bad options
    (raised by ``ExportConfig`` itself), ModelFileError if the graph exceeds protobuf's 2 GB.
    """
    cfg = cfg or ExportConfig()
    check_output_file(out_path, inputs=(checkpoint_path,), flag="OUT")
    model, info = load_checkpoint(checkpoint_path)
    size = cfg.size or info.preprocess.size
    check_input_size(*size)
    info.model.check_input_size(size)
    nms = cfg.nms_settings(info.model)
    export_model = ExportModel(model, size, nms).eval()
    onnx_model = trace_to_onnx(export_model, size, cfg.batch, cfg.opset)
    if cfg.simplify:
        import onnxslim

        onnx_model = onnxslim.slim(onnx_model)
    fix_output_shapes(onnx_model, export_model, info, nms)
    onnx_model.producer_name, onnx_model.producer_version = "retina-deploy", __version__
    onnx.checker.check_model(onnx_model, full_check=True)
    meta = build_metadata(info, size, cfg, nms, export_model.anchors_per_level)
    save_onnx(onnx_model, meta, out_path)
    return Path(out_path)


def trace_to_onnx(
    module: ExportModel, size: tuple[int, int], batch: tuple[int, int, int], opset: int
) -> onnx.ModelProto:
    """Run the TorchScript-based exporter on ``module`` with a dynamic batch axis; returns the raw graph."""
    # Trace at batch 2 (when allowed) so that no shape computation specialises on a batch of 1.
    trace_batch = min(2, batch[2])
    example = torch.randn(trace_batch, 3, *size, generator=torch.Generator().manual_seed(0))
    dynamic = {name: {0: "batch"} for name in (INPUT_NAME, *module.output_names)}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # Shape-derived Python ints in the model are constant for a fixed H, W; the batch stays dynamic.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # The TorchScript-based exporter is chosen on purpose (see the module docstring).
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        # F.pad's strided Slice is left to onnxslim's constant folding.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        torch.onnx.export(
            module,
            (example,),
            buf,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=list(module.output_names),
            dynamic_axes=dynamic,
            do_constant_folding=True,
        )
    return onnx.load_from_string(buf.getvalue())


def fix_output_shapes(model: onnx.ModelProto, module: ExportModel, info: CheckpointInfo, nms: NmsSettings) -> None:
    """Write the static output dimensions (K, N, C) into the graph's output types."""
    if nms.mode == "none":
        n = sum(module.anchors_per_level)
        shapes = {"boxes": ["batch", n, 4], "scores": ["batch", n, info.model.num_classes]}
    else:
        k = nms.max_dets
        shapes = {"num_dets": ["batch", 1], "boxes": ["batch", k, 4], "scores": ["batch", k], "classes": ["batch", k]}
    for out in model.graph.output:
        dims = out.type.tensor_type.shape.dim
        del dims[:]
        for d in shapes[out.name]:
            dim = dims.add()
            if isinstance(d, str):
                dim.dim_param = d
            else:
                dim.dim_value = d


def build_metadata(
    info: CheckpointInfo,
    size: tuple[int, int],
    cfg: ExportConfig,
    nms: NmsSettings,
    anchors_per_level: tuple[int, ...],
) -> OnnxMetadata:
    """The file's metadata: the checkpoint's class names and preprocessing (at the export size), the settings."""
    return OnnxMetadata(
        class_names=info.class_names,
        preprocess=replace(info.preprocess, size=size),
        nms=nms,
        batch=cfg.batch,
        anchors_per_level=anchors_per_level,
        checkpoint_sha256=info.weights_sha256,
        backbone=info.model.backbone,
        toolkit_version=__version__,
        opset=cfg.opset,
    )


__all__ = ["ExportConfig", "ExportModel", "NMS_MODES", "export_onnx"]
