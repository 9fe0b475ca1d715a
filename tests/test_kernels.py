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
