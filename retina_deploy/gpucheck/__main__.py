"""``python -m retina_deploy.gpucheck``: parse the options and run the check (see ``check.py``)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from retina_deploy.cli.common import OneLineParser
from retina_deploy.core.outputs import check_output_dir, remove_marked_dir
from retina_deploy.gpucheck.check import COMMAND, DEFAULT_MINUTES, PARTS, CheckOptions, run_check, select_parts


class _Parser(OneLineParser):
    error_status = 2  # the check's own statuses: 1 is a part that ran and disagreed


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
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
    p.add_argument("--overwrite", action="store_true", help="replace an output folder of an earlier check (only that)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Every argument is checked before the earlier output folder (``--overwrite``) is removed."""
    args = build_parser().parse_args(argv)
    mode = "quick" if args.quick else "cpu-dry-run" if args.cpu_dry_run else "full"
    try:
        parts = select_parts(args.parts)
        if args.max_minutes is not None and not (math.isfinite(args.max_minutes) and args.max_minutes > 0):
            raise ValueError(f"--max-minutes must be a finite number > 0, got {args.max_minutes}")
        check_output_dir(args.out, command=COMMAND, overwrite=args.overwrite)
    except ValueError as e:  # ConfigError is one
        print(f"gpucheck: error: {e}", file=sys.stderr)
        return 2
    if args.out.is_dir() and any(args.out.iterdir()):
        remove_marked_dir(args.out, COMMAND)
    minutes = args.max_minutes or DEFAULT_MINUTES[mode]
    return run_check(CheckOptions(out=args.out.resolve(), mode=mode, parts=parts, minutes=minutes))


if __name__ == "__main__":
    sys.exit(main())
