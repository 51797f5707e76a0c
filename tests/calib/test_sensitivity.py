"""``max_map_drop``: a layer INT8 cannot take is found, kept in FP32, and reported with its reason."""

from __future__ import annotations

import pytest
from calib_helpers import plant_outlier_channel

from retina_deploy.calib.accuracy import coco_metrics
from retina_deploy.calib.int8 import CalibConfig
from retina_deploy.calib.quantize import Int8Config, quantize_int8
from retina_deploy.calib.sensitivity import _search_k
from retina_deploy.core.errors import ConfigError

# A random-weight model loses ~35 AP points against its own FP32 detections in INT8 (its many
# near-tied, overlapping candidates flip in NMS), so the budget sits between that and the 100-point
# loss the planted outlier causes: only excluding the outlier's layers can meet it.
BUDGET = 50.0
MINMAX = CalibConfig(method="minmax", num=4, batch=2)  # minmax: the outlier sets the range


def test_outlier_layer_is_kept_in_fp32_until_the_drop_is_within_budget(r18_none, calib_images, val_set, tmp_path):
    images, annotations = val_set
    outlier = plant_outlier_channel(r18_none, tmp_path / "outlier.onnx")
    assert coco_metrics(outlier, images, annotations)["AP"] == pytest.approx(1.0)  # FP32 unchanged
    plain = quantize_int8(outlier, tmp_path / "plain.int8.onnx", Int8Config(calib_images=calib_images, calib=MINMAX))
    assert coco_metrics(plain.path, images, annotations)["AP"] < 0.05  # needs it: INT8 collapses

    cfg = Int8Config(calib_images=calib_images, calib=MINMAX, cache=plain.cache_path, max_map_drop=BUDGET,
                     val_images=images, val_annotations=annotations)  # fmt: skip
    fitted = quantize_int8(outlier, tmp_path / "fitted.int8.onnx", cfg)
    assert not fitted.calibrated  # same ranges, from the cache
    assert fitted.ap_fp32 == pytest.approx(1.0)
    assert 100 * (fitted.ap_fp32 - fitted.ap_int8) <= BUDGET
    assert fitted.trials[0] == (0, pytest.approx(0.0, abs=0.05))
    assert fitted.excluded and all("cls_logits" in e.node for e in fitted.excluded)
    assert all("relative noise" in e.reason and "SQNR" in e.reason for e in fitted.excluded)
    assert coco_metrics(fitted.path, images, annotations)["AP"] == pytest.approx(fitted.ap_int8)


def test_search_probes_doubling_then_bisects():
    probed = []

    def meets(k):
        probed.append(k)
        return k >= 5

    assert _search_k(20, meets) == 5
    assert probed == [1, 2, 4, 8, 6, 5]
    assert _search_k(3, lambda k: False) is None
    assert _search_k(0, lambda k: True) is None


def test_budget_needs_a_validation_set(calib_images):
    with pytest.raises(ConfigError, match="--val-images"):
        Int8Config(calib_images=calib_images, max_map_drop=1.0)
    with pytest.raises(ConfigError, match=">= 0"):
        Int8Config(calib_images=calib_images, max_map_drop=-1.0, val_images=calib_images, val_annotations=calib_images)
