"""Differential tests: every generated kernel against the operator's numpy reference."""

import numpy as np
import pytest

from conftest import assert_matches_reference
from schedule_gen import random_schedule, random_task
from tuner.jit import Kernel
from tuner.schedule import apply_steps, schedule_from_json, schedule_to_json

CASES = 200


@pytest.mark.parametrize("seed", range(CASES))
def test_random_schedule_matches_reference(seed, target1, target2):
    rng = np.random.default_rng(seed)
    task = random_task(rng, ["conv2d", "matmul", "batch_matmul"][seed % 3])
    steps = random_schedule(rng, task)
    dag = task.dag()
    assert schedule_from_json(schedule_to_json(steps)) == steps
    target = target2 if seed % 4 == 0 else target1
    kernel = Kernel(apply_steps(dag, steps), target)
    inputs = dag.random_inputs(rng)
    out = kernel(*inputs)
    assert_matches_reference(dag, out, inputs)
    # a second call on the same output buffer must not depend on its old contents
    again = kernel.new_output()
    again.fill(np.nan)
    kernel.run(again, *kernel.pack(*inputs))
    np.testing.assert_array_equal(again, out)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape, stride, pad, dilation, groups", [
    ((1, 32, 17, 23, 32, 3, 3), 1, 1, 1, 32),   # depthwise
    ((1, 8, 15, 16, 16, 5, 5), 2, 2, 1, 1),     # stride 2: more padding before than after
    ((1, 6, 9, 11, 8, 3, 3), 1, 2, 2, 1),       # dilated
    ((2, 3, 7, 5, 4, 3, 3), 1, 1, 1, 1),        # batch 2: padded rows of both images
])
def test_root_padded_copies_match_reference(shape, stride, pad, dilation, groups, threads):
    """The padded copy made per call (shared among the threads when there are several)
    holds the input where it lies and zeros everywhere else, for every padded dimension."""
    from tuner.default import default_schedule
    from tuner.schedule import Pad
    from tuner.target import host_target
    from tuner.task import Task
    dag = Task.create("conv2d", shape, stride=stride, pad=pad, dilation=dilation,
                      groups=groups).dag()
    target = host_target(threads)
    steps = default_schedule(dag, target)
    assert Pad(dag.lhs.name, "root") in steps
    kernel = Kernel(apply_steps(dag, steps), target)
    for seed in range(2):  # a second call reuses the heap the first one freed
        inputs = dag.random_inputs(np.random.default_rng(seed))
        assert_matches_reference(dag, kernel(*inputs), inputs)
