"""The ``bench`` verb: parses its flags and calls ``retina_deploy.inference.bench.run_bench``."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from retina_deploy.core.errors import ConfigError

HELP = "Latency, throughput, phases and fraction of peak of model files (checkpoint, .onnx, .engine)."


def run_bench_cli(args) -> int:
    from retina_deploy.core.fileio import write_json_atomic
    from retina_deploy.inference.bench import BenchConfig, run_bench
    from retina_deploy.runtime.bench.report import format_table, validate_report, write_plot
    from retina_deploy.runtime.bench.run import RunLength

    if args.iterations is not None and args.duration_s_given:
        raise ConfigError("give one of --duration-s and --iterations")
    check_bench_outputs(args)
    length = RunLength(
        warmup_s=args.warmup_s,
        duration_s=None if args.iterations is not None else args.duration_s,
        iterations=args.iterations,
        cv_warn=args.cv_warn_pct / 100,
    )
    cfg = BenchConfig(
        batches=tuple(args.batch),
        length=length,
        backends=tuple(args.backend),
        device=args.device,
        threads=args.threads,
        images=args.images,
        num_images=args.num_images,
        peak_tflops=args.peak_tflops,
        peak_probe=not args.no_peak_probe,
        torch_compile=args.torch_compile,
        cuda_graphs=args.cuda_graphs,
        command=shlex.join(["retina-deploy", *sys.argv[1:]]),
    )
    report = run_bench(args.models, cfg, log=lambda m: print(m, file=sys.stderr))
    validate_report(report)
    print(format_table(report))
    if args.json:
        write_json_atomic(args.json, report)
        print(f"wrote {args.json}")
    if args.plot:
        print(f"wrote {write_plot(report, args.plot)}")
    return 0


def check_bench_outputs(args) -> None:
    """--json and --plot: not an input, not each other, not a file bench did not write, a writable place
    and (--plot) a format matplotlib writes; checked before any model is loaded."""
    from retina_deploy.core.outputs import check_distinct, check_output_file
    from retina_deploy.runtime.bench.report import is_bench_plot, is_bench_report, plot_suffixes

    inputs = (*args.models, args.images)
    if args.json is not None:
        check_output_file(args.json, inputs=inputs, flag="--json", ours=is_bench_report)
    if args.plot is not None:
        check_output_file(args.plot, inputs=inputs, flag="--plot", ours=is_bench_plot, suffixes=plot_suffixes())
    check_distinct((("--json", args.json), ("--plot", args.plot)))


class _DurationAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        namespace.duration_s_given = True


def add_bench(sub) -> argparse.ArgumentParser:
    """Register ``bench`` on the CLI's subparsers (the formatter shows each default)."""
    from retina_deploy.cli.common import add_verb
    from retina_deploy.inference.bench import BACKENDS

    p = add_verb(sub, "bench", HELP, run_bench_cli)
    p.set_defaults(duration_s_given=False)
    p.add_argument("models", type=Path, nargs="+", metavar="MODEL", help="checkpoint folder, .onnx or .engine file")
    p.add_argument("--batch", type=int, nargs="+", default=[1], metavar="B", help="batch sizes")
    p.add_argument("--warmup-s", type=float, default=2.0, help="untimed seconds per model and batch")
    p.add_argument("--duration-s", type=float, default=10.0, action=_DurationAction, help="timed seconds per batch")
    p.add_argument("--iterations", type=int, help="timed iterations per batch, instead of --duration-s")
    p.add_argument(
        "--backend",
        nargs="+",
        default=["auto"],
        choices=BACKENDS,
        metavar="NAME",
        help=f"backends to compare: {', '.join(BACKENDS)}; each model "
        "runs with those that fit it (auto: torch for checkpoints, ONNX Runtime for .onnx on --device, the manifest's "
        "TensorRT for .engine)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="threads of ONNX Runtime, OpenVINO and PyTorch (default: theirs)")
    p.add_argument("--images", type=Path, help="folder of JPEG/PNG/BMP images (default: synthetic images)")
    p.add_argument("--num-images", type=int, default=16, help="images cycled through")
    p.add_argument("--torch-compile", action="store_true", help="also run checkpoints through torch.compile")
    p.add_argument("--cuda-graphs", action="store_true", help="engines replay CUDA graphs")
    p.add_argument("--peak-tflops", type=float, help="the device's peak (default: datasheet or CPU probe)")
    p.add_argument("--no-peak-probe", action="store_true", help="skip the CPU's 1-second matmul peak probe")
    p.add_argument("--cv-warn-pct", type=float, default=5.0, help="warn above this latency CV (%%)")
    p.add_argument("--json", type=Path, help="write the report here (schema: README, Benchmarking)")
    p.add_argument(
        "--plot", type=Path, help="write latency and throughput against batch size here (.png; .pdf, .svg... work too)"
    )
    return p
