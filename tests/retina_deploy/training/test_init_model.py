"""Fine-tuning from a whole checkpoint (``init_weights``): what is loaded, what is re-initialised, what is refused.

The source is a ResNet-18 run of 2 iterations at 128 px (FPN 64 channels, GroupNorm head, small anchors: not
the defaults, so taking the architecture from the checkpoint is visible), and a torchvision-layout ResNet-18
RetinaNet (P6 from P5, 256 channels) converted with ``convert_torchvision``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from retina_deploy.cli.main import main
from retina_deploy.core.errors import ConfigError
from retina_deploy.data.shapes import CLASS_NAMES, make_shapes
from retina_deploy.model.convert import convert_torchvision
from retina_deploy.training.init_model import CLASS_LAYER, build_initial_model, fine_tune_config
from retina_deploy.training.run import TrainConfig, train

RUN = dict(size=(128, 128), batch_size=4, workers=0, warmup_iters=0, amp="none", device="cpu", iters=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """8 shapes images of 6 classes; the same images annotated with 3 classes (the others' boxes dropped)."""
    root = tmp_path_factory.mktemp("data")
    shapes = make_shapes(root / "shapes", num_images=8, size=128, seed=0)
    coco = json.loads((shapes / "annotations.json").read_text())
    keep = {c["id"] for c in coco["categories"][:3]}
    three = {
        **coco,
        "categories": [c for c in coco["categories"] if c["id"] in keep],
        "annotations": [a for a in coco["annotations"] if a["category_id"] in keep],
    }
    (root / "three.json").write_text(json.dumps(three))
    return {"images": shapes / "images", "six": shapes / "annotations.json", "three": root / "three.json"}


@pytest.fixture(scope="module")
def source(data, tmp_path_factory) -> Path:
    """last/ of a 2-iteration run from scratch (trainable BatchNorm, so the counters are saved too)."""
    out = tmp_path_factory.mktemp("source") / "run"
    cfg = TrainConfig(
        images=data["images"], annotations=data["six"], out=out, backbone="resnet18", backbone_norm="bn",
        fpn_channels=64, head_norm="groupnorm", anchor_sizes=(8, 16, 32, 64, 128), **{**RUN, "iters": 2},
    )  # fmt: skip
    return train(cfg) / "last"


def _fine_tune(data, source, out: Path, annotations: str, **fields) -> TrainConfig:
    return fine_tune_config(source, images=data["images"], annotations=data[annotations], out=out, **RUN, **fields)


def test_other_classes_reinitialise_only_the_class_layer(data, source, tmp_path):
    cfg = _fine_tune(data, source, tmp_path / "run", "three", backbone_norm="bn")
    # the architecture fields left unset are the checkpoint's, not TrainConfig's defaults
    assert (cfg.backbone, cfg.fpn_channels, cfg.head_norm, cfg.p6_from) == ("resnet18", 64, "groupnorm", "c5")
    assert cfg.anchor_sizes == (8, 16, 32, 64, 128)
    model, note = build_initial_model(cfg, CLASS_NAMES[:3])
    saved, state = load_file(source / "model.safetensors"), model.state_dict()
    assert saved.keys() == state.keys()
    assert all(torch.equal(state[k], saved[k]) for k in saved if k not in CLASS_LAYER)
    weight, bias = (state[k] for k in CLASS_LAYER)
    assert weight.shape == (9 * 3, 64, 3, 3) and saved[CLASS_LAYER[0]].shape == (9 * 6, 64, 3, 3)
    assert torch.allclose(bias, torch.full_like(bias, -math.log(0.99 / 0.01)))  # prior probability 0.01
    assert 0.009 < weight.std().item() < 0.011 and abs(weight.mean().item()) < 0.001
    assert "6" in note and "3 classes" in note and "re-initialised" in note

    run = train(cfg)
    record = json.loads((run / "config.json").read_text())
    assert record["train"]["init_weights"] == str(source.resolve()) and record["model"]["num_classes"] == 3
    assert "re-initialised" in (run / "train.log").read_text()


def test_same_classes_load_every_weight(data, source, tmp_path):
    # frozen BatchNorm (the default, for fine-tuning) from a "bn" run: every tensor but the batch counters
    cfg = _fine_tune(data, source, tmp_path / "run", "six")
    assert cfg.backbone_norm == "frozen_bn"
    model, note = build_initial_model(cfg, CLASS_NAMES)
    saved, state = load_file(source / "model.safetensors"), model.state_dict()
    assert state.keys() == {k for k in saved if not k.endswith("num_batches_tracked")}
    assert all(torch.equal(state[k], saved[k]) for k in state)
    assert "every weight loaded" in note
    # the same norm: every tensor, counters included
    model, _ = build_initial_model(_fine_tune(data, source, tmp_path / "run", "six", backbone_norm="bn"), CLASS_NAMES)
    state = model.state_dict()
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)
    # the same number of classes under other names is not the same classes
    _, note = build_initial_model(cfg, [n.upper() for n in CLASS_NAMES])
    assert "re-initialised" in note and "other names or order" in note


