"""The task scheduler on fake measurements: where a fixed budget goes, that it is never
exceeded, resumption, and determinism."""

from __future__ import annotations

import pytest

from tuner.errors import TunerError
from tuner.network.task_scheduler import (NO_LATENCY_S, Measured, TaskSchedulerConfig,
                                          TaskSpec, allocate_trials, choose_task, gradient,
                                          initial_states, objective_s)


class FakeTuning:
    """Each task's best latency after t trials: `floor + gain / (1 + t / speed)` — falls fast
    while `speed` is large relative to t, then flattens at `floor`; `capacity` trials exhaust a
    task's space (a round then runs what is left, then nothing)."""

    def __init__(self, curves, capacity=None):
        self.curves = curves
        self.capacity = capacity or [10 ** 9] * len(curves)
        self.trials = [0] * len(curves)
        self.calls = []

    def latency(self, index):
        floor, gain, speed = self.curves[index]
        return floor + gain / (1 + self.trials[index] / speed)

    def __call__(self, index, n):
        run = min(n, self.capacity[index] - self.trials[index])
        self.trials[index] += run
        self.calls.append((index, run))
        return Measured(run, self.latency(index) if self.trials[index] else NO_LATENCY_S)


def _specs(weights, flops=1e9, groups=None):
    return [TaskSpec(w, flops, None if groups is None else groups[i])
            for i, w in enumerate(weights)]


def test_budget_goes_where_latency_still_falls():
    """Task 0 keeps improving for hundreds of trials; task 1 is flat after its warm-up (its
    layer has stopped improving): most of the budget goes to task 0."""
    fake = FakeTuning([(1e-3, 9e-3, 200.0), (1e-3, 9e-3, 0.01)])
    result = allocate_trials(_specs([1, 1]), fake, TaskSchedulerConfig(trials=160, batch_size=8))
    assert result.trials == sum(fake.trials) == 160
    assert fake.trials[0] >= 3 * fake.trials[1]
    assert [t.trials for t in result.tasks] == fake.trials


def test_budget_goes_to_tasks_with_many_occurrences():
    """Two identical curves; the task that runs 10 times in the model gets more trials."""
    fake = FakeTuning([(1e-3, 9e-3, 50.0), (1e-3, 9e-3, 50.0)])
    allocate_trials(_specs([1, 10]), fake, TaskSchedulerConfig(trials=160, batch_size=8))
    assert fake.trials[1] > 2 * fake.trials[0] > 0


def test_warm_up_gives_every_task_one_batch_first_and_never_exceeds_the_budget():
    fake = FakeTuning([(1e-3, 5e-3, 30.0)] * 5)
    result = allocate_trials(_specs([1, 2, 3, 4, 5]), fake,
                             TaskSchedulerConfig(trials=23, batch_size=4))
    assert result.rounds[:5] == tuple((i, 4) for i in range(5))
    assert result.trials == sum(n for _, n in fake.calls) == 23
    assert fake.calls[-1][1] == 3  # the last round takes only what is left


def test_a_tight_budget_shrinks_the_warm_up_batch_and_a_too_small_one_is_refused():
    fake = FakeTuning([(1e-3, 5e-3, 30.0)] * 3)
    result = allocate_trials(_specs([1, 1, 1]), fake, TaskSchedulerConfig(trials=7, batch_size=16))
    assert result.rounds[:3] == ((0, 2), (1, 2), (2, 2)) and result.trials == 7
    with pytest.raises(TunerError, match="a budget of 2 trials is less than the 3 tasks"):
        allocate_trials(_specs([1, 1, 1]), FakeTuning([(1e-3, 5e-3, 30.0)] * 3),
                 TaskSchedulerConfig(trials=2))


def test_exhausted_tasks_are_dead_and_the_run_ends_early():
    fake = FakeTuning([(1e-3, 5e-3, 30.0), (1e-3, 5e-3, 30.0)], capacity=[10, 6])
    result = allocate_trials(_specs([1, 1]), fake, TaskSchedulerConfig(trials=100, batch_size=4))
    assert fake.trials == [10, 6] and result.trials == 16
    assert all(t.dead for t in result.tasks)


def test_resumed_tasks_skip_the_warm_up_and_count_their_history():
    """A task tuned before (stored trials) is not warmed up again; its stored best counts."""
    specs = [TaskSpec(1, 1e9, trials_done=64, best_s=2e-3), TaskSpec(1, 1e9)]
    fake = FakeTuning([(1e-3, 9e-3, 50.0), (1e-3, 9e-3, 50.0)])
    fake.trials[0] = 64
    result = allocate_trials(specs, fake, TaskSchedulerConfig(trials=8, batch_size=8))
    assert result.rounds == ((1, 8),)
    assert initial_states(specs, 8)[0].rounds == 8
    assert result.tasks[0].best_s == 2e-3


def test_the_gradient_follows_ansors_formula():
    """w * (alpha * backward + (1 - alpha) * forward), by hand for one state."""
    config = TaskSchedulerConfig(trials=1, alpha=0.2, beta=2.0, backward_window=3)
    states = initial_states(_specs([3]), 4)
    from dataclasses import replace
    history = (10.0, 8.0, 7.0, 6.5, 6.0)
    state = replace(states[0], rounds=5, best_s=6.0, history=history)
    backward = (6.0 - 8.0) / 3
    forward = (6.0 - 6.0 / 5) - 6.0
    assert gradient(0, [state], config) == pytest.approx(3 * (0.2 * backward + 0.8 * forward))
    assert gradient(0, [replace(state, dead=True)], config) == 0.0
    assert objective_s([state]) == 18.0


def test_similar_tasks_bound_the_forward_estimate():
    """In a group, a slow task is expected to reach 1/beta of the fastest member's FLOP rate:
    a task far behind a similar one is chosen before an equally weighted ungrouped one."""
    config = TaskSchedulerConfig(trials=1)
    specs = _specs([1, 1, 1], groups=["conv", "conv", None])
    states = initial_states(specs, 4)
    from dataclasses import replace
    states = [replace(s, rounds=10, best_s=b, history=(b,))
              for s, b in zip(states, (1e-3, 1e-2, 1e-2))]
    assert gradient(1, states, config) < gradient(2, states, config)
    assert choose_task(states, config) == 1


def test_same_measurements_same_schedule():
    runs = []
    for _ in range(2):
        fake = FakeTuning([(1e-3, 4e-3, 20.0), (2e-3, 1e-3, 5.0), (1e-4, 3e-3, 80.0)])
        runs.append(allocate_trials(_specs([2, 1, 1], groups=["a", "a", None]), fake,
                             TaskSchedulerConfig(trials=120, batch_size=8)).rounds)
    assert runs[0] == runs[1]
