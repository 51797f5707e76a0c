"""DetectionDataset: letterbox-scaled boxes, flip, scale jitter, per-epoch reproducibility, collate."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from retina_deploy.core.errors import ConfigError, DatasetError
from retina_deploy.data.coco import load_coco
from retina_deploy.data.dataset import DetectionDataset, collate_detections
from retina_deploy.runtime.image.preprocess import PreprocessConfig, preprocess

CFG = PreprocessConfig(size=(256, 256))
WHITE = (1.0 - 0.485) / 0.229  # channel 0 of a 255 pixel after normalisation (black: -0.485 / 0.229)


@pytest.fixture
def coco(tmp_path):
    """Image 1: 200 wide x 100 high, black, white rectangles under both boxes; image 2: an empty 64x64."""
    images = tmp_path / "images"
    images.mkdir()
    pixels = np.zeros((100, 200, 3), np.uint8)
    pixels[10:50, 20:60] = 255  # box xyxy [20, 10, 60, 50]
    pixels[60:90, 150:190] = 255  # crowd box xyxy [150, 60, 190, 90]
    Image.fromarray(pixels).save(images / "a.png")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(images / "b.png")
    ann = {
        "images": [
            {"id": 11, "file_name": "a.png", "width": 200, "height": 100},
            {"id": 12, "file_name": "b.png", "width": 64, "height": 64},
        ],
        "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "crowd"}],
        "annotations": [
            {"id": 1, "image_id": 11, "category_id": 1, "bbox": [20, 10, 40, 40]},
            {"id": 2, "image_id": 11, "category_id": 2, "bbox": [150, 60, 40, 30], "iscrowd": 1},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    return load_coco(images, tmp_path / "ann.json")


def _pixels(coco, i=0):
    return np.asarray(Image.open(coco.records[i].path).convert("RGB"))


def test_eval_item_boxes_scaled_by_letterbox(coco):
    image, target = DetectionDataset(coco, CFG, train=False)[0]
    assert image.dtype == torch.float32 and image.shape == (3, 256, 256)
    np.testing.assert_array_equal(image.numpy(), preprocess(_pixels(coco), CFG)[0])  # the inference path
    # scale = min(256/100, 256/200) = 1.28
    assert target["scale"] == pytest.approx(1.28)
    torch.testing.assert_close(target["boxes"], torch.tensor([[25.6, 12.8, 76.8, 64.0], [192.0, 76.8, 243.2, 115.2]]))
    assert target["boxes"].dtype == torch.float32
    assert target["labels"].tolist() == [0, 1] and target["labels"].dtype == torch.int64
    assert target["iscrowd"].tolist() == [False, True] and target["iscrowd"].dtype == torch.bool
    assert target["image_id"] == 11 and target["orig_size"] == (100, 200)


def test_hflip_maps_boxes(coco):
    image, target = DetectionDataset(coco, CFG, train=True, hflip_prob=1.0)[0]
    # x1' = 200 - x2, x2' = 200 - x1, then * 1.28: [140, 10, 180, 50] -> [179.2, 12.8, 230.4, 64]
    # crowd [150, 60, 190, 90] -> [10, 60, 50, 90] -> [12.8, 76.8, 64, 115.2]
    torch.testing.assert_close(target["boxes"], torch.tensor([[179.2, 12.8, 230.4, 64.0], [12.8, 76.8, 64.0, 115.2]]))
    np.testing.assert_array_equal(image.numpy(), preprocess(np.ascontiguousarray(_pixels(coco)[:, ::-1]), CFG)[0])
    # and train without flip or jitter is exactly the eval item
    no_aug, t = DetectionDataset(coco, CFG, train=True, hflip_prob=0.0)[0]
    torch.testing.assert_close(no_aug, DetectionDataset(coco, CFG, train=False)[0][0])
    torch.testing.assert_close(t["boxes"], torch.tensor([[25.6, 12.8, 76.8, 64.0], [192.0, 76.8, 243.2, 115.2]]))


def test_scale_jitter_down_keeps_padding_zero(coco):
    ds = DetectionDataset(coco, CFG, train=True, hflip_prob=0.0, scale_jitter=(0.5, 0.5))
    image, target = ds[0]
    # scale = 1.28 * 0.5 = 0.64: content 64 x 128, boxes [20, 10, 60, 50] * 0.64 etc.
    assert target["scale"] == pytest.approx(0.64)
    torch.testing.assert_close(target["boxes"], torch.tensor([[12.8, 6.4, 38.4, 32.0], [96.0, 38.4, 121.6, 57.6]]))
    assert torch.all(image[:, 64:, :] == 0) and torch.all(image[:, :, 128:] == 0)
    assert torch.all(image[:, :64, :128] != 0)  # black content normalises to a non-zero value
    assert image[0, 19, 25].item() == pytest.approx(WHITE, abs=1e-4)  # (25, 19) is inside the scaled box


def test_scale_jitter_up_crops_and_keeps_boxes_inside(coco):
    ds = DetectionDataset(coco, CFG, train=True, scale_jitter=(1.5, 2.5), seed=7)
    seen_boxes = 0
    for epoch in range(12):
        ds.set_epoch(epoch)
        image, target = ds[0]
        boxes = target["boxes"]
        assert image.shape == (3, 256, 256)
        assert torch.all(boxes >= 0) and torch.all(boxes <= 256)
        assert torch.all(boxes[:, 2] - boxes[:, 0] >= 1) and torch.all(boxes[:, 3] - boxes[:, 1] >= 1)
        assert len(boxes) == len(target["labels"]) == len(target["iscrowd"])
        for x1, y1, x2, y2 in boxes.tolist():  # boxes still sit on the white rectangles
            assert image[0, int((y1 + y2) / 2), int((x1 + x2) / 2)].item() > 0.8 * WHITE
            seen_boxes += 1
    assert seen_boxes > 0


def test_set_epoch_reproducible_and_varies(coco):
    ds = DetectionDataset(coco, CFG, train=True, scale_jitter=(0.8, 1.6), seed=3)
    ds.set_epoch(2)
    a_img, a_t = ds[0]
    b_img, b_t = ds[0]
    resumed = DetectionDataset(coco, CFG, train=True, scale_jitter=(0.8, 1.6), seed=3)
    resumed.set_epoch(2)  # a fresh object, as after a restart
    c_img, c_t = resumed[0]
    for img, t in ((b_img, b_t), (c_img, c_t)):
        torch.testing.assert_close(img, a_img, rtol=0, atol=0)
        torch.testing.assert_close(t["boxes"], a_t["boxes"], rtol=0, atol=0)
    per_epoch = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        per_epoch.add((round(ds[0][1]["scale"], 6), tuple(ds[0][1]["boxes"].flatten().tolist())))
    assert len(per_epoch) == 6  # a fresh jitter factor each epoch


def test_collate_with_dataloader(coco):
    ds = DetectionDataset(coco, CFG, train=False)
    images, targets = next(iter(torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_detections)))
    assert images.shape == (2, 3, 256, 256) and len(targets) == 2
    negative = targets[1]
    assert negative["boxes"].shape == (0, 4) and negative["boxes"].dtype == torch.float32
    assert negative["labels"].shape == (0,) and negative["labels"].dtype == torch.int64
    assert negative["scale"] == pytest.approx(4.0)
    with pytest.raises(DatasetError, match="empty batch"):
        collate_detections([])
    with pytest.raises(DatasetError, match="share one shape"):
        collate_detections([ds[0], (torch.zeros(3, 128, 128), ds[1][1])])


def test_size_mismatch_and_bad_arguments(coco, tmp_path):
    coco.records[1].path.write_bytes(coco.records[0].path.read_bytes())  # b.png now 200x100, not 64x64
    with pytest.raises(DatasetError, match=r"b\.png: decoded size 200x100 differs from the 64x64 .* image id 12"):
        DetectionDataset(coco, CFG, train=False)[1]
    for kwargs, message in [
        ({"hflip_prob": 1.5}, "hflip_prob"),
        ({"scale_jitter": (0.0, 1.0)}, "scale_jitter"),
        ({"scale_jitter": (2.0, 1.0)}, "scale_jitter"),
        ({"seed": -1}, "seed"),
    ]:
        with pytest.raises(ConfigError, match=message):
            DetectionDataset(coco, CFG, train=True, **kwargs)
    with pytest.raises(ConfigError, match="epoch"):
        DetectionDataset(coco, CFG, train=True).set_epoch(-1)


def test_training_images_are_upright_as_their_exif_orientation_says(coco):
    """a.png stored sideways (turned 90 degrees counter-clockwise) with Orientation=6: the dataset gives the
    same image and boxes as for the upright file, since the annotations are of what viewers show."""
    ds = DetectionDataset(coco, CFG, train=False)
    want_img, want_t = ds[0]
    upright = np.asarray(Image.open(coco.records[0].path).convert("RGB"))
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(coco.records[0].path, exif=exif.tobytes())
    got_img, got_t = ds[0]
    torch.testing.assert_close(got_img, want_img, rtol=0, atol=0)
    torch.testing.assert_close(got_t["boxes"], want_t["boxes"], rtol=0, atol=0)
    # annotations made on the stored pixels (100 wide, 200 high): refused with the reason, or read as stored
    stored = dataclasses.replace(coco.records[0], width=100, height=200)
    with pytest.raises(
        DatasetError, match=r"decoded size 200x100 differs .* EXIF orientation .* exif_orientation=False"
    ):
        coco.load_image(stored)
    assert coco.load_image(stored, exif_orientation=False).shape == (200, 100, 3)
