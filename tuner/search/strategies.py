"""Search strategies: which candidates to measure next.

Every strategy implements the same two-method protocol, so the tuning loop (tuner/search/tune.py)
drives them alike and benchmarks compare them on equal terms:

    propose(n, measured) -> [Candidate]   n new candidates whose schedules are not in `measured`
    observe(candidates, results)          learn from what was measured

- `EvolutionarySearch`: Ansor's (TVM auto_scheduler). A population of random annotations of
  every sketch plus mutations of the best measured candidates evolves for a few generations
  under the cost model's predictions (mutation 0.85, crossover otherwise); the best predicted
  are measured, with an ε share of random ones. The cost model is refitted before a proposal
  whenever it has measurements it was not fitted on (once a batch), from the features the
  search holds: a measured candidate is featurized once. Before it has measurements its
  predictions are the analytic estimate from the machine model (the cost model's prior,
  costmodel/estimate.py), not chance, so the first batch is already a guess
  about this CPU. Unless `SearchConfig.use_seed` is off, the default schedule's register tile,
  expressed in every sketch that can hold it, also seeds the population and is measured
  first; the search does not need it (`tune --no-seed`, bench/report.py --no-seed).
- `RandomSearch`: uniform over sketches, random annotations: the baseline.
- `OptunaSearch`: Optuna's TPE over the same parameters (sketch, tile sizes per axis and level,
  vector axis, unroll limit, parallel depth): the black-box comparator.

Same seed, same candidates: all randomness flows from one numpy Generator (and Optuna's sampler
seeded from it), and the evolution draws a generation's genomes before they are lowered, so
where they are lowered (this process, or a pool: tuner/search/lowering.py) changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable, Protocol

import numpy as np

from tuner.search.annotate import (UNROLL_CHOICES, Annotation, divisors, outer_loops, crossover,
                            expert_seeds, fits, lower, mutate, sample, split_axes)
from tuner.ir.dag import ComputeDAG
from tuner.errors import ScheduleError
from tuner.ir.schedule import LoopNest, Step, apply_steps, check_nest, schedule_to_json
from tuner.search.lowering import Featurizer, Genome, Job, LowerHere, Lowered, Lowering
from tuner.search.sketch import Sketch, generate_sketches
from tuner.ir.target import Target


@dataclass(frozen=True, slots=True)
class SearchConfig:
    population: int = 256          # Ansor: 2048 x 4 generations, in C++. Lowering and features
    generations: int = 3           # cost ~0.6-0.9 ms a genome in Python, ~800 new ones a round
    mutation_probability: float = 0.85
    measured_share: float = 0.2    # of the initial population, from the best measured
    epsilon: float = 0.05          # share of each batch picked at random
    model_after: int = 16          # measurements before the cost model is fitted (prior before)
    use_seed: bool = True          # measure the expert register tile first


@dataclass(frozen=True, slots=True)
class Candidate:
    sketch: Sketch
    annotation: Annotation
    steps: tuple[Step, ...]
    key: str                       # the canonical schedule JSON: identity in the records
    predicted: float | None = None
    # the loop nest of `steps`, lowered once here for the features and the measurer; None if
    # it breaks a whole-nest limit (the measurer then records why)
    nest: LoopNest | None = field(default=None, compare=False, repr=False)


def make_candidate(dag: ComputeDAG, target: Target, sketch: Sketch, ann: Annotation,
                   predicted: float | None = None) -> Candidate:
    steps, nest = lower(dag, sketch, ann, target)
    try:
        check_nest(nest)
    except ScheduleError:
        nest = None
    return Candidate(sketch, ann, steps, schedule_to_json(steps), predicted, nest)


class CostModel(Protocol):
    """`predict` ranks candidates before `fit` too, from a prior (XGBCostModel: the analytic
    estimate among the features); `fitted` says whether it has learnt from measurements."""
    fitted: bool

    def fit(self, features: np.ndarray, gflops: np.ndarray, groups: np.ndarray) -> None: ...

    def predict(self, features: np.ndarray) -> np.ndarray: ...


class RandomSearch:
    name = "random"

    def __init__(self, dag: ComputeDAG, target: Target, rng: np.random.Generator):
        self.dag, self.target, self.rng = dag, target, rng
        self.sketches = generate_sketches(dag, target.machine)
        # the candidates of the proposal under way, by genome: evolution makes the same
        # offspring many times, and each is lowered once (emptied after each proposal:
        # they hold their nests)
        self._proposed: dict[tuple[Sketch, Annotation], Candidate] = {}
        # candidates kept for the whole search (the seeds; the measured, without nests)
        self._kept: dict[tuple[Sketch, Annotation], Candidate] = {}

    def candidate(self, sketch: Sketch, ann: Annotation) -> Candidate:
        """The candidate of a genome, lowered once per proposal."""
        c = self._known(sketch, ann)
        if c is None:
            c = make_candidate(self.dag, self.target, sketch, ann)
            self._proposed[(sketch, ann)] = c
        return c

    def _known(self, sketch: Sketch, ann: Annotation) -> Candidate | None:
        genome = (sketch, ann)
        return self._kept.get(genome) or self._proposed.get(genome)

    def random_genome(self) -> Genome:
        sketch = self.sketches[int(self.rng.integers(len(self.sketches)))]
        return sketch, sample(self.rng, self.dag, sketch, self.target)

    def random_candidate(self) -> Candidate:
        return self.candidate(*self.random_genome())

    def propose(self, n: int, measured: set[str]) -> list[Candidate]:
        try:
            return self._propose(n, measured)
        finally:
            self._proposed.clear()

    def _propose(self, n: int, measured: set[str]) -> list[Candidate]:
        out, seen = [], set(measured)
        for _ in range(50 * n):
            if len(out) == n:
                break
            c = self.random_candidate()
            if c.key not in seen:
                seen.add(c.key)
                out.append(c)
        return out

    def observe(self, candidates, results) -> None:
        pass


# feature rows of proposed candidates kept for the next rounds (~1 kB each); measured
# candidates keep theirs apart
FEATURE_CACHE_SIZE = 8192

# genomes drawn before they are sent to be lowered, while the next ones are drawn
LOWERING_CHUNK = 64


class EvolutionarySearch(RandomSearch):
    """The evolution breeds genomes (sketch, annotation); `lowering` lowers and featurizes
    them in chunks as they are drawn (in this process unless given a pool's:
    tuner/search/lowering.py), and only the genomes proposed become candidates (lowered
    again here, for the loop nest the measurer takes). Drawing uses all the randomness and
    lowering none, so the proposals are the same wherever the lowering runs."""
    name = "evolutionary"

    def __init__(self, dag: ComputeDAG, target: Target, rng: np.random.Generator,
                 cost_model: CostModel, featurize: Featurizer,
                 config: SearchConfig = SearchConfig(),
                 history: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                 lowering: Lowering | None = None):
        super().__init__(dag, target, rng)
        self.cost_model, self.featurize, self.config = cost_model, featurize, config
        self.lowering = lowering or LowerHere(dag, target, featurize)
        # (candidate, gflops) of this task, without their loop nests
        self.measured: list[tuple[Candidate, float]] = []
        # measurements of other tasks on this target: the cost model starts from them
        self.history = history
        self._feature_cache: dict[str, np.ndarray] = {}
        self._measured_rows: dict[str, np.ndarray] = {}  # the features of `measured`
        # what the genomes of the proposal under way lowered to (emptied after each proposal)
        self._lowered: dict[Genome, Lowered] = {}
        # the cost model is fitted before a proposal when it has data it was not fitted on
        self._unfitted = True
        seeds = expert_seeds(dag, self.sketches, target) if config.use_seed else []
        self.seeds = [make_candidate(dag, target, sketch, ann) for sketch, ann in seeds]
        self._kept.update(((c.sketch, c.annotation), c) for c in self.seeds)

    def set_history(self, history: tuple[np.ndarray, np.ndarray, np.ndarray] | None) -> None:
        """Other tasks' measurements (features, GFLOPS, task keys) to fit the cost model on
        beside this task's: the next proposal refits on them."""
        self.history = history
        self._unfitted = True

    def remember_features(self, key: str, row: np.ndarray) -> None:
        """Features of a schedule computed elsewhere (a record another tuner featurized)."""
        self._feature_cache[key] = row

    def features(self, candidates: list[Candidate]) -> np.ndarray:
        """The cost model's features of `candidates`, from the cache or their nests (lowered
        from their steps only for a candidate that carries no nest)."""
        return np.stack([self._row(c.key, partial(self._nest, c)) for c in candidates])

    def _nest(self, c: Candidate) -> LoopNest:
        return c.nest if c.nest is not None else apply_steps(self.dag, c.steps, check=False)

    def _row(self, key: str, nest: Callable[[], LoopNest] | None = None,
             row: np.ndarray | None = None) -> np.ndarray:
        """The feature row of schedule `key`: the measured one, else the cached one, else
        `row` or the features of `nest()`; cached last (least recently used first)."""
        measured = self._measured_rows.get(key)
        if measured is not None:
            return measured
        cached = self._feature_cache.pop(key, None)
        if cached is not None:
            row = cached
        elif row is None:
            row = self.featurize(nest(), self.target)
        if len(self._feature_cache) >= FEATURE_CACHE_SIZE:
            del self._feature_cache[next(iter(self._feature_cache))]  # the oldest
        self._feature_cache[key] = row
        return row

    def _fit(self) -> None:
        self._unfitted = False
        feats, gflops, groups = [], [], []
        if self.history is not None and len(self.history[0]):
            feats.append(self.history[0])
            gflops.append(self.history[1])
            groups.append(self.history[2])
        if self.measured:
            feats.append(np.stack([self._measured_rows[c.key] for c, _ in self.measured]))
            gflops.append(np.array([g for _, g in self.measured]))
            groups.append(np.array(["this task"] * len(self.measured)))
        if not feats or sum(len(f) for f in feats) < self.config.model_after:
            return
        self.cost_model.fit(np.concatenate(feats), np.concatenate(gflops),
                            np.concatenate(groups))

    def _draw(self, count: int, draw: Callable[[], Genome]) -> list[Genome]:
        """`count` genomes from `draw()`, each chunk sent to be lowered and featurized while
        the next is drawn; returns once all are lowered."""
        genomes: list[Genome] = []
        jobs: list[tuple[list[Genome], Job]] = []
        sent: set[Genome] = set()
        for start in range(0, count, LOWERING_CHUNK):
            drawn = [draw() for _ in range(min(LOWERING_CHUNK, count - start))]
            genomes += drawn
            chunk = [g for g in dict.fromkeys(drawn) if g not in sent
                     and g not in self._lowered and self._known(*g) is None]
            sent.update(chunk)
            jobs.append((chunk, self.lowering.submit(chunk)))
        for chunk, job in jobs:
            self._lowered.update(zip(chunk, job.result()))
        return genomes

    def candidate(self, sketch: Sketch, ann: Annotation) -> Candidate:
        lowered = self._lowered.get((sketch, ann))
        if lowered is None or lowered.steps is None or self._known(sketch, ann) is not None:
            return super().candidate(sketch, ann)
        c = Candidate(sketch, ann, lowered.steps, lowered.key,
                      nest=lowered.nest if lowered.valid else None)
        self._proposed[(sketch, ann)] = c
        return c

    def _key(self, genome: Genome) -> str:
        known = self._known(*genome)
        return known.key if known is not None else self._lowered[genome].key

    def _genome_row(self, genome: Genome) -> np.ndarray:
        known = self._known(*genome)
        if known is not None:
            return self._row(known.key, partial(self._nest, known))
        lowered = self._lowered[genome]
        return self._row(lowered.key, row=lowered.features)

    def _scores(self, genomes: list[Genome]) -> np.ndarray:
        return self.cost_model.predict(np.stack([self._genome_row(g) for g in genomes]))

    def observe(self, candidates, results) -> None:
        flops = self.dag.flops
        # nests are dropped: kept for every trial, they made a long run grow without end
        rows = list(self.features(candidates)) if candidates else []
        self._measured_rows.update((c.key, row) for c, row in zip(candidates, rows))
        kept = [replace(c, nest=None) for c in candidates]
        self._kept.update(((c.sketch, c.annotation), c) for c in kept)
        self.measured += [(c, r.gflops(flops)) for c, r in zip(kept, results)]
        self._unfitted = self._unfitted or bool(candidates)

    def _initial_population(self) -> list[Genome]:
        cfg = self.config
        best = sorted((x for x in self.measured if x[1] > 0), key=lambda x: -x[1])
        from_measured = [c for c, _ in best[:int(cfg.population * cfg.measured_share)]]
        population = [(c.sketch, c.annotation) for c in from_measured + self.seeds]
        return population + self._draw(cfg.population - len(population), self.random_genome)

    def _offspring(self, parents: list[Genome], cdf: np.ndarray,
                   by_sketch: dict[Sketch, list[Annotation]]) -> Genome:
        """A child of `parents` drawn by `cdf` (their cumulative weights), mutated or crossed
        with a parent of its sketch. The parent is `rng.choice(len(parents), p=weights)`'s
        (the same uniform draw, searched in the same cumulative sum), without its checks of
        the weights on every call."""
        cfg, rng = self.config, self.rng
        sketch, ann = parents[int(cdf.searchsorted(rng.random(), side="right"))]
        if rng.random() < cfg.mutation_probability:
            return sketch, mutate(rng, self.dag, sketch, ann, self.target)
        same = by_sketch[sketch]
        other = same[int(rng.integers(len(same)))]
        return sketch, crossover(rng, self.dag, sketch, ann, other, self.target.machine)

    def propose(self, n: int, measured: set[str]) -> list[Candidate]:
        try:
            return super().propose(n, measured)
        finally:
            self._lowered.clear()

    def _propose(self, n: int, measured: set[str]) -> list[Candidate]:
        cfg = self.config
        if self._unfitted:
            self._fit()
        population = self._initial_population()
        for _ in range(cfg.generations):
            scores = self._scores(population)
            weights = np.maximum(scores - scores.min(), 1e-9)
            cdf = (weights / weights.sum()).cumsum()
            cdf /= cdf[-1]
            by_sketch: dict[Sketch, list[Annotation]] = {}
            for sketch, ann in population:
                by_sketch.setdefault(sketch, []).append(ann)
            population = self._draw(cfg.population,
                                    partial(self._offspring, population, cdf, by_sketch))
        scores = self._scores(population)
        order = np.argsort(-scores, kind="stable")
        n_random = max(0, int(round(n * cfg.epsilon)))
        out, seen = [], set(measured)
        # the expert tiles are measured first, whatever an untrained cost model says of them:
        # they anchor the search near what works and teach the cost model what fast looks like
        for c in self.seeds:
            if len(out) < n // 2 and c.key not in seen:
                seen.add(c.key)
                out.append(c)
        for i in order:
            genome = population[int(i)]
            if len(out) >= n - n_random:
                break
            key = self._key(genome)
            if key not in seen:
                seen.add(key)
                out.append(replace(self.candidate(*genome), predicted=float(scores[i])))
        out += RandomSearch._propose(self, n - len(out), seen)
        return out


