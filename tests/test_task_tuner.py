"""One tuner per task, each nest lowered once: a spy on the lowering function counts how often
each schedule becomes a loop nest in this process while tuning, replaying, building a library
and writing a package; `tune model` keeps one tuner per task across the task scheduler's
rounds and never reads a stored record twice.

Measurements are faked (a time drawn from the schedule's hash): what is counted here happens
in the tuner's process, and a measure worker, another process, rebuilds a nest from JSON."""

from __future__ import annotations

import hashlib
import sys
import warnings
from collections import Counter

import numpy as np
import pytest
from onnx import helper

import tuner.ir.lowered
import tuner.ir.schedule
import tuner.search.annotate
from costmodel.features import extract_features
from costmodel.xgb import XGBCostModel
from model_builders import make_model, randn
from records import RecordStore
from tuner.cli import tuner_factory
from tuner.ir.schedule import schedule_to_json
from tuner.ir.target import host_target
from tuner.ir.task import Task
from tuner.measure.measurer import MeasureOptions
from tuner.measure.result import ErrorKind, MeasureResult
from tuner.network.graph import load_model
from tuner.network.package import write_package
from tuner.network.tasks import extract_tasks
from tuner.network.tuning import tune_model
from tuner.replay.aot import build_library
from tuner.replay.kernel import build_choice
from tuner.replay.source import NoRecordWarning, open_schedules
from tuner.search.strategies import SearchConfig
from tuner.search.tune import TaskTuner, TuneConfig, WarmStart

SMALL_SEARCH = SearchConfig(population=48, generations=2)


class FakeMeasurer:
    """Times every candidate by its schedule's hash, and checks it was handed a nest."""

    options = MeasureOptions()

    def __init__(self):
        self.inputs = []

    def measure(self, inputs):
        self.inputs += inputs
        out = []
        for item in inputs:
            digest = hashlib.sha256(schedule_to_json(item.steps).encode()).digest()
            seconds = 1e-4 * (1 + digest[0] / 64)
            out.append(MeasureResult(ErrorKind.NONE, "", (seconds,) * 3, 10, 0.01, 1.7e9))
        return out


@pytest.fixture
def lowerings(monkeypatch):
    """Counts (task definition, schedule) -> how many times it was lowered to a nest, with
    every module's binding of `apply_steps` replaced by a counting one; the cache of stored
    schedules' nests starts empty."""
    original = tuner.ir.schedule.apply_steps
    counts: Counter = Counter()

    def spy(dag, steps, check=True):
        counts[(id(dag), schedule_to_json(tuple(steps)))] += 1
        return original(dag, steps, check)

    for name, module in list(sys.modules.items()):
        if name.split(".")[0] in ("tuner", "records", "costmodel") and \
                getattr(module, "apply_steps", None) is original:
            monkeypatch.setattr(module, "apply_steps", spy)
    tuner.ir.lowered.lowered.cache_clear()
    yield counts
    tuner.ir.lowered.lowered.cache_clear()


def _config(trials: int, batch: int, seed: int = 0) -> TuneConfig:
    return TuneConfig(trials=trials, batch_size=batch, seed=seed, search=SMALL_SEARCH)


def _tuner(task, target, store, measurer, config, warm_start=None) -> TaskTuner:
    return TaskTuner(task, target, store, measurer, config, XGBCostModel(), extract_features,
                     warm_start)


@pytest.fixture
def genomes_lowered(monkeypatch):
    """Counts (sketch, annotation) -> how many times the search lowered it, and schedule
    JSON -> how many of those lowerings ended in that schedule."""
    original = tuner.search.annotate.lower
    genomes: Counter = Counter()
    finals: Counter = Counter()

    def spy(dag, sketch, ann, target):
        steps, nest = original(dag, sketch, ann, target)
        genomes[(sketch, ann)] += 1
        finals[schedule_to_json(steps)] += 1
        return steps, nest

    for name, module in list(sys.modules.items()):
        if name.startswith("tuner.") and getattr(module, "lower", None) is original:
            monkeypatch.setattr(module, "lower", spy)
    return genomes, finals


def test_a_round_lowers_each_candidate_once(tmp_path, lowerings, genomes_lowered):
    task = Task.create("matmul", (32, 40, 24), bias=True)
    target, measurer = host_target(1), FakeMeasurer()
    with RecordStore(f"sqlite:///{tmp_path / 'r.db'}") as store:
        result = _tuner(task, target, store, measurer, _config(16, 16)).run()
        records = store.history(task, target)
    assert result.trials_run == 16 and len(records) == 16
    assert all(item.nest is not None for item in measurer.inputs)
    genomes, finals = genomes_lowered
    # a genome bred twice is not lowered again
    assert max(genomes.values()) == 1, genomes.most_common(2)
    # a measured candidate is not lowered again: its schedule was applied once per genome
    # that lowered to it (two genomes meet in one schedule where trimming the unrolled loops
    # of one, to bound the code size, gives the other's steps), or once if no genome gave it
    # (the default schedule)
    dag = task.dag()
    assert [lowerings[(id(dag), r.schedule_json)] for r in records] == \
        [max(1, finals[r.schedule_json]) for r in records]


