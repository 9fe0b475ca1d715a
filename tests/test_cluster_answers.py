"""Results are checked where they land (tuner/measure/cluster.py): through the real tuning
loop on `local:N` clusters (over TLS), a worker's answers for schedules the tuner never sent,
and a worker reporting another target than the resource it advertises (forged by
tests/forged_workers.py in place of `measure_chunk`, or a plain Dask worker that was not
started by `tune worker`), store nothing and are said in one line; tuning goes on with the
honest workers. Matched by position, as before these checks, each forgery would be stored."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

pytest.importorskip("distributed")

import forged_workers  # noqa: E402
import tuner.measure.cluster as cluster  # noqa: E402
from records import RecordStore  # noqa: E402
from tuner.errors import TunerError  # noqa: E402
from tuner.ir.target import host_target  # noqa: E402
from tuner.ir.task import Task  # noqa: E402
from tuner.measure.cluster import ClusterMeasurer, check_answer, target_resource  # noqa: E402
from tuner.measure.cluster_worker import schedule_digest  # noqa: E402
from tuner.measure.measurer import MeasureOptions  # noqa: E402
from tuner.search.tune import TaskTuner, TuneConfig  # noqa: E402

TASK = Task.create("matmul", (24, 24, 24))
FAST = MeasureOptions(min_sample_s=1e-4, samples=3, max_total_s=0.05, run_timeout_s=5.0)


def _tune_with(measurer, store, trials: int = 8):
    return TaskTuner(TASK, host_target(1), store, measurer,
                     TuneConfig(trials=trials, batch_size=4, strategy="random")).run()


@dataclass(frozen=True)
class ForgedRun:
    result: object            # the TuneResult
    history: list             # the records stored
    claims: list              # the claims left in the store
    workers: list[str]        # names of the workers the measurer still uses at the end
    said: list[str]           # the measurer's one-line notes


def _tune_with_forgery(forgery, tmp_path, monkeypatch) -> ForgedRun:
    """8 trials on `local:2`, with `forgery` run by the workers in place of measure_chunk."""
    monkeypatch.setattr(cluster, "measure_chunk", forgery)
    said: list[str] = []
    with ClusterMeasurer("local:2", host_target(1), FAST, say=said.append) as measurer, \
            RecordStore(f"sqlite:///{tmp_path / 'r.db'}") as store:
        result = _tune_with(measurer, store)
        return ForgedRun(result, store.history(TASK, host_target(1)),
                         store.claims(TASK, host_target(1)),
                         sorted(measurer.workers().values()), said)


def test_answers_for_schedules_the_tuner_never_sent_are_dropped_in_one_line(
        tmp_path, worker_path, monkeypatch):
    """Worker 0 answers its first chunk with timings of a trillionth of a second for
    schedules nobody sent; matched by position, they would be stored as the best records."""
    run = _tune_with_forgery(forged_workers.answers_for_schedules_not_sent, tmp_path,
                             monkeypatch)
    assert run.result.trials_run == 8 and len(run.history) == 8 and not run.claims
    assert all(r.result.ok for r in run.history), [r.result.detail for r in run.history]
    assert min(r.result.min_s for r in run.history) > 1000 * forged_workers.FORGED_COST_S
    assert run.result.default_gflops is not None  # measured, in a later batch if dropped
    (line,) = run.said
    assert line.startswith("dropped 2 answer(s) of worker(s) 0 for candidates this tuner "
                           "did not send them; 2 candidate(s) of the batch stay unmeasured"), line


def test_a_worker_reporting_another_target_than_it_advertises_is_refused_in_one_line(
        tmp_path, worker_path, monkeypatch):
    run = _tune_with_forgery(forged_workers.answers_for_another_target, tmp_path, monkeypatch)
    assert run.result.trials_run == 8 and len(run.history) == 8 and run.workers == ["1"]
    assert {r.result.machine for r in run.history} == {"1"}
    (line,) = run.said
    assert line.startswith("refused worker 0 (tls://") and "reports target " in line, line
    assert f"threads=2, not {host_target(1).key}" in line and "retired" in line


def test_a_dask_worker_not_started_by_tune_worker_is_refused_and_stores_nothing(
        tmp_path, monkeypatch):
    """A plain Dask worker that advertises the target's resource knows no target: the real
    measure_chunk measures nothing there, and the tuner refuses it."""
    from distributed import LocalCluster

    monkeypatch.setattr(cluster, "JOIN_GRACE_S", 1.0)
    said: list[str] = []
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      resources={target_resource(host_target(1)): 1}, dashboard_address=None,
                      silence_logs=40) as plain, \
            ClusterMeasurer(plain.scheduler_address, host_target(1), FAST,
                            say=said.append) as measurer, \
            RecordStore(f"sqlite:///{tmp_path / 'r.db'}") as store:
        with pytest.raises(TunerError, match="no worker of the cluster"):
            _tune_with(measurer, store)
        assert store.count() == 0 and not store.claims(TASK, host_target(1))
    (line,) = said
    assert "reports target none (not a `tune worker`)" in line, line


def test_an_answer_is_matched_to_what_was_sent_by_task_and_schedule():
    good = {"error": "none", "detail": "", "costs_s": [1e-4], "number": 3, "compile_s": 0.1,
            "timestamp": 1.7e9, "machine": "w"}
    a, b = schedule_digest("[]"), schedule_digest('[{"split": 1}]')
    sent = {(TASK.key, a): 4, (TASK.key, b): 7}
    checked = check_answer({"target": "T", "results": [
        {**good, "task": TASK.key, "schedule": b},
        {**good, "task": TASK.key, "schedule": b},                   # the same one again
        {**good, "task": "matmul/other", "schedule": a},             # another task
        {**good, "task": TASK.key, "schedule": schedule_digest("[1]")},  # never sent
        {**good, "task": TASK.key, "schedule": ["not", "a", "string"]},
        "not a dict"]}, sent)
    assert checked.target == "T" and list(checked.results) == [7] and checked.dropped == 5
    assert checked.results[7].ok and checked.results[7].costs_s == (1e-4,)
    for malformed in (None, [], {"target": "T"}, {"target": "T", "results": "no list"}):
        assert check_answer(malformed, sent) == check_answer(None, sent)
        assert check_answer(malformed, sent).target is None
    assert check_answer({"target": 42, "results": []}, sent).target is None


def test_a_chunk_that_fails_on_its_worker_stays_unmeasured_not_crashed(
        tmp_path, worker_path, monkeypatch):
    """Worker 0's first chunk raises: its candidates are no crash of theirs, so nothing of
    them is stored, their claims are released, one line says so, and they are measured in a
    later batch; the run still measures its whole budget."""
    run = _tune_with_forgery(forged_workers.fails_once, tmp_path, monkeypatch)
    assert run.result.trials_run == 8 and len(run.history) == 8 and not run.claims
    assert all(r.result.ok for r in run.history), [r.result.detail for r in run.history]
    assert run.result.default_gflops is not None  # measured, in a later batch if it failed
    (line,) = run.said
    assert line.startswith("a worker failed on a chunk of 2 candidate(s) (OSError: cannot "
                           "start a build worker"), line
    assert line.endswith("they stay unmeasured"), line
