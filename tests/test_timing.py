"""The timing protocol (tuner/measure/timing.py) on a fake clock, and bench/peak.py's FMA kernel.

The protocol is tested against a clock that each call advances by a known amount, so the
assertions are exact and hold on a loaded machine; only the smoke tests touch the real clock,
and none asserts on speed. bench/ is a package of the repository, not of the installed project:
the repository root goes on sys.path to import it.
"""

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tuner.measure import timing
from tuner.measure.timing import TimingResult, time_callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import peak  # noqa: E402


class FakeClock:
    """perf_counter that moves only when the timed function runs: call i costs costs[i]."""

    def __init__(self, cost_s, first_cost_s=None):
        self.now, self.calls = 0.0, 0
        self.cost_s, self.first_cost_s = cost_s, first_cost_s

    def perf_counter(self) -> float:
        return self.now

    def fn(self) -> None:
        cold = self.calls == 0 and self.first_cost_s is not None
        self.now += self.first_cost_s if cold else self.cost_s
        self.calls += 1


@pytest.fixture
def clock(monkeypatch):
    def make(cost_s, first_cost_s=None):
        fake = FakeClock(cost_s, first_cost_s)
        monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=fake.perf_counter))
        return fake
    return make


@pytest.mark.parametrize("cost_s", [1e-7, 3e-5, 4e-4, 2e-3])
def test_number_makes_a_sample_last_at_least_min_sample_s(clock, cost_s):
    fake = clock(cost_s)
    result = time_callable(fake.fn, min_sample_s=1e-3)
    assert result.number * cost_s >= 1e-3 or result.number == 1
    # not far beyond the target either: calibration aims at it with a small margin
    assert result.number == 1 or (result.number - 1) * cost_s < 2.5e-3
    assert result.costs_s == pytest.approx((cost_s,) * 7)


def test_sample_count_and_warmup_is_not_timed(clock):
    fake = clock(1e-4, first_cost_s=1.0)  # a cold first call (compilation, page faults)
    result = time_callable(fake.fn, samples=5, warmup=1)
    assert len(result.costs_s) == 5
    assert max(result.costs_s) == pytest.approx(1e-4)


def test_max_total_s_keeps_at_least_three_samples(clock):
    slow = clock(0.1)
    assert len(time_callable(slow.fn, max_total_s=0.2).costs_s) == 3
    fast = clock(1e-5)
    assert len(time_callable(fast.fn, max_total_s=0.2).costs_s) == 7


def test_median_and_min():
    result = TimingResult((3.0, 1.0, 2.0, 10.0, 2.5), number=4)
    assert result.median_s == 2.5 and result.min_s == 1.0
    assert TimingResult((4.0, 1.0), 1).median_s == 2.5


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="samples"):
        time_callable(lambda: None, samples=0)


def test_real_clock_smoke():
    result = time_callable(lambda: sum(range(200)), min_sample_s=1e-4, samples=3)
    assert len(result.costs_s) == 3 and result.number > 1 and result.min_s > 0


def test_fma_kernel_computes_what_it_claims():
    """acc + a*b, `iterations` times, in every lane of every accumulator: exact in float32
    for small integers, so a folded or truncated loop would show."""
    acc = np.arange(peak.ACCUMULATORS * peak.LANES, dtype=np.float32).reshape(-1, peak.LANES)
    ab = np.stack([np.full(peak.LANES, 2.0), np.full(peak.LANES, 3.0)]).astype(np.float32)
    expected = acc + 5 * 2.0 * 3.0
    peak.fma_kernel()(5, acc.ctypes.data, ab.ctypes.data)
    np.testing.assert_array_equal(acc, expected)
    before = acc.copy()
    peak.fma_kernel()(0, acc.ctypes.data, ab.ctypes.data)  # no iterations: untouched
    np.testing.assert_array_equal(acc, before)


@pytest.mark.parametrize("threads", [1, 2])
def test_peak_runs(threads):
    assert peak.measure_fp32_peak(threads, iterations=1000, min_sample_s=1e-4) > 0
