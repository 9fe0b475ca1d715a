"""The task scheduler: one trial budget for a whole model, spent where it shortens the model.

Tuning every layer of a model with the same number of trials wastes most of them: a layer that
is 1% of the model's time, or one whose search has stopped improving, gains the model nothing.
Ansor's task scheduler (Zheng et al., OSDI 2020, §6; TVM's
`python/tvm/auto_scheduler/task_scheduler.py`, strategy "gradient") minimises the model's
estimated latency f = sum_i w_i * g_i, where g_i is task i's best latency so far and w_i its
occurrences. After a warm-up round that gives every task one batch, each round gives a batch to
the task whose next batch is expected to lower f the most, the most negative of

    df/dt_i = w_i * (alpha * backward_i + (1 - alpha) * forward_i)

    backward_i = (g_i(r) - g_i(r - window)) / window      how fast it fell over its last rounds
    forward_i  = min(g_i - g_i / r_i,                     optimistic: the next round gains as
                     beta * flops_i / best_rate_in_group) much as the average round did, or the
                 - g_i                                    task reaches 1/beta of the FLOP rate
                                                          of the fastest similar task

with r_i the rounds task i has had. A task whose measurement ran no trial (its space is
exhausted, or other processes measure it) is dead: it gets nothing more. A similar task that,
after more rounds than the others of its group, still runs below 1/beta of the group's best
rate leaves the group (as TVM's `_adjust_similarity_group`).

The scheduler is pure: it calls `measure(task_index, n_trials) -> Measured(trials, best_s)`
and nothing else, so it is tested on fake measurements; `tuner/network/tuning.py` gives it the
real tuning loop. Ties go to the lowest index (the task table lists the largest share first),
so an allocation is deterministic given its measurements.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace

from tuner.errors import TunerError

# The latency of a task with no valid schedule yet (TVM uses 1e10 too): large enough that the
# scheduler returns to it first, finite so that gradients stay numbers.
NO_LATENCY_S = 1e10


@dataclass(frozen=True, slots=True)
class TaskSchedulerConfig:
    trials: int                # new trials in this run, for all tasks together
    batch_size: int = 16       # trials per round (fewer in the warm-up if the budget is tight)
    alpha: float = 0.2         # weight of the backward (observed) gradient vs the forward one
    beta: float = 2.0          # a task may reach 1/beta of its group's best FLOP rate
    backward_window: int = 3   # rounds over which the backward gradient is taken


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """What the scheduler knows of a task before this run."""

    weight: int                       # occurrences in the model
    flops: float                      # of one occurrence
    group: Hashable | None = None     # tasks expected to reach similar FLOP rates
    trials_done: int = 0              # measured before this run (resuming)
    best_s: float = NO_LATENCY_S      # best latency measured before this run


@dataclass(frozen=True, slots=True)
class Measured:
    """What one round of tuning a task gave: trials actually run, best latency so far."""

    trials: int
    best_s: float


@dataclass(frozen=True, slots=True)
class TaskState:
    spec: TaskSpec
    rounds: int                  # rounds given so far, counting resumed trials as rounds
    trials: int                  # trials run in this run
    best_s: float
    history: tuple[float, ...]   # best latency after each round (one entry when resumed)
    group: Hashable | None
    dead: bool = False


@dataclass(frozen=True, slots=True)
class Allocation:
    """The outcome: the final state of every task and the rounds in order (task, trials)."""

    tasks: tuple[TaskState, ...]
    rounds: tuple[tuple[int, int], ...]

    @property
    def trials(self) -> int:
        return sum(t.trials for t in self.tasks)


def objective_s(states: Sequence[TaskState]) -> float:
    """The model's estimated latency: occurrences x best latency, summed over tasks."""
    return sum(s.spec.weight * s.best_s for s in states)


