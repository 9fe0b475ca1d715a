"""Operators that exporters write as several ONNX nodes, recognised as the one they are.

PyTorch exports GELU as Div/Erf/Add/Mul/Mul (or the tanh form as Pow/Mul/Add/Tanh/...), and,
below opset 17, LayerNorm as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add; Softmax is
sometimes written out as ReduceMax/Sub/Exp/ReduceSum/Div. Run node by node in numpy, such a
chain makes a pass over memory per node on one thread; recognised, GELU becomes a kernel's
epilogue (tasks.py) and LayerNorm and Softmax one node each that a package generates code for
(row_codegen.py).

GELU is recognised by what it computes rather than by the order of its nodes, which differs
between exporters and versions (x·0.5 first or last, Div by √2 or Mul by 1/√2): the smallest
closed run of elementwise nodes after a value, whose other operands are scalar constants, is
evaluated on probe values and compared with both GELU forms (they differ by up to 5e-4, far
above float32 rounding, so the form is never ambiguous). A run is closed when nothing outside
it reads a value it makes but its last one. LayerNorm and Softmax have reductions, whose axes
matter, so they are matched node by node (`fuse_decomposed`).
"""

from __future__ import annotations

import math

import numpy as np

from tuner.network.graph import (Graph, Node, consumers_of, only_reader, rewritten,
                               scalar_constant)
from tuner.ir.reference import gelu as gelu_values
from tuner.network.ops import run_node

# Elementwise operators a GELU is written with, and how far after its input it is looked for.
GELU_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Erf", "Tanh", "Neg", "Sqrt", "Gelu"})
MAX_GELU_NODES = 12
GELU_WINDOW = 40  # nodes after the input's producer
# Probes cover the range where the forms differ and both tails (erf's and tanh's saturation).
GELU_PROBES = np.concatenate([np.linspace(-7.0, 7.0, 281), [-30.0, -12.5, 1e-3, 12.5, 30.0]]
                             ).astype(np.float32)
GELU_FORMS = {1: "none", 2: "tanh"}  # templates/_common.GELU_VALUES -> Gelu's `approximate`


def match_gelu(value: str, start: int, graph: Graph, consumers) -> tuple[int, list[Node]] | None:
    """(form, nodes) if the nodes after position `start` that read `value` compute GELU of it
    (form: GELU_VALUES, 1 erf, 2 tanh), else None."""
    if value in graph.outputs:
        return None
    made, region = {value}, []
    for node in graph.nodes[start:start + GELU_WINDOW]:
        if not made.intersection(node.inputs):
            continue
        if not _elementwise_on(node, made, graph) or len(region) == MAX_GELU_NODES:
            return None  # a value of the run escapes to a node it cannot hold
        region.append(node)
        made.add(node.outputs[0])
        last = node.outputs[0]
        if _closed(region, made - {last}, graph, consumers):
            form = _gelu_form(value, region, graph)
            if form:
                return form, region
    return None


def _elementwise_on(node: Node, made: set[str], graph: Graph) -> bool:
    if node.op_type not in GELU_OPS or node.domain not in ("", "ai.onnx") \
            or len(node.outputs) != 1:
        return False
    return all(name in made or (name in graph.initializers
                                and graph.initializers[name].size == 1)
               for name in node.inputs)


def _closed(region: list[Node], inner: set[str], graph: Graph, consumers) -> bool:
    members = {id(n) for n in region}
    return all(name not in graph.outputs and
               all(id(reader) in members for reader in consumers.get(name, ()))
               for name in inner)


def _gelu_form(value: str, region: list[Node], graph: Graph) -> int:
    values = {value: GELU_PROBES}
    for node in region:
        args = [values[i] if i in values else graph.initializers[i] for i in node.inputs]
        values[node.outputs[0]] = run_node(node, args, graph.opset)[0]
    got = np.asarray(values[region[-1].outputs[0]], dtype=np.float64)
    if got.shape != GELU_PROBES.shape:
        return 0
    for form, approximate in GELU_FORMS.items():
        want = gelu_values(GELU_PROBES, approximate)
        if np.all(np.abs(got - want) <= 2e-6 * (1.0 + np.abs(want))):
            return form
    return 0


