"""AP and AP50 of the FP32, FP16 and INT8 ONNX graphs of one model, with ONNX Runtime on the CPU.

    python benchmarks/precision_table.py --checkpoint RUN/best --calib-images TRAIN/images \
        --val-images VAL/images --val-annotations VAL/annotations.json --out OUT/ [--max-map-drop 1.0]

Exports the checkpoint (``--nms onnx``, unless ``--onnx`` gives an FP32 export), bakes FP16 and INT8
(calibration on ``--calib-num`` images of ``--calib-images``, percentile 99.999 by default), adds an
FP16-storage emulation (see ``calib.accuracy.emulate_fp16_storage``) and, with ``--max-map-drop``,
the INT8 file whose most sensitive layers stay FP32. Prints a Markdown table and writes it with the raw numbers to OUT/.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from retina_deploy.calib.accuracy import emulate_fp16_storage, markdown_table, precision_rows
from retina_deploy.calib.fp16 import write_fp16_onnx
from retina_deploy.calib.int8 import CalibConfig
from retina_deploy.calib.quantize import Int8Config, quantize_int8


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="checkpoint folder to export (--nms onnx)")
    src.add_argument("--onnx", type=Path, help="an FP32 retina-deploy ONNX file")
    p.add_argument("--calib-images", type=Path, required=True)
    p.add_argument("--calib-num", type=int, default=512)
    p.add_argument("--calib-method", default="percentile", choices=("entropy", "minmax", "percentile"))
    p.add_argument("--val-images", type=Path, required=True)
    p.add_argument("--val-annotations", type=Path, required=True)
    p.add_argument("--max-map-drop", type=float, default=None, help="also fit an INT8 file to this AP budget")
    p.add_argument("--out", type=Path, required=True)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    fp32 = args.onnx
    if fp32 is None:
        from retina_deploy.export.onnx_export import export_onnx

        fp32 = export_onnx(args.checkpoint, args.out / "model.onnx")
    calib = CalibConfig(method=args.calib_method, num=args.calib_num)
    files = {"fp32": fp32, "fp16": write_fp16_onnx(fp32, args.out / "model.fp16.onnx")[0]}
    files["fp16-emulated"] = emulate_fp16_storage(fp32, args.out / "model.fp16emu.onnx")
    start = time.perf_counter()
    plain = quantize_int8(fp32, args.out / "model.int8.onnx", Int8Config(calib_images=args.calib_images, calib=calib))
    files["int8"] = plain.path
    record = {"calibration_s": time.perf_counter() - start, "calib_images": plain.images}
    if args.max_map_drop is not None:
        fitted = quantize_int8(
            fp32,
            args.out / "model.int8-fit.onnx",
            Int8Config(
                calib_images=args.calib_images, calib=calib, cache=plain.cache_path, max_map_drop=args.max_map_drop,
                val_images=args.val_images, val_annotations=args.val_annotations,
            ),
        )  # fmt: skip
        files["int8-fit"] = fitted.path
        record["excluded"] = [{"node": e.node, "reason": e.reason} for e in fitted.excluded]
        record["trials"] = fitted.trials
    rows = precision_rows(files, args.val_images, args.val_annotations)
    table = markdown_table(rows)
    record["rows"] = [
        {"precision": r.precision, "AP": r.ap, "AP50": r.ap50, "executed_by": r.executed_by} for r in rows
    ]
    (args.out / "precision_table.md").write_text(table + "\n")
    (args.out / "precision_table.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(table)
    for e in record.get("excluded", []):
        print(f"kept FP32: {e['node']}: {e['reason']}")


if __name__ == "__main__":
    main()
