"""Measurement in worker processes: typed errors, and the batch goes on after any of them."""

import math
import os

import pytest

from tuner.measure.measurer import MeasureInput, MeasureOptions, Measurer
from tuner.measure.result import ErrorKind
from tuner.ir.schedule import Annotate, Split
from tuner.ir.target import host_target
from tuner.ir.task import Task

TASK = Task.create("matmul", (64, 64, 64))
FAST = dict(min_sample_s=1e-4, samples=3, run_timeout_s=5.0)


def test_faulty_kernels_are_recorded_and_the_batch_goes_on():
    options = MeasureOptions(builder="fault_builders:by_schedule", **FAST)
    good = MeasureInput(TASK, ())
    batch = [good,
             MeasureInput(TASK, (Split("i", (1,)),)),     # segfaults
             good,
             MeasureInput(TASK, (Split("i", (2,)),)),     # never returns
             MeasureInput(TASK, (Split("i", (3,)),)),     # wrong result
             MeasureInput(TASK, (Annotate("k", "vectorize"),)),  # invalid schedule
             good]
    with Measurer(host_target(1), options) as measurer:
        results = measurer.measure(batch)
    kinds = [r.error for r in results]
    assert kinds == [ErrorKind.NONE, ErrorKind.CRASH, ErrorKind.NONE, ErrorKind.TIMEOUT,
                     ErrorKind.WRONG_RESULT, ErrorKind.INVALID_SCHEDULE, ErrorKind.NONE]
    assert "SIGSEGV" in results[1].detail
    assert "exceeded 5 s" in results[3].detail
    assert "differ from the reference" in results[4].detail
    assert "cannot vectorize reduction loop 'k'" in results[5].detail
    for r in (results[0], results[2], results[6]):
        assert len(r.costs_s) == 3 and r.number >= 1 and r.median_s > 0 and r.compile_s > 0


@pytest.mark.parametrize("threads", [1, 2])
def test_real_kernels_are_checked_and_timed(threads):
    from tuner.search.default import default_schedule
    target = host_target(threads)
    steps = default_schedule(TASK.dag(), target)
    with Measurer(target, MeasureOptions(**FAST)) as measurer:
        results = measurer.measure([MeasureInput(TASK, steps), MeasureInput(TASK, ())])
    assert [r.error for r in results] == [ErrorKind.NONE, ErrorKind.NONE]
    for r in results:  # speed is the benchmarks' business; here: timed at all
        assert len(r.costs_s) == 3
        assert all(c > 0 and math.isfinite(c) for c in r.costs_s), r.costs_s


def test_cold_weights_are_timed_and_still_checked():
    """With `cold_weights` the runner times the candidate on rotating copies of its packed
    weights; a wrong kernel is still caught (the check runs before the timing)."""
    from tuner.search.default import default_schedule
    target = host_target(1)
    task = Task.create("conv2d", (1, 16, 9, 9, 32, 3, 3), pad=1, bias=1, relu=1)
    with Measurer(target, MeasureOptions(cold_weights=True, **FAST)) as measurer:
        [good] = measurer.measure([MeasureInput(task, default_schedule(task.dag(), target))])
    options = MeasureOptions(builder="fault_builders:by_schedule", cold_weights=True, **FAST)
    with Measurer(target, options) as measurer:
        [wrong] = measurer.measure([MeasureInput(TASK, (Split("i", (3,)),))])
    assert good.error == ErrorKind.NONE and len(good.costs_s) == 3
    assert wrong.error == ErrorKind.WRONG_RESULT


class _RecordingKernel:
    def __init__(self):
        self.calls = []

    def run(self, out, *args):
        self.run_at(out.ctypes.data, *(a.ctypes.data for a in args))

    def run_at(self, *addresses):
        self.calls.append(addresses)


