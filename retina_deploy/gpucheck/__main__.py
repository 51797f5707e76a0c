"""``python -m retina_deploy.gpucheck``: parse the options and run the check (see ``check.py``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from retina_deploy.gpucheck.check import DEFAULT_MINUTES, PARTS, REPORT_NAME, CheckOptions, run_check, select_parts


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m retina_deploy.gpucheck",
        description="Exercise every GPU path of the toolkit in a few minutes and write one JSON report."
        " Parts that cannot run here are skipped with the reason; exit 1 only if a part ran and disagreed.",
    )
    p.add_argument("--out", type=Path, default=Path("gpu-check-out"), help="output folder (default: %(default)s)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the shortest sizes: under 3 minutes")
    mode.add_argument(
        "--cpu-dry-run", action="store_true", help="run the training and inference parts tiny, on the CPU (tests)"
    )
    p.add_argument(
        "--parts", default=None, help=f"comma-separated parts or prefixes (default: all): {', '.join(PARTS)}"
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help=f"soft deadline (default: {DEFAULT_MINUTES['full']} full, {DEFAULT_MINUTES['quick']} quick);"
        " a step still running 40 s later is stopped",
    )
    p.add_argument("--overwrite", action="store_true", help=f"reuse an output folder holding an earlier {REPORT_NAME}")
    return p


def check_out_dir(out: Path, overwrite: bool) -> None:
    """The output folder must be new or empty; --overwrite clears one that holds an earlier report (only that)."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    if not (out / REPORT_NAME).is_file():
        raise ValueError(f"--out {out} is not empty and holds no {REPORT_NAME}; choose another folder")
    if not overwrite:
        raise ValueError(f"--out {out} holds an earlier report; pass --overwrite to replace it, or another --out")
    import shutil

    shutil.rmtree(out)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    mode = "quick" if args.quick else "cpu-dry-run" if args.cpu_dry_run else "full"
    try:
        parts = select_parts(args.parts)
        check_out_dir(args.out, args.overwrite)
        if args.max_minutes is not None and not args.max_minutes > 0:
            raise ValueError(f"--max-minutes must be > 0, got {args.max_minutes}")
    except ValueError as e:
        print(f"gpucheck: error: {e}", file=sys.stderr)
        return 2
    minutes = args.max_minutes or DEFAULT_MINUTES[mode]
    return run_check(CheckOptions(out=args.out.resolve(), mode=mode, parts=parts, minutes=minutes))


if __name__ == "__main__":
    sys.exit(main())
