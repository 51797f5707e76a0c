"""Reading weight files and loading them strictly: checkpoints, converted torchvision files and backbones.

Every PyTorch file is read with ``weights_only=True``; safetensors files are plain tensors.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from retina_deploy.core.errors import CheckpointError


def load_state_dict_strict(
    model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, *, optional_suffix: str | None = None
) -> None:
    """Load ``state`` into ``model``; any missing/unexpected key or shape mismatch is a CheckpointError.

    optional_suffix: keys ending so (e.g. BatchNorm's ``num_batches_tracked``) may be absent on either side.
    """
    own = model.state_dict()
    if optional_suffix is not None:
        own = {k: v for k, v in own.items() if not k.endswith(optional_suffix)}
        state = {k: v for k, v in state.items() if not k.endswith(optional_suffix)}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: does not match the model ({len(missing)} missing keys, e.g. {missing[:2]};"
            f" {len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise CheckpointError(f"{source}: {k} has shape {list(v.shape)}, the model expects {list(own[k].shape)}")
    with torch.no_grad():
        model.load_state_dict(state, strict=optional_suffix is None)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a PyTorch file loaded with ``weights_only=True``.

    A PyTorch file holding ``{"model": state_dict, ...}`` (torchvision's reference training) gives
    the inner dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for non-torch, truncated or unsafe files
        raise CheckpointError(
            f"{path}: not a readable PyTorch weights file ({type(e).__name__}: {str(e)[:120]})"
        ) from e
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors")
    return obj
