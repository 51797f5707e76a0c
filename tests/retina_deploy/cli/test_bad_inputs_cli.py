"""Bad input through every CLI verb, as a careless or hostile user would type it.

Every case: exit status 1, exactly one line on stderr naming the input, no traceback, no file that
existed before changed (the workspace is fingerprinted before and after), no temporary file left,
and the outputs a refused command must not create are absent. Fixtures: ``conftest.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import onnx
import pytest
from bad_input_helpers import (
    DATA,
    TRAIN,
    check_refused_case,
    edit_json,
    evil_pickle,
    replace_file,
)

# -- files a case puts in its workspace first ------------------------------------------------------


def text_files(ws: Path) -> None:
    replace_file(ws / "notes.txt", "not weights\n")
    replace_file(ws / "x.onnx", "not an ONNX file\n")
    replace_file(ws / "bad.png", "hello, I am not an image\n")
    replace_file(ws / "bin.txt", b"\xff\xfe\x00\x81")


def truncated(ws: Path) -> None:
    replace_file(ws / "t.onnx", (ws / "m.onnx").read_bytes()[:1000])
    replace_file(ws / "trunc.safetensors", (ws / "run2/last/model.safetensors").read_bytes()[:5000])


def tampered_anchors(ws: Path) -> None:
    model = onnx.load(str(ws / "m.onnx"))
    for prop in model.metadata_props:
        if prop.key == "anchors_per_level":
            prop.value = "[1, 2, 3]"
    replace_file(ws / "bad.onnx", model.SerializeToString())


def wrong_width(ws: Path) -> None:
    def edit(coco):
        coco["images"][0]["width"] = 64

    replace_file(ws / "data/wrong.json", (ws / "data/annotations.json").read_text())
    edit_json(ws / "data/wrong.json", edit)


def renamed_class(ws: Path) -> None:
    replace_file(ws / "data/renamed.json", (ws / "data/annotations.json").read_text())
    edit_json(ws / "data/renamed.json", lambda coco: coco["categories"][0].update(name="blob"))


def no_boxes(ws: Path) -> None:
    replace_file(ws / "data/empty.json", (ws / "data/annotations.json").read_text())
    edit_json(ws / "data/empty.json", lambda coco: coco.update(annotations=[]))


def two_names(ws: Path) -> None:
    replace_file(ws / "names.txt", "cat\ndog\n")


def corrupt_image(ws: Path) -> None:
    replace_file(ws / "data/images/000003.png", (ws / "data/images/000003.png").read_bytes()[:60])


def project_with_data(ws: Path) -> None:
    (ws / "proj/data").mkdir(parents=True)
    replace_file(ws / "proj/src/precious.txt", "x\n")


def model_edit(key, value):
    def setup(ws: Path) -> None:
        edit_json(ws / "run2/last/config.json", lambda c: c["model"].__setitem__(key, value))

    return setup


def config_edit(edit):
    def setup(ws: Path) -> None:
        edit_json(ws / "run2/last/config.json", edit)

    return setup


def run_config_edit(edit):
    def setup(ws: Path) -> None:
        edit_json(ws / "run2/config.json", edit)

    return setup


def weights_replaced(data: bytes | None):
    def setup(ws: Path) -> None:
        path = ws / "run2/last/model.safetensors"
        if data is None:
            path.unlink()
        else:
            replace_file(path, data)

    return setup


def config_text(text: str):
    def setup(ws: Path) -> None:
        replace_file(ws / "run2/last/config.json", text)

    return setup


def all_of(*setups):
    def setup(ws: Path) -> None:
        for s in setups:
            s(ws)

    return setup


# -- the cases: (id, setup, argv, names in the message, paths that must not exist afterwards) ----

CKPT_CONFIG_CASES = [
    # (id, setup, names): a tampered or mistaken checkpoint config.json
    ("anchor_sizes_string", model_edit("anchor_sizes", "abcde"), "anchor_sizes"),
    ("anchor_sizes_negative", model_edit("anchor_sizes", [-32, 64, 128, 256, 512]), "anchor_sizes"),
    ("anchor_sizes_four", model_edit("anchor_sizes", [32, 64, 128, 256]), "anchor_sizes"),
    ("score_thresh_negative", model_edit("score_thresh", -1), "score_thresh"),
    ("nms_thresh_5", model_edit("nms_thresh", 5), "nms_thresh"),
    ("num_classes_string", model_edit("num_classes", "6"), "num_classes"),
    ("fpn_channels_zero", model_edit("fpn_channels", 0), "fpn_channels"),
    ("focal_gamma_nan", model_edit("focal_loss_gamma", math.nan), "focal_loss_gamma"),
    ("focal_gamma_fg_string", model_edit("focal_loss_gamma_fg", "0"), "focal_loss_gamma_fg"),
    ("backbone_unknown", model_edit("backbone", "vgg16"), "vgg16"),
    ("model_unknown_key", model_edit("dropout", 0.1), "dropout"),
    ("size_strings", config_edit(lambda c: c["preprocess"].update(size=["x", "y"])), "size"),
    ("size_huge", config_edit(lambda c: c["preprocess"].update(size=[131072, 131072])), "131072"),
    ("size_three", config_edit(lambda c: c["preprocess"].update(size=[128, 128, 128])), "size"),
    ("std_nan", config_edit(lambda c: c["preprocess"].update(std=[math.nan, 0.2, 0.2])), "std"),
    ("std_zero", config_edit(lambda c: c["preprocess"].update(std=[0, 0.2, 0.2])), "std"),
    ("mean_string", config_edit(lambda c: c["preprocess"].update(mean="abc")), "mean"),
    ("class_names_int", config_edit(lambda c: c.update(class_names=6)), "class_names"),
    ("class_names_short", config_edit(lambda c: c.update(class_names=["a"])), "class names"),
    ("extra_string", config_edit(lambda c: c.update(extra="abc")), "extra"),
    ("unknown_top_key", config_edit(lambda c: c.update(evil=1)), "evil"),
    ("format_version_2", config_edit(lambda c: c.update(format_version=2)), "format_version"),
    ("model_missing", config_edit(lambda c: c.pop("model")), "model"),
    ("model_is_list", config_edit(lambda c: c.update(model=[1, 2])), "model"),
    ("config_not_json", config_text("{not json"), "JSON"),
    ("config_is_list", config_text("[1, 2]"), "config"),
    ("weights_truncated", weights_replaced(b"\x00" * 100), "model.safetensors"),
    ("weights_missing", weights_replaced(None), "model.safetensors"),
    ("weights_swapped", weights_replaced(b"{}"), "model.safetensors"),
]

CASES = [
    # make-shapes
    ("make-shapes/size_100000", None, ["make-shapes", "out", "--size", "100000"], ("100000",), ["out"]),
    ("make-shapes/size_0", None, ["make-shapes", "out", "--size", "0"], ("size",), ["out"]),
    ("make-shapes/size_31", None, ["make-shapes", "out", "--size", "31"], ("size",), ["out"]),
    ("make-shapes/num_images_0", None, ["make-shapes", "out", "--num-images", "0"], ("num_images",), ["out"]),
    ("make-shapes/num_images_-5", None, ["make-shapes", "out", "--num-images", "-5"], ("num_images",), ["out"]),
    ("make-shapes/seed_-1", None, ["make-shapes", "out", "--seed", "-1"], ("seed",), ["out"]),
    ("make-shapes/out_is_file", None, ["make-shapes", "data/annotations.json"], ("data/annotations.json",), []),
    ("make-shapes/out_not_empty", None, ["make-shapes", "data", "--num-images", "2"], ("data",), []),
    ("make-shapes/out_under_file", None, ["make-shapes", "m.onnx/sub"], ("m.onnx",), []),
    # convert-weights
    (
        "convert-weights/into_its_own_checkpoint",
        None,
        ["convert-weights", "run2/best/model.safetensors", "run2/best", "--size", "128", "128"],
        ("run2/best",),
        [],
    ),
    (
        "convert-weights/overwrite_its_own_checkpoint",
        None,
        ["convert-weights", "run2/best/model.safetensors", "run2/best", "--size", "128", "128", "--overwrite"],
        ("run2/best",),
        [],
    ),
    (
        "convert-weights/over_another_checkpoint",
        None,
        ["convert-weights", "run2/best/model.safetensors", "run2/last", "--size", "128", "128"],
        ("run2/last",),
        [],
    ),
    ("convert-weights/out_not_empty", None, ["convert-weights", "run2/best/model.safetensors", "data"], ("data",), []),
    (
        "convert-weights/out_is_file",
        None,
        ["convert-weights", "run2/best/model.safetensors", "m.onnx"],
        ("m.onnx",),
        [],
    ),
    ("convert-weights/src_missing", None, ["convert-weights", "nope.pth", "ck"], ("nope.pth",), ["ck"]),
    (
        "convert-weights/src_evil_pickle",
        evil_pickle,
        ["convert-weights", "evil.pth", "ck"],
        ("evil.pth",),
        ["ck", "pwned"],
    ),
    ("convert-weights/src_text", text_files, ["convert-weights", "notes.txt", "ck"], ("notes.txt",), ["ck"]),
    (
        "convert-weights/src_truncated",
        truncated,
        ["convert-weights", "trunc.safetensors", "ck"],
        ("trunc.safetensors",),
        ["ck"],
    ),
    ("convert-weights/src_onnx", None, ["convert-weights", "m.onnx", "ck"], ("m.onnx",), ["ck"]),
    (
        "convert-weights/size_100",
        None,
        ["convert-weights", "run2/best/model.safetensors", "ck", "--size", "100", "100"],
        ("100",),
        ["ck"],
    ),
    (
        "convert-weights/size_131072",
        None,
        ["convert-weights", "run2/best/model.safetensors", "ck", "--size", "131072", "131072"],
        ("131072",),
        ["ck"],
    ),
    (
        "convert-weights/class_names_missing",
        None,
        ["convert-weights", "run2/best/model.safetensors", "ck", "--class-names", "nope.txt"],
        ("nope.txt",),
        ["ck"],
    ),
    (
        "convert-weights/class_names_binary",
        text_files,
        ["convert-weights", "run2/best/model.safetensors", "ck", "--class-names", "bin.txt"],
        ("bin.txt",),
        ["ck"],
    ),
    (
        "convert-weights/class_names_count",
        two_names,
        ["convert-weights", "run2/best/model.safetensors", "ck", "--class-names", "names.txt"],
        ("2 class names",),
        ["ck"],
    ),
    # eval
    (
        "eval/batch_size_-1",
        None,
        ["eval", "m.onnx", *DATA, "--batch-size", "-1", "--results", "r.json"],
        ("--batch-size",),
        ["r.json"],
    ),
    ("eval/batch_size_0", None, ["eval", "m.onnx", *DATA, "--batch-size", "0"], ("--batch-size",), []),
    ("eval/batch_size_-1_checkpoint", None, ["eval", "run2/last", *DATA, "--batch-size", "-1"], ("--batch-size",), []),
    ("eval/device_banana", None, ["eval", "m.onnx", *DATA, "--device", "banana"], ("banana",), []),
    ("eval/device_banana_checkpoint", None, ["eval", "run2/last", *DATA, "--device", "banana"], ("banana",), []),
    ("eval/device_cuda9_checkpoint", None, ["eval", "run2/last", *DATA, "--device", "cuda:9"], ("cuda:9",), []),
    ("eval/model_missing", None, ["eval", "nope.onnx", *DATA], ("nope.onnx",), []),
    ("eval/model_text", text_files, ["eval", "x.onnx", *DATA], ("x.onnx",), []),
    ("eval/model_truncated", truncated, ["eval", "t.onnx", *DATA], ("t.onnx",), []),
    (
        "eval/model_tampered_anchors",
        tampered_anchors,
        ["eval", "bad.onnx", *DATA],
        ("bad.onnx", "anchors_per_level"),
        [],
    ),
    ("eval/model_plain_folder", None, ["eval", "data/images", *DATA], ("data/images",), []),
    ("eval/model_pickle", evil_pickle, ["eval", "evil.pth", *DATA], ("evil.pth",), ["pwned"]),
    (
        "eval/images_missing",
        None,
        ["eval", "m.onnx", "--images", "nope", "--annotations", "data/annotations.json"],
        ("nope",),
        [],
    ),
    (
        "eval/annotations_missing",
        None,
        ["eval", "m.onnx", "--images", "data/images", "--annotations", "no.json"],
        ("no.json",),
        [],
    ),
    (
        "eval/annotations_not_json",
        text_files,
        ["eval", "m.onnx", "--images", "data/images", "--annotations", "notes.txt"],
        ("notes.txt",),
        [],
    ),
    (
        "eval/declared_width_wrong",
        wrong_width,
        ["eval", "m.onnx", "--images", "data/images", "--annotations", "data/wrong.json", "--json", "j.json"],
        ("000000.png", "64x"),
        ["j.json"],
    ),
    (
        "eval/classes_differ",
        renamed_class,
        ["eval", "m.onnx", "--images", "data/images", "--annotations", "data/renamed.json"],
        ("data/renamed.json",),
        [],
    ),
    (
        "eval/results_over_annotations",
        None,
        ["eval", "m.onnx", *DATA, "--results", "data/annotations.json"],
        ("data/annotations.json",),
        [],
    ),
    ("eval/json_over_model", None, ["eval", "m.onnx", *DATA, "--json", "m.onnx"], ("m.onnx",), []),
    ("eval/json_over_image", None, ["eval", "m.onnx", *DATA, "--json", "data/images/000001.png"], ("000001.png",), []),
    ("eval/json_is_folder", None, ["eval", "m.onnx", *DATA, "--json", "data"], ("data",), []),
    (
        "eval/json_and_results_same",
        None,
        ["eval", "m.onnx", *DATA, "--json", "a.json", "--results", "a.json"],
        ("a.json",),
        ["a.json"],
    ),
    (
        "eval/json_over_checkpoint_file",
        None,
        ["eval", "m.onnx", *DATA, "--json", "run2/best/config.json"],
        ("run2/best/config.json",),
        [],
    ),
    ("eval/r32_groupnorm_1x1_p7", None, ["eval", "r32", *DATA, "--batch-size", "2"], ("r32", "groupnorm"), []),
    # predict
    (
        "predict/batch_size_-1",
        None,
        ["predict", "m.onnx", "data/images/000000.png", "--out", "p", "--batch-size", "-1"],
        ("--batch-size",),
        ["p"],
    ),
    (
        "predict/batch_size_0",
        None,
        ["predict", "m.onnx", "data/images/000000.png", "--out", "p", "--batch-size", "0"],
        ("--batch-size",),
        ["p"],
    ),
    ("predict/out_is_file", None, ["predict", "m.onnx", "data/images/000000.png", "--out", "m.onnx"], ("m.onnx",), []),
    (
        "predict/out_holds_input",
        None,
        ["predict", "m.onnx", "data/images/000000.png", "--out", "data/images"],
        ("data/images",),
        [],
    ),
    (
        "predict/out_holds_model",
        None,
        ["predict", "run2/last", "data/images/000000.png", "--out", "run2"],
        ("run2",),
        [],
    ),
    (
        "predict/out_foreign_folder",
        None,
        ["predict", "m.onnx", "data/images/000000.png", "--out", "run2"],
        ("run2",),
        [],
    ),
    (
        "predict/device_banana",
        None,
        ["predict", "m.onnx", "data/images/000000.png", "--out", "p", "--device", "banana"],
        ("banana",),
        ["p"],
    ),
    (
        "predict/device_banana_checkpoint",
        None,
        ["predict", "run2/last", "data/images/000000.png", "--out", "p", "--device", "banana"],
        ("banana",),
        ["p"],
    ),
    (
        "predict/model_missing",
        None,
        ["predict", "nope.onnx", "data/images/000000.png", "--out", "p"],
        ("nope.onnx",),
        ["p"],
    ),
    (
        "predict/model_tampered",
        tampered_anchors,
        ["predict", "bad.onnx", "data/images/000000.png", "--out", "p"],
        ("bad.onnx",),
        ["p"],
    ),
    (
        "predict/r32_one_image",
        None,
        ["predict", "r32", "data/images/000000.png", "--out", "p"],
        ("r32", "groupnorm"),
        ["p"],
    ),
    ("predict/image_not_an_image", text_files, ["predict", "m.onnx", "bad.png", "--out", "p"], ("bad.png",), []),
    ("predict/image_missing", None, ["predict", "m.onnx", "nope.png", "--out", "p"], ("nope.png",), []),
    # export-onnx
    (
        "export-onnx/over_its_weights",
        None,
        ["export-onnx", "run2/last", "run2/last/model.safetensors", "--size", "128", "128"],
        ("model.safetensors",),
        [],
    ),
    ("export-onnx/over_its_config", None, ["export-onnx", "run2/last", "run2/last/config.json"], ("config.json",), []),
    (
        "export-onnx/over_another_checkpoint",
        None,
        ["export-onnx", "run2/last", "run2/best/model.safetensors"],
        ("run2/best/model.safetensors",),
        [],
    ),
    (
        "export-onnx/over_weights_given_as_input",
        None,
        ["export-onnx", "run2/last/model.safetensors", "run2/last/model.safetensors"],
        ("model.safetensors",),
        [],
    ),
    ("export-onnx/out_is_folder", None, ["export-onnx", "run2/last", "data"], ("data",), []),
    ("export-onnx/checkpoint_missing", None, ["export-onnx", "nope", "o.onnx"], ("nope",), ["o.onnx"]),
    (
        "export-onnx/checkpoint_pickle",
        evil_pickle,
        ["export-onnx", "evil.pth", "o.onnx"],
        ("evil.pth",),
        ["o.onnx", "pwned"],
    ),
    (
        "export-onnx/size_100",
        None,
        ["export-onnx", "run2/last", "o.onnx", "--size", "100", "100"],
        ("100",),
        ["o.onnx"],
    ),
    (
        "export-onnx/size_131072",
        None,
        ["export-onnx", "run2/last", "o.onnx", "--size", "131072", "128"],
        ("131072",),
        ["o.onnx"],
    ),
    (
        "export-onnx/batch_0",
        None,
        ["export-onnx", "run2/last", "o.onnx", "--batch", "0", "1", "1"],
        ("batch",),
        ["o.onnx"],
    ),
    (
        "export-onnx/batch_reversed",
        None,
        ["export-onnx", "run2/last", "o.onnx", "--batch", "4", "2", "1"],
        ("batch",),
        ["o.onnx"],
    ),
    (
        "export-onnx/max_dets_0",
        None,
        ["export-onnx", "run2/last", "o.onnx", "--max-dets", "0"],
        ("max-dets",),
        ["o.onnx"],
    ),
    (
        "export-onnx/score_thresh_2",
        None,
        ["export-onnx", "run2/last", "o.onnx", "--score-thresh", "2"],
        ("score",),
        ["o.onnx"],
    ),
    (
        "export-onnx/score_thresh_nan",
        None,
        ["export-onnx", "run2/last", "o.onnx", "--score-thresh", "nan"],
        ("score",),
        ["o.onnx"],
    ),
    (
        "export-onnx/iou_thresh_-1",
        None,
        ["export-onnx", "run2/last", "o.onnx", "--iou-thresh", "-1"],
        ("iou",),
        ["o.onnx"],
    ),
    ("export-onnx/opset_5", None, ["export-onnx", "run2/last", "o.onnx", "--opset", "5"], ("opset",), ["o.onnx"]),
    ("export-onnx/r32_groupnorm_1x1_p7", None, ["export-onnx", "r32", "o.onnx"], ("r32", "groupnorm"), ["o.onnx"]),
    # build-engine
    ("build-engine/over_its_onnx", None, ["build-engine", "m.onnx", "m.onnx"], ("m.onnx",), []),
    (
        "build-engine/tampered_anchors",
        tampered_anchors,
        ["build-engine", "bad.onnx", "x.engine"],
        ("bad.onnx", "anchors_per_level"),
        ["x.engine", "x.engine.json"],
    ),
    (
        "build-engine/int8_without_images",
        None,
        ["build-engine", "m.onnx", "x.engine", "--int8"],
        ("--calib-images",),
        ["x.engine"],
    ),
    ("build-engine/onnx_missing", None, ["build-engine", "nope.onnx", "x.engine"], ("nope.onnx",), ["x.engine"]),
    ("build-engine/onnx_text", text_files, ["build-engine", "x.onnx", "x.engine"], ("x.onnx",), ["x.engine"]),
    ("build-engine/onnx_truncated", truncated, ["build-engine", "t.onnx", "x.engine"], ("t.onnx",), ["x.engine"]),
    ("build-engine/out_is_folder", None, ["build-engine", "m.onnx", "data"], ("data",), []),
    (
        "build-engine/manifest_over_annotations",
        None,
        ["build-engine", "m.onnx", "data/annotations"],
        ("data/annotations",),
        ["data/annotations"],
    ),
    (
        "build-engine/batch_outside_file",
        None,
        ["build-engine", "m.onnx", "x.engine", "--batch", "1", "2", "16"],
        ("m.onnx",),
        ["x.engine"],
    ),
    # train
    (
        "train/backbone_weights_pickle",
        evil_pickle,
        [*TRAIN, "--backbone-weights", "evil.pth", "--out", "R"],
        ("evil.pth",),
        ["R", "pwned"],
    ),
    (
        "train/backbone_weights_text",
        text_files,
        [*TRAIN, "--backbone-weights", "notes.txt", "--out", "R"],
        ("notes.txt",),
        ["R"],
    ),
    ("train/out_previous_run", None, [*TRAIN, "--out", "run2"], ("run2",), []),
    ("train/out_is_file", None, [*TRAIN, "--out", "m.onnx"], ("m.onnx",), []),
    ("train/resume_iters", None, ["train", "--resume", "run2", "--iters", "40"], ("--iters",), []),
    ("train/resume_lr", None, ["train", "--resume", "run2", "--lr", "0.1"], ("--lr",), []),
    ("train/resume_images", None, ["train", "--resume", "run2", "--images", "data/images"], ("--images",), []),
    (
        "train/resume_out_differs",
        None,
        ["train", "--resume", "run2", "--out", "elsewhere"],
        ("--out", "elsewhere"),
        ["elsewhere"],
    ),
    ("train/resume_not_a_run", None, ["train", "--resume", "data"], ("data",), []),
    ("train/resume_missing", None, ["train", "--resume", "nope"], ("nope",), []),
    (
        "train/resume_config_tampered",
        run_config_edit(lambda c: c["train"].update(size=["x", "y"])),
        ["train", "--resume", "run2"],
        ("run2",),
        [],
    ),
    (
        "train/resume_config_not_a_dict",
        run_config_edit(lambda c: c.update(train=5)),
        ["train", "--resume", "run2"],
        ("run2",),
        [],
    ),
    (
        "train/images_missing",
        None,
        ["train", "--images", "nope", "--annotations", "data/annotations.json", "--iters", "1", "--out", "R"],
        ("nope",),
        ["R"],
    ),
    (
        "train/annotations_missing",
        None,
        ["train", "--images", "data/images", "--annotations", "no.json", "--iters", "1", "--out", "R"],
        ("no.json",),
        ["R"],
    ),
    (
        "train/no_boxes",
        no_boxes,
        ["train", "--images", "data/images", "--annotations", "data/empty.json", "--iters", "1", "--out", "R"],
        ("data/empty.json",),
        ["R"],
    ),
    ("train/size_100", None, [*TRAIN, "--size", "100", "100", "--out", "R"], ("100",), ["R"]),
    ("train/size_131072", None, [*TRAIN, "--size", "131072", "131072", "--out", "R"], ("131072",), ["R"]),
    (
        "train/groupnorm_32_at_128",
        None,
        [*TRAIN, "--fpn-channels", "32", "--out", "R"],
        ("groupnorm", "fpn_channels 32"),
        ["R"],
    ),
    ("train/batch_size_0", None, [*TRAIN, "--batch-size", "0", "--out", "R"], ("batch_size",), ["R"]),
    ("train/iters_0", None, [*TRAIN, "--iters", "0", "--out", "R"], ("iters",), ["R"]),
    ("train/lr_nan", None, [*TRAIN, "--lr", "nan", "--out", "R"], ("lr",), ["R"]),
    ("train/cls_loss_weight_0", None, [*TRAIN, "--cls-loss-weight", "0", "--out", "R"], ("cls_loss_weight",), ["R"]),
    ("train/cls_weight_inf", None, [*TRAIN, "--cls-loss-weight", "inf", "--out", "R"], ("cls_loss_weight",), ["R"]),
    ("train/gamma_fg_negative", None, [*TRAIN, "--focal-loss-gamma-fg", "-1", "--out", "R"], ("gamma_fg",), ["R"]),
    ("train/hflip_2", None, [*TRAIN, "--hflip", "2", "--out", "R"], ("hflip",), ["R"]),
    ("train/momentum_nan", None, [*TRAIN, "--momentum", "nan", "--out", "R"], ("momentum",), ["R"]),
    (
        "train/anchor_sizes_negative",
        None,
        [*TRAIN, "--anchor-sizes", "-1", "2", "3", "4", "5", "--out", "R"],
        ("anchor_sizes",),
        ["R"],
    ),
    ("train/workers_-1", None, [*TRAIN, "--workers", "-1", "--out", "R"], ("workers",), ["R"]),
    ("train/no_length", None, ["train", *DATA, "--out", "R"], ("length",), ["R"]),
    ("train/val_images_only", None, [*TRAIN, "--val-images", "data/images", "--out", "R"], ("val_annotations",), ["R"]),
    ("train/out_missing", None, ["train", *DATA, "--iters", "1"], ("--out",), []),
    (
        "train/corrupt_image_in_worker",
        corrupt_image,
        [*TRAIN, "--workers", "1", "--iters", "2", "--out", "R"],
        ("000003.png",),
        ["R"],
    ),
    # demo
    ("demo/size_7_deletes_nothing", project_with_data, ["demo", "--out", "proj", "--size", "7"], ("7",), []),
    ("demo/foreign_folder_with_data", project_with_data, ["demo", "--out", "proj", "--size", "128"], ("proj",), []),
    ("demo/size_7_new_folder", None, ["demo", "--out", "d", "--size", "7"], ("7",), ["d"]),
    ("demo/train_images_-1", None, ["demo", "--out", "d", "--train-images", "-1"], ("--train-images",), ["d"]),
    ("demo/num_val_0", None, ["demo", "--out", "d", "--num-val", "0"], ("--num-val",), ["d"]),
    ("demo/backbone_vgg", None, ["demo", "--out", "d", "--backbone", "vgg16"], ("vgg16",), ["d"]),
    ("demo/out_is_file", None, ["demo", "--out", "m.onnx"], ("m.onnx",), []),
    ("demo/out_is_run", None, ["demo", "--out", "run2", "--size", "128"], ("run2",), []),
]

for _id, _setup, _names in CKPT_CONFIG_CASES:
    CASES.append((f"eval/checkpoint_{_id}", _setup, ["eval", "run2/last", *DATA], ("run2/last", *_names), []))
    CASES.append(
        (f"export-onnx/checkpoint_{_id}", _setup, ["export-onnx", "run2/last", "o.onnx"], ("run2/last",), ["o.onnx"])
    )


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(workspace, capsys, case):
    check_refused_case(workspace, capsys, case)
