"""The one benchmark timer and its statistics (torch-free): ``retina-deploy bench`` and ``benchmarks/`` use it.

``time_iterations(step, ...)`` calls ``step(stopwatch)`` for a warm-up time, then for a duration or a
number of iterations, and returns every iteration's wall time and per-phase times. ``time_alternating``
times several functions in turns (load drift hits each alike). ``summarize`` gives the statistics
trtexec reports: min / mean / median / p90 / p95 / p99 / max, standard deviation and coefficient of
variation.

Conventions: times are seconds (``perf_counter``); percentiles interpolate linearly between the two
nearest ranks (numpy's default, Excel's PERCENTILE.INC): pXX of sorted x[0..n-1] is at rank
(n - 1) * XX / 100. The standard deviation is the population one (divide by n), as trtexec's;
CV = std / mean.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from retina_deploy.core.errors import ConfigError

PERCENTILES = (90, 95, 99)
DEFAULT_CV_WARN = 0.05  # trtexec warns at 1% for GPU compute; a CPU's scheduling noise alone is larger
Clock = Callable[[], float]


class Stopwatch:
    """Per-phase times of one iteration: ``with sw.phase("compute"): ...`` or ``sw.add(name, seconds)``.

    ``add`` takes times measured elsewhere (e.g. CUDA events); a phase entered twice accumulates.
    """

    def __init__(self, clock: Clock = time.perf_counter) -> None:
        self.clock = clock
        self.phases: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = self.clock()
        try:
            yield
        finally:
            self.add(name, self.clock() - start)

    def add(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + float(seconds)


@dataclass
class Timings:
    """Wall seconds of each timed iteration (``total``, length n) and of each phase (lists of length n)."""

    total: list[float] = field(default_factory=list)
    phases: dict[str, list[float]] = field(default_factory=dict)
    warmup_iterations: int = 0

    def record(self, total: float, phases: dict[str, float]) -> None:
        n = len(self.total)
        for name in phases.keys() - self.phases.keys():  # a phase first seen late: earlier iterations had 0 s
            self.phases[name] = [0.0] * n
        for name, values in self.phases.items():
            values.append(phases.get(name, 0.0))
        self.total.append(total)


def _timed_call(step: Callable[[Stopwatch], object], clock: Clock) -> tuple[float, dict[str, float]]:
    """Wall seconds of one ``step(stopwatch)`` call and its phases (the single place a call is timed)."""
    sw = Stopwatch(clock)
    start = clock()
    step(sw)
    return clock() - start, sw.phases


def check_run_length(warmup_s: float, duration_s: float | None, iterations: int | None) -> None:
    """ConfigError unless warm-up >= 0 s and exactly one of duration > 0 s or iterations >= 1 is given."""
    if not _finite(warmup_s) or warmup_s < 0:
        raise ConfigError(f"warm-up must be a finite number of seconds >= 0, got {warmup_s}")
    if (duration_s is None) == (iterations is None):
        raise ConfigError("give one of a duration in seconds or a number of iterations")
    if duration_s is not None and (not _finite(duration_s) or duration_s <= 0):
        raise ConfigError(f"duration must be a finite number of seconds > 0, got {duration_s}")
    if iterations is not None and (isinstance(iterations, bool) or int(iterations) != iterations or iterations < 1):
        raise ConfigError(f"iterations must be an integer >= 1, got {iterations}")


def time_iterations(
    step: Callable[[Stopwatch], object],
    *,
    warmup_s: float = 2.0,
    duration_s: float | None = None,
    iterations: int | None = None,
    min_iterations: int = 3,
    clock: Clock = time.perf_counter,
) -> Timings:
    """Run ``step`` for ``warmup_s`` untimed (at least once), then time it.

    With ``duration_s`` the timed loop runs until that much wall time has passed and at least
    ``min_iterations`` iterations are done; with ``iterations``, exactly that many.
    """
    check_run_length(warmup_s, duration_s, iterations)
    timings = Timings()
    start = clock()
    while True:
        step(Stopwatch(clock))
        timings.warmup_iterations += 1
        if clock() - start >= warmup_s:
            break
    start = clock()
    while True:
        timings.record(*_timed_call(step, clock))
        n = len(timings.total)
        if iterations is not None:
            if n >= iterations:
                return timings
        elif n >= min_iterations and clock() - start >= duration_s:
            return timings


def time_alternating(
    steps: Sequence[Callable[[Stopwatch], object]],
    iterations: int,
    *,
    warmup: int = 2,
    clock: Clock = time.perf_counter,
) -> list[Timings]:
    """Time each of ``steps`` ``iterations`` times, in turns whose order reverses every round."""
    check_run_length(0.0, None, iterations)
    for _ in range(warmup):
        for step in steps:
            step(Stopwatch(clock))
    out = [Timings(warmup_iterations=warmup) for _ in steps]
    order = list(range(len(steps)))
    for i in range(iterations):
        for k in order if i % 2 == 0 else order[::-1]:
            out[k].record(*_timed_call(steps[k], clock))
    return out


@dataclass(frozen=True)
class Stats:
    """Statistics of n >= 1 samples (same unit as the samples); ``cv`` = std / mean (0 when mean is 0)."""

    n: int
    min: float
    mean: float
    median: float
    p90: float
    p95: float
    p99: float
    max: float
    std: float
    cv: float

    def scaled(self, factor: float) -> dict[str, float | int]:
        """A dict of the values times ``factor`` (e.g. 1e3 for milliseconds); ``n`` and ``cv`` unscaled."""
        values = {k: getattr(self, k) * factor for k in ("min", "mean", "median", "p90", "p95", "p99", "max", "std")}
        return {"n": self.n, **values, "cv": self.cv}


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of ascending values, linear between the nearest ranks."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in 0..100, got {q}")
    rank = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(rank)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (rank - lo)


def summarize(samples: Sequence[float]) -> Stats:
    """Stats of the samples; ValueError for none, or for a NaN / infinite sample."""
    values = sorted(float(v) for v in samples)
    if not values:
        raise ValueError("no samples to summarize")
    if not all(_finite(v) for v in values):
        raise ValueError("samples must be finite numbers")
    n = len(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / n)
    p90, p95, p99 = (percentile(values, q) for q in PERCENTILES)
    return Stats(
        n=n,
        min=values[0],
        mean=mean,
        median=percentile(values, 50),
        p90=p90,
        p95=p95,
        p99=p99,
        max=values[-1],
        std=std,
        cv=std / mean if mean else 0.0,
    )


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False
