"""Checkpoints: a directory holding ``model.safetensors`` + ``config.json``, written atomically.

``config.json`` carries everything needed downstream: the model config, class names, the
preprocessing, the sha256 of the weights file (a truncated or swapped weights file is refused) and
free-form ``extra`` (training progress, metrics). No pickle is ever loaded from a user file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from retina_deploy import __version__
from retina_deploy.core.errors import CheckpointError, RetinaDeployError
from retina_deploy.core.fileio import atomic_path, read_format_json, sha256_file, write_json_atomic
from retina_deploy.model.config import ModelConfig
from retina_deploy.model.weights import load_state_dict_strict, read_state_dict
from retina_deploy.runtime.image.preprocess import PreprocessConfig

FORMAT = "retina-deploy/checkpoint"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint says about itself (everything but the weights)."""

    model: ModelConfig
    class_names: tuple[str, ...]
    preprocess: PreprocessConfig
    weights_sha256: str
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self) -> None:
        self.model.check_input_size(self.preprocess.size)
        if len(self.class_names) != self.model.num_classes:
            raise CheckpointError(
                f"{len(self.class_names)} class names for a model of {self.model.num_classes} classes"
            )


def save_checkpoint(
    model: torch.nn.Module,
    out_dir: str | os.PathLike,
    *,
    class_names: list[str] | tuple[str, ...],
    preprocess: PreprocessConfig,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``out_dir/model.safetensors`` then ``out_dir/config.json`` (each atomically); return ``out_dir``.

    The config is written last and names the weights' sha256, so a crash between the two writes
    leaves a pair that fails to load loudly instead of a silent mismatch.
    """
    out_dir = Path(out_dir)
    cfg: ModelConfig = model.cfg
    if len(class_names) != cfg.num_classes:
        raise CheckpointError(f"{len(class_names)} class names for a model of {cfg.num_classes} classes")
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(out_dir / WEIGHTS_NAME) as tmp:
        try:
            save_file(state, str(tmp), metadata={"format": FORMAT})
        except SafetensorError as e:  # the Rust writer's I/O errors (a full disk) are not OSErrors
            errno = re.search(r"os error (\d+)", str(e))
            if errno is None:
                raise CheckpointError(f"{out_dir / WEIGHTS_NAME}: cannot write ({e})") from e
            raise OSError(int(errno[1]), os.strerror(int(errno[1])), str(out_dir / WEIGHTS_NAME)) from e
        digest = sha256_file(tmp)
    write_json_atomic(
        out_dir / CONFIG_NAME,
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "toolkit_version": __version__,
            "model": cfg.to_dict(),
            "class_names": list(class_names),
            "preprocess": preprocess.to_dict(),
            "weights_sha256": digest,
            "extra": extra or {},
        },
    )
    return out_dir


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """Accept the checkpoint directory or either of its two files; return the directory."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint")
    if p.is_file():
        if p.name not in (WEIGHTS_NAME, CONFIG_NAME):
            kind = (
                "a PyTorch pickle" if p.suffix in (".pth", ".pt", ".bin", ".pkl") else "not a retina-deploy checkpoint"
            )
            raise CheckpointError(
                f"{p}: {kind}; a checkpoint is a folder with {WEIGHTS_NAME} + {CONFIG_NAME}"
                " (torchvision weights: use `retina-deploy convert-weights`)"
            )
        p = p.parent
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        if not (p / name).is_file():
            inside = [d for d in ("best", "last") if (p / d / CONFIG_NAME).is_file()]
            hint = f"; a training run: give its {' or '.join(d + '/' for d in inside)}" if inside else ""
            raise CheckpointError(f"{p}: not a retina-deploy checkpoint ({name} is missing{hint})")
    return p


def read_checkpoint_info(path: str | os.PathLike) -> CheckpointInfo:
    """Parse and validate ``config.json`` (no weights loaded)."""
    ckpt_dir = resolve_checkpoint_dir(path)
    cfg_path = ckpt_dir / CONFIG_NAME
    raw = read_format_json(cfg_path, FORMAT, FORMAT_VERSION, "a retina-deploy checkpoint config", CheckpointError)
    known = {
        "format",
        "format_version",
        "toolkit_version",
        "model",
        "class_names",
        "preprocess",
        "weights_sha256",
        "extra",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise CheckpointError(f"{cfg_path}: unknown key(s) {unknown}")
    names, extra = raw.get("class_names"), raw.get("extra") or {}
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{cfg_path}: class_names must be a list of strings, got {names!r:.80}")
    if not isinstance(extra, dict):
        raise CheckpointError(f"{cfg_path}: extra must be a JSON object, got {type(extra).__name__}")
    try:
        return CheckpointInfo(
            model=ModelConfig.from_dict(raw["model"]),
            class_names=tuple(names),
            preprocess=PreprocessConfig.from_dict(raw["preprocess"]),
            weights_sha256=str(raw["weights_sha256"]),
            extra=dict(extra),
            path=ckpt_dir,
        )
    except KeyError as e:
        raise CheckpointError(f"{cfg_path}: missing key {e}") from e
    except RetinaDeployError as e:
        raise CheckpointError(f"{cfg_path}: {e}") from e


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """The tensors of a checkpoint (on the CPU) and its CheckpointInfo, without building a model.

    Refuses a weights file whose sha256 differs from the config's (truncated, or from another checkpoint).
    """
    info = read_checkpoint_info(path)
    weights = info.path / WEIGHTS_NAME
    if sha256_file(weights) != info.weights_sha256:
        raise CheckpointError(f"{weights}: sha256 differs from {CONFIG_NAME} (truncated, or from another checkpoint)")
    return read_state_dict(weights), info


def load_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu"):
    """Load a checkpoint; returns (RetinaNet in eval mode, CheckpointInfo).

    Refuses a weights file whose sha256 differs from the config's, and any key or shape mismatch.
    """
    from retina_deploy.model import build_model

    state, info = read_checkpoint(path)
    model = build_model(info.model)
    load_state_dict_strict(model, state, str(info.path / WEIGHTS_NAME))
    model.to(map_location).eval()
    return model, info
