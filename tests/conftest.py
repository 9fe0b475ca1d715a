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