def fuse_decomposed(graph: Graph) -> tuple[Graph, list[str]]:
    """`graph` with each decomposed LayerNorm and Softmax over trailing axes replaced by one
    LayerNormalization / Softmax node (named after the chain's last node), and a note per
    replacement."""
    consumers = consumers_of(graph.nodes)
    initializers = dict(graph.initializers)
    replaced: dict[int, Node] = {}
    dropped: set[int] = set()
    notes = []
    for node in graph.nodes:
        if id(node) in dropped or id(node) in replaced:
            continue
        if node.op_type == "ReduceMean":
            found = _layer_norm(node, graph, consumers, initializers)
        elif node.op_type in ("ReduceMax", "Exp"):
            found = _softmax(node, graph, consumers)
        else:
            continue
        if found is None:
            continue
        chain, fused = found
        if any(id(n) in dropped or id(n) in replaced for n in chain):
            continue
        replaced[id(chain[-1])] = fused
        dropped.update(id(n) for n in chain[:-1])
        notes.append(f"{fused.op_type} '{fused.name}' from {len(chain)} nodes "
                     f"({'/'.join(n.op_type for n in chain)})")
    if not replaced:
        return graph, []
    return rewritten(graph, replaced, dropped, initializers), notes


def _reduced_axes(node: Node, graph: Graph) -> tuple[int, ...] | None:
    """The axes a Reduce* node reduces (non-negative), if it keeps them and they are known."""
    rank = len(graph.shapes.get(node.inputs[0], ()))
    if not rank or not node.attributes.get("keepdims", 1):
        return None
    if len(node.inputs) > 1 and node.inputs[1]:
        if node.inputs[1] not in graph.initializers:
            return None
        axes = [int(a) for a in graph.initializers[node.inputs[1]].reshape(-1)]
    else:
        axes = node.attributes.get("axes")
        if axes is None:
            return None
    return tuple(sorted(a % rank for a in axes))


def _trailing(axes, rank: int) -> int | None:
    """The first axis if `axes` are the trailing axes of a tensor of `rank`, else None."""
    if not axes or tuple(axes) != tuple(range(axes[0], rank)):
        return None
    return axes[0]


def _other(node: Node, name: str) -> str | None:
    others = [i for i in node.inputs if i != name]
    return others[0] if len(node.inputs) == 2 and len(others) == 1 else None


def _layer_norm(mean: Node, graph: Graph, consumers, initializers):
    """x → ReduceMean → Sub(x, mean) → Pow(·, 2) | Mul(d, d) → ReduceMean → Add(eps) → Sqrt →
    Div(d, ·) [→ Mul(scale)] [→ Add(bias)], as one LayerNormalization."""
    x = mean.inputs[0]
    shape = graph.shapes.get(x)
    axes = _reduced_axes(mean, graph)
    axis = None if shape is None or axes is None else _trailing(axes, len(shape))
    sub = only_reader(mean.outputs[0], graph, consumers, ("Sub",))
    if axis is None or sub is None or tuple(sub.inputs) != (x, mean.outputs[0]):
        return None
    d = sub.outputs[0]
    readers = consumers.get(d, [])
    square = next((n for n in readers if n.op_type in ("Pow", "Mul")), None)
    div = next((n for n in readers if n.op_type == "Div"), None)
    if len(readers) != 2 or square is None or div is None or d in graph.outputs \
            or div.inputs[0] != d:
        return None
    if not ((square.op_type == "Pow" and square.inputs[0] == d
             and scalar_constant(square.inputs[1], graph) == 2.0)
            or (square.op_type == "Mul" and tuple(square.inputs) == (d, d))):
        return None
    var = only_reader(square.outputs[0], graph, consumers, ("ReduceMean",))
    if var is None or _reduced_axes(var, graph) != axes:
        return None
    add = only_reader(var.outputs[0], graph, consumers, ("Add",))
    epsilon = None if add is None else scalar_constant(_other(add, var.outputs[0]) or "", graph)
    sqrt = None if add is None else only_reader(add.outputs[0], graph, consumers, ("Sqrt",))
    if epsilon is None or sqrt is None or \
            only_reader(sqrt.outputs[0], graph, consumers, ("Div",)) is not div \
            or tuple(div.inputs) != (d, sqrt.outputs[0]):
        return None
    chain = [mean, sub, square, var, add, sqrt, div]
    normalized = shape[axis:]
    scale = bias = None
    scale_node = only_reader(div.outputs[0], graph, consumers, ("Mul",))
    if scale_node is not None:
        scale = _affine_operand(scale_node, div.outputs[0], graph, normalized)
        if scale is not None:
            chain.append(scale_node)
    if scale is not None:
        bias_node = only_reader(scale_node.outputs[0], graph, consumers, ("Add",))
        if bias_node is not None:
            bias = _affine_operand(bias_node, scale_node.outputs[0], graph, normalized)
            if bias is not None:
                chain.append(bias_node)
    last = chain[-1]
    scale_name = f"{last.name}::scale"
    initializers[scale_name] = (np.ones(normalized, np.float32) if scale is None
                                else scale)
    inputs = (x, scale_name)
    if bias is not None:
        initializers[f"{last.name}::bias"] = bias
        inputs += (f"{last.name}::bias",)
    return chain, Node("LayerNormalization", last.name, inputs, (last.outputs[0],),
                       {"axis": axis, "epsilon": epsilon})


