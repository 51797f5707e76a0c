"""Run the chosen parts in order under one deadline; write the report after each; print the table.

Writes stay inside the output folder: compiler caches (TorchInductor, Triton, CUDA's JIT cache),
temporary files and the logs are pointed there before torch is imported. A watchdog thread stops
the run at the hard deadline (the soft one plus a grace period) if a step overruns: the running
part is then reported as out of time and the exit status is that of the other parts.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from retina_deploy.core.outputs import mark_folder
from retina_deploy.gpucheck.context import CheckContext
from retina_deploy.gpucheck.parts_engine import part_cpp_trt, part_trt_engines
from retina_deploy.gpucheck.parts_env import part_env
from retina_deploy.gpucheck.parts_infer import part_infer_compile, part_infer_eager
from retina_deploy.gpucheck.parts_ort import part_ort_gpu
from retina_deploy.gpucheck.parts_train import (
    part_train_ddp,
    part_train_detector,
    part_train_resume,
    part_train_throughput,
)
from retina_deploy.gpucheck.report import (
    Clock,
    PartRecord,
    exit_status,
    format_table,
    report_dict,
    run_part,
    write_report,
)

# In running order: the cheap and most telling first, torch.compile (minutes of compiling) last.
PARTS: dict[str, Callable[..., None]] = {
    "env": part_env,
    "train.throughput": part_train_throughput,
    "train.ddp": part_train_ddp,
    "train.resume": part_train_resume,
    "train.detector": part_train_detector,
    "infer.eager": part_infer_eager,
    "ort.gpu": part_ort_gpu,
    "trt.engines": part_trt_engines,
    "cpp.trt": part_cpp_trt,
    "infer.compile": part_infer_compile,
}
# Soft deadlines; the hard one is GRACE_S later: 7 min 40 s full, 2 min 58 s quick.
DEFAULT_MINUTES = {"full": 7.0, "quick": 2.3, "cpu-dry-run": 4.0}
GRACE_S = 40.0
REPORT_NAME = "gpu-check.json"
COMMAND = "gpucheck"  # the marker of an output folder
LOG_NAME = "gpu-check.log"
CACHE_VARS = {
    "TORCHINDUCTOR_CACHE_DIR": "inductor",
    "TRITON_CACHE_DIR": "triton",
    "TRITON_HOME": "triton-home",
    "CUDA_CACHE_PATH": "cuda",
    "XDG_CACHE_HOME": "xdg",
    "TMPDIR": "tmp",
}


@dataclass(frozen=True)
class CheckOptions:
    """out: output folder; mode: "full", "quick" or "cpu-dry-run"; parts: names to run; minutes: soft deadline."""

    out: Path
    mode: str
    parts: tuple[str, ...]
    minutes: float


def select_parts(spec: str | None) -> tuple[str, ...]:
    """Part names from a comma-separated list of names or prefixes ("train" = every train.* part);
    None: all of them. ValueError for an unknown name, or a list naming none ("", ",")."""
    if spec is None:
        return tuple(PARTS)
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise ValueError(f"--parts {spec!r} names no part; parts: {', '.join(PARTS)}")
    chosen = []
    for item in items:
        found = [name for name in PARTS if name == item or name.startswith(item + ".")]
        if not found:
            raise ValueError(f"unknown part {item!r}; parts: {', '.join(PARTS)}")
        chosen += [n for n in found if n not in chosen]
    return tuple(name for name in PARTS if name in chosen)


def confine_writes(out: Path) -> None:
    """Point caches, temporary files and Python's bytecode cache into ``out/cache``."""
    cache = out / "cache"
    for var, sub in CACHE_VARS.items():
        (cache / sub).mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(cache / sub)
    tempfile.tempdir = str(cache / "tmp")
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    sys.dont_write_bytecode = True


def attach_log(out: Path) -> None:
    """Send the toolkit's logs and warnings to ``out/gpu-check.log`` (the terminal keeps the table)."""
    handler = logging.FileHandler(out / LOG_NAME, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)


class _Progress:
    """The records so far and the running part, shared with the watchdog."""

    def __init__(self, options: CheckOptions, started: float) -> None:
        self.options, self.started = options, started
        self.records: list[PartRecord] = []
        self.running: str | None = None
        self.lock = threading.Lock()
        self.stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")

    def meta(self) -> dict:
        return {
            "started_utc": self.stamp,
            "seconds": round(time.monotonic() - self.started, 1),
            "mode": self.options.mode,
            "deadline_minutes": self.options.minutes,
            "parts_selected": list(self.options.parts),
            "out": str(self.options.out),
        }

    def write(self) -> None:
        with self.lock:
            report = report_dict(self.meta(), list(self.records), self.running)
        write_report(self.options.out / REPORT_NAME, report)


def _watchdog(progress: _Progress, hard_deadline: float) -> None:
    """At the hard deadline: record the running part as out of time, write the report, exit."""
    time.sleep(max(0.0, hard_deadline - time.monotonic()))
    with progress.lock:
        name = progress.running
        if name is None:
            return
        rec = PartRecord(name, status="skipped", seconds=0.0)
        rec.reason = (
            f"out of time: still running at the hard deadline ({progress.options.minutes} min + {GRACE_S:.0f} s)"
        )
        progress.records.append(rec)
        progress.running = None
    progress.write()
    print(format_table(progress.records), flush=True)
    os._exit(exit_status(progress.records))


def run_check(options: CheckOptions) -> int:
    """Run ``options.parts``; returns the exit status (1 if a part failed or errored, else 0)."""
    started = time.monotonic()
    mark_folder(options.out, COMMAND)  # first: marks the folder a later --overwrite may replace
    confine_writes(options.out)
    attach_log(options.out)
    ctx = CheckContext(out=options.out, mode=options.mode)
    clock = Clock(started + 60.0 * options.minutes)
    progress = _Progress(options, started)
    threading.Thread(target=_watchdog, args=(progress, clock.deadline + GRACE_S), daemon=True).start()
    for name in options.parts:
        with progress.lock:
            progress.running = name
        budget = ctx.plan.budgets.get(name, 60.0)
        rec = run_part(name, PARTS[name], ctx, clock.sub(budget))
        with progress.lock:
            progress.records.append(rec)
            progress.running = None
        progress.write()
        print(f"[{time.monotonic() - started:6.1f} s] {name}: {rec.status}", file=sys.stderr, flush=True)
    print(format_table(progress.records))
    print(f"report: {options.out / REPORT_NAME}")
    return exit_status(progress.records)
