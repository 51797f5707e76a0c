"""The ``retina-deploy`` command: parses arguments and calls each stage's public entry, nothing more.

Any RetinaDeployError (bad input) becomes one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from retina_deploy import __version__
from retina_deploy.cli.bench import add_bench
from retina_deploy.cli.common import (
    HelpFormatter,
    LibraryDefault,
    OneLineParser,
    add_verb,
    given_options,
    progress_enabled,
)
from retina_deploy.cli.engine import add_build_engine
from retina_deploy.cli.serve import add_serve, add_triton_repo
from retina_deploy.cli.train import add_train_arguments, run_train
from retina_deploy.core.errors import RetinaDeployError

EPILOG = "Docs: README.md. Every verb takes --help."


def _check_batch_size(value: int) -> None:
    if value < 1:
        raise RetinaDeployError(f"--batch-size must be >= 1, got {value}")


# -- make-shapes ---------------------------------------------------------------------------------


def _make_shapes(args) -> int:
    from retina_deploy.data.shapes import make_shapes

    given = given_options(args, size="size", seed="seed", object_extent="object_extent")
    out = make_shapes(args.out, num_images=args.num_images, overwrite=args.overwrite, **given)
    print(f"wrote {args.num_images} images and {out / 'annotations.json'}")
    return 0


def _add_make_shapes(sub) -> None:
    p = add_verb(sub, "make-shapes", "Write a deterministic synthetic detection dataset in COCO format.", _make_shapes)
    p.add_argument("out", type=Path, help="output folder (images/ + annotations.json)")
    p.add_argument("--num-images", type=int, default=200, help="number of images")
    shapes = "retina_deploy.data.shapes:make_shapes"
    p.add_argument("--size", type=int, help=LibraryDefault("longest image side in pixels", f"{shapes}.size"))
    p.add_argument("--seed", type=int, help=LibraryDefault("random seed (same seed, same bytes)", f"{shapes}.seed"))
    p.add_argument(
        "--object-extent",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help=LibraryDefault(
            "shape diameters, as fractions of the image's shorter side (raise LOW for images under ~200 px)",
            f"{shapes}.object_extent",
            fmt=lambda v: " ".join(map(str, v)),
        ),
    )
    p.add_argument("--overwrite", action="store_true", help="replace a folder an earlier make-shapes wrote")


# -- convert-weights -----------------------------------------------------------------------------


def _convert_weights(args) -> int:
    from retina_deploy.core.outputs import check_output_dir
    from retina_deploy.model.convert import convert_torchvision
    from retina_deploy.runtime.image.preprocess import PreprocessConfig

    preprocess = PreprocessConfig(size=tuple(args.size))
    check_output_dir(args.out, inputs=(args.src, args.class_names), flag="OUT", foreign_ok=args.overwrite)
    names = None
    if args.class_names:
        try:
            text = Path(args.class_names).read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise RetinaDeployError(f"--class-names {args.class_names}: not UTF-8 text ({e.reason})") from e
        names = [line.strip() for line in text.splitlines() if line.strip()]
    out = convert_torchvision(args.src, args.out, class_names=names, preprocess=preprocess, overwrite=args.overwrite)
    print(f"wrote checkpoint {out}")
    return 0


def _add_convert_weights(sub) -> None:
    p = add_verb(
        sub,
        "convert-weights",
        "Convert torchvision RetinaNet weights into a retina-deploy checkpoint.",
        _convert_weights,
    )
    p.add_argument("--from", dest="source", choices=["torchvision"], default="torchvision", help="weights' origin")
    p.add_argument("src", type=Path, help="torchvision state dict (.pth, loaded with weights_only, or .safetensors)")
    p.add_argument("out", type=Path, help="checkpoint folder to write")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=[768, 1280], help="network input size")
    p.add_argument("--class-names", type=Path, help="text file, one class name per line (default: COCO for 91 classes)")
    p.add_argument("--overwrite", action="store_true", help="replace the checkpoint in an existing non-empty OUT")


# -- eval / predict ------------------------------------------------------------------------------


def _add_device_flags(p) -> None:
    from retina_deploy.inference.open import BACKENDS

    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (engines always run on a GPU)")
    p.add_argument(
        "--backend",
        default="auto",
        choices=[b for b in BACKENDS if b != "triton"],  # triton:// URLs name their backend
        help="torch for checkpoints, a runtime backend for .onnx / .engine files; auto picks from --device and "
        "the engine manifest",
    )


def _eval(args) -> int:
    from retina_deploy.core.fileio import write_json_atomic
    from retina_deploy.core.outputs import check_distinct, check_output_file
    from retina_deploy.data.coco import load_coco
    from retina_deploy.evaluation.loop import evaluate_detector
    from retina_deploy.evaluation.metrics import best_f1_threshold, format_metrics_table, format_operating_point
    from retina_deploy.inference.open import device_gpu, open_model

    _check_batch_size(args.batch_size)
    device_gpu(args.device)
    inputs = (args.model, args.images, args.annotations)
    outputs = (("--json", args.json), ("--results", args.results))
    for flag, out in outputs:
        if out is not None:
            check_output_file(out, inputs=inputs, flag=flag)
    check_distinct(outputs)
    with open_model(args.model, device=args.device, backend=args.backend) as detector:
        coco = load_coco(args.images, args.annotations)
        metrics, results = evaluate_detector(detector, coco, batch_size=args.batch_size, progress=progress_enabled())
    best_f1 = best_f1_threshold(coco.annotations_path, results)
    # Files first: a closed stdout (``| head``) must not lose them.
    if args.json:
        report = {"model": str(args.model), "images": len(coco), "metrics": metrics, "best_f1": best_f1}
        write_json_atomic(args.json, report)
    if args.results:
        write_json_atomic(args.results, results)
    print(format_metrics_table(metrics))
    print(format_operating_point(best_f1))
    return 0


def _add_eval(sub) -> None:
    p = add_verb(sub, "eval", "COCO box metrics of a model (checkpoint folder, .onnx or .engine) on a dataset.", _eval)
    p.add_argument("model", help="checkpoint folder, .onnx, .engine or triton://host:port/model")
    p.add_argument("--images", type=Path, required=True, help="images folder")
    p.add_argument("--annotations", type=Path, required=True, help="COCO instances JSON")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    _add_device_flags(p)
    p.add_argument("--json", type=Path, help="write the metrics here as JSON")
    p.add_argument("--results", type=Path, help="write the detections here in COCO results format")


def _predict(args) -> int:
    from retina_deploy.inference.open import device_gpu, open_model
    from retina_deploy.inference.predict import check_draw_thresh, check_predict_out, predict_files

    _check_batch_size(args.batch_size)
    device_gpu(args.device)
    check_draw_thresh(args.draw_thresh)
    check_predict_out(args.out, args.images, inputs=(args.model,), overwrite=args.overwrite)
    with open_model(args.model, device=args.device, backend=args.backend) as detector:
        records, errors = predict_files(
            detector,
            args.images,
            args.out,
            batch_size=args.batch_size,
            draw_score_thresh=args.draw_thresh,
            progress=progress_enabled(),
            overwrite=args.overwrite,
        )
    n = sum(len(r.get("detections", [])) for r in records)
    print(f"{len(records) - len(errors)} images, {n} detections -> {args.out / 'detections.json'}")
    if errors:
        raise RetinaDeployError(f"{len(errors)} of {len(records)} images could not be read; first: {errors[0]}")
    return 0


def _add_predict(sub) -> None:
    from retina_deploy.inference.predict import DEFAULT_DRAW_THRESH  # torch-free

    p = add_verb(sub, "predict", "Detect objects in images; write detections.json and annotated PNGs.", _predict)
    p.add_argument("model", help="checkpoint folder, .onnx, .engine or triton://host:port/model")
    p.add_argument("images", type=Path, nargs="+", help="JPEG, PNG or BMP files")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--draw-thresh", type=float, default=DEFAULT_DRAW_THRESH,
                   help="draw boxes scoring at least this, 0..1 (`eval` prints the best-F1 one)")  # fmt: skip
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty --out that is not a previous predict's (replacing only files predict wrote)",
    )
    _add_device_flags(p)


def _add_train(sub) -> None:
    help_ = "Train a RetinaNet on a COCO-format dataset (CPU, one GPU, or torchrun for many)."
    add_train_arguments(add_verb(sub, "train", help_, run_train))


# -- export-onnx ---------------------------------------------------------------------------------


def _export_onnx(args) -> int:
    import time

    from retina_deploy.export.onnx_export import ExportConfig, export_onnx

    given = given_options(args, batch="batch", nms="nms", opset="opset")
    cfg = ExportConfig(
        size=tuple(args.size) if args.size else None,
        max_dets=args.max_dets,
        score_thresh=args.score_thresh,
        iou_thresh=args.iou_thresh,
        topk_per_level=args.topk_per_level,
        simplify=not args.no_simplify,
        **{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()},
    )
    t0 = time.perf_counter()
    out = export_onnx(args.checkpoint, args.out, cfg)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, nms={args.nms}) in {time.perf_counter() - t0:.1f} s")
    return 0


def _add_export_onnx(sub) -> None:
    p = add_verb(sub, "export-onnx", "Export a checkpoint to ONNX with decode and NMS inside the graph.", _export_onnx)
    p.add_argument("checkpoint", type=Path, help="checkpoint folder")
    p.add_argument("out", type=Path, help="ONNX file to write")
    p.add_argument(
        "--size", type=int, nargs=2, metavar=("H", "W"), help="input size, multiples of 128 (default: the checkpoint's)"
    )
    export, model = "retina_deploy.export.onnx_export:ExportConfig", "retina_deploy.model.config:ModelConfig"
    ranges = " ".join  # (1, 1, 8) -> "1 1 8", as typed
    batch_help = LibraryDefault("dynamic batch range", f"{export}.batch", lambda b: ranges(map(str, b)))
    p.add_argument("--batch", type=int, nargs=3, metavar=("MIN", "OPT", "MAX"), help=batch_help)
    p.add_argument(
        "--nms",
        choices=["onnx", "efficient", "none"],
        help=LibraryDefault(
            "onnx: NonMaxSuppression op; efficient: EfficientNMS_TRT plugin (TensorRT 10); none: all decoded boxes",
            f"{export}.nms",
        ),
    )
    checkpoint_s = "default: the checkpoint's, {} for a new model)"
    max_dets_help = LibraryDefault(f"detections per image K ({checkpoint_s}", f"{model}.detections_per_img")
    p.add_argument("--max-dets", type=int, help=max_dets_help)
    p.add_argument("--score-thresh", type=float,
                   help=LibraryDefault(f"score threshold ({checkpoint_s}", f"{model}.score_thresh"))  # fmt: skip
    p.add_argument("--iou-thresh", type=float,
                   help=LibraryDefault(f"class-aware NMS IoU ({checkpoint_s}", f"{model}.nms_thresh"))  # fmt: skip
    topk_help = LibraryDefault(f"candidates per FPN level ({checkpoint_s}", f"{model}.topk_candidates")
    p.add_argument("--topk-per-level", type=int, help=topk_help)
    p.add_argument("--opset", type=int, help=LibraryDefault("ONNX opset (13..20)", f"{export}.opset"))
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim simplification")


# -- demo ----------------------------------------------------------------------------------------


def _demo(args) -> int:
    from retina_deploy.demo.pipeline import run_demo

    given = given_options(args, backbone="backbone", **{name: name for name in _DEMO_SETTINGS})
    run_demo(args.out, restart=args.restart, progress=progress_enabled(), **given)
    print(f"report: {args.out / 'report.html'}; summary: {args.out / 'summary.json'}")
    return 0


_DEMO_SETTINGS = {  # recipe field -> help text; the defaults are retina_deploy.demo.recipe:DemoRecipe's
    "size": "input size (square, multiple of 128) and longest side of the synthetic images",
    "train_images": "training length in images seen (iterations = images // batch size)",
    "num_train": "synthetic training images",
    "num_val": "synthetic held-out validation images",
    "seed": "seed of the data (val: seed + 1), the training and the calibration sample",
}


def _add_demo(sub) -> None:
    help_ = (
        "The whole pipeline on synthetic data: make-shapes, train, eval, export-onnx, FP16, INT8, engines, eval,"
        " bench, predict, report. A rerun skips the stages done with the same settings."
    )
    p = add_verb(sub, "demo", help_, _demo)
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (a previous demo's is reused)")
    recipe = "retina_deploy.demo.recipe:DemoRecipe"
    for name, text in _DEMO_SETTINGS.items():
        p.add_argument("--" + name.replace("_", "-"), type=int, help=LibraryDefault(text, f"{recipe}.{name}"))
    p.add_argument("--backbone", help=LibraryDefault("resnet18, 34, 50, 101 or 152", f"{recipe}.backbone"))
    p.add_argument("--restart", action="store_true", help="redo every stage (default: skip the stages done)")


# -- main ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="retina-deploy",
        description="RetinaNet from PyTorch training to TensorRT / ONNX Runtime inference.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"retina-deploy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (
        _add_make_shapes,
        _add_train,
        _add_convert_weights,
        _add_eval,
        _add_predict,
        _add_export_onnx,
        add_build_engine,
        _add_demo,
        add_bench,
        add_serve,
        add_triton_repo,
    ):
        add(sub)
    return parser


def _one_line(message: str) -> str:
    """The message of an error as one line; an error re-raised from a DataLoader worker carries its
    worker's traceback, whose last line ("module.Class: message") is the original message."""
    lines = [line for line in str(message).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    if any(line.startswith("Original Traceback") for line in lines):
        last = lines[-1]
        head, sep, rest = last.partition(": ")
        return rest if sep and "." in head and " " not in head else last
    return " ".join(line.strip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    prefix = f"retina-deploy {args.command}"
    try:
        rc = args.func(args)
        sys.stdout.flush()  # a closed pipe fails here, inside the handler, not at interpreter exit
        return rc
    except RetinaDeployError as e:
        message = _one_line(str(e))
    except BrokenPipeError:
        # stdout's reader went away (``| head``); the files were written before printing.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        message = "stdout was closed before the output was printed (broken pipe)"
    except OSError as e:
        what = e.strerror or _one_line(str(e)) or type(e).__name__
        message = f"{what}: {e.filename}" if e.filename else what
    except MemoryError:
        message = "out of memory (an input size or count too large for this machine?)"
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    print(f"{prefix}: error: {message}", file=sys.stderr)
    return 1

