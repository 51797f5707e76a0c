"""The benchmark timer and its statistics, against hand-computed values (no model involved)."""

import math

import pytest

from retina_deploy.core.errors import ConfigError
from retina_deploy.runtime.bench.stats import (
    Stopwatch,
    check_run_length,
    percentile,
    summarize,
    time_alternating,
    time_iterations,
)


class FakeClock:
    """A clock that only moves when told: each ``tick`` advances it."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float) -> None:
        self.now += seconds


def test_summarize_hand_computed():
    # sorted 1 2 3 4 10; n = 5, rank of pXX = 4 * XX / 100
    s = summarize([4, 1, 10, 3, 2])
    assert (s.n, s.min, s.max, s.mean, s.median) == (5, 1, 10, 4, 3)
    assert s.p90 == pytest.approx(4 + 0.6 * 6)  # rank 3.6: between 4 and 10
    assert s.p95 == pytest.approx(4 + 0.8 * 6)  # rank 3.8
    assert s.p99 == pytest.approx(4 + 0.96 * 6)  # rank 3.96
    # population std: deviations -3 -2 -1 0 6 -> squares sum 50 -> sqrt(50 / 5)
    assert s.std == pytest.approx(math.sqrt(10))
    assert s.cv == pytest.approx(math.sqrt(10) / 4)


def test_summarize_one_sample_and_scaling():
    s = summarize([0.002])
    assert (s.min, s.median, s.p99, s.max, s.std, s.cv) == (0.002, 0.002, 0.002, 0.002, 0.0, 0.0)
    ms = s.scaled(1e3)
    assert ms["mean"] == pytest.approx(2.0) and ms["n"] == 1 and ms["cv"] == 0.0


def test_percentile_even_count():
    # 10 20 30 40: the median is halfway between 20 and 30; p90 at rank 2.7
    assert percentile([10, 20, 30, 40], 50) == 25
    assert percentile([10, 20, 30, 40], 90) == pytest.approx(37)


@pytest.mark.parametrize("samples", [[], [1.0, float("nan")], [float("inf")]])
def test_summarize_refuses_bad_samples(samples):
    with pytest.raises(ValueError):
        summarize(samples)


def test_time_iterations_exact_count_phases_and_warmup():
    clock = FakeClock()

    def step(sw: Stopwatch):
        with sw.phase("preprocess"):
            clock.tick(0.001)
        with sw.phase("compute"):
            clock.tick(0.010)

    t = time_iterations(step, warmup_s=0.05, iterations=4, clock=clock)
    assert t.warmup_iterations == 5  # 11 ms per step: 5 steps pass 50 ms
    assert len(t.total) == 4
    assert t.total == pytest.approx([0.011] * 4)
    assert t.phases["compute"] == pytest.approx([0.010] * 4)
    assert t.phases["preprocess"] == pytest.approx([0.001] * 4)


def test_time_iterations_duration_and_minimum():
    clock = FakeClock()
    t = time_iterations(lambda sw: clock.tick(0.1), warmup_s=0, duration_s=0.35, clock=clock)
    assert len(t.total) == 4 and t.warmup_iterations == 1  # 0.4 s >= 0.35 s; warm-up runs at least once
    slow = time_iterations(lambda sw: clock.tick(5.0), warmup_s=0, duration_s=1.0, min_iterations=3, clock=clock)
    assert len(slow.total) == 3


def test_late_phase_is_zero_before_it_appears():
    clock = FakeClock()
    calls = []

    def step(sw):
        calls.append(1)
        if len(calls) > 2:  # warm-up is call 1; the timed call 2 has no "d2h"
            sw.add("d2h", 0.5)

    t = time_iterations(step, warmup_s=0, iterations=3, clock=clock)
    assert t.phases["d2h"] == [0.0, 0.5, 0.5]


def test_time_alternating_reverses_order():
    clock = FakeClock()
    order = []
    steps = [lambda sw: order.append("a"), lambda sw: order.append("b")]
    a, b = time_alternating(steps, 3, warmup=0, clock=clock)
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert len(a.total) == len(b.total) == 3


@pytest.mark.parametrize(
    "warmup, duration, iterations",
    [(-1, 1, None), (0, 0, None), (0, float("nan"), None), (0, float("inf"), None), (0, None, 0), (0, 1, 5),
     (float("nan"), 1, None), (0, None, None)],
)  # fmt: skip
def test_run_length_validation(warmup, duration, iterations):
    with pytest.raises(ConfigError):
        check_run_length(warmup, duration, iterations)


def test_benchmark_scripts_use_this_timer():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
    try:
        import common
    finally:
        sys.path.pop(0)
    calls = []
    med_a, med_b = common.paired_medians(lambda: calls.append("a"), lambda: calls.append("b"), 3, warmup=1)
    assert calls.count("a") == calls.count("b") == 4
    assert med_a >= 0 and med_b >= 0
    assert common.time_alternating is time_alternating
