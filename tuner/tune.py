"""The tuning loop: propose, measure, record, learn, until the trial budget is spent.

    tune(task, target, store, measurer, config, model, featurize) -> TuneResult

Every batch is committed to the record store before the next is proposed, so Ctrl-C or a kill
loses at most the batch in flight; a new run of the same task reads what is stored, never
measures a stored schedule again, and (evolutionary search) starts from the stored genomes.
Processes tuning the same task in one log (a shared server, or two terminals) claim each batch
in the store before measuring it and measure disjoint schedules; the store numbers trials.
The cost model starts from the records of other tasks on the same target. The first batch
also measures the default schedule, so tuning never ends worse than not tuning.

The store and the model are passed in (records/ and costmodel/ are wired by the CLI), so this
module imports neither SQLAlchemy nor XGBoost.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tuner.version import __version__
from tuner.annotate import genome_from_steps
from tuner.default import default_schedule
from tuner.measure import MeasureInput, Measurer, check_task_fits_memory
from tuner.lowered import schedule_applies
from tuner.result import MeasureResult, NewRecord
from tuner.schedule import ScheduleError, apply_steps, schedule_from_json, schedule_to_json
from tuner.search import (Candidate, CostModel, EvolutionarySearch, Featurizer, OptunaSearch,
                          RandomSearch, SearchConfig)
from tuner.sketch import generate_sketches
from tuner.target import Target
from tuner.task import Task

STRATEGIES = ("evolutionary", "optuna", "random")


@dataclass(frozen=True, slots=True)
class TuneConfig:
    trials: int = 200                # new measurements in this run
    batch_size: int = 16             # candidates measured (and committed) per round
    strategy: str = "evolutionary"
    seed: int = 0
    include_default: bool = True     # measure the default schedule in the first batch
    warm_start_records: int = 4000   # other tasks' records the model starts from
    search: SearchConfig = field(default_factory=SearchConfig)
    # how long a claim on a batch being measured holds if this process dies where others
    # cannot see it (another machine on a shared server; records/claims.py)
    claim_lease_s: float = 3600.0


# rounds in a row whose every proposal another process had measured or claimed
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


def _warm_start(store, task: Task, target: Target, limit: int, featurize: Featurizer):
    feats, gflops, groups = [], [], []
    for r in store.records_on_target(target, exclude=task, limit=limit):
        try:
            nest = apply_steps(r.task.dag(), schedule_from_json(r.schedule_json))
        except ScheduleError:
            continue  # written by another tuner version; nothing to learn from it
        feats.append(featurize(nest, target))
        gflops.append(r.gflops)
        groups.append(r.task.key)
    if not feats:
        return None
    return np.stack(feats), np.array(gflops), np.array(groups)


def make_strategy(name: str, task: Task, target: Target, rng: np.random.Generator, store,
                  config: TuneConfig, model: CostModel | None, featurize: Featurizer | None):
    dag = task.dag()
    if name == "random":
        return RandomSearch(dag, target, rng)
    if name == "optuna":
        return OptunaSearch(dag, target, rng)
    if name == "evolutionary":
        if model is None or featurize is None:
            raise ValueError("evolutionary search needs a cost model and a featurizer")
        history = _warm_start(store, task, target, config.warm_start_records, featurize)
        return EvolutionarySearch(dag, target, rng, model, featurize, config.search, history)
    raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}")


def _resume(strategy, task: Task, target: Target, history) -> None:
    """Shows the strategy what is already measured, as candidates it can breed from."""
    dag = task.dag()
    sketches = generate_sketches(dag)
    candidates, results = [], []
    for r in history:
        steps = schedule_from_json(r.schedule_json)
        genome = genome_from_steps(dag, steps, target, sketches)
        if genome is not None:
            candidates.append(Candidate(genome[0], genome[1], steps, r.schedule_json))
            results.append(r.result)
    if candidates:
        strategy.observe(candidates, results)


def tune(task: Task, target: Target, store, measurer: Measurer, config: TuneConfig,
         model: CostModel | None = None, featurize: Featurizer | None = None,
         on_progress: Callable[[Progress], None] | None = None) -> TuneResult:

    start = time.perf_counter()
    check_task_fits_memory(task, measurer.options)
    dag = task.dag()
    rng = np.random.default_rng(config.seed)
    strategy = make_strategy(config.strategy, task, target, rng, store, config, model, featurize)
    history = store.history(task, target)
    measured = {r.schedule_json for r in history}
    _resume(strategy, task, target, history)
    best = max((r.gflops for r in history if schedule_applies(r)), default=0.0)

    default_key = schedule_to_json(default_schedule(dag, target))
    default_gflops = next((r.gflops for r in history if r.schedule_json == default_key), None)
    done = errors = refused = 0
    curve: list[tuple[int, float, float]] = []
    try:
        while done < config.trials:
            n = min(config.batch_size, config.trials - done)
            batch: list[Candidate] = []
            if config.include_default and default_key not in measured:
                steps = schedule_from_json(default_key)
                batch.append(Candidate(None, None, steps, default_key))
            batch += strategy.propose(n - len(batch), measured)
            if not batch:
                break  # the space is exhausted: everything it can make is measured
            # another process tuning the same pair in this log measures what it claimed
            ours = store.claim(task, target, [c.key for c in batch],
                               lease_s=config.claim_lease_s)
            measured.update(c.key for c in batch)
            batch = [c for c, mine in zip(batch, ours) if mine]
            if not batch:
                refused += 1
                if refused > MAX_REFUSED_BATCHES:
                    break  # others measure whatever this search proposes
                continue
            refused = 0
            results: list[MeasureResult] = measurer.measure(
                [MeasureInput(task, c.steps, c.nest) for c in batch])
            entries = [NewRecord(c.key, r, 0, c.predicted,
                                 "default" if c.sketch is None else strategy.name)
                       for c, r in zip(batch, results)]
            # committed before anything else happens, numbered by the store
            records = store.add_many(task, target, entries, flops=dag.flops,
                                     tuner_version=__version__, number_trials=True)
            searched = [(c, r) for c, r in zip(batch, results) if c.sketch is not None]
            strategy.observe([c for c, _ in searched], [r for _, r in searched])
            for c, r, record in zip(batch, results, records):
                done += 1
                errors += not r.ok
                best = max(best, r.gflops(dag.flops))
                if c.key == default_key:
                    default_gflops = r.gflops(dag.flops)
                curve.append((record.trial, time.perf_counter() - start, best))
            if on_progress:
                on_progress(Progress(done, config.trials, best, errors,
                                     time.perf_counter() - start))
    except BaseException:
        with contextlib.suppress(Exception):  # else they lapse when this process is gone
            store.release_claims(task, target)
        raise
    best_record = store.best(task, target, schedule_applies)
    return TuneResult(task, target, done, errors, best_record.gflops if best_record else 0.0,
                      best_record.schedule_json if best_record else None, default_gflops,
                      time.perf_counter() - start, tuple(curve))