def test_replay_library_and_package_lower_each_chosen_schedule_once(tmp_path, lowerings):
    rng = np.random.default_rng(3)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["h"]),
                        helper.make_node("Relu", ["h"], ["y"])],
                       {"x": (6, 20)}, "y", {"w": randn(rng, 20, 12)})
    graph = load_model(model)
    (use,) = extract_tasks(graph).tasks
    other = Task.create("matmul", (16, 8, 24))
    target, db = host_target(1), tmp_path / "r.db"
    with RecordStore(f"sqlite:///{db}") as store:
        for task in (use.task, other):
            _tuner(task, target, store, FakeMeasurer(), _config(8, 8)).run()
    lowerings.clear()
    tuner.ir.lowered.lowered.cache_clear()
    with open_schedules(str(db)) as schedules:
        choices = [schedules.choose(t, target) for t in (use.task, other)]
        kernel = build_choice(choices[1])
        build_library(choices, tmp_path / "lib")
        write_package(graph, tmp_path / "pkg", schedules, target)
    x = randn(rng, 16, 24), randn(rng, 24, 8)
    np.testing.assert_allclose(kernel(*x), x[0] @ x[1], rtol=1e-4, atol=1e-4)
    for choice in choices:
        assert choice.tuned
        assert lowerings[(id(choice.task.dag()), schedule_to_json(choice.steps))] == 1


def test_the_default_schedule_of_an_untuned_task_is_lowered_once(tmp_path, lowerings):
    task = Task.create("matmul", (12, 20, 28))
    RecordStore(f"sqlite:///{tmp_path / 'empty.db'}").close()
    with warnings.catch_warnings(), open_schedules(str(tmp_path / "empty.db")) as schedules:
        warnings.simplefilter("ignore", NoRecordWarning)
        choice = schedules.choose(task, host_target(1))
    assert not choice.tuned
    build_library([choice], tmp_path / "lib")
    assert lowerings[(id(task.dag()), schedule_to_json(choice.steps))] == 1


def test_tune_model_keeps_one_tuner_per_task_and_reads_each_record_once(tmp_path, lowerings):
    """Three tasks, 64 trials in rounds of 8 over a store that already holds another task's
    records: one tuner per task, whose strategy, cost model and feature cache survive its
    rounds; each stored record (those of before, and those the run adds) is read from the
    store once and never lowered again once it is featurized."""
    target, db = host_target(1), f"sqlite:///{tmp_path / 'r.db'}"
    before = Task.create("matmul", (20, 20, 20))
    with RecordStore(db) as store:
        _tuner(before, target, store, FakeMeasurer(), _config(24, 8)).run()
        stored_before = {r.id: r for r in store.history(before, target)}
    tasks = [Task.create("matmul", shape) for shape in ((24, 32, 16), (8, 40, 32), (36, 12, 20))]
    uses = [type("Use", (), {"task": t, "occurrences": 1, "flops": t.dag().flops})()
            for t in tasks]
    lowerings.clear()
    made: list[TaskTuner] = []
    runs: list[tuple[int, object, object, int]] = []
    with RecordStore(db) as store:
        reads: list[int] = []
        records_on_target = store.records_on_target

        def counted(target, exclude=None, limit=5000, after_id=0):
            found = records_on_target(target, exclude, limit, after_id)
            reads.extend(r.id for r in found)
            return found
        store.records_on_target = counted
        config = _config(64, 8)
        factory = tuner_factory(target, store, FakeMeasurer(), config)

        def make_tuner(task):
            t = factory(task)
            made.append(t)
            run = t.run

            def counted_run(trials=None, on_progress=None):
                s = t.strategy
                runs.append((tasks.index(task), s, s.cost_model, len(s._feature_cache)))
                return run(trials, on_progress)
            t.run = counted_run
            return t
        result = tune_model(uses, target, store, config, make_tuner)
        after = store.history(tasks[0], target)
    assert result.trials_run == 64
    assert sorted(tasks.index(t.task) for t in made) == [0, 1, 2]  # one tuner each
    assert len({id(t.warm_start) for t in made}) == 1             # one warm start for all
    for index in range(3):
        mine = [(s, m, cached) for i, s, m, cached in runs if i == index]
        assert len(mine) >= 2, "every task had more than one round"
        assert len({id(s) for s, _, _ in mine}) == 1 and len({id(m) for _, m, _ in mine}) == 1
        assert all(cached > 0 for _, _, cached in mine[1:])  # the feature cache carried over
        assert mine[-1][1].fitted
    assert len(reads) == len(set(reads)), "a stored record was read twice"
    assert set(stored_before) <= set(reads)
    dag = before.dag()
    assert all(lowerings[(id(dag), r.schedule_json)] <= 1 for r in stored_before.values())
    assert len(after) > 8


