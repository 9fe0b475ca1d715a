"""Tuning a whole model: the task scheduler's rounds, each run by the task's own tuner.

    tune_model(uses, target, store, config, make_tuner, on_progress) -> ModelTuneResult

Each task gets one `TaskTuner` (tuner/search/tune.py) for the whole run, made at its first
round by `make_tuner(task)`, and each round the task scheduler (task_scheduler.py) gives it is
one `run` of that tuner with the round's trials as its budget: its strategy, feature cache and
cost model carry over from round to round. Every measurement goes to the one records store, a
task resumes from what the store holds (and never measures a stored schedule again), and the
first round of a task also measures its default schedule. A second `tune model` run therefore
continues: the trials and the best latency each task already has in the store are the task
scheduler's starting history.

`make_tuner` is passed in, bound by the CLI to the store, the measurer, the cost model and one
`WarmStart` shared by the tasks, so this module imports neither records/ nor costmodel/.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tuner.network.task_scheduler import (NO_LATENCY_S, Measured, TaskSchedulerConfig,
                                          TaskSpec, allocate_trials)
from tuner.network.tasks import TaskUse
from tuner.ir.lowered import schedule_applies
from tuner.ir.target import Target
from tuner.ir.task import Task
from tuner.search.tune import Progress, TaskTuner, TuneConfig


@dataclass(frozen=True, slots=True)
class ModelProgress:
    trials_done: int              # in this run, all tasks
    trials_total: int
    latency_s: float | None       # sum of occurrences x best latency; None until all measured
    task: Task                    # the task being tuned


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    use: TaskUse
    trials_before: int            # stored before this run
    trials_run: int               # in this run
    best_s: float | None          # None: no valid schedule

    @property
    def best_gflops(self) -> float | None:
        return None if self.best_s is None else self.use.flops / self.best_s / 1e9


@dataclass(frozen=True, slots=True)
class ModelTuneResult:
    tasks: tuple[TaskOutcome, ...]
    trials_run: int
    latency_s: float | None       # the model's estimated latency over its tasks
    elapsed_s: float


def similarity_group(task: Task) -> tuple:
    """Tasks expected to reach similar FLOP rates (Ansor's similarity groups): the same
    operator, epilogue aside, and for convolutions the same window, stride, dilation and
    kind of grouping (dense, depthwise or grouped); an int8 task only with int8 ones."""
    a = task.attr_dict
    if task.op != "conv2d":
        return (task.op, task.dtype)
    groups = a["groups"]
    kind = "dense" if groups == 1 else "depthwise" if groups == task.shape[1] else "grouped"
    return ("conv2d", task.shape[5], task.shape[6], a["stride"], a["dilation"], kind,
            task.dtype)


def _latency_s(use: TaskUse, gflops: float) -> float:
    return use.flops / (gflops * 1e9) if gflops > 0 else NO_LATENCY_S


def model_latency_s(uses: Sequence[TaskUse], best_s: Sequence[float]) -> float | None:
    if any(b >= NO_LATENCY_S for b in best_s):
        return None
    return sum(u.occurrences * b for u, b in zip(uses, best_s))


def tune_model(uses: Sequence[TaskUse], target: Target, store, config: TuneConfig,
               make_tuner: Callable[[Task], TaskTuner],
               on_progress: Callable[[ModelProgress], None] | None = None,
               scheduler: TaskSchedulerConfig | None = None) -> ModelTuneResult:
    """Spends `config.trials` trials over the model's tasks as the task scheduler allocates
    them, `config.batch_size` per round, each task's rounds run by one tuner."""
    start = time.perf_counter()
    scheduler = scheduler or TaskSchedulerConfig(config.trials, config.batch_size)
    before, best = [], []
    for use in uses:
        record = store.best(use.task, target, schedule_applies)
        before.append(store.count(use.task, target))
        best.append(_latency_s(use, record.gflops) if record else NO_LATENCY_S)
    specs = [TaskSpec(u.occurrences, u.flops, similarity_group(u.task), n, b)
             for u, n, b in zip(uses, before, best)]
    tuners: dict[int, TaskTuner] = {}
    done = 0

    def measure(index: int, n_trials: int) -> Measured:
        nonlocal done
        use, base = uses[index], done

        def progress(p: Progress) -> None:
            if on_progress is not None:
                current = best.copy()
                current[index] = min(current[index], _latency_s(use, p.best_gflops))
                on_progress(ModelProgress(base + p.trials_done, scheduler.trials,
                                          model_latency_s(uses, current), use.task))

        if index not in tuners:
            tuners[index] = make_tuner(use.task)
        result = tuners[index].run(n_trials, progress)
        done += result.trials_run
        best[index] = min(best[index], _latency_s(use, result.best_gflops))
        return Measured(result.trials_run, best[index])

    outcome = allocate_trials(specs, measure, scheduler)
    tasks = tuple(TaskOutcome(u, n, s.trials, None if b >= NO_LATENCY_S else b)
                  for u, n, s, b in zip(uses, before, outcome.tasks, best))
    return ModelTuneResult(tasks, outcome.trials, model_latency_s(uses, best),
                           time.perf_counter() - start)
