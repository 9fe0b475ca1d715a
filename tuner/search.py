"""Search strategies: which candidates to measure next.

Every strategy implements the same two-method protocol, so the tuning loop (tuner/tune.py)
drives them alike and benchmarks compare them on equal terms:

    propose(n, measured) -> [Candidate]   n new candidates whose schedules are not in `measured`
    observe(candidates, results)          learn from what was measured

- `EvolutionarySearch`: Ansor's (TVM auto_scheduler). A population of random annotations of
  every sketch plus mutations of the best measured candidates evolves for a few generations
  under the cost model's predictions (mutation 0.85, crossover otherwise); the best predicted
  are measured, with an ε share of random ones. The model is refitted on every batch. Before
  it has measurements its predictions are the analytic estimate from the machine model (the
  model's prior, costmodel/estimate.py), not chance, so the first batch is already a guess
  about this CPU. Unless `SearchConfig.use_seed` is off, the default schedule's register tile,
  expressed in every sketch that can hold it, also seeds the population and is measured
  first; the search does not need it (`tune --no-seed`, bench/report.py --no-seed).
- `RandomSearch`: uniform over sketches, random annotations: the baseline.
- `OptunaSearch`: Optuna's TPE over the same parameters (sketch, tile sizes per axis and level,
  vector axis, unroll limit, parallel depth): the black-box comparator.

Same seed, same candidates: all randomness flows from one numpy Generator (and Optuna's sampler
seeded from it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

import numpy as np

from tuner.annotate import (UNROLL_CHOICES, Annotation, divisors, outer_loops, crossover,
                            expert_seeds, fits, lower, mutate, sample, split_axes)
from tuner.dag import ComputeDAG
from tuner.result import MeasureResult
from tuner.errors import ScheduleError
from tuner.schedule import LoopNest, Step, apply_steps, check_nest, schedule_to_json
from tuner.sketch import Sketch, generate_sketches
from tuner.target import Target


@dataclass(frozen=True, slots=True)
class SearchConfig:
    population: int = 256          # Ansor: 2048 x 4 generations, in C++. Lowering and features
    generations: int = 3           # cost ~1-3 ms per candidate in Python: this is ~2 s a round
    mutation_probability: float = 0.85
    measured_share: float = 0.2    # of the initial population, from the best measured
    epsilon: float = 0.05          # share of each batch picked at random
    model_after: int = 16          # measurements before the model is fitted (its prior before)
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
    """`predict` ranks candidates before `fit` too, from a prior (XGBModel: the analytic
    estimate among the features); `fitted` says whether it has learnt from measurements."""
    fitted: bool

    def fit(self, features: np.ndarray, gflops: np.ndarray, groups: np.ndarray) -> None: ...

    def predict(self, features: np.ndarray) -> np.ndarray: ...


Featurizer = Callable[[LoopNest, Target], np.ndarray]


class Strategy(Protocol):
    name: str

    def propose(self, n: int, measured: set[str]) -> list[Candidate]: ...

    def observe(self, candidates: list[Candidate], results: list[MeasureResult]) -> None: ...


class RandomSearch:
    name = "random"

    def __init__(self, dag: ComputeDAG, target: Target, rng: np.random.Generator):
        self.dag, self.target, self.rng = dag, target, rng
        self.sketches = generate_sketches(dag)

    def random_candidate(self) -> Candidate:
        sketch = self.sketches[int(self.rng.integers(len(self.sketches)))]
        return make_candidate(self.dag, self.target, sketch,
                              sample(self.rng, self.dag, sketch, self.target))

    def propose(self, n: int, measured: set[str]) -> list[Candidate]:
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


class EvolutionarySearch(RandomSearch):
    name = "evolutionary"

    def __init__(self, dag: ComputeDAG, target: Target, rng: np.random.Generator,
                 model: CostModel, featurize: Featurizer, config: SearchConfig = SearchConfig(),
                 history: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None):
        super().__init__(dag, target, rng)
        self.model, self.featurize, self.config = model, featurize, config
        # (candidate, gflops) of this task, without their loop nests, and their features
        self.measured: list[tuple[Candidate, float]] = []
        self._measured_features: list[np.ndarray] = []
        # measurements of other tasks on this target: the model starts from them
        self.history = history
        self._feature_cache: dict[str, np.ndarray] = {}
        seeds = expert_seeds(dag, self.sketches, target) if config.use_seed else []
        self.seeds = [make_candidate(dag, target, sketch, ann) for sketch, ann in seeds]
        self._fit()

    def _features(self, candidates: list[Candidate]) -> np.ndarray:
        rows = []
        for c in candidates:
            row = self._feature_cache.pop(c.key, None)
            if row is None:
                nest = c.nest if c.nest is not None else apply_steps(self.dag, c.steps)
                row = self.featurize(nest, self.target)
                if len(self._feature_cache) >= FEATURE_CACHE_SIZE:
                    del self._feature_cache[next(iter(self._feature_cache))]  # the oldest
            self._feature_cache[c.key] = row  # (re)inserted last: least recently used first
            rows.append(row)
        return np.stack(rows)

    def _fit(self) -> None:
        feats, gflops, groups = [], [], []
        if self.history is not None and len(self.history[0]):
            feats.append(self.history[0])
            gflops.append(self.history[1])
            groups.append(self.history[2])
        if self.measured:
            feats.append(np.stack(self._measured_features))
            gflops.append(np.array([g for _, g in self.measured]))
            groups.append(np.array(["this task"] * len(self.measured)))
        if not feats or sum(len(f) for f in feats) < self.config.model_after:
            return
        self.model.fit(np.concatenate(feats), np.concatenate(gflops), np.concatenate(groups))

    def _scores(self, candidates: list[Candidate]) -> np.ndarray:
        return self.model.predict(self._features(candidates))

    def observe(self, candidates, results) -> None:
        flops = self.dag.flops
        # a nest is tens of kB: kept for every trial, it made a long run grow without end
        self._measured_features += list(self._features(candidates)) if candidates else []
        self.measured += [(replace(c, nest=None), r.gflops(flops))
                          for c, r in zip(candidates, results)]
        self._fit()

    def _initial_population(self) -> list[Candidate]:
        cfg = self.config
        best = sorted((x for x in self.measured if x[1] > 0), key=lambda x: -x[1])
        from_measured = [c for c, _ in best[:int(cfg.population * cfg.measured_share)]]
        population = from_measured + self.seeds
        while len(population) < cfg.population:
            population.append(self.random_candidate())
        return population

    def _offspring(self, parents: list[Candidate], weights: np.ndarray) -> Candidate:
        cfg, rng = self.config, self.rng
        a = parents[int(rng.choice(len(parents), p=weights))]
        if rng.random() < cfg.mutation_probability:
            ann = mutate(rng, self.dag, a.sketch, a.annotation, self.target)
        else:
            same = [p for p in parents if p.sketch == a.sketch]
            b = same[int(rng.integers(len(same)))]
            ann = crossover(rng, self.dag, a.sketch, a.annotation, b.annotation,
                            self.target.machine)
        return make_candidate(self.dag, self.target, a.sketch, ann)

    def propose(self, n: int, measured: set[str]) -> list[Candidate]:
        cfg = self.config
        population = self._initial_population()
        for _ in range(cfg.generations):
            scores = self._scores(population)
            weights = np.maximum(scores - scores.min(), 1e-9)
            weights = weights / weights.sum()
            population = [self._offspring(population, weights)
                          for _ in range(cfg.population)]
        scores = self._scores(population)
        order = np.argsort(-scores, kind="stable")
        n_random = max(0, int(round(n * cfg.epsilon)))
        out, seen = [], set(measured)
        # the expert tiles are measured first, whatever an untrained model says of them: they
        # anchor the search near what works and teach the model what fast looks like
        for c in self.seeds:
            if len(out) < n // 2 and c.key not in seen:
                seen.add(c.key)
                out.append(c)
        for i in order:
            c = population[int(i)]
            if len(out) >= n - n_random:
                break
            if c.key not in seen:
                seen.add(c.key)
                out.append(replace(c, predicted=float(scores[i])))
        out += RandomSearch.propose(self, n - len(out), seen)
        return out


class OptunaSearch:
    """TPE over the annotation parameters; one Optuna trial per candidate."""
    name = "optuna"

    def __init__(self, dag: ComputeDAG, target: Target, rng: np.random.Generator):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.dag, self.target = dag, target
        self.sketches = generate_sketches(dag)
        self.study = optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=int(rng.integers(2**31))))
        self.pending: dict[str, object] = {}
        self.choices = {a: self._tile_choices(a) for a in split_axes(dag)}
        self.vector_axes = [None] + [a.name for a in dag.spatial_axes if a.extent > 1]

    def _tile_choices(self, axis: str) -> list[str]:
        """Exact factorizations (as text: Optuna's categoricals want plain values)."""
        from tuner.sketch import REDUCE_LEVELS, SPATIAL_LEVELS

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