def test_warm_start_reads_only_new_records_and_keeps_the_newest(tmp_path):
    target = host_target(1)
    a, b = Task.create("matmul", (8, 8, 8)), Task.create("matmul", (12, 8, 8))
    with RecordStore(f"sqlite:///{tmp_path / 'r.db'}") as store:
        _tuner(a, target, store, FakeMeasurer(), _config(8, 8)).run()
        featurized = []

        def featurize(nest, target):
            featurized.append(nest)
            return extract_features(nest, target)
        warm = WarmStart(store, target, featurize, limit=12)
        warm.read_new()
        assert len(featurized) == 8 and warm.history(exclude=b)[0].shape[0] == 8
        assert warm.history(exclude=a) is None
        warm.read_new()
        assert len(featurized) == 8  # nothing new, nothing lowered
        _tuner(b, target, store, FakeMeasurer(), _config(8, 8)).run()
        warm.read_new()
        assert len(featurized) == 16
        feats, gflops, groups = warm.history(exclude=Task.create("matmul", (4, 4, 4)))
        assert len(feats) == 12 and set(groups) == {a.key, b.key}  # the newest 12
        assert list(groups).count(b.key) == 8


def test_a_resumed_tuner_breeds_from_stored_genomes_and_lowers_none_again(tmp_path,
                                                                          monkeypatch):
    """A new tuner over a task's stored records rebuilds their genomes once, when it is made;
    its runs breed from them without making (lowering) any of them again. (A new genome may
    still lower to a stored schedule, as two unroll limits can give the same steps: it is
    recognised by its key then, and not measured.)"""
    import tuner.search.lowering as lowering
    import tuner.search.strategies as strategies
    import tuner.search.tune as tune_module

    task = Task.create("matmul", (24, 24, 24))
    target, db = host_target(1), f"sqlite:///{tmp_path / 'r.db'}"
    with RecordStore(db) as store:
        _tuner(task, target, store, FakeMeasurer(), _config(16, 8)).run()
    made, rebuilt = [], []
    make_candidate, genome_and_nest = strategies.make_candidate, tune_module.genome_and_nest
    lower = lowering.lower
    monkeypatch.setattr(strategies, "make_candidate",
                        lambda dag, target, sketch, ann, predicted=None:
                        made.append((sketch, ann)) or make_candidate(dag, target, sketch, ann))
    monkeypatch.setattr(lowering, "lower", lambda dag, sketch, ann, target:
                        made.append((sketch, ann)) or lower(dag, sketch, ann, target))
    monkeypatch.setattr(tune_module, "genome_and_nest",
                        lambda *args: rebuilt.append(args) or genome_and_nest(*args))
    with RecordStore(db) as store:
        stored = {r.schedule_json for r in store.history(task, target)}
        resumed = _tuner(task, target, store, FakeMeasurer(), _config(16, 8))
        genomes = {(c.sketch, c.annotation) for c, _ in resumed.strategy.measured}
        assert len(genomes) >= 14 and len(rebuilt) == len(stored) - 1  # all but the default
        made.clear()
        rebuilt.clear()
        result = resumed.run()
        assert len(store.history(task, target)) == 32
    assert result.trials_run == 16 and not rebuilt
    assert made and not genomes & set(made)


class DroppingMeasurer(FakeMeasurer):
    """Returns no result (None) for every other candidate of its first batch, as a cluster
    measurer does for a worker's answer it drops (tuner/measure/cluster.py)."""

    def __init__(self):
        super().__init__()
        self.dropped: list[str] = []

    def measure(self, inputs):
        first = not self.inputs
        results = super().measure(inputs)
        if first:
            self.dropped = [schedule_to_json(item.steps) for item in inputs[::2]]
            results[::2] = [None] * len(results[::2])
        return results


def test_a_candidate_the_measurer_returns_no_result_for_is_released_not_stored(tmp_path):
    task, target, measurer = Task.create("matmul", (32, 40, 24)), host_target(1), \
        DroppingMeasurer()
    after_first_batch = []
    with RecordStore(f"sqlite:///{tmp_path / 'r.db'}") as store:
        def progress(p) -> None:
            if not after_first_batch:
                after_first_batch.append((p.trials_done, store.count(),
                                          store.claims(task, target)))

        tuner = _tuner(task, target, store, measurer, _config(12, 4))
        result = tuner.run(on_progress=progress)
        records = store.history(task, target)
    assert after_first_batch == [(2, 2, [])]  # two stored, the two dropped released
    assert result.trials_run == 12 and len(records) == 12
    assert measurer.dropped[0] == tuner.default.key  # dropped, so measured in a later batch
    assert result.default_gflops is not None and tuner.default.key in \
        [r.schedule_json for r in records[2:]]

