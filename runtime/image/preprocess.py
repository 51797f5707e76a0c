"""The one preprocessing used by training, evaluation, export and inference (numpy + pillow, torch-free).

An image is resized keeping its aspect ratio so that it fits inside ``size`` (H, W), normalised
with ``mean``/``std`` (on the 0-1 scale, RGB order), and placed at the top-left of an H x W canvas
whose padding is 0 after normalisation. H and W are multiples of 128, the stride of P7, so every
FPN level has an integer grid. Boxes map back to the original image by dividing by ``scale``.

The definition, which ``runtime/cpp`` implements as well (tests hold the two equal):

* Size: ``scale = min(H / h, W / w)`` in float64; the resized image is ``h' = min(H, max(1, round(h * scale)))``
  by ``w' = min(W, max(1, round(w * scale)))``, rounding half to even (Python's ``round``). Boxes map back with the
  unrounded ``scale``.
* Resize (``resize_bilinear``): Pillow's 1-D BILINEAR filter along the width, then along the height; an axis whose
  size does not change is not resampled. Along an axis of n input and m output pixels, with r = n / m and
  f = max(r, 1) (the triangle widens when shrinking, which antialiases): output pixel j is centred at
  c = (j + 0.5) * r in input coordinates (pixel i covers [i, i + 1)); it reads input pixels i from
  int(c - f + 0.5) (at least 0) up to int(c + f + 0.5) (at most n, exclusive) with weights
  max(0, 1 - |(i - c + 0.5) * (1 / f)|), each divided by their sum (float64), then turned to fixed point with
  22 fraction bits, int(weight * 2**22 + 0.5). A pass computes 2**21 + sum(pixel * weight) in integers,
  shifts it right by 22 bits and clamps it to 0..255, so each pass (the intermediate image too) is uint8.
* Normalise in float32: ``(v - 255 * mean) * (1 / (255 * std))`` per RGB channel.
* Pad: the content sits at the top-left of the H x W canvas, everything else is 0 (after normalisation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from retina_deploy.core.errors import ConfigError, ImageError
from retina_deploy.core.strict import from_dict_strict

SIZE_MULTIPLE = 128  # stride of P7
MAX_INPUT_SIDE = 8192  # a float32 input of 8192 x 8192 is 0.8 GB per image; larger is a typo, not a model
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PreprocessConfig:
    """How raw images become the network input.

    size: (H, W) of the network input, both multiples of 128.
    mean, std: per-channel normalisation on the 0-1 scale, in RGB order.
    channel_order: order of the network input's channels ("rgb"); callers that hold BGR arrays
        say so at the call site and are converted.
    """

    size: tuple[int, int] = (512, 512)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "rgb"

    def __post_init__(self) -> None:
        for name, cast in (("size", int), ("mean", float), ("std", float)):
            value = getattr(self, name)
            try:
                if isinstance(value, (str, bytes)) or any(isinstance(v, (str, bytes, bool)) for v in value):
                    raise TypeError
                object.__setattr__(self, name, tuple(cast(v) for v in value))
            except (TypeError, ValueError):
                raise ConfigError(f"{name} must be a list of numbers, got {value!r}") from None
        if len(self.size) != 2:
            raise ConfigError(f"size needs two values (H, W), got {list(self.size)}")
        check_input_size(*self.size)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ConfigError(f"mean and std need 3 values each, got {self.mean} and {self.std}")
        if not all(math.isfinite(m) for m in self.mean):
            raise ConfigError(f"mean values must be finite, got {self.mean}")
        if not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ConfigError(f"std values must be > 0 and finite, got {self.std}")
        if self.channel_order != "rgb":
            raise ConfigError(f"channel_order must be 'rgb', got {self.channel_order!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreprocessConfig:
        return from_dict_strict(cls, d, "preprocess")


def check_input_size(height: int, width: int) -> None:
    """Raise ConfigError unless both sides are positive multiples of 128 up to MAX_INPUT_SIDE, naming valid sizes."""
    for name, v in (("height", height), ("width", width)):
        if v > MAX_INPUT_SIDE:
            raise ConfigError(f"input size: {name} {v} exceeds {MAX_INPUT_SIDE} pixels")
        if v < SIZE_MULTIPLE or v % SIZE_MULTIPLE:
            lo = max(SIZE_MULTIPLE, v // SIZE_MULTIPLE * SIZE_MULTIPLE)
            hi = lo + SIZE_MULTIPLE if lo <= v else lo
            raise ConfigError(
                f"input {name} {v} is not a multiple of {SIZE_MULTIPLE} (the P7 stride); nearest valid: {lo} or {hi}"
            )


def resize_scale(image_hw: tuple[int, int], size: tuple[int, int]) -> float:
    """Scale that fits an image of (h, w) inside ``size`` (H, W) keeping the aspect ratio."""
    h, w = image_hw
    return min(size[0] / h, size[1] / w)


def resize_bilinear(image: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """Resize uint8 [h, w, 3] to [new_h, new_w, 3] as the module docstring defines it.

    Two explicit 1-D passes (width, then height): Pillow 13 runs its two passes height-first on
    portrait images, which rounds the uint8 intermediate differently (off by 1 in some pixels).
    """
    h, w = image.shape[:2]
    resized = Image.fromarray(image)
    if new_w != w:
        resized = resized.resize((new_w, h), Image.BILINEAR)
    if new_h != h:
        resized = resized.resize((new_w, new_h), Image.BILINEAR)
    return np.asarray(resized)


def preprocess(image: np.ndarray, cfg: PreprocessConfig) -> tuple[np.ndarray, float]:
    """Turn one image into the network input.

    Args:
        image: uint8 array [h, w, 3] in RGB order.
        cfg: the preprocessing config.

    Returns:
        (chw, scale): float32 array [3, H, W] (normalised, zero-padded at bottom/right) and the
        factor that maps original pixel coordinates to input coordinates (input = original * scale).
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ImageError(f"image must be a uint8 numpy array, got {getattr(image, 'dtype', type(image).__name__)}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"image must have shape [h, w, 3], got {list(image.shape)}")
    H, W = cfg.size
    h, w = image.shape[:2]
    scale = resize_scale((h, w), cfg.size)
    new_h, new_w = min(H, max(1, round(h * scale))), min(W, max(1, round(w * scale)))
    if (new_h, new_w) != (h, w):
        image = resize_bilinear(image, new_h, new_w)
    mean = np.asarray(cfg.mean, np.float32) * 255.0
    inv_std = 1.0 / (np.asarray(cfg.std, np.float32) * 255.0)
    out = np.zeros((3, H, W), np.float32)
    out[:, :new_h, :new_w] = ((image.astype(np.float32) - mean) * inv_std).transpose(2, 0, 1)
    return out, scale