def test_architecture_mismatch_is_refused_before_anything_is_written(data, source, tmp_path):
    with pytest.raises(ConfigError, match="fpn_channels 128 differs from the checkpoint's 64.*--fpn-channels"):
        _fine_tune(data, source, tmp_path / "run", "six", fpn_channels=128)
    with pytest.raises(ConfigError, match="anchor_sizes 32 64 128 256 512 differs from the checkpoint's 8 16"):
        _fine_tune(data, source, tmp_path / "run", "six", anchor_sizes=(32, 64, 128, 256, 512))
    # a TrainConfig built directly keeps its defaults, checked when the run starts
    cfg = TrainConfig(images=data["images"], annotations=data["six"], out=tmp_path / "run", init_weights=source, **RUN)
    with pytest.raises(ConfigError, match="backbone 'resnet101' differs from the checkpoint's 'resnet18'"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_init_weights_with_resume_or_backbone_weights_is_refused(data, source, tmp_path, capsys):
    with pytest.raises(ConfigError, match="init_weights .* or backbone_weights .* not both"):
        _fine_tune(data, source, tmp_path / "run", "six", backbone_weights=tmp_path / "resnet18.pth")
    assert main(["train", "--resume", str(source.parent), "--init-weights", str(source)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--init-weights" in err and "--resume" in err, err


def test_fine_tune_converted_torchvision_weights_with_the_cli(data, tmp_path, capsys):
    from testkit.torchvision_models import make_torchvision_retinanet

    tv = make_torchvision_retinanet(18, num_classes=5, v2=False, seed=0)  # v1 layout: P6 from P5
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    converted = convert_torchvision(tmp_path / "tv.pth", tmp_path / "converted")
    args = ["train", "--images", data["images"], "--annotations", data["six"], "--init-weights", converted]
    args += ["--size", "128", "128", "--iters", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu"]
    assert main([str(a) for a in [*args, "--out", tmp_path / "bad", "--p6-from", "c5"]]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "p6_from 'c5' differs from the checkpoint's 'p5'" in err, err
    assert not (tmp_path / "bad").exists()

    assert main([str(a) for a in [*args, "--out", tmp_path / "run"]]) == 0
    model_record = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert (model_record["p6_from"], model_record["fpn_channels"], model_record["num_classes"]) == ("p5", 256, 6)
    assert "the dataset's 6 classes are not its 5" in (tmp_path / "run" / "train.log").read_text()
    cfg = fine_tune_config(converted, images=data["images"], annotations=data["six"], out=tmp_path / "x", **RUN)
    model, _ = build_initial_model(cfg, CLASS_NAMES)
    saved, state = load_file(converted / "model.safetensors"), model.state_dict()
    assert saved.keys() == state.keys()
    assert all(torch.equal(state[k], saved[k]) for k in saved if k not in CLASS_LAYER)
    # a resumed fine-tuning run restores its own weights: the checkpoint it started from is no longer read
    for path in converted.iterdir():
        path.unlink()
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0
