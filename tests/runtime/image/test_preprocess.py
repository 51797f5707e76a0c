"""Letterbox geometry, normalisation and config validation of the shared preprocessing."""

import numpy as np
import pytest

from retina_deploy.core.errors import ConfigError, ImageError
from retina_deploy.runtime.image.preprocess import PreprocessConfig, preprocess


def test_letterbox_geometry_and_zero_padding():
    # h=100, w=200 into 256x256: scale = min(256/100, 256/200) = 1.28 -> content 128 x 256 at the top-left
    image = np.full((100, 200, 3), 255, np.uint8)
    chw, scale = preprocess(image, PreprocessConfig(size=(256, 256)))
    assert chw.dtype == np.float32 and chw.shape == (3, 256, 256)
    assert scale == pytest.approx(1.28)
    assert np.all(chw[:, 128:, :] == 0.0)  # padding is exactly 0 after normalisation
    white = (1.0 - np.asarray(PreprocessConfig().mean)) / np.asarray(PreprocessConfig().std)
    np.testing.assert_allclose(chw[:, :128, :], np.broadcast_to(white[:, None, None], (3, 128, 256)), rtol=1e-5)


def test_letterbox_tall_image_pads_right():
    # h=300, w=150 into 256x384 (H, W): scale = min(256/300, 384/150) = 0.8533 -> content 256 x 128
    chw, scale = preprocess(np.full((300, 150, 3), 90, np.uint8), PreprocessConfig(size=(256, 384)))
    assert chw.shape == (3, 256, 384)
    assert scale == pytest.approx(256 / 300)
    assert np.all(chw[:, :, 128:] == 0.0)
    assert np.all(chw[:, :, :128] != 0.0)


def test_normalisation_of_a_known_pixel():
    # no resize (image already 128x128): pixel (255, 0, 128) -> ((v / 255) - mean) / std per channel
    image = np.zeros((128, 128, 3), np.uint8)
    image[5, 7] = (255, 0, 128)
    chw, scale = preprocess(image, PreprocessConfig(size=(128, 128)))
    assert scale == 1.0
    expected = [(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(chw[:, 5, 7], expected, rtol=1e-5)  # = [2.2489, -2.0357, 0.4265]


def test_size_not_multiple_of_128_names_nearest_sizes():
    with pytest.raises(ConfigError, match=r"height 300 is not a multiple of 128.*nearest valid: 256 or 384"):
        PreprocessConfig(size=(300, 512))
    with pytest.raises(ConfigError, match=r"width 520 .*nearest valid: 512 or 640"):
        PreprocessConfig(size=(512, 520))


def test_config_dict_round_trip_and_unknown_key():
    cfg = PreprocessConfig(size=(384, 640))
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"unknown preprocess config key\(s\) \['bogus'\]"):
        PreprocessConfig.from_dict({"size": [256, 256], "bogus": 1})
    with pytest.raises(ConfigError, match="std values must be > 0"):
        PreprocessConfig(std=(0.2, 0.0, 0.2))


def test_bad_image_refused():
    cfg = PreprocessConfig(size=(128, 128))
    with pytest.raises(ImageError, match="uint8"):
        preprocess(np.zeros((8, 8, 3), np.float32), cfg)
    with pytest.raises(ImageError, match=r"\[h, w, 3\], got \[8, 8\]"):
        preprocess(np.zeros((8, 8), np.uint8), cfg)
