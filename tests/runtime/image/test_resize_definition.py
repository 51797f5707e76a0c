"""The resize written in ``runtime/image/preprocess.py``'s docstring, implemented here from the text in plain
numpy, equals ``resize_bilinear`` (Pillow) exactly: a Pillow release that changed its filter, its
rounding or the order of its passes would fail here, before Python and C++ drift apart."""

import numpy as np
import pytest
from PIL import Image

from retina_deploy.runtime.image.preprocess import PreprocessConfig, preprocess, resize_bilinear


def taps(n: int, m: int) -> list[tuple[int, list[int]]]:
    """Per output pixel: (first input pixel, fixed-point weights), as the docstring defines them."""
    r = n / m
    f = max(r, 1.0)
    out = []
    for j in range(m):
        c = (j + 0.5) * r
        lo, hi = max(int(c - f + 0.5), 0), min(int(c + f + 0.5), n)
        weights = [max(0.0, 1.0 - abs((i - c + 0.5) * (1.0 / f))) for i in range(lo, hi)]
        total = 0.0
        for w in weights:  # summed in order, as the definition (and C) do
            total += w
        out.append((lo, [int(w / total * (1 << 22) + 0.5) for w in weights]))
    return out


def one_pass(image: np.ndarray, m: int, axis: int) -> np.ndarray:
    moved = np.moveaxis(image, axis, 0).astype(np.int64)
    rows = []
    for lo, weights in taps(moved.shape[0], m):
        acc = np.full(moved.shape[1:], 1 << 21, np.int64)
        for k, w in enumerate(weights):
            acc += moved[lo + k] * w
        rows.append(np.clip(acc >> 22, 0, 255))
    return np.moveaxis(np.stack(rows), 0, axis).astype(np.uint8)


def reference(image: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    if new_w != image.shape[1]:
        image = one_pass(image, new_w, 1)
    if new_h != image.shape[0]:
        image = one_pass(image, new_h, 0)
    return image


@pytest.mark.parametrize(
    "h, w, new_h, new_w",
    [
        (300, 120, 256, 102),  # portrait, shrink: Pillow 13's own two-pass order differs here
        (200, 300, 256, 384),  # landscape, enlarge
        (37, 41, 256, 283),  # much smaller than the input
        (1, 1, 128, 128),
        (333, 517, 165, 256),  # odd sizes
        (2, 999, 1, 256),  # extreme aspect ratio, 1-pixel result
        (129, 255, 129, 256),  # one axis only
    ],
)
def test_written_definition_equals_resize_bilinear(h, w, new_h, new_w):
    image = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_bilinear(image, new_h, new_w), reference(image, new_h, new_w))


def test_preprocess_stays_within_one_level_of_a_single_pillow_resize():
    # Width-then-height passes differ from Pillow 13's single call by at most 1 level, in some pixels only,
    # and preprocess() normalises exactly the resize_bilinear result.
    image = np.random.default_rng(3).integers(0, 256, (300, 120, 3), dtype=np.uint8)
    ours = resize_bilinear(image, 256, 102).astype(np.float32)
    pillow = np.asarray(Image.fromarray(image).resize((102, 256), Image.BILINEAR), np.float32)
    assert np.abs(ours - pillow).max() <= 1
    cfg = PreprocessConfig(size=(256, 256))
    chw, _ = preprocess(image, cfg)
    mean, std = np.asarray(cfg.mean, np.float32) * 255, np.asarray(cfg.std, np.float32) * 255
    np.testing.assert_allclose(chw[:, :256, :102], ((ours - mean) / std).transpose(2, 0, 1), atol=1e-6)
