"""The tuning loop: propose, measure, record, learn, until the trial budget is spent.

    tuner = TaskTuner(task, target, store, measurer, config, cost_model, featurize)
    tuner.run(trials, on_progress) -> TuneResult      # as often as wanted: state carries on
    tune(task, target, store, measurer, config, cost_model, featurize) -> TuneResult  # one run

A `TaskTuner` is one task's search for the life of a process: its compute definition,
sketches and default schedule, its strategy (with the cost model's features of every candidate
it has seen) and one cost model. `tune model` keeps one per task across the task scheduler's
rounds (tuner/network/tuning.py), as TVM's task scheduler keeps a search policy per task, so a
round costs its proposals and measurements, not a rebuild of what earlier rounds had.

Every batch is committed to the record store before the next is proposed, so Ctrl-C or a kill
loses at most the batch in flight; a new run of the same task reads what is stored, never
measures a stored schedule again, and (evolutionary search) starts from the stored genomes.
Processes tuning the same task in one log (a shared server, or two terminals) claim each batch
in the store before measuring it and measure disjoint schedules; the store numbers trials, and
at each run a tuner reads what others stored since its last read. A measurer may return None
for a candidate it could not vouch for (a cluster worker's answer that did not match what was
sent, tuner/measure/cluster.py): that candidate is stored nowhere, its claim is released, and
it may be proposed again. The first batch also
measures the default schedule, so tuning never ends worse than not tuning.

The cost model starts from the records of other tasks on the same target (`WarmStart`): each
stored record is lowered and featurized once per process, and what this process's tuners
measure is handed over with the features they already computed, so no round lowers a stored
record again. Each candidate is lowered once, where it is proposed; its loop nest goes to the
features and to the measurer (whose worker processes rebuild it from the schedule's JSON: data
crosses the process boundary, never code).

The store and the cost model are passed in (records/ and costmodel/ are wired by the CLI), so
this module imports neither SQLAlchemy nor XGBoost.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tuner.version import __version__
from tuner.ir.lowered import lower_stored, schedule_applies
from tuner.ir.schedule import schedule_from_json, schedule_to_json
from tuner.ir.target import Target
from tuner.ir.task import Task
from tuner.measure.measurer import MeasureInput, Measurer, check_task_fits_memory
from tuner.measure.result import MeasureResult, NewRecord
from tuner.search.annotate import genome_and_nest
from tuner.search.default import default_lowered
from tuner.search.lowering import LoweringPool
from tuner.search.strategies import (Candidate, CostModel, EvolutionarySearch, Featurizer,
                                     OptunaSearch, RandomSearch, SearchConfig)

STRATEGIES = ("evolutionary", "optuna", "random")


@dataclass(frozen=True, slots=True)
class TuneConfig:
    trials: int = 200                # new measurements in this run
    batch_size: int = 16             # candidates measured (and committed) per round
    strategy: str = "evolutionary"
    seed: int = 0
    include_default: bool = True     # measure the default schedule in the first batch
    warm_start_records: int = 4000   # other tasks' records the cost model starts from
    search: SearchConfig = field(default_factory=SearchConfig)
    # how long a claim on a batch being measured holds if this process dies where others
    # cannot see it (another machine on a shared server; records/claims.py)
    claim_lease_s: float = 3600.0


# rounds in a row whose every proposal another process had measured or claimed, or whose
# every answer a cluster measurer dropped: the run stops there
MAX_REFUSED_BATCHES = 20


@dataclass(frozen=True, slots=True)
class Progress:
    trials_done: int
    trials_total: int
    best_gflops: float
    errors: int
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class TuneResult:
    task: Task
    target: Target
    trials_run: int
    errors: int
    best_gflops: float
    best_schedule_json: str | None
    default_gflops: float | None
    elapsed_s: float
    curve: tuple[tuple[int, float, float], ...]  # (trial, elapsed s, best GFLOPS so far)


class WarmStart:
    """The successful records of every task on one target, as cost-model features: what a
    task's cost model starts from, besides that task's own. One per target and process, shared
    by its task tuners: `read_new` lowers and featurizes only records it has not read, `add`
    takes records with features a tuner already computed, and `limit` bounds it to the most
    recent records."""

    def __init__(self, store, target: Target, featurize: Featurizer, limit: int):
        self.store, self.target, self.featurize, self.limit = store, target, featurize, limit
        self._rows: dict[int, tuple[str, np.ndarray, float]] = {}  # id -> (task, features, GFLOPS)
        self._read_up_to = 0     # the highest record id read from the store
        self.version = 0         # counts changes, so a tuner refits only when there are some

    def read_new(self) -> None:
        """Reads the records stored since the last read (by any process), newest first."""
        added = 0
        for r in self.store.records_on_target(self.target, limit=self.limit,
                                              after_id=self._read_up_to):
            self._read_up_to = max(self._read_up_to, r.id)
            if r.id in self._rows:
                continue
            nest = lower_stored(r.task, r.schedule_json)
            if nest is None:
                continue  # written for an older compute definition: nothing to learn from it
            self._rows[r.id] = (r.task.key, self.featurize(nest, self.target), r.gflops)
            added += 1
        if added:
            self._trim()

    def add(self, records, features: np.ndarray) -> None:
        """Records just stored (successful ones only are kept) and their feature rows."""
        for r, row in zip(records, features):
            if r.result.ok and r.id not in self._rows:
                self._rows[r.id] = (r.task.key, row, r.gflops)
        self._trim()

    def features_of(self, record_id: int) -> np.ndarray | None:
        row = self._rows.get(record_id)
        return None if row is None else row[1]

    def _trim(self) -> None:
        self.version += 1
        if len(self._rows) > self.limit:
            for record_id in sorted(self._rows)[:len(self._rows) - self.limit]:
                del self._rows[record_id]

    def history(self, exclude: Task) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(features, GFLOPS, task keys) of the other tasks' records."""
        rows = [row for row in self._rows.values() if row[0] != exclude.key]
        if not rows:
            return None
        return (np.stack([f for _, f, _ in rows]), np.array([g for _, _, g in rows]),
                np.array([k for k, _, _ in rows]))