def _affine_operand(node: Node, current: str, graph: Graph, normalized) -> np.ndarray | None:
    """The constant other operand of `node`, broadcast to the normalized shape, if it varies
    along the normalized axes only."""
    other = _other(node, current)
    value = graph.initializers.get(other) if other else None
    if value is None:
        return None
    lead = value.ndim - len(normalized)
    if lead > 0 and math.prod(value.shape[:lead]) != 1:
        return None
    trailing = value.shape[max(0, lead):]
    try:
        if np.broadcast_shapes(trailing, tuple(normalized)) != tuple(normalized):
            return None
    except ValueError:
        return None
    return np.broadcast_to(value.reshape(trailing), normalized).astype(np.float32)


def _softmax(first: Node, graph: Graph, consumers):
    """[x → ReduceMax → Sub(x, max) →] Exp → ReduceSum → Div(e, sum) over the last axis, as
    one Softmax."""
    if first.op_type == "ReduceMax":
        x = first.inputs[0]
        sub = only_reader(first.outputs[0], graph, consumers, ("Sub",))
        if sub is None or tuple(sub.inputs) != (x, first.outputs[0]):
            return None
        exp = only_reader(sub.outputs[0], graph, consumers, ("Exp",))
        chain = [first, sub]
        if exp is None or _reduced_axes(first, graph) is None:
            return None
        axes = _reduced_axes(first, graph)
    else:
        x, exp, chain, axes = first.inputs[0], first, [], None
        producer_reads = [n for n in consumers.get(x, []) if n.op_type == "ReduceMax"]
        if producer_reads:
            return None  # the ReduceMax side starts this chain
    shape = graph.shapes.get(x)
    e = exp.outputs[0]
    readers = consumers.get(e, [])
    total = next((n for n in readers if n.op_type == "ReduceSum"), None)
    div = next((n for n in readers if n.op_type == "Div"), None)
    if shape is None or len(readers) != 2 or total is None or div is None or e in graph.outputs:
        return None
    sum_axes = _reduced_axes(total, graph)
    last = (len(shape) - 1,)
    if sum_axes != last or (axes is not None and axes != last) or \
            only_reader(total.outputs[0], graph, consumers, ("Div",)) is not div or \
            tuple(div.inputs) != (e, total.outputs[0]):
        return None
    chain += [exp, total, div]
    # before opset 13 Softmax flattens at `axis`: at the last axis that is the same rows
    return chain, Node("Softmax", div.name, (x,), (div.outputs[0],), {"axis": len(shape) - 1})
