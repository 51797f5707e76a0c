"""``retina-deploy build-engine``: its arguments, and the call into ``export.engine.builder`` (or, for a ``.onnx``
OUT, into the FP16 / INT8 writers alone)."""

from __future__ import annotations

from pathlib import Path

from retina_deploy.cli.common import LibraryDefault, add_verb, given_options
from retina_deploy.core.errors import RetinaDeployError


def _build_engine(args) -> int:
    from retina_deploy.calib.int8 import CalibConfig
    from retina_deploy.calib.quantize import Int8Config
    from retina_deploy.core.outputs import check_output_file
    from retina_deploy.export.engine.builder import EngineBuildConfig, build_engine

    inputs = (args.onnx, args.calib_annotations, args.val_annotations)
    check_output_file(args.out, inputs=inputs, flag="OUT")
    check_output_file(Path(f"{args.out}.json"), inputs=inputs, flag="OUT's manifest")
    int8 = None
    if args.int8:
        if args.calib_images is None:
            raise RetinaDeployError("--int8 needs --calib-images DIR")
        calib_given = given_options(args, method="calib_method", num="calib_num", seed="calib_seed")
        if args.legacy_precision:  # TensorRT's calibrators: entropy unless minmax is asked for
            calib_given.setdefault("method", "entropy")
        int8 = Int8Config(
            calib_images=args.calib_images,
            calib_annotations=args.calib_annotations,
            calib=CalibConfig(**calib_given),
            cache=args.calib_cache,
            max_map_drop=args.max_map_drop,
            val_images=args.val_images,
            val_annotations=args.val_annotations,
            form=args.int8_form,
        )
    if args.int8_form != "tensorrt" or args.out.suffix == ".onnx":
        return _write_precision_onnx(args, int8)
    cfg = EngineBuildConfig(
        precision="fp16" if args.fp16 else "int8" if args.int8 else None,
        batch=tuple(args.batch) if args.batch else None,
        workspace_gib=args.workspace,
        timing_cache=args.timing_cache,
        flavour=args.flavor,
        dla_core=args.dla_core,
        legacy_precision=args.legacy_precision,
        int8=int8,
    )
    result = build_engine(args.onnx, args.out, cfg)
    print(
        f"wrote {result.engine_path} ({result.precision}, {result.manifest.flavour} {result.manifest.trt_version},"
        f" batch {'/'.join(map(str, result.manifest.batch_range))}) in {result.seconds:.1f} s"
    )
    for note in result.notes:
        print(f"note: {note}")
    return 0


def _write_precision_onnx(args, int8) -> int:
    """OUT is a .onnx file: only the FP16 / INT8 ONNX file that an engine would be built from (no TensorRT needed).
    ``--int8-form cpu`` always takes this path (TensorRT takes no u8 activations)."""
    from retina_deploy.calib.fp16 import write_fp16_onnx
    from retina_deploy.calib.quantize import quantize_int8

    cpu_form = args.int8_form != "tensorrt"
    if cpu_form and int8 is None:
        raise RetinaDeployError("--int8-form cpu needs --int8 and --calib-images DIR")
    if args.out.suffix != ".onnx":
        raise RetinaDeployError(
            f"--int8-form cpu writes an ONNX file for ONNX Runtime's CPU kernels, not an engine: give OUT as a .onnx "
            f"path, got {args.out}"
        )
    if args.fp16:
        path, summary = write_fp16_onnx(args.onnx, args.out)
        print(f"wrote {path} (FP16: {summary.fp16_nodes} nodes FP16, {summary.fp32_nodes} FP32); no engine built")
        return 0
    if int8 is None:
        raise RetinaDeployError(f"OUT {args.out} is an ONNX file: give --fp16, or --int8 --calib-images DIR")
    result = quantize_int8(args.onnx, args.out, int8)
    form = "ONNX Runtime CPU form" if cpu_form else "TensorRT's Q/DQ form"
    print(f"wrote {result.path} (INT8, {form}, {result.images} calibration images); no engine built")
    return 0


def add_build_engine(sub) -> None:
    p = add_verb(
        sub, "build-engine", "Build a TensorRT or TensorRT-RTX engine (+ manifest) from our ONNX file.", _build_engine
    )
    p.add_argument("onnx", type=Path, help="ONNX file from export-onnx")
    p.add_argument(
        "out",
        type=Path,
        help="engine file to write (manifest: OUT.json); a .onnx OUT with --fp16 / --int8 writes only the precision's"
        " ONNX file (no TensorRT needed)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fp16", action="store_true", help="bake FP16 into the graph (I/O, sigmoid, decode, NMS stay FP32)")
    g.add_argument("--int8", action="store_true", help="insert INT8 Q/DQ calibrated on --calib-images")
    p.add_argument("--batch", type=int, nargs=3, metavar=("MIN", "OPT", "MAX"), help="profile (default: the ONNX's)")
    p.add_argument("--workspace", type=float, help="builder workspace limit in GiB")
    p.add_argument("--timing-cache", type=Path, help="timing cache file, reused and updated")
    p.add_argument("--flavor", choices=["auto", "tensorrt", "tensorrt-rtx"], default="auto", help="TensorRT flavour")
    p.add_argument("--dla-core", type=int, help="Jetson DLA core (GPU fallback on; needs a fixed batch: --batch N N N)")
    p.add_argument("--legacy-precision", action="store_true", help="TensorRT < 11: builder flags + INT8 calibrator")
    c = p.add_argument_group("INT8 calibration")
    c.add_argument("--calib-images", type=Path, help="folder of JPEG/PNG images (or a COCO images folder)")
    c.add_argument("--calib-annotations", type=Path, help="COCO JSON selecting the calibration images")
    calib = "retina_deploy.calib.int8:CalibConfig"
    c.add_argument("--calib-num", type=int, help=LibraryDefault("images sampled, seeded", f"{calib}.num"))
    c.add_argument("--calib-seed", type=int, help=LibraryDefault("sampler seed", f"{calib}.seed"))
    c.add_argument(
        "--calib-method",
        choices=["entropy", "minmax", "percentile"],
        help=LibraryDefault(
            "how activation ranges are chosen (with --legacy-precision: entropy)",
            f"{calib}.method",
        ),
    )
    c.add_argument("--calib-cache", type=Path, help="tensor-range cache (default: beside the INT8 ONNX)")
    c.add_argument("--max-map-drop", type=float, help="AP points INT8 may lose; sensitive layers stay FP32")
    c.add_argument(
        "--int8-form",
        choices=["tensorrt", "cpu"],
        default="tensorrt",
        help="tensorrt: Q/DQ as TensorRT builds it; cpu: for ONNX Runtime's fast CPU kernels (QLinearConv, u8 x s8),"
        " written to OUT (.onnx), no engine",
    )
    c.add_argument("--val-images", type=Path, help="val images for --max-map-drop")
    c.add_argument("--val-annotations", type=Path, help="val COCO JSON for --max-map-drop")