def initial_states(specs: Sequence[TaskSpec], batch_size: int) -> list[TaskState]:
    """Per-task state; trials stored before this run count as rounds of `batch_size`, as
    TVM's `_restore_status` counts them, with their best as the only history entry."""
    states = []
    for spec in specs:
        rounds = max(1, round(spec.trials_done / batch_size)) if spec.trials_done else 0
        history = (spec.best_s,) if spec.trials_done else ()
        states.append(TaskState(spec, rounds, 0, spec.best_s, history, spec.group))
    return states


def gradient(index: int, states: Sequence[TaskState], config: TaskSchedulerConfig) -> float:
    """d(objective)/d(trials of task `index`), estimated as Ansor does (module docstring);
    negative when a round is expected to help, 0 for a dead task."""
    state = states[index]
    if state.dead:
        return 0.0
    window = config.backward_window
    history = state.history
    backward = (history[-1] - history[-1 - window]) / window if len(history) > window else 0.0
    forward_own = state.best_s - state.best_s / max(state.rounds, 1)
    forward_group = float("inf")
    members = [s for s in states if state.group is not None and s.group == state.group]
    if len(members) > 1:
        best_rate = max(s.spec.flops / s.best_s for s in members)
        forward_group = config.beta * state.spec.flops / best_rate
    forward = min(forward_own, forward_group) - state.best_s
    return state.spec.weight * (config.alpha * backward + (1 - config.alpha) * forward)


def choose_task(states: Sequence[TaskState], config: TaskSchedulerConfig) -> int | None:
    """The live task with the most negative gradient (lowest index on ties), None if none."""
    live = [i for i, s in enumerate(states) if not s.dead]
    if not live:
        return None
    return min(live, key=lambda i: (gradient(i, states, config), i))


def _after_round(state: TaskState, got: Measured) -> TaskState:
    best = min(state.best_s, got.best_s)
    return replace(state, rounds=state.rounds + 1, trials=state.trials + got.trials,
                   best_s=best, history=state.history + (best,), dead=got.trials == 0)


def _leave_dissimilar_group(index: int, states: list[TaskState], config: TaskSchedulerConfig):
    """A task tuned for more rounds than the rest of its group (by 5, as TVM) that still runs
    below 1/beta of the group's best rate is not like them: its forward estimate stops
    using theirs."""
    state = states[index]
    members = [s for s in states if state.group is not None and s.group == state.group]
    if len(members) <= 1:
        return
    best_rate = max(s.spec.flops / s.best_s for s in members)
    others = max(s.rounds for j, s in enumerate(states) if s.group == state.group and j != index)
    if state.spec.flops / state.best_s < best_rate / config.beta and state.rounds > 5 + others:
        states[index] = replace(state, group=None)


def allocate_trials(specs: Sequence[TaskSpec], measure: Callable[[int, int], Measured],
                    config: TaskSchedulerConfig) -> Allocation:
    """Spends at most `config.trials` trials over the tasks: a warm-up batch for every task
    without stored trials, then rounds to the task `choose_task` picks, until the budget is
    spent or every task is dead. A budget smaller than the tasks to warm up is refused."""
    if not specs:
        return Allocation((), ())
    cold = sum(1 for s in specs if not s.trials_done)
    if cold > config.trials:
        raise TunerError(f"a budget of {config.trials} trials is less than the {cold} tasks "
                         f"that have no trials yet; each needs at least one (--trials >= "
                         f"{cold})")
    per_round = min(config.batch_size, config.trials // cold) if cold else config.batch_size
    states = initial_states(specs, per_round)
    rounds: list[tuple[int, int]] = []
    spent = 0

    def run(index: int) -> None:
        nonlocal spent
        n = min(per_round, config.trials - spent)
        got = measure(index, n)
        if got.trials > n:
            raise ValueError(f"measure ran {got.trials} trials of task {index}; asked {n}")
        spent += got.trials
        states[index] = _after_round(states[index], got)
        rounds.append((index, got.trials))

    for index, spec in enumerate(specs):
        if not spec.trials_done:
            run(index)
    while spent < config.trials:
        index = choose_task(states, config)
        if index is None:
            break
        run(index)
        _leave_dissimilar_group(index, states, config)
    return Allocation(tuple(states), tuple(rounds))
