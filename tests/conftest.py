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
    """rtol 1e-4 on float32; the absolute floor grows with the reduction length, since
    elements that cancel to ~0 carry the rounding of every term summed into them."""
    ref = dag.reference(*inputs)
    reduction = int(np.prod([a.extent for a in dag.reduce_axes]))
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-6 * max(1.0, reduction) ** 0.5 * 4)
