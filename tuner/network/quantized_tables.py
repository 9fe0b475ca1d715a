"""Elementwise chains of one quantized tensor as a table of 256 entries.

`quantize_static` (QDQ) quantizes the output of every operator it quantizes, so an activation
function written as several nodes becomes a chain with a DequantizeLinear and a
QuantizeLinear around each of them. BERT's GELU, as exporters write it:

    x (uint8) -> DQ -> Div(sqrt 2) -> Q -> DQ -> Erf -> Q -> DQ -> Add(1) -> Q -> DQ --\\
            \\-> DQ ----------------------------------------------------------------- Mul
                                                                  -> Q -> DQ -> Mul(0.5) -> Q

Every node computes each element from the same element of `x` and constants, so the chain's
output is a function of one byte: it takes at most 256 values. `fuse_quantized_tables`
computes them once, with the numpy runtime's own implementations of the nodes (runtime.py)
on the 256 possible bytes, and makes the chain one TABLE_LOOKUP node of (x, table): the same
bytes as the nodes give, exactly, in one pass of loads. In numpy the BERT-base layer's
chain above took 16 ms of its 28 at one thread on Zen 3 (the Erf alone 11).

A chain is taken where it ends in a QuantizeLinear, its every other node is one of
ELEMENTWISE (Quantize- and DequantizeLinear with one scale and zero point, and the unary and
binary operators of numbers) whose other inputs are constants of one element, it reads one
tensor that is not a constant, through DequantizeLinear nodes only (so its type is 8-bit),
and nothing outside it reads its values. A package serves the node with a generated function
(quantized_codegen.table_lookup_ir); the node exists only in packages (write_package makes it), as
quantized_codegen.py's do.

    void <symbol>(uint8_t *restrict out, const uint8_t *restrict x, const uint8_t *restrict table);

(`int8_t` for an x or an output whose zero point is int8; the table is indexed by the byte.)
"""

from __future__ import annotations

import numpy as np
from tuner.network.graph import Graph, Node, consumers_of, producers_of, rewritten
from tuner.network.quantized import scalar_quantization
from tuner.network.runtime import run_graph

TABLE_LOOKUP = "TunerTableLookup"
# The operators a chain may hold: each computes an element from the same element of its
# non-constant input (and constants of one element).
ELEMENTWISE = frozenset({
    "QuantizeLinear", "DequantizeLinear", "Identity", "Add", "Sub", "Mul", "Div", "Pow",
    "Max", "Min", "Erf", "Tanh", "Sigmoid", "Relu", "LeakyRelu", "Elu", "Selu", "Exp", "Log",
    "Sqrt", "Abs", "Neg", "Reciprocal", "Softplus", "HardSigmoid", "HardSwish", "Clip",
    "Floor", "Ceil", "Round", "Sin", "Cos", "Sign", "Gelu"})
TYPES = {"uint8": np.uint8, "int8": np.int8}


def fuse_quantized_tables(graph: Graph) -> Graph:
    """`graph` with each elementwise chain of one quantized tensor (module docstring) made
    one TABLE_LOOKUP node of that tensor and its table (an initializer)."""
    consumers, producers = consumers_of(graph.nodes), producers_of(graph.nodes)
    initializers = dict(graph.initializers)
    replaced: dict[int, Node] = {}
    absorbed: set[int] = set()
    for node in reversed(graph.nodes):  # the last QuantizeLinear of a chain first
        if node.op_type != "QuantizeLinear" or node.domain not in ("", "ai.onnx") \
                or id(node) in absorbed:
            continue
        out = scalar_quantization(node, graph)
        chain = _chain(node, graph, consumers, producers)
        if out is None or chain is None or any(id(n) in absorbed for n in chain[1]):
            continue
        source, nodes, x_type = chain
        name = f"{node.name}::table"
        initializers[name] = _table(source, nodes, node, graph, x_type)
        replaced[id(node)] = Node(TABLE_LOOKUP, node.name, (source, name), node.outputs,
                                  {"x_type": x_type, "y_type": out[2]})
        absorbed.update(id(n) for n in nodes)
    if not replaced:
        return graph
    return rewritten(graph, replaced, absorbed - replaced.keys(), initializers)


def _chain(last: Node, graph: Graph, consumers, producers):
    """(the one tensor the chain ending in `last` reads, its nodes in graph order, `last`
    among them, the tensor's type: 'uint8' or 'int8') if it is a chain of the module docstring's kind with more than a
    quantization of a dequantization, else None. A DequantizeLinear's input made by a
    QuantizeLinear is the chain's too where the chain can take that node's inputs, else the
    chain reads it."""
    consts = graph.initializers

    def single(node: Node) -> bool:
        return node.op_type in ELEMENTWISE and node.domain in ("", "ai.onnx") \
            and len(node.outputs) == 1 and (
                node.op_type not in ("QuantizeLinear", "DequantizeLinear")
                or scalar_quantization(node, graph) is not None)

    def gather(node: Node, nodes: dict, sources: set) -> bool:
        """Adds `node` and what it reads to `nodes` and `sources`; False where it cannot."""
        if id(node) in nodes:
            return True
        if not single(node):
            return False
        nodes[id(node)] = node
        for index, value in enumerate(node.inputs):
            if not value or value in consts:
                if value and consts[value].size != 1:
                    return False
                continue
            producer = producers.get(value)
            if node.op_type == "DequantizeLinear" and index == 0:
                if producer is not None and producer.op_type == "QuantizeLinear":
                    tried, more = dict(nodes), set(sources)
                    if gather(producer, tried, more):
                        nodes.update(tried)
                        sources.update(more)
                        continue
                sources.add(value)
            elif (index and node.op_type in ("QuantizeLinear", "DequantizeLinear")) \
                    or producer is None or not gather(producer, nodes, sources):
                return False
        return True

    nodes: dict[int, Node] = {}
    sources: set[str] = set()
    if not gather(last, nodes, sources) or len(sources) != 1 or len(nodes) < 3:
        return None
    source = next(iter(sources))
    for node in nodes.values():
        readers = consumers.get(node.outputs[0], [])
        if node is not last and (node.outputs[0] in graph.outputs
                                 or any(id(r) not in nodes for r in readers)):
            return None
    readers = [r for r in consumers.get(source, []) if id(r) in nodes]
    if any(r.op_type != "DequantizeLinear" or r.inputs[0] != source for r in readers):
        return None
    types = {scalar_quantization(r, graph)[2] for r in readers}
    if len(types) != 1:
        return None
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    return source, sorted(nodes.values(), key=lambda n: order[id(n)]), types.pop()


def _table(source: str, nodes: list[Node], last: Node, graph: Graph,
           x_type: str) -> np.ndarray:
    """The chain's output for each of the 256 values of `source` (of `x_type`), by the
    byte's bits."""
    values = np.arange(256, dtype=np.uint8).view(TYPES[x_type])
    used = {v for n in nodes for v in n.inputs}
    sub = Graph({source: (256,)}, (last.outputs[0],), tuple(nodes),
                {k: v for k, v in graph.initializers.items() if k in used}, {}, graph.opset,
                f"{graph.name}::{last.name}")
    table = run_graph(sub, {source: values})[0]
    return np.ascontiguousarray(table.reshape(256))
