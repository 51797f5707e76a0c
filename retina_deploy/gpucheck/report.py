"""The GPU check's report: one record per part, time budgets, the JSON file and the printed table.

A part is a function ``part(ctx, rec, clock)`` that fills ``rec.figures`` as it goes (so figures
gathered before a failure are kept) and signals how it ended by raising:

- ``Skip`` (and ``OutOfTime``): it cannot run here (missing package, no GPU, no time); status "skipped".
- ``Disagree``: it ran and a result disagrees with its reference; status "failed".
- any other exception: status "error", with the exception and the last traceback lines.

Steps inside a part (one training configuration, one engine) run through ``run_step``, which records
each step's own status in ``rec.figures[key]``; the part's status is then the worst of its steps'.
The check exits 1 when any part is "failed" or "error", else 0.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "retina-deploy/gpu-check"
FORMAT_VERSION = 1
STATUS_ORDER = ("ok", "skipped", "failed", "error")  # worst last
BAD_STATUSES = ("failed", "error")


class Skip(Exception):
    """A part or step cannot run here; the message says why (missing package, no GPU, ...)."""


class OutOfTime(Skip):
    """The part's time budget (or the check's deadline) does not leave room for the next step."""


class Disagree(Exception):
    """A part or step ran and disagrees with its reference; the message gives the figures."""


@dataclass
class Clock:
    """A deadline on ``time.monotonic()``; ``sub`` gives a part its own, earlier, deadline."""

    deadline: float

    @classmethod
    def starting_now(cls, seconds: float) -> Clock:
        return cls(time.monotonic() + seconds)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def sub(self, seconds: float) -> Clock:
        return Clock(min(self.deadline, time.monotonic() + seconds))

    def require(self, seconds: float, what: str) -> None:
        """Raise OutOfTime unless about ``seconds`` are left for ``what``."""
        left = self.left()
        if left < seconds:
            raise OutOfTime(f"out of time: {what} needs ~{seconds:.0f} s, {max(left, 0):.0f} s left in its budget")


@dataclass
class PartRecord:
    """The outcome of one part: status, why (for anything but "ok"), wall seconds, figures, a summary line."""

    name: str
    status: str = "pending"
    reason: str = ""
    seconds: float = 0.0
    summary: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    details: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"status": self.status, "seconds": round(self.seconds, 2)}
        if self.reason:
            d["reason"] = self.reason
        if self.summary:
            d["summary"] = self.summary
        if self.details:
            d["details"] = self.details
        d["figures"] = self.figures
        return d


def classify(exc: BaseException) -> tuple[str, str, str]:
    """(status, reason, details) for an exception raised by a part or a step."""
    if isinstance(exc, Skip):
        return "skipped", str(exc), ""
    if isinstance(exc, Disagree):
        return "failed", str(exc), ""
    tail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)[-4:])
    reason = f"{type(exc).__name__}: {str(exc)[:400]}"
    if "out of memory" in str(exc).lower():
        return "skipped", f"out of GPU memory ({reason[:200]})", ""
    return "error", reason, tail[-1500:]


def run_step(rec: PartRecord, key: str, fn: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
    """Run one step of a part; its figures (or its status and reason) go to ``rec.figures[key]``.

    OutOfTime is not caught: it ends the part (the steps after it would not fit either).
    """
    start = time.perf_counter()
    try:
        row = {"status": "ok", **(fn() or {})}
    except OutOfTime:
        raise
    except Exception as e:  # every step reports, whatever went wrong
        status, reason, details = classify(e)
        row = {"status": status, "reason": reason}
        if details:
            row["details"] = details
    row["seconds"] = round(time.perf_counter() - start, 2)
    rec.figures[key] = row
    return row


def steps_status(rec: PartRecord) -> tuple[str, str]:
    """The part's status from its steps' (the worst; all skipped -> skipped) and the first bad step's reason."""
    steps = [(k, v) for k, v in rec.figures.items() if isinstance(v, dict) and "status" in v]
    if not steps:
        return "ok", ""
    worst = max(steps, key=lambda kv: STATUS_ORDER.index(kv[1]["status"]))
    status = worst[1]["status"]
    if status == "skipped" and any(v["status"] == "ok" for _, v in steps):
        status = "ok"  # some steps ran; the skipped ones say why in their rows
    reason = "" if status == "ok" else f"{worst[0]}: {worst[1].get('reason', '')}"
    return status, reason


def run_part(name: str, fn: Callable[..., None], ctx: Any, clock: Clock) -> PartRecord:
    """Run part ``fn(ctx, rec, clock)`` and return its record (never raises)."""
    rec = PartRecord(name)
    start = time.perf_counter()
    try:
        fn(ctx, rec, clock)
        rec.status, rec.reason = steps_status(rec)
    except Exception as e:  # a part never takes the check down
        rec.status, rec.reason, rec.details = classify(e)
    rec.seconds = time.perf_counter() - start
    return rec


def exit_status(records: list[PartRecord]) -> int:
    return 1 if any(r.status in BAD_STATUSES for r in records) else 0


def report_dict(meta: dict[str, Any], records: list[PartRecord], running: str | None = None) -> dict[str, Any]:
    """The JSON report: format, the run's settings and timing (``meta``), one entry per part."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **meta,
        "exit_status": exit_status(records),
        "running_at_exit": running,
        "parts": {r.name: r.to_dict() for r in records},
    }


def write_report(path: Path, report: dict[str, Any]) -> None:
    """Write ``report`` atomically; a figure JSON cannot hold (a path, a numpy scalar) is written as its str."""
    import json

    from retina_deploy.core.fileio import write_bytes_atomic

    write_bytes_atomic(path, (json.dumps(report, indent=2, default=str) + "\n").encode())


def format_table(records: list[PartRecord]) -> str:
    """One line per part: name, status, seconds, and its summary (or why it did not run)."""
    width = max([len(r.name) for r in records] + [4])
    lines = [f"{'part':<{width}}  {'status':<7}  {'s':>6}  result"]
    for r in records:
        text = r.summary if r.status == "ok" else r.reason
        lines.append(f"{r.name:<{width}}  {r.status:<7}  {r.seconds:6.1f}  {text[:160]}")
    return "\n".join(lines)
