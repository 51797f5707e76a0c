"""What a retina-deploy ONNX file says about itself, stored in its ``metadata_props`` (torch-free, onnx-free).

Each field is one ``metadata_props`` entry whose value is JSON, so any ONNX viewer shows it and
ONNX Runtime reads it back (``session.get_modelmeta().custom_metadata_map``) without the onnx package.
Nothing downstream needs the checkpoint: the class names, preprocessing and NMS settings are here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from retina_deploy.core.errors import ConfigError, ModelFileError, RetinaDeployError
from retina_deploy.runtime.image.preprocess import PreprocessConfig

FORMAT = "retina-deploy/onnx"
FORMAT_VERSION = 1
NMS_MODES = ("onnx", "efficient", "none")
INPUT_NAME = "images"
DETECTION_OUTPUTS = ("num_dets", "boxes", "scores", "classes")
DENSE_OUTPUTS = ("boxes", "scores")
_KEYS = (
    "format",
    "format_version",
    "toolkit_version",
    "class_names",
    "input_size",
    "mean",
    "std",
    "channel_order",
    "nms",
    "batch",
    "anchors_per_level",
    "checkpoint_sha256",
    "backbone",
    "opset",
    "precision",
)


def check_batch_range(batch: tuple[int, int, int]) -> tuple[int, int, int]:
    """Validate (min, opt, max) batch sizes: 1 <= min <= opt <= max; returns them as ints."""
    if len(batch) != 3:
        raise ConfigError(f"batch needs three sizes MIN OPT MAX, got {list(batch)}")
    lo, opt, hi = (int(v) for v in batch)
    if lo < 1:
        raise ConfigError(f"batch MIN must be >= 1, got {lo}")
    if lo > hi:
        raise ConfigError(f"batch MIN {lo} > MAX {hi}")
    if not lo <= opt <= hi:
        raise ConfigError(f"batch OPT {opt} is outside MIN..MAX ({lo}..{hi})")
    return lo, opt, hi


def expected_anchors_per_level(size: tuple[int, int]) -> tuple[int, ...]:
    """9 anchors per location on the P3..P7 grids (strides 8..128) of an input of ``size`` (H, W)."""
    h, w = size
    return tuple(9 * (h >> s) * (w >> s) for s in range(3, 8))


@dataclass(frozen=True)
class NmsSettings:
    """Post-processing of an exported file, the same for every ``mode``.

    mode: "onnx" (NonMaxSuppression in the graph), "efficient" (EfficientNMS_TRT plugin node) or
        "none" (the graph outputs every anchor's boxes and scores; ``host_nms`` finishes the job).
    max_dets: K, detections per image (the fixed second dimension of the detection outputs).
    score_thresh: a (box, class) pair is a candidate when its score is > score_thresh.
    iou_thresh: class-aware NMS drops a box whose IoU with a kept box of its class is > iou_thresh.
    topk_per_level: candidates kept per FPN level, by score, before thresholding and NMS.
    """

    mode: str
    max_dets: int
    score_thresh: float
    iou_thresh: float
    topk_per_level: int

    def __post_init__(self) -> None:
        if self.mode not in NMS_MODES:
            raise ConfigError(f"nms must be one of {', '.join(NMS_MODES)}, got {self.mode!r}")
        if int(self.max_dets) < 1:
            raise ConfigError(f"max-dets must be >= 1, got {self.max_dets}")
        if int(self.topk_per_level) < 1:
            raise ConfigError(f"topk-per-level must be >= 1, got {self.topk_per_level}")
        if not 0.0 <= float(self.score_thresh) < 1.0:
            raise ConfigError(f"score-thresh must be in [0, 1), got {self.score_thresh}")
        if not 0.0 <= float(self.iou_thresh) <= 1.0:
            raise ConfigError(f"iou-thresh must be in [0, 1], got {self.iou_thresh}")
        for name, cast in (("max_dets", int), ("topk_per_level", int), ("score_thresh", float), ("iou_thresh", float)):
            object.__setattr__(self, name, cast(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("mode", "max_dets", "score_thresh", "iou_thresh", "topk_per_level")}


@dataclass(frozen=True)
class OnnxMetadata:
    """The metadata of an exported file.

    class_names: C names, index = class id of the ``classes`` output.
    preprocess: how images become the ``images`` input (its size is the input's fixed H, W).
    nms: the post-processing settings.
    batch: (min, opt, max) batch sizes: the dynamic batch axis' range, and the TensorRT profile.
    anchors_per_level: H_l * W_l * 9 per FPN level P3..P7 (the layout of ``--nms none`` outputs).
    checkpoint_sha256: sha256 of the source checkpoint's ``model.safetensors``.
    precision: "fp32", or what a later precision stage made of the file.
    """

    class_names: tuple[str, ...]
    preprocess: PreprocessConfig
    nms: NmsSettings
    batch: tuple[int, int, int]
    anchors_per_level: tuple[int, ...]
    checkpoint_sha256: str
    backbone: str
    toolkit_version: str
    opset: int
    precision: str = "fp32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch", check_batch_range(self.batch))
        expected = expected_anchors_per_level(self.preprocess.size)
        if tuple(self.anchors_per_level) != expected:
            raise ConfigError(
                f"anchors_per_level {list(self.anchors_per_level)} does not fit the input size"
                f" {list(self.preprocess.size)} (expected {list(expected)})"
            )

    @property
    def input_size(self) -> tuple[int, int]:
        return self.preprocess.size

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def output_names(self) -> tuple[str, ...]:
        return DENSE_OUTPUTS if self.nms.mode == "none" else DETECTION_OUTPUTS

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values, keyed as in ``metadata_props``."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "toolkit_version": self.toolkit_version,
            "class_names": list(self.class_names),
            "input_size": list(self.preprocess.size),
            "mean": list(self.preprocess.mean),
            "std": list(self.preprocess.std),
            "channel_order": self.preprocess.channel_order,
            "nms": self.nms.to_dict(),
            "batch": dict(zip(("min", "opt", "max"), self.batch, strict=True)),
            "anchors_per_level": list(self.anchors_per_level),
            "checkpoint_sha256": self.checkpoint_sha256,
            "backbone": self.backbone,
            "opset": self.opset,
            "precision": self.precision,
        }

    def to_props(self) -> dict[str, str]:
        """``metadata_props`` entries: key -> JSON value."""
        return {k: json.dumps(v) for k, v in self.to_dict().items()}

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str) -> OnnxMetadata:
        """Parse ``metadata_props``; a foreign or malformed file raises ModelFileError naming ``source``."""
        if "format" not in props:
            raise ModelFileError(
                f"{source}: not a retina-deploy ONNX file (no 'format' metadata); export it with"
                " `retina-deploy export-onnx`"
            )
        try:
            d = {k: json.loads(props[k]) for k in _KEYS if k in props}
        except json.JSONDecodeError as e:
            raise ModelFileError(f"{source}: malformed retina-deploy metadata ({e})") from e
        if d["format"] != FORMAT:
            raise ModelFileError(f"{source}: not a retina-deploy ONNX file (format is {d['format']!r})")
        if d.get("format_version") != FORMAT_VERSION:
            raise ModelFileError(
                f"{source}: metadata format_version {d.get('format_version')} is not {FORMAT_VERSION}"
                " (exported by another retina-deploy release; export it again)"
            )
        missing = [k for k in _KEYS if k not in d]
        if missing:
            raise ModelFileError(f"{source}: retina-deploy metadata lacks {missing}")
        try:
            batch = d["batch"]
            meta = cls(
                class_names=tuple(str(n) for n in d["class_names"]),
                preprocess=PreprocessConfig(
                    size=tuple(d["input_size"]),
                    mean=tuple(d["mean"]),
                    std=tuple(d["std"]),
                    channel_order=d["channel_order"],
                ),
                nms=NmsSettings(**d["nms"]),
                batch=(int(batch["min"]), int(batch["opt"]), int(batch["max"])),
                anchors_per_level=tuple(int(n) for n in d["anchors_per_level"]),
                checkpoint_sha256=str(d["checkpoint_sha256"]),
                backbone=str(d["backbone"]),
                toolkit_version=str(d["toolkit_version"]),
                opset=int(d["opset"]),
                precision=str(d["precision"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, RetinaDeployError):
                raise ModelFileError(f"{source}: bad retina-deploy metadata: {e}") from e
            raise ModelFileError(f"{source}: bad retina-deploy metadata ({type(e).__name__}: {e})") from e
        if not meta.class_names:
            raise ModelFileError(f"{source}: retina-deploy metadata has no class names")
        return meta