class OptunaSearch:
    """TPE over the annotation parameters; one Optuna trial per candidate. A candidate the
    tuning loop proposed but did not measure (another process claimed it, or its cluster
    answer was dropped: tuner/search/tune.py) is told as failed at the next proposal, so no
    trial stays running for ever."""
    name = "optuna"

    def __init__(self, dag: ComputeDAG, target: Target, rng: np.random.Generator):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.dag, self.target = dag, target
        # the generic sketches only: its numbers (tile per level) are not the AMX sketch's
        self.sketches = generate_sketches(dag)
        self.study = optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=int(rng.integers(2**31))))
        self.pending: dict[str, object] = {}
        self.choices = {a: self._tile_choices(a) for a in split_axes(dag)}
        self.vector_axes = [None] + [a.name for a in dag.spatial_axes if a.extent > 1]

    def _tile_choices(self, axis: str) -> list[str]:
        """Exact factorizations (as text: Optuna's categoricals want plain values)."""
        from tuner.search.sketch import REDUCE_LEVELS, SPATIAL_LEVELS

        extent = self.dag.axis(axis).extent
        levels = (REDUCE_LEVELS if self.dag.axis(axis).reduce else SPATIAL_LEVELS) - 1
        results: list[tuple[int, ...]] = []

        def go(left: int, prefix: tuple[int, ...]) -> None:
            if len(results) > 400:
                return
            if len(prefix) == levels:
                results.append(prefix)
                return
            for d in divisors(left):
                go(left // d, prefix + (d,))

        go(extent, ())
        return [",".join(map(str, r)) for r in results]

    def propose(self, n: int, measured: set[str]) -> list[Candidate]:
        import optuna

        # the loop observes what it measured before it asks again: what is pending was not
        for trial in self.pending.values():
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        self.pending.clear()
        out, seen = [], set(measured)
        attempts = 0
        while len(out) < n and attempts < 50 * n:
            attempts += 1
            trial = self.study.ask()
            sketch = self.sketches[trial.suggest_int("sketch", 0, len(self.sketches) - 1)]
            tiles = tuple((a, tuple(int(x) for x in trial.suggest_categorical(
                f"tile_{a}", self.choices[a]).split(","))) for a in split_axes(self.dag))
            vector_axis = trial.suggest_categorical("vector_axis", self.vector_axes)
            unroll = trial.suggest_categorical("unroll_max", list(UNROLL_CHOICES))
            depth = trial.suggest_int("parallel_depth", 0, len(outer_loops(self.dag)))
            outer_axis = trial.suggest_categorical("outer_axis", self.vector_axes)
            ann = Annotation(tiles, vector_axis, unroll, depth, outer_axis)
            if not fits(self.dag, sketch, ann, self.target.machine):
                self.study.tell(trial, 0.0)
                continue
            c = make_candidate(self.dag, self.target, sketch, ann)
            if c.key in seen:
                self.study.tell(trial, 0.0)
                continue
            seen.add(c.key)
            self.pending[c.key] = trial
            out.append(c)
        return out

    def observe(self, candidates, results) -> None:
        for c, r in zip(candidates, results):
            trial = self.pending.pop(c.key, None)
            if trial is not None:
                self.study.tell(trial, r.gflops(self.dag.flops))
