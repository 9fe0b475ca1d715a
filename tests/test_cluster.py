"""Measuring on a Dask cluster (tuner/measure/cluster.py) with real worker processes (`local:N`
clusters run over TLS): results of the same kind as local measurement, crashing and hanging
kernels survived, a worker killed with SIGKILL mid-batch losing and duplicating nothing, and a
target no worker serves refused in one line. TLS, `tune worker` and the checks on workers'
answers: tests/test_cluster_tls.py."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

pytest.importorskip("distributed")

from cluster_helpers import one_error_line  # noqa: E402
from costmodel.features import extract_features  # noqa: E402
from costmodel.xgb import XGBCostModel  # noqa: E402
from records import RecordStore  # noqa: E402
from tuner import cli  # noqa: E402
from tuner.errors import TunerError  # noqa: E402
import tuner.measure.cluster as cluster  # noqa: E402
from tuner.ir.schedule import Annotate, Split  # noqa: E402
from tuner.ir.target import host_target  # noqa: E402
from tuner.ir.task import Task  # noqa: E402
from tuner.measure.cluster import ClusterMeasurer, target_resource  # noqa: E402
from tuner.measure.measurer import MeasureInput, MeasureOptions  # noqa: E402
from tuner.measure.result import ErrorKind  # noqa: E402
from tuner.search.strategies import SearchConfig  # noqa: E402
from tuner.search.tune import TaskTuner, TuneConfig  # noqa: E402

TASK = Task.create("matmul", (24, 24, 24))
FAST = dict(min_sample_s=1e-4, samples=3, max_total_s=0.05, run_timeout_s=5.0)


def test_faulty_kernels_on_cluster_workers_are_typed_errors_and_the_batch_goes_on(worker_path):
    good = MeasureInput(TASK, ())
    batch = [good, MeasureInput(TASK, (Split("i", (1,)),)),   # segfaults
             MeasureInput(TASK, (Split("i", (2,)),)),           # never returns
             MeasureInput(TASK, (Split("i", (3,)),)),           # wrong result
             MeasureInput(TASK, (Annotate("k", "vectorize"),)),  # invalid schedule
             MeasureInput(TASK, (Split("i", (4,)),))]           # good too (a batch's
    # schedules are distinct, as the tuner claims them: their answers are matched by schedule)
    options = MeasureOptions(builder="fault_builders:by_schedule", **FAST)
    with ClusterMeasurer("local:2", host_target(1), options) as measurer:
        workers = measurer.workers()
        results = measurer.measure(batch)
        assert measurer.workers() == workers  # no Dask worker went down with a kernel
    assert [r.error for r in results] == [
        ErrorKind.NONE, ErrorKind.CRASH, ErrorKind.TIMEOUT, ErrorKind.WRONG_RESULT,
        ErrorKind.INVALID_SCHEDULE, ErrorKind.NONE]
    assert "SIGSEGV" in results[1].detail and "exceeded 5 s" in results[2].detail
    for r in (results[0], results[5]):
        assert len(r.costs_s) == 3 and r.median_s > 0


def test_a_worker_killed_mid_batch_loses_and_duplicates_nothing(tmp_path, worker_path):
    """Two workers measure a tuner's batches (each build takes a second); one is killed with
    SIGKILL in the middle of the first batch. Its chunk runs again on a worker that remains
    (or on the one its nanny restarts), the tuner says in one line that a worker left, and the
    store holds every trial once."""
    said: list[str] = []
    options = MeasureOptions(builder="fault_builders:slow", **FAST)
    target = host_target(1)
    config = TuneConfig(trials=12, batch_size=6, search=SearchConfig(population=32,
                                                                     generations=1))
    with ClusterMeasurer("local:2", target, options, say=said.append) as measurer, \
            RecordStore(f"sqlite:///{tmp_path / 'r.db'}") as store:
        pids = measurer.client.run(os.getpid)
        victim = sorted(pids.values())[0]
        killer = threading.Timer(1.5, os.kill, (victim, signal.SIGKILL))
        killer.start()
        try:
            result = TaskTuner(TASK, target, store, measurer, config, XGBCostModel(),
                               extract_features).run()
        finally:
            killer.cancel()
        history = store.history(TASK, target)
    assert result.trials_run == 12 and len(history) == 12
    assert {r.result.machine for r in history} <= {"0", "1"}  # LocalCluster's worker names
    assert len({r.schedule_json for r in history}) == 12
    assert sorted(r.trial for r in history) == list(range(12))
    assert all(r.result.ok for r in history), [r.result.detail for r in history]
    assert any("left; going on with" in line for line in said), said
    assert all("\n" not in line for line in said)


def test_a_target_no_worker_serves_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    from distributed import LocalCluster

    monkeypatch.setattr(cluster, "JOIN_GRACE_S", 1.0)
    other = host_target(1).with_threads(2)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      resources={target_resource(other): 1}, dashboard_address=None,
                      silence_logs=40) as local:
        db = tmp_path / "r.db"
        start = time.monotonic()
        status = cli.main(["matmul", "--shape", "24,24,24", "--trials", "4", "--threads", "1",
                           "--quiet", "--cluster", local.scheduler_address, "--db", str(db)])
        assert status == cli.EXIT_USAGE and time.monotonic() - start < 60
        err = one_error_line(capsys)
        assert "no worker of the cluster" in err and target_resource(host_target(1)) in err
        assert target_resource(other) in err  # what the cluster serves instead
    with RecordStore(f"sqlite:///{db}") as store:
        assert store.count() == 0 and not store.claims(TASK, host_target(1))


def test_an_unreachable_scheduler_and_a_bad_local_count_are_one_line(tmp_path, capsys):
    for address in ("tcp://127.0.0.1:9", "local:zero"):
        status = cli.main(["matmul", "--shape", "8,8,8", "--trials", "2", "--threads", "1",
                           "--quiet", "--cluster", address, "--db", str(tmp_path / "r.db")])
        assert status == cli.EXIT_USAGE
        assert address in one_error_line(capsys)


def test_with_no_worker_left_for_the_target_the_batch_stops_in_one_line(worker_path,
                                                                      monkeypatch):
    monkeypatch.setattr(cluster, "NO_WORKER_GRACE_S", 2.0)
    said: list[str] = []
    options = MeasureOptions(builder="fault_builders:slow", **FAST)
    with ClusterMeasurer("local:1", host_target(1), options, say=said.append) as measurer:
        retire = threading.Timer(0.5, measurer.client.retire_workers,
                                 kwargs={"workers": list(measurer.workers())})
        retire.start()
        start = time.monotonic()
        with pytest.raises(TunerError, match="no worker of the cluster") as raised:
            measurer.measure([MeasureInput(TASK, (Split("i", (f,)),)) for f in (4, 6, 8, 12)])
        retire.join()
    assert time.monotonic() - start < 60 and "\n" not in str(raised.value)
    assert any("left; going on with 0" in line for line in said), said


def test_a_malformed_worker_answer_is_a_failed_candidate_not_a_stored_number():
    from tuner.measure.cluster import _result_from_json

    good = {"error": "none", "detail": "", "costs_s": [1e-4, 2e-4], "number": 3,
            "compile_s": 0.1, "timestamp": 1.7e9, "machine": "w"}
    assert _result_from_json(good).ok and _result_from_json(good).machine == "w"
    for bad in ({**good, "costs_s": []}, {**good, "costs_s": [-1.0]},
                {**good, "costs_s": ["nan"]}, {**good, "number": 0},
                {**good, "error": "exploded"}, {"error": "none"}, ["not", "a", "dict"]):
        result = _result_from_json(bad)
        assert result.error is ErrorKind.CRASH and "malformed" in result.detail, bad


def test_chunks_are_balanced_by_cost():
    """Each candidate in exactly one chunk, each chunk in batch order, and the costliest chunk
    within 4/3 of the best split (longest processing time first), where dealing the batch
    out in turn would pile the costly candidates on one worker."""
    import itertools

    import numpy as np

    rng = np.random.default_rng(0)
    for count, n in ((2, 11), (3, 9)):
        for _ in range(20):
            costs = list(rng.uniform(0.02, 1.3, n) ** 2)
            chunks = cluster.balanced_chunks(costs, count)
            assert sorted(i for c in chunks for i in c) == list(range(n))
            assert all(c == sorted(c) for c in chunks)
            best = min(max(sum(costs[i] for i in range(n) if owner[i] == k)
                           for k in range(count))
                       for owner in itertools.product(range(count), repeat=n))
            assert max(sum(costs[i] for i in c) for c in chunks) <= 4 / 3 * best + 1e-12
    costly_first = [5.0, 1.0, 5.0, 1.0, 5.0, 1.0]
    chunks = cluster.balanced_chunks(costly_first, 2)
    assert sorted(sum(costly_first[i] for i in c) for c in chunks) == [8.0, 10.0]


def test_a_candidate_costs_more_the_more_code_it_unrolls():
    from tuner.search.default import default_lowered

    task = Task.create("matmul", (64, 64, 64))
    target = host_target(1)
    steps, nest = default_lowered(task.dag(), target)
    rolled = tuple(s for s in steps if not (isinstance(s, Annotate) and s.annotation == "unroll"))
    lanes = target.machine.lanes
    unrolled_cost = cluster.candidate_cost(MeasureInput(task, steps, nest), lanes)
    rolled_cost = cluster.candidate_cost(MeasureInput(task, rolled), lanes)
    assert unrolled_cost > rolled_cost > cluster.CANDIDATE_COST
    invalid = MeasureInput(task, (Annotate("k", "vectorize"),))
    assert cluster.candidate_cost(invalid, lanes) == cluster.CANDIDATE_COST
