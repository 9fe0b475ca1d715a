import numpy as np
import pytest

from tuner.target import host_target


@pytest.fixture(scope="session")
def target1():
    return host_target(1)


@pytest.fixture(scope="session")
def target2():
    return host_target(2)


def assert_matches_reference(dag, out, inputs):
    rtol, atol = dag.tolerance()
    np.testing.assert_allclose(out, dag.reference(*inputs), rtol=rtol, atol=atol)


def assert_sampled_schedule_matches_reference(rng, target):
    """A random task, a random sketch of it and an annotation sampled for `target`: the
    kernel it makes computes what numpy does."""
    from schedule_gen import random_task
    from tuner.annotate import sample, to_steps
    from tuner.jit import Kernel
    from tuner.schedule import apply_steps
    from tuner.sketch import generate_sketches

    dag = random_task(rng).dag()
    sketches = generate_sketches(dag)
    sketch = sketches[int(rng.integers(len(sketches)))]
    ann = sample(rng, dag, sketch, target)
    kernel = Kernel(apply_steps(dag, to_steps(dag, sketch, ann, target)), target)
    inputs = dag.random_inputs(rng)
    assert_matches_reference(dag, kernel(*inputs), inputs)
