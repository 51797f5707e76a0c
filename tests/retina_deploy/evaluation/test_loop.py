"""evaluate_detector: the one loop that scores any Detector on a COCO dataset."""

import pytest

from retina_deploy.core.errors import DatasetError
from retina_deploy.data.coco import load_coco
from retina_deploy.data.shapes import make_shapes
from retina_deploy.evaluation.loop import evaluate_detector


class NeverCalled:
    class_names = ("cat", "dog", "bird")

    def detect(self, images):
        raise AssertionError("a mismatched model must be refused before any image is run")


def test_a_model_with_other_classes_is_refused_before_running(tmp_path):
    data = make_shapes(tmp_path / "d", num_images=2, size=64)
    coco = load_coco(data / "images", data / "annotations.json")
    with pytest.raises(DatasetError, match=r"the model's classes \['cat', 'dog', 'bird'\] differ from those of"):
        evaluate_detector(NeverCalled(), coco)
