"""The files ``retina-deploy bench`` compares across precisions: checkpoint, FP32, FP16 and both INT8 forms.

    python benchmarks/precision_files.py --out DIR --calib-images DIR [--checkpoint CKPT | --backbone resnet101]
        [--size 512] [--num-classes 80] [--head-norm none] [--batch 1 1 4] [--calib-num 4] [--calib-method minmax]
        [--nms-none]

Writes DIR/ckpt (a random-weight 80-class model unless ``--checkpoint`` is given), DIR/model.onnx (``--nms onnx``),
DIR/model.fp16.onnx, DIR/model.int8.onnx (TensorRT's Q/DQ form, the ``build-engine --int8`` default) and
DIR/model.int8-cpu.onnx (``--int8-form cpu``: ONNX Runtime's QLinearConv form); with ``--nms-none`` also
DIR/model.nms-none.onnx (host NMS). The demo's files: ``--backbone resnet18 --size 128 --num-classes 3
--head-norm groupnorm --batch 1 4 8``. Then, e.g.:

    retina-deploy bench DIR/ckpt DIR/model.onnx DIR/model.fp16.onnx DIR/model.int8.onnx DIR/model.int8-cpu.onnx \
        --batch 1 4 --json out.json --plot out.png
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import random_checkpoint

from retina_deploy.calib.fp16 import write_fp16_onnx
from retina_deploy.calib.int8 import CalibConfig
from retina_deploy.calib.quantize import Int8Config, quantize_int8
from retina_deploy.export.onnx_export import ExportConfig, export_onnx


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--calib-images", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path, help="default: a random-weight model of --backbone")
    p.add_argument("--backbone", default="resnet101")
    p.add_argument("--size", type=int, default=512, help="square input size of the random-weight model")
    p.add_argument("--num-classes", type=int, default=80, help="classes of the random-weight model")
    p.add_argument("--head-norm", default="none", choices=("none", "groupnorm"), help="of the random-weight model")
    p.add_argument("--nms-none", action="store_true", help="also export model.nms-none.onnx")
    p.add_argument("--batch", type=int, nargs=3, default=[1, 1, 4], metavar=("MIN", "OPT", "MAX"))
    p.add_argument("--calib-num", type=int, default=4, help="speed does not depend on it; accuracy does")
    p.add_argument("--calib-method", default="minmax", choices=("minmax", "percentile", "entropy"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ckpt = args.checkpoint or random_checkpoint(
        args.out, backbone=args.backbone, size=(args.size, args.size), head_norm=args.head_norm,
        num_classes=args.num_classes,
    )  # fmt: skip
    size = None if args.checkpoint else (args.size, args.size)
    export = {"size": size, "batch": tuple(args.batch)}
    fp32 = export_onnx(ckpt, args.out / "model.onnx", ExportConfig(**export, nms="onnx"))
    if args.nms_none:
        export_onnx(ckpt, args.out / "model.nms-none.onnx", ExportConfig(**export, nms="none"))
    print(f"{fp32} in {time.perf_counter() - start:.0f} s", flush=True)
    write_fp16_onnx(fp32, args.out / "model.fp16.onnx")
    calib = CalibConfig(num=args.calib_num, method=args.calib_method)
    for form, name in (("tensorrt", "model.int8.onnx"), ("cpu", "model.int8-cpu.onnx")):
        quantize_int8(fp32, args.out / name, Int8Config(calib_images=args.calib_images, calib=calib, form=form))
        print(f"{args.out / name} ({form} form) in {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
