"""Calibration image sampling: seeded subsets, JPEG/PNG only, COCO sets, the hash that keys the cache, bad folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retina_deploy.calib.sampler import sample_calibration_images
from retina_deploy.core.errors import DatasetError, ImageError
from retina_deploy.runtime.image.preprocess import PreprocessConfig, preprocess

CFG = PreprocessConfig(size=(128, 128))


def write_images(folder: Path, n: int, ext: str = ".png", seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i:03d}{ext}"
        Image.fromarray(rng.integers(0, 256, (40 + i, 60, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_seeded_subset_is_reproducible_and_seed_dependent(tmp_path):
    write_images(tmp_path / "a", 6, ".png")
    write_images(tmp_path / "a" / "sub", 4, ".jpg", seed=1)  # searched recursively
    one = sample_calibration_images(tmp_path / "a", CFG, num=5, seed=0)
    again = sample_calibration_images(tmp_path / "a", CFG, num=5, seed=0)
    other = sample_calibration_images(tmp_path / "a", CFG, num=5, seed=1)
    assert len(one) == 5 and one.paths == again.paths and one.sha256 == again.sha256
    assert one.paths != other.paths and one.sha256 != other.sha256
    assert list(one.paths) == sorted(one.paths)


def test_only_jpeg_and_png_and_fewer_than_asked_uses_all(tmp_path):
    write_images(tmp_path, 2, ".png")
    write_images(tmp_path, 1, ".bmp", seed=2)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    write_images(tmp_path / ".hidden", 3, ".png")
    calib = sample_calibration_images(tmp_path, CFG, num=512)
    assert [p.suffix for p in calib.paths] == [".png", ".png"]


def test_batches_use_the_runtime_preprocessing(tmp_path):
    paths = write_images(tmp_path, 3)
    calib = sample_calibration_images(tmp_path, CFG, num=3)
    batches = list(calib.batches(2))
    assert [b.shape for b in batches] == [(2, 3, 128, 128), (1, 3, 128, 128)]
    expected = preprocess(np.asarray(Image.open(paths[2]).convert("RGB")), CFG)[0]
    np.testing.assert_array_equal(batches[1][0], expected)


def test_hash_changes_with_an_image_and_with_the_preprocessing(tmp_path):
    paths = write_images(tmp_path, 3)
    before = sample_calibration_images(tmp_path, CFG, num=3).sha256
    assert sample_calibration_images(tmp_path, PreprocessConfig(size=(256, 128)), num=3).sha256 != before
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(paths[1])
    assert sample_calibration_images(tmp_path, CFG, num=3).sha256 != before


def test_coco_set(tmp_path):
    paths = write_images(tmp_path / "images", 4)
    coco = {
        "images": [{"id": i + 1, "file_name": p.name, "width": 60, "height": 40 + i} for i, p in enumerate(paths)],
        "annotations": [],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    calib = sample_calibration_images(tmp_path / "images", CFG, annotations=tmp_path / "ann.json", num=3, seed=0)
    assert len(calib) == 3 and set(calib.paths) <= set(paths)


@pytest.mark.parametrize("make", ["empty", "missing", "file", "only_bmp"])
def test_bad_folders_are_one_clear_dataset_error(tmp_path, make):
    target = tmp_path / "calib"
    if make == "empty":
        target.mkdir()
    elif make == "file":
        target.write_text("x")
    elif make == "only_bmp":
        write_images(target, 2, ".bmp")
    with pytest.raises(DatasetError, match="calib"):
        sample_calibration_images(target, CFG)


def test_a_corrupt_image_names_the_file(tmp_path):
    write_images(tmp_path, 1)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    calib = sample_calibration_images(tmp_path, CFG, num=2)
    with pytest.raises(ImageError, match="broken.png"):
        list(calib.batches(2))
