"""While a model runs (`GraphRunner`: a compiled model or a package), numpy's BLAS runs on the
calling thread, and afterwards it has the threads it had before (tuner/network/runtime.py says
why: a spinning BLAS pool takes cores from the kernels' threads)."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from tuner.network import runtime
from tuner.network.graph import Graph, Node
from tuner.network.runtime import GraphRunner


def blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


@pytest.fixture
def two_blas_threads():
    """numpy's BLAS at two threads for the test (skipped where it cannot have two)."""
    if not blas_threads():
        pytest.skip("threadpoolctl finds no BLAS library in this process")
    with threadpool_limits(limits=2, user_api="blas"):
        if min(blas_threads()) < 2:
            pytest.skip("numpy's BLAS cannot run two threads here")
        yield


class Probe(GraphRunner):
    """A matrix product of the two inputs (numpy's BLAS) beside a fused node whose
    implementation notes the BLAS thread counts it runs with, as a kernel would run."""

    def __init__(self, fail: bool = False):
        self.fail = fail
        nodes = (Node("MatMul", "product", ("a", "b"), ("ab",)),
                 Node("Kernel", "kernel", ("ab",), ("y",)))
        self.graph = Graph({"a": (4, 8), "b": (8, 4)}, ("y",), nodes, {}, {}, 17)
        self.seen: list[list[int]] = []
        self._impls = {"Kernel": self._kernel}

    def _kernel(self, node, args):
        self.seen.append(blas_threads())
        if self.fail:
            raise RuntimeError("the kernel failed")
        return [args[0] + 1]


def _feeds():
    rng = np.random.default_rng(0)
    return {"a": rng.standard_normal((4, 8)).astype(np.float32),
            "b": rng.standard_normal((8, 4)).astype(np.float32)}


def test_blas_runs_on_the_calling_thread_during_a_call_only(two_blas_threads):
    probe, feeds = Probe(), _feeds()
    out = probe(feeds)
    np.testing.assert_allclose(out[0], feeds["a"] @ feeds["b"] + 1, rtol=1e-5)
    assert probe.seen == [[1] * len(blas_threads())]
    assert min(blas_threads()) == 2  # restored
    with pytest.raises(RuntimeError, match="kernel failed"):  # restored after an error too
        Probe(fail=True)(feeds)
    assert min(blas_threads()) == 2


def test_without_threadpoolctl_a_model_still_runs_and_says_so(monkeypatch):
    runtime._blas_libraries.cache_clear()
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import fails
    try:
        probe, feeds = Probe(), _feeds()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            probe(feeds)
            probe(feeds)
        assert len(caught) == 1 and issubclass(caught[0].category, RuntimeWarning)
        assert "threadpoolctl" in str(caught[0].message)
        assert caught[0].filename == __file__  # points at the model's caller
        np.testing.assert_allclose(probe(feeds)[0], feeds["a"] @ feeds["b"] + 1, rtol=1e-5)
    finally:
        runtime._blas_libraries.cache_clear()
