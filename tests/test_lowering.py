"""The lowering pool: genomes lowered and featurized in spawned processes give what lowering
them here gives, the search proposes the same schedules with it as without, and a pool that
loses a process says so once and goes on in the tuner's process."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from costmodel.features import extract_features
from costmodel.xgb import XGBCostModel
from tuner.ir.target import host_target
from tuner.ir.task import Task
from tuner.measure.result import ErrorKind, MeasureResult
from tuner.search.lowering import MIN_POOLED, LowerHere, LoweringPool
from tuner.search.strategies import EvolutionarySearch, SearchConfig

TASKS = (Task.create("conv2d", (1, 13, 9, 9, 6, 3, 3), pad=1, stride=2, bias=True),
         Task.create("matmul", (20, 36, 12)))


@pytest.fixture(scope="module")
def pool():
    with LoweringPool(2) as pool:
        yield pool


def _genomes(task: Task, target, count: int, seed: int) -> list:
    search = EvolutionarySearch(task.dag(), target, np.random.default_rng(seed), XGBCostModel(),
                                extract_features, SearchConfig(use_seed=False))
    return [search.random_genome() for _ in range(count)]


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.op)
@pytest.mark.parametrize("threads", [1, 2])
def test_the_pool_lowers_genomes_as_this_process_does(pool, task, threads):
    target = host_target(threads)
    genomes = _genomes(task, target, 3 * MIN_POOLED, seed=threads)
    here = LowerHere(task.dag(), target, extract_features).submit(genomes).result()
    there = pool.bind(task, target, extract_features).submit(genomes).result()
    assert len(there) == len(genomes)
    for a, b in zip(here, there):
        assert (a.key, a.valid) == (b.key, b.valid)
        assert np.array_equal(a.features, b.features)  # bit for bit, NaN-free
        assert b.steps is None and b.nest is None       # the pool sends neither back
    assert all(a.steps is not None for a in here)


def _rounds(task: Task, target, lowering, rounds: int = 3) -> list[tuple[str, float | None]]:
    search = EvolutionarySearch(task.dag(), target, np.random.default_rng(7), XGBCostModel(),
                                extract_features, SearchConfig(population=64, generations=2,
                                                               model_after=8),
                                lowering=lowering)
    proposed, measured = [], set()
    for r in range(rounds):
        batch = search.propose(8, measured)
        measured |= {c.key for c in batch}
        proposed += [(c.key, c.predicted) for c in batch]
        search.observe(batch, [MeasureResult(ErrorKind.NONE, "", (1e-4 * (1 + (i + r) % 5),), 1)
                               for i in range(len(batch))])
    return proposed


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.op)
def test_a_search_proposes_the_same_schedules_with_the_pool(pool, task):
    target = host_target(1)
    alone = _rounds(task, target, None)
    pooled = _rounds(task, target, pool.bind(task, target, extract_features))
    assert len(alone) == 24 and pooled == alone


def test_proposed_candidates_carry_their_nests_with_the_pool(pool):
    task, target = TASKS[0], host_target(2)
    search = EvolutionarySearch(task.dag(), target, np.random.default_rng(1), XGBCostModel(),
                                extract_features, SearchConfig(population=48, generations=1),
                                lowering=pool.bind(task, target, extract_features))
    batch = search.propose(8, set())
    assert len(batch) == 8
    # lowered again here for the measurer: a nest exactly when the schedule is within limits
    for c in batch:
        assert c.steps
        assert (c.nest is not None) == search.lowering.here.submit(
            [(c.sketch, c.annotation)]).result()[0].valid


def test_a_pool_that_loses_a_process_says_so_once_and_lowers_here():
    task, target = TASKS[1], host_target(1)
    genomes = _genomes(task, target, 2 * MIN_POOLED, seed=5)
    expected = LowerHere(task.dag(), target, extract_features).submit(genomes).result()
    said: list[str] = []
    with LoweringPool(2, say=said.append) as pool:
        lowering = pool.bind(task, target, extract_features)
        assert [x.key for x in lowering.submit(genomes).result()] == [x.key for x in expected]
        for proc in pool._procs:
            os.kill(proc.proc.pid, signal.SIGKILL)
        for _ in range(2):
            again = lowering.submit(genomes).result()
            assert [x.key for x in again] == [x.key for x in expected]
            assert all(np.array_equal(a.features, b.features) for a, b in zip(again, expected))
        assert len(said) == 1 and "lowering process is lost" in said[0], said
        assert not pool.usable


def failing_featurize(nest, target):
    raise ValueError("no features for you")


def test_a_request_a_process_fails_on_raises_here_and_the_pool_goes_on(pool):
    task, target = TASKS[1], host_target(1)
    genomes = _genomes(task, target, MIN_POOLED, seed=2)
    with pytest.raises(ValueError, match="no features for you"):
        pool.bind(task, target, failing_featurize).submit(genomes).result()
    assert pool.usable
    assert len(pool.bind(task, target, extract_features).submit(genomes).result()) == MIN_POOLED


def test_a_pool_that_cannot_start_its_processes_lowers_here(monkeypatch):
    import tuner.search.lowering as lowering

    def no_process():
        raise OSError("Resource temporarily unavailable")

    monkeypatch.setattr(lowering, "_Process", no_process)
    task, target = TASKS[0], host_target(1)
    genomes = _genomes(task, target, MIN_POOLED, seed=3)
    said: list[str] = []
    with LoweringPool(2, say=said.append) as pool:
        lowered = pool.bind(task, target, extract_features).submit(genomes).result()
    expected = LowerHere(task.dag(), target, extract_features).submit(genomes).result()
    assert [x.key for x in lowered] == [x.key for x in expected]
    assert len(said) == 1 and "Resource temporarily unavailable" in said[0], said
