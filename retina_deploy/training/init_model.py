"""The model a training run starts from: random (seeded), an ImageNet backbone, or a whole checkpoint.

Fine-tuning (``TrainConfig.init_weights``) loads every tensor of one of our checkpoints (a run's best/
or last/, or the output of ``convert-weights``) with the strict loader. The architecture must be the
checkpoint's (ARCHITECTURE_FIELDS); the training choices (backbone_norm, box_loss, the focal loss, the
schedule) are the run's own. When the dataset's classes are not the checkpoint's (their number, names
or order), the classification output layer (``head.classification_head.cls_logits``, [A * C, F, 3, 3]
and [A * C]) keeps the new model's initialisation (weight normal with std 0.01, bias
-log((1 - prior_prob) / prior_prob)) and every other tensor is loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from retina_deploy.core.errors import CheckpointError, ConfigError
from retina_deploy.model import RetinaNet, build_model
from retina_deploy.model.checkpoint import CheckpointInfo, read_checkpoint, read_checkpoint_info
from retina_deploy.model.weights import load_state_dict_strict
from retina_deploy.training.config import TrainConfig

# TrainConfig fields that must equal the checkpoint's ModelConfig: they set the weights' shapes (backbone,
# fpn_channels, p6_from, head_norm) or what the box regression learned to predict from (anchor_sizes; the
# number of anchors per location is 9 for every config).
ARCHITECTURE_FIELDS = ("backbone", "fpn_channels", "p6_from", "head_norm", "anchor_sizes")
CLASS_LAYER = ("head.classification_head.cls_logits.weight", "head.classification_head.cls_logits.bias")


def fine_tune_config(init_weights: str | Path, **fields: Any) -> TrainConfig:
    """``TrainConfig(init_weights=init_weights, **fields)`` with the architecture fields not in ``fields``
    taken from the checkpoint; one given with another value than the checkpoint's is a ConfigError naming it.
    """
    cfg = TrainConfig(init_weights=init_weights, **fields)  # the other fields are checked before any file is read
    info = read_init_info(cfg.init_weights)
    cfg = dataclasses.replace(cfg, **{k: getattr(info.model, k) for k in ARCHITECTURE_FIELDS if k not in fields})
    check_architecture(cfg, info)
    return cfg


def read_init_info(init_weights: str | Path) -> CheckpointInfo:
    """The CheckpointInfo of ``init_weights``; a missing or foreign checkpoint is a CheckpointError naming the flag."""
    try:
        return read_checkpoint_info(init_weights)
    except CheckpointError as e:
        raise CheckpointError(f"--init-weights: {e}") from e


def check_architecture(cfg: TrainConfig, info: CheckpointInfo) -> None:
    """ConfigError naming the first of ARCHITECTURE_FIELDS where ``cfg`` differs from the checkpoint's model."""
    for name in ARCHITECTURE_FIELDS:
        ours, theirs = getattr(cfg, name), getattr(info.model, name)
        if ours != theirs:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                f"--init-weights {cfg.init_weights}: {name} {_show(ours)} differs from the checkpoint's"
                f" {_show(theirs)}; fine-tuning keeps the architecture (leave {flag} out to take the checkpoint's)"
            )


def build_initial_model(
    cfg: TrainConfig, class_names: Sequence[str], *, load_init_weights: bool = True
) -> tuple[RetinaNet, str]:
    """The model (CPU, train mode) a run of ``cfg`` on a dataset of ``class_names`` starts from, and one line
    saying where its weights come from.

    The random initialisation is seeded with ``cfg.seed``; then ``cfg.backbone_weights`` or ``cfg.init_weights``
    is loaded. ``load_init_weights=False`` skips the checkpoint (a resumed run restores its own weights).
    """
    torch.manual_seed(cfg.seed)
    backbone_weights = None if cfg.backbone_weights is None else str(cfg.backbone_weights)
    model = build_model(cfg.model_config(len(class_names)), backbone_weights=backbone_weights)
    if cfg.init_weights is not None and load_init_weights:
        return model, load_fine_tune_weights(model, cfg, class_names)
    if backbone_weights is not None:
        return model, f"backbone from {backbone_weights}, the rest random (seed {cfg.seed})"
    return model, f"random weights (seed {cfg.seed})"


def load_fine_tune_weights(model: RetinaNet, cfg: TrainConfig, class_names: Sequence[str]) -> str:
    """Load ``cfg.init_weights`` into ``model`` (built for ``cfg`` and ``class_names``); returns one line saying
    what was loaded. The class layer keeps ``model``'s initialisation when the classes differ.
    """
    check_architecture(cfg, read_init_info(cfg.init_weights))
    try:
        state, info = read_checkpoint(cfg.init_weights)
    except CheckpointError as e:
        raise CheckpointError(f"--init-weights: {e}") from e
    same_classes = tuple(class_names) == info.class_names
    if not same_classes:
        own = model.state_dict()
        state = {**state, **{k: own[k] for k in CLASS_LAYER if k in state}}
    # BatchNorm counts its batches, FrozenBatchNorm does not: the counters may be absent when the norms differ.
    optional = "num_batches_tracked" if cfg.backbone_norm != info.model.backbone_norm else None
    load_state_dict_strict(model, state, f"--init-weights {cfg.init_weights}", optional_suffix=optional)
    if same_classes:
        return f"fine-tuning from {cfg.init_weights}: every weight loaded (the same {len(class_names)} classes)"
    return (
        f"fine-tuning from {cfg.init_weights}: the dataset's {len(class_names)} classes are not its"
        f" {len(info.class_names)}{' (other names or order)' if len(class_names) == len(info.class_names) else ''},"
        " so the classification output layer (head.classification_head.cls_logits) is re-initialised;"
        " every other weight loaded"
    )


def _show(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else repr(value)