def make_strategy(name: str, task: Task, target: Target, rng: np.random.Generator,
                  config: TuneConfig, cost_model: CostModel | None,
                  featurize: Featurizer | None, lowering: LoweringPool | None = None):
    dag = task.dag()
    if name == "random":
        return RandomSearch(dag, target, rng)
    if name == "optuna":
        return OptunaSearch(dag, target, rng)
    if name == "evolutionary":
        if cost_model is None or featurize is None:
            raise ValueError("evolutionary search needs a cost model and a featurizer")
        return EvolutionarySearch(
            dag, target, rng, cost_model, featurize, config.search,
            lowering=lowering.bind(task, target, featurize) if lowering is not None else None)
    raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")


class TaskTuner:
    """One task's tuning on one target, across any number of `run`s (see the module's
    docstring). `config.trials` is the default budget of a run; `warm_start`, shared by the
    tuners of one process and target, is made here when not given. With a `lowering` pool
    the evolutionary search lowers its genomes on every core (tuner/search/lowering.py)."""

    def __init__(self, task: Task, target: Target, store, measurer: Measurer,
                 config: TuneConfig, cost_model: CostModel | None = None,
                 featurize: Featurizer | None = None, warm_start: WarmStart | None = None,
                 lowering: LoweringPool | None = None):
        check_task_fits_memory(task, measurer.options)
        self.task, self.target, self.store, self.measurer = task, target, store, measurer
        self.config = config
        self.dag = task.dag()
        self.strategy = make_strategy(config.strategy, task, target,
                                      np.random.default_rng(config.seed), config, cost_model,
                                      featurize, lowering)
        self.warm_start = None
        if isinstance(self.strategy, EvolutionarySearch):
            self.warm_start = warm_start or WarmStart(store, target, featurize,
                                                      config.warm_start_records)
        self._warm_version = -1
        steps, nest = default_lowered(self.dag, target)
        self.default = Candidate(None, None, steps, schedule_to_json(steps), nest=nest)
        self.default_gflops: float | None = None
        self.measured: set[str] = set()   # schedule keys stored or claimed: never proposed
        self._applies: set[str] = {self.default.key}  # keys whose schedule lowered here
        self._read_up_to = 0              # the highest id of this task's records read
        self._own: set[str] = set()       # schedule keys this tuner measured
        self.best_gflops = 0.0
        self._resume()

    def _resume(self) -> None:
        """Reads this task's records stored since the last read (by other runs and other
        processes), and shows the strategy those it can breed from."""
        history = self.store.history(self.task, self.target, after_id=self._read_up_to)
        if not history:
            return
        self._read_up_to = max(r.id for r in history)
        self.measured.update(r.schedule_json for r in history)
        resumed: list[tuple[object, Candidate]] = []
        for r in history:
            if r.schedule_json in self._own:
                continue  # measured by this tuner: the strategy has seen it
            if r.schedule_json == self.default.key:
                self.default_gflops = r.gflops
                continue
            if not isinstance(self.strategy, EvolutionarySearch):
                continue  # only evolution breeds from what is measured
            steps = schedule_from_json(r.schedule_json)
            found = genome_and_nest(self.dag, steps, self.target, self.strategy.sketches)
            if found is None:
                continue
            sketch, ann, nest = found
            self._applies.add(r.schedule_json)
            resumed.append((r, Candidate(sketch, ann, steps, r.schedule_json, nest=nest)))
            row = self.warm_start.features_of(r.id)
            if row is not None:
                self.strategy.remember_features(r.schedule_json, row)
        if resumed:
            self.strategy.observe([c for _, c in resumed], [r.result for r, _ in resumed])
            self.warm_start.add([r for r, _ in resumed],
                                self.strategy.features([c for _, c in resumed]))
        best = self.store.best(self.task, self.target, self._usable)
        self.best_gflops = max(self.best_gflops, best.gflops if best else 0.0)

    def _usable(self, record) -> bool:
        return record.schedule_json in self._applies or schedule_applies(record)

    def _refresh_warm_start(self) -> None:
        if self.warm_start is None:
            return
        self.warm_start.read_new()
        if self.warm_start.version != self._warm_version:
            self._warm_version = self.warm_start.version
            self.strategy.set_history(self.warm_start.history(exclude=self.task))

    def _measure(self, batch: list[Candidate]) -> tuple[list[Candidate], list[MeasureResult]]:
        """Measures the claimed candidates; returns those measured, with their results. One
        with no result (a cluster worker's answer the cluster measurer dropped,
        tuner/measure/cluster.py) is stored nowhere: its claim is released and it may be
        proposed and measured again."""
        if not batch:
            return [], []
        results = self.measurer.measure([MeasureInput(self.task, c.steps, c.nest)
                                         for c in batch])
        unmeasured = [c.key for c, r in zip(batch, results) if r is None]
        if unmeasured:
            self.store.release_claims(self.task, self.target, unmeasured)
            self.measured.difference_update(unmeasured)
        kept = [(c, r) for c, r in zip(batch, results) if r is not None]
        return [c for c, _ in kept], [r for _, r in kept]

    def run(self, trials: int | None = None,
            on_progress: Callable[[Progress], None] | None = None) -> TuneResult:
        """Measures up to `trials` new candidates (default `config.trials`), committing each
        batch; returns this run's result, with the best of every stored record."""
        config, task, target, store = self.config, self.task, self.target, self.store
        trials = config.trials if trials is None else trials
        start = time.perf_counter()
        self._resume()  # what others stored since the last run
        self._refresh_warm_start()
        done = errors = refused = 0
        curve: list[tuple[int, float, float]] = []
        try:
            while done < trials:
                n = min(config.batch_size, trials - done)
                batch: list[Candidate] = []
                if config.include_default and self.default.key not in self.measured:
                    batch.append(self.default)
                batch += self.strategy.propose(n - len(batch), self.measured)
                if not batch:
                    break  # the space is exhausted: everything it can make is measured
                # another process tuning the same pair in this log measures what it claimed
                ours = store.claim(task, target, [c.key for c in batch],
                                   lease_s=config.claim_lease_s)
                self.measured.update(c.key for c in batch)
                batch, results = self._measure([c for c, mine in zip(batch, ours) if mine])
                if not batch:  # others measured or claimed all of it, or no answer was kept
                    refused += 1
                    if refused > MAX_REFUSED_BATCHES:
                        break
                    continue
                refused = 0
                entries = [NewRecord(c.key, r, 0, c.predicted,
                                     "default" if c.sketch is None else self.strategy.name)
                           for c, r in zip(batch, results)]
                # committed before anything else happens, numbered by the store
                records = store.add_many(task, target, entries, flops=self.dag.flops,
                                         tuner_version=__version__, number_trials=True)
                self._own.update(c.key for c in batch)
                self._applies.update(c.key for c in batch if c.nest is not None)
                searched = [(c, r) for c, r in zip(batch, results) if c.sketch is not None]
                self.strategy.observe([c for c, _ in searched], [r for _, r in searched])
                if self.warm_start is not None:
                    self.warm_start.add(records, self.strategy.features(batch))
                for c, r, record in zip(batch, results, records):
                    done += 1
                    errors += not r.ok
                    self.best_gflops = max(self.best_gflops, r.gflops(self.dag.flops))
                    if c.key == self.default.key:
                        self.default_gflops = r.gflops(self.dag.flops)
                    curve.append((record.trial, time.perf_counter() - start, self.best_gflops))
                if on_progress:
                    on_progress(Progress(done, trials, self.best_gflops, errors,
                                         time.perf_counter() - start))
        except BaseException:
            with contextlib.suppress(Exception):  # else they lapse when this process is gone
                store.release_claims(task, target)
            raise
        best_record = store.best(task, target, self._usable)
        return TuneResult(task, target, done, errors, best_record.gflops if best_record else 0.0,
                          best_record.schedule_json if best_record else None,
                          self.default_gflops, time.perf_counter() - start, tuple(curve))


def tune(task: Task, target: Target, store, measurer: Measurer, config: TuneConfig,
         cost_model: CostModel | None = None, featurize: Featurizer | None = None,
         on_progress: Callable[[Progress], None] | None = None) -> TuneResult:
    """One run of a new TaskTuner: `config.trials` trials of `task`."""
    return TaskTuner(task, target, store, measurer, config, cost_model,
                     featurize).run(on_progress=on_progress)
