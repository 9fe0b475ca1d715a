"""Running a `Graph` with numpy: the nodes in order, each value freed after its last reader.

This is the whole of the model runtime apart from the kernels: a tuned model is this same loop
with `impls` mapping the fused task nodes (TunerConv, TunerMatMul) to compiled kernels. Support
is checked for the whole graph before anything runs (`unsupported_ops`), so that `tune model`
refuses a model it could not run before it spends an hour tuning it.

A model runs on the kernels' threads: while `GraphRunner` runs one, numpy's BLAS (the
products of two activations, such as attention's Q.K^T and .V) runs on the calling thread
alone (`blas_on_calling_thread`). OpenBLAS's workers busy-wait some 0.1 s after each call
(2^28 cycles, its THREAD_TIMEOUT) before they sleep: longer than a whole layer, so one of
them holds a core throughout, and the kernels' libgomp threads then share cores with it. A
BERT-base layer (sequence 128) packaged for 2 threads on a 2-core Zen 5, with
OPENBLAS_NUM_THREADS=2: 32 ms, the kernels 19 ms of it (4.3 ms alone) and numpy's attention
products 3.8 ms (0.55 ms single-threaded); with BLAS on one thread 11-12 ms. OMP_WAIT_POLICY=
passive on top changes nothing then (the main thread and the kernels' idle workers are as
many as the threads the package was built for). The limit is set per call and undone after
it (threadpoolctl), so the rest of the process keeps its BLAS threads.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from functools import cache

import numpy as np

from tuner.errors import TunerError
from tuner.network.graph import Graph, Node
from tuner.network.ops import OPS, run_node

# One implementation of a node beyond OPS: (node, input arrays) -> output arrays.
NodeImpl = Callable[[Node, list], list]


def unsupported_ops(graph: Graph, impls: Mapping[str, NodeImpl] | None = None) -> list[Node]:
    """The nodes of `graph` that neither OPS nor `impls` can run, in graph order."""
    known = set(impls or {})
    return [n for n in graph.nodes
            if n.op_type not in known and (n.op_type not in OPS
                                           or n.domain not in ("", "ai.onnx"))]


def check_supported(graph: Graph, impls: Mapping[str, NodeImpl] | None = None) -> None:
    """Raises the one-line error for the first node the runtime cannot run."""
    missing = unsupported_ops(graph, impls)
    if missing:
        node = missing[0]
        domain = f" from domain '{node.domain}'" if node.domain not in ("", "ai.onnx") else ""
        more = f" (and {len(missing) - 1} more nodes)" if len(missing) > 1 else ""
        raise TunerError(f"unsupported ONNX operator '{node.op_type}'{domain} "
                         f"(node '{node.name}'){more}")


def run_graph(graph: Graph, feeds, impls: Mapping[str, NodeImpl] | None = None
              ) -> list[np.ndarray]:
    """The graph's outputs (in `graph.outputs` order) for `feeds`: a dict by input name, or
    the one array of a single-input graph."""
    check_supported(graph, impls)
    values = dict(graph.initializers)
    values.update(_checked_feeds(graph, feeds))
    last_use = {}
    for index, node in enumerate(graph.nodes):
        for name in node.inputs:
            last_use[name] = index
    keep = set(graph.outputs) | set(graph.initializers)
    for index, node in enumerate(graph.nodes):
        args = [values[i] if i else None for i in node.inputs]
        if impls and node.op_type in impls:
            outputs = impls[node.op_type](node, args)
        else:
            outputs = run_node(node, args, graph.opset)
        values.update((name, value) for name, value in zip(node.outputs, outputs) if name)
        for name in node.inputs:
            if last_use.get(name) == index and name not in keep:
                values.pop(name, None)
    return [values[name] for name in graph.outputs]


def _checked_feeds(graph: Graph, feeds) -> dict[str, np.ndarray]:
    if not isinstance(feeds, Mapping):
        if len(graph.inputs) != 1:
            raise TunerError(f"the model has {len(graph.inputs)} inputs "
                             f"({', '.join(graph.inputs)}); pass a dict by name")
        feeds = {next(iter(graph.inputs)): feeds}
    missing = sorted(set(graph.inputs) - set(feeds))
    extra = sorted(set(feeds) - set(graph.inputs))
    if missing or extra:
        raise TunerError(f"the model's inputs are {', '.join(graph.inputs)}; "
                         f"got {', '.join(feeds) or 'none'}")
    checked = {}
    for name, value in feeds.items():
        array = np.asarray(value)
        if array.shape != graph.inputs[name]:
            raise TunerError(f"input '{name}' expects shape "
                             f"{','.join(map(str, graph.inputs[name]))}, got "
                             f"{','.join(map(str, array.shape))}")
        checked[name] = array
    return checked


class GraphRunner:
    """A graph with implementations for its fused nodes: `runner(x)` or
    `runner({name: x})` -> the list of outputs in `outputs` order. What a compiled model
    (tuner/network/compiled.py) and a loaded package (tuner/network/deploy.py) have in common;
    each sets `graph` and `_impls`."""

    graph: Graph
    _impls: dict[str, NodeImpl]

    @property
    def inputs(self) -> dict[str, tuple[int, ...]]:
        return dict(self.graph.inputs)

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.graph.outputs

    def __call__(self, feeds) -> list[np.ndarray]:
        """The outputs for `feeds`: one array for a single-input model, else a dict by input
        name; each input has the shape the model was built for. numpy's BLAS runs on the
        calling thread meanwhile (the module docstring says why)."""
        with blas_on_calling_thread():
            return run_graph(self.graph, feeds, self._impls)


@cache
def _blas_libraries():
    """threadpoolctl's handle on the BLAS libraries loaded in this process (numpy's is loaded
    with numpy), or None without threadpoolctl, said once: then BLAS keeps its threads."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        warnings.warn("threadpoolctl is not installed, so numpy's BLAS keeps its own threads "
                      "while a model runs and they compete with the kernels' threads for the "
                      "cores; pip install threadpoolctl (or set OPENBLAS_NUM_THREADS=1)",
                      RuntimeWarning, stacklevel=4)  # the model's caller
        return None
    return ThreadpoolController().select(user_api="blas")  # 1.3 ms: once


def blas_on_calling_thread():
    """A context in which numpy's BLAS runs on one thread, and as before after it (10 us).
    OpenBLAS's count is process-wide: with models called from several Python threads at once,
    threadpoolctl (3.8) lets the first set it and the others leave it alone until it ends."""
    libraries = _blas_libraries()
    return nullcontext() if libraries is None else libraries.limit(limits=1)
