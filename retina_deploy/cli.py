"""The ``retina-deploy`` command: parses arguments and calls each stage's public entry, nothing more.

Any RetinaDeployError (bad input) becomes one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from retina_deploy import __version__
from retina_deploy.errors import RetinaDeployError

EPILOG = "Docs: README.md. Every verb takes --help."


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, except where there is none to show."""

    def _get_help_string(self, action):
        help_ = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in help_:
            help_ += " (default: %(default)s)"
        return help_


def _progress_enabled() -> bool:
    return sys.stderr.isatty() and os.environ.get("CI", "").lower() not in ("1", "true")


def _add(sub, name: str, help_: str, func) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_, description=help_, formatter_class=_Formatter)
    p.set_defaults(func=func)
    return p


# -- make-shapes ---------------------------------------------------------------------------------


def _make_shapes(args) -> int:
    from retina_deploy.data.shapes import make_shapes

    out = make_shapes(args.out, num_images=args.num_images, size=args.size, seed=args.seed, overwrite=args.overwrite)
    print(f"wrote {args.num_images} images and {out / 'annotations.json'}")
    return 0


def _add_make_shapes(sub) -> None:
    p = _add(sub, "make-shapes", "Write a deterministic synthetic detection dataset in COCO format.", _make_shapes)
    p.add_argument("out", type=Path, help="output folder (images/ + annotations.json)")
    p.add_argument("--num-images", type=int, default=200, help="number of images")
    p.add_argument("--size", type=int, default=256, help="longest image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty folder")


# -- convert-weights -----------------------------------------------------------------------------


def _convert_weights(args) -> int:
    from retina_deploy.convert import convert_torchvision
    from retina_deploy.runtime.preprocess import PreprocessConfig

    names = None
    if args.class_names:
        names = [line.strip() for line in Path(args.class_names).read_text().splitlines() if line.strip()]
    out = convert_torchvision(args.src, args.out, class_names=names, preprocess=PreprocessConfig(size=tuple(args.size)))
    print(f"wrote checkpoint {out}")
    return 0


def _add_convert_weights(sub) -> None:
    p = _add(
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


# -- eval / predict ------------------------------------------------------------------------------


def _eval(args) -> int:
    from retina_deploy.data.coco import load_coco
    from retina_deploy.evaluate import format_metrics_table
    from retina_deploy.fileio import write_json_atomic
    from retina_deploy.predict import evaluate_predictor, load_predictor

    predictor = load_predictor(args.model, device=args.device)
    coco = load_coco(args.images, args.annotations)
    metrics, results = evaluate_predictor(predictor, coco, batch_size=args.batch_size, progress=_progress_enabled())
    print(format_metrics_table(metrics))
    if args.json:
        write_json_atomic(args.json, {"model": str(args.model), "images": len(coco), "metrics": metrics})
    if args.results:
        write_json_atomic(args.results, results)
    return 0


def _add_eval(sub) -> None:
    p = _add(sub, "eval", "COCO box metrics of a model (checkpoint folder, .onnx or .engine) on a dataset.", _eval)
    p.add_argument("model", type=Path, help="checkpoint folder, .onnx or .engine")
    p.add_argument("--images", type=Path, required=True, help="images folder")
    p.add_argument("--annotations", type=Path, required=True, help="COCO instances JSON")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--json", type=Path, help="write the metrics here as JSON")
    p.add_argument("--results", type=Path, help="write the detections here in COCO results format")


def _predict(args) -> int:
    from retina_deploy.predict import load_predictor, predict_files

    predictor = load_predictor(args.model, device=args.device)
    records, errors = predict_files(
        predictor,
        args.images,
        args.out,
        batch_size=args.batch_size,
        draw_score_thresh=args.draw_thresh,
        progress=_progress_enabled(),
    )
    n = sum(len(r.get("detections", [])) for r in records)
    print(f"{len(records) - len(errors)} images, {n} detections -> {args.out / 'detections.json'}")
    if errors:
        raise RetinaDeployError(f"{len(errors)} of {len(records)} images could not be read; first: {errors[0]}")
    return 0


def _add_predict(sub) -> None:
    p = _add(sub, "predict", "Detect objects in images; write detections.json and annotated PNGs.", _predict)
    p.add_argument("model", type=Path, help="checkpoint folder, .onnx or .engine")
    p.add_argument("images", type=Path, nargs="+", help="JPEG, PNG or BMP files")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--draw-thresh", type=float, default=0.3, help="draw boxes scoring at least this")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")


# -- main ----------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="retina-deploy",
        description="RetinaNet from PyTorch training to TensorRT / ONNX Runtime inference.",
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"retina-deploy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_make_shapes, _add_convert_weights, _add_eval, _add_predict):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RetinaDeployError as e:
        print(f"retina-deploy {args.command}: error: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        print(f"retina-deploy {args.command}: error: {e.strerror}: {e.filename}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"retina-deploy {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