@pytest.mark.parametrize("weight_floats, total_bytes, copies", [
    (1000, 40_000, 10),       # enough copies to fill total_bytes
    (1000, 100, 2),           # never fewer than 2
    (1, 10 << 20, 4096),      # never more than MAX_WEIGHT_COPIES
])
def test_rotating_weights_reads_another_copy_each_call(weight_floats, total_bytes, copies):
    import numpy as np
    from tuner.measure.worker import MAX_WEIGHT_COPIES, rotating_weights
    assert MAX_WEIGHT_COPIES == 4096
    data, weight, out = np.ones(8, np.float32), np.ones(weight_floats, np.float32), \
        np.zeros(8, np.float32)
    kernel = _RecordingKernel()
    call = rotating_weights(kernel, out, (data, weight), [False, True], total_bytes)
    for _ in range(2 * copies):
        call()
    outs, datas, weights = zip(*kernel.calls)
    assert set(outs) == {out.ctypes.data} and set(datas) == {data.ctypes.data}
    assert len(set(weights)) == copies and weight.ctypes.data not in weights
    assert weights[:copies] == weights[copies:]  # a cycle: each copy once per round
    # no constant operand: the plain call
    plain = _RecordingKernel()
    rotating_weights(plain, out, (data,), [False], total_bytes)()
    assert plain.calls == [(out.ctypes.data, data.ctypes.data)]


def _physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_out_of_memory_is_its_own_error():
    """A task whose float64 reference alone exceeds the workers' address-space limit (a
    fraction of this machine's physical memory), sized from this machine's memory."""
    options = MeasureOptions(**FAST)
    limit = options.memory_fraction * _physical_memory()
    side = math.isqrt(int(1.25 * limit / 8)) + 1  # M = N, K = 1: an M x N float64 reference
    assert side * side * 8 > limit
    huge = Task.create("matmul", (side, side, 1))
    with Measurer(host_target(1), options) as measurer:
        [result] = measurer.measure([MeasureInput(huge, ())])
    assert result.error is ErrorKind.OUT_OF_MEMORY, result


def test_an_empty_batch_returns_nothing():
    with Measurer(host_target(1), MeasureOptions(**FAST)) as measurer:
        assert measurer.measure([]) == []


def _intervals_of(measurer: Measurer, batch) -> list[tuple[str, tuple, float, float]]:
    """(role, cpus, submitted, collected) of every job of `measure(batch)`, as the parent sees
    them: each contains the worker's own work on the job."""
    import time

    started, spans = {}, []
    submit, collect = measurer._submit, measurer._collect

    def logged_submit(worker, job, request, timeout_s):
        started[id(worker), job] = time.monotonic()
        return submit(worker, job, request, timeout_s)

    def logged_collect(worker, *args):
        begin = started.pop((id(worker), worker.job))
        spans.append((worker.role, tuple(worker.cpus), begin, time.monotonic()))
        return collect(worker, *args)

    measurer._submit, measurer._collect = logged_submit, logged_collect
    results = measurer.measure(batch)
    assert all(r.ok for r in results), [r.detail for r in results]
    return spans


@pytest.mark.parametrize("threads", [1, 2])
def test_every_core_builds_and_no_build_shares_a_core_with_timing(threads):
    """A builder on every core; one on the runner's cores never builds while it times."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("one core: nothing to share")
    batch = [MeasureInput(TASK, (Split("i", (f,)),)) for f in (4, 8, 16, 32, 64, 2, 1, 4)]
    options = MeasureOptions(builder="fault_builders:slow", **FAST)
    with Measurer(host_target(threads), options) as measurer:
        spans = _intervals_of(measurer, batch)
    runs = [s for s in spans if s[0] == "run"]
    builds = [s for s in spans if s[0] == "build"]
    assert len(runs) == len(builds) == len(batch)
    run_cpus = set(runs[0][1])
    assert run_cpus == set(cores[-threads:])
    assert {cpus for _, cpus, _, _ in builds} == {(core,) for core in cores}  # every core
    for _, cpus, begin, end in builds:
        if set(cpus) & run_cpus:
            assert all(end <= b or e <= begin for _, _, b, e in runs), (cpus, begin, end)
