"""The CLI end to end, in-process: help for every verb, conversion, predict, eval, one-line errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from retina_deploy.cli.main import build_parser, main

VERBS = [
    "make-shapes",
    "train",
    "convert-weights",
    "eval",
    "predict",
    "export-onnx",
    "build-engine",
    "demo",
    "serve",
    "triton-repo",
]


def test_help_for_every_verb_shows_defaults(capsys):
    for verb in VERBS:
        with pytest.raises(SystemExit) as e:
            main([verb, "--help"])
        assert e.value.code == 0
        assert "usage: retina-deploy " + verb in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["make-shapes", "--help"])
    assert "(default: 200)" in capsys.readouterr().out
    assert set(VERBS) <= set(build_parser()._subparsers._group_actions[0].choices)


def test_help_defaults_are_the_library_defaults(capsys, monkeypatch, tmp_path):
    """Options whose default the library keeps show that value in --help, and pass nothing when not given."""
    from retina_deploy.calib.int8 import CalibConfig
    from retina_deploy.export.onnx_export import ExportConfig
    from retina_deploy.model.config import ModelConfig

    with pytest.raises(SystemExit):
        main(["export-onnx", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"ONNX opset (13..20) (default: {ExportConfig().opset})" in out
    assert "dynamic batch range (default: {} {} {})".format(*ExportConfig().batch) in out
    assert f"the checkpoint's, {ModelConfig().detections_per_img} for a new model" in out
    with pytest.raises(SystemExit):
        main(["build-engine", "--help"])
    assert f"images sampled, seeded (default: {CalibConfig().num})" in " ".join(capsys.readouterr().out.split())
    seen = {}

    def fake_export(checkpoint, out, cfg):
        seen["cfg"] = cfg
        out.write_bytes(b"onnx")
        return out

    monkeypatch.setattr("retina_deploy.export.onnx_export.export_onnx", fake_export)
    assert main(["export-onnx", str(tmp_path / "ckpt"), str(tmp_path / "m.onnx")]) == 0
    assert seen["cfg"] == ExportConfig()


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("retina-deploy ")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A torchvision ResNet-18 FPN RetinaNet (random weights) converted with the CLI."""
    from torchvision.models import resnet18
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    tmp = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    backbone = _resnet_fpn_extractor(resnet18(), 5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(512, 256))
    src = tmp / "tv_resnet18.pth"
    torch.save(RetinaNet(backbone, num_classes=3).state_dict(), src)
    names = tmp / "names.txt"
    names.write_text("cat\ndog\nbird\n")
    args = ["convert-weights", "--from", "torchvision", str(src), str(tmp / "ckpt"), "--size", "128", "256"]
    assert main(args + ["--class-names", str(names)]) == 0
    return tmp / "ckpt"


def test_convert_weights_writes_our_checkpoint(converted):
    cfg = json.loads((converted / "config.json").read_text())
    assert cfg["model"]["backbone"] == "resnet18" and cfg["model"]["p6_from"] == "c5"
    assert cfg["class_names"] == ["cat", "dog", "bird"]
    assert cfg["preprocess"]["size"] == [128, 256]


def _png(path, h=90, w=160, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_predict_no_detections_and_bad_image(converted, tmp_path, capsys):
    good = _png(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)  # PNG signature, no image
    assert main(["predict", str(converted), str(good), "--out", str(tmp_path / "out")]) == 0
    records = json.loads((tmp_path / "out" / "detections.json").read_text())
    # freshly initialised heads score ~0.01 everywhere: below the 0.05 threshold, so no boxes
    assert records == [{"image": str(good), "height": 90, "width": 160, "detections": []}]
    assert Image.open(tmp_path / "out" / "good.png").size == (160, 90)
    capsys.readouterr()

    assert main(["predict", str(converted), str(bad), str(good), "--out", str(tmp_path / "out2")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1 of 2 images could not be read" in err and "bad.png" in err
    records = json.loads((tmp_path / "out2" / "detections.json").read_text())
    assert [("error" in r) for r in records] == [True, False]  # the good image's result is kept


def test_eval_on_synthetic_set(converted, tmp_path, capsys):
    from retina_deploy.data.shapes import make_shapes

    data = make_shapes(tmp_path / "shapes", num_images=4, size=128, seed=1)
    # the converted model has 3 classes, the shapes set 6: refused with one line
    args = ["eval", str(converted), "--images", str(data / "images"), "--annotations", str(data / "annotations.json")]
    assert main(args) == 1
    assert "classes" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv,message",
    [
        (["predict", "nope", "x.png", "--out", "o"], "no such model"),
        (["eval", "model.pth", "--images", "i", "--annotations", "a.json"], "not a model"),
        (["predict", "triton://127.0.0.1:9/m", "x.png", "--out", "o"], "cannot reach Triton at 127.0.0.1:9"),
        (["convert-weights", "missing.pth", "out"], "no such file"),
        (["make-shapes", "o", "--num-images", "0"], "num_images"),
        (["export-onnx", "missing", "m.onnx"], "no such checkpoint"),
        (["export-onnx", "ck", "m.onnx", "--size", "300", "256"], "nearest valid: 256 or 384"),
        (["export-onnx", "ck", "m.onnx", "--batch", "4", "4", "2"], "MIN"),
        (["export-onnx", "ck", "m.onnx", "--max-dets", "0"], "max-dets must be >= 1"),
        (["train", "--images", "i", "--annotations", "a.json", "--out", "r"], "length"),
    ],
)
def test_bad_input_is_one_line_exit_1(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.pth").write_bytes(b"junk")
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_every_train_config_field_has_a_train_flag(monkeypatch):
    """A TrainConfig field without a flag would be silently left at its default."""
    from retina_deploy.training.config import train_flag_fields


    seen = {}
    monkeypatch.setattr("retina_deploy.training.run.train", lambda cfg: seen.setdefault("cfg", cfg))
    args = build_parser().parse_args(
        ["train", "--images", "i", "--annotations", "a.json", "--out", "o", "--iters", "3",
         "--fpn-channels", "64", "--anchor-sizes", "16", "32", "64", "128", "256", "--scale-jitter", "0.8", "1.2"]
    )  # fmt: skip
    assert all(hasattr(args, name) for name in train_flag_fields())
    assert args.func(args) == 0
    cfg = seen["cfg"]
    assert (cfg.fpn_channels, cfg.anchor_sizes) == (64, (16, 32, 64, 128, 256))
    assert (cfg.scale_jitter, cfg.iters) == ((0.8, 1.2), 3)


def test_build_engine_calibration_defaults_are_calib_configs(monkeypatch, tmp_path):
    """Options not given leave CalibConfig's defaults (the CLI once defaulted to another method)."""
    from retina_deploy.calib.int8 import CalibConfig

    seen = {}

    def fake_build(onnx_path, out, cfg):
        seen["calib"] = cfg.int8.calib
        raise SystemExit(0)  # stop before printing a result

    monkeypatch.setattr("retina_deploy.export.engine.builder.build_engine", fake_build)
    common = ["build-engine", "m.onnx", "m.engine", "--int8", "--calib-images", str(tmp_path)]
    with pytest.raises(SystemExit):
        main(common)
    assert seen["calib"] == CalibConfig()
    with pytest.raises(SystemExit):
        main([*common, "--calib-method", "entropy", "--calib-num", "7", "--calib-seed", "3"])
    assert (seen["calib"].method, seen["calib"].num, seen["calib"].seed) == ("entropy", 7, 3)
