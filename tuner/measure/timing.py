"""The one timing protocol, used by the measurement runner and by every benchmark.

One warm-up call, then `number` is calibrated so that one sample (the mean of `number`
back-to-back calls) lasts at least `min_sample_s`, then `samples` samples. Single calls are
useless on a shared machine (preemption outliers); the median of 7 such samples varied 2-4%
across repeated measurements on these shared 2-core machines. Report the median; keep the
minimum too.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True, slots=True)
class TimingResult:
    costs_s: tuple[float, ...]
    number: int

    @property
    def median_s(self) -> float:
        return statistics.median(self.costs_s)

    @property
    def min_s(self) -> float:
        return min(self.costs_s)


def time_callable(fn: Callable[[], object], *, min_sample_s: float = 1e-3, samples: int = 7,
                  warmup: int = 1, max_total_s: float | None = None) -> TimingResult:
    """`max_total_s` caps the time spent on one slow function: fewer samples (never under 3)
    when each takes long, since a kernel 50x off the best needs no fourth digit."""
    if samples < 1 or min_sample_s < 0:
        raise ValueError(f"samples must be >= 1 and min_sample_s >= 0, got {samples}, "
                         f"{min_sample_s}")
    for _ in range(warmup):
        fn()
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_sample_s:
            break
        # aim straight for the target with 20% margin, at least doubling
        number = max(2 * number, int(number * 1.2 * min_sample_s / max(elapsed, 1e-9)))
    costs = [elapsed / number]
    if max_total_s is not None:
        samples = max(min(3, samples), min(samples, int(max_total_s / max(elapsed, 1e-9))))
    for _ in range(samples - 1):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        costs.append((time.perf_counter() - start) / number)
    return TimingResult(tuple(costs), number)
