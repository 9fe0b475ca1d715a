"""Attention's products of two activations, read and written where the projections keep them.

Exporters write multi-head attention as (BERT, PyTorch's MultiheadAttention traced):

    q = Transpose(Reshape(x @ Wq + bq, [1, S, H, D]), [0, 2, 1, 3])       # [1, H, S, D]
    k = Transpose(Reshape(x @ Wk + bk, [1, S, H, D]), [0, 2, 3, 1])       # [1, H, D, S]
    v = Transpose(Reshape(x @ Wv + bv, [1, S, H, D]), [0, 2, 1, 3])
    p = Softmax(MatMul(q, k) / sqrt(D))
    context = Reshape(Transpose(MatMul(p, v), [0, 2, 1, 3]), [1, S, H*D])

Run as written, each Transpose is a copy, and each copy a numpy node between kernels, which
splits the package's segments. Two rewrites remove most of them:

- `fold_attention_scale` (on the loaded graph): the scale of the scores, a Div or Mul by a
  constant after the product, moves into the weight and bias of the projection that makes one
  of its operands (q·k/c = (q/c)·k, and q is x @ (Wq/c) + bq/c), when only Reshapes and
  Transposes lie between; for the usual c = sqrt(64) = 8 that is exact in float32. A
  projection quantized by quantize_dynamic has its weight's scale scaled instead.
- `stored_operand` / `stored_result` (during task extraction): a [1, S, H, D] view transposed
  to [1, H, S, D] is the [S, H, D] array read with the batch axis second, the batch_matmul
  template's order 213: no copy, every row still contiguous.
- `transposed_heads`: K transposed to [1, H, D, S] would be read a column at a time, so the key
  projection writes its result transposed instead (the matmul template's out_order 21,
  C^T [H*D, S]), which is K^T [H, D, S] as the scores' product reads it, in plain order; a
  projection quantized by quantize_dynamic too (`transposed_quantized_keys`).
"""

from __future__ import annotations

import math

import numpy as np

from tuner.network.graph import (Graph, Node, consumers_of, only_reader, producers_of,
                                 rewritten, scalar_constant)

HEADS_FIRST = [0, 2, 1, 3]  # [1, S, H, D] <-> [1, H, S, D]
VIEWS = ("Reshape", "Transpose")


def fold_attention_scale(graph: Graph, consumers) -> tuple[Graph, list[str]]:
    """`graph` with each Div / Mul by a constant after a product of two activations folded
    into the projection behind one of its operands (module docstring), and a note per fold."""
    producers = producers_of(graph.nodes)
    initializers = dict(graph.initializers)
    replaced: dict[int, Node] = {}
    dropped: set[int] = set()
    notes = []
    for scale in graph.nodes:
        if scale.op_type not in ("Div", "Mul") or len(scale.inputs) != 2:
            continue
        first, second = scale.inputs
        if scale.op_type == "Mul" and scalar_constant(first, graph) is not None:
            first, second = second, first
        product, constant = producers.get(first), scalar_constant(second, graph)
        if (product is None or constant is None or product.op_type != "MatMul"
                or any(i in graph.initializers for i in product.inputs)
                or only_reader(product.outputs[0], graph, consumers) is not scale
                or id(product) in replaced or constant == 0):
            continue
        factor = 1.0 / constant if scale.op_type == "Div" else constant
        for operand in product.inputs:
            projection = _projection(operand, graph, consumers, producers)
            if projection is None or any(id(n) in replaced for n in projection):
                continue
            for node in projection:
                weight = next(i for i in node.inputs if i in graph.initializers)
                scaled = f"{weight}::scaled{len(notes)}"
                initializers[scaled] = (initializers[weight].astype(np.float64) * factor
                                        ).astype(initializers[weight].dtype)
                replaced[id(node)] = _with_input(node, weight, scaled)
            replaced[id(product)] = Node("MatMul", product.name, product.inputs,
                                         scale.outputs, product.attributes, product.domain)
            dropped.add(id(scale))
            notes.append(f"{scale.op_type} '{scale.name}' by {constant:g} folded into "
                         f"'{projection[0].name}'")
            break
    if not notes:
        return graph, []
    return rewritten(graph, replaced, dropped, initializers), notes


def _projection(value: str, graph: Graph, consumers, producers) -> list[Node] | None:
    """The MatMul by a constant (and the Add of a constant after it) that makes `value`
    through Reshapes and Transposes alone, each read by the next only: the nodes to scale.
    A dynamically quantized projection (quantize_dynamic: the int32 sums cast to float,
    times the activation's run-time scale times the weight's constant one, plus the bias)
    is scaled by its weight's scale and its bias."""
    node = producers.get(value)
    while node is not None and node.op_type in VIEWS \
            and only_reader(node.outputs[0], graph, consumers) is not None:
        node = producers.get(node.inputs[0])
    scaled = []
    if node is not None and node.op_type == "Add" and len(node.inputs) == 2 \
            and sum(i in graph.initializers for i in node.inputs) == 1:
        scaled.append(node)
        node = producers.get(next(i for i in node.inputs if i not in graph.initializers))
    dequantizing = _dequantizing_scale(node, graph, producers)
    if dequantizing is not None:
        node = dequantizing
    elif node is None or node.op_type != "MatMul" or node.inputs[1] not in graph.initializers \
            or node.inputs[0] in graph.initializers:
        return None
    if any(only_reader(n.outputs[0], graph, consumers) is None for n in [node] + scaled):
        return None
    return [node] + scaled


def _dequantizing_scale(node: Node | None, graph: Graph, producers) -> Node | None:
    """Where `node` is Mul(Cast(int32 sums) to float, s) and s = Mul(a run-time scale, a
    constant float32 weight scale, per tensor or per column): the Mul that makes s; else
    None."""
    if node is None or node.op_type != "Mul" or len(node.inputs) != 2:
        return None
    for cast_value, scale_value in (node.inputs, node.inputs[::-1]):
        cast, scale = producers.get(cast_value), producers.get(scale_value)
        if cast is None or cast.op_type != "Cast" or int(cast.attributes.get("to", 0)) != 1 \
                or scale is None or scale.op_type != "Mul" or len(scale.inputs) != 2:
            continue
        constants = [graph.initializers[i] for i in scale.inputs if i in graph.initializers]
        if len(constants) == 1 and constants[0].dtype == np.float32:
            return scale
    return None


def batched_shape(a: tuple[int, ...] | None, b: tuple[int, ...] | None):
    """The batch_matmul template's (B, M, N, K) of a product of activations of shapes `a`
    and `b` (numpy's matmul of two stacks of matrices with the same leading dimensions;
    its broadcasting of unequal ones is not taken), or None."""
    if a is None or b is None or len(a) < 2 or len(a) != len(b) or a[:-2] != b[:-2] \
            or a[-1] != b[-2]:
        return None
    return math.prod(a[:-2]), a[-2], b[-1], a[-1]


def stored_operand(value: str, graph: Graph, consumers, producers):
    """(stored value, order, view nodes) if `value` is Transpose(Reshape(y, [1, S, H, D]),
    [0, 2, 1, 3]) of a y of S x (H*D) floats, each view read by the next only: the product
    reads y with order 213, and the two views go. Else (value, 123, [])."""
    transpose = producers.get(value)
    if transpose is None or transpose.op_type != "Transpose" \
            or list(transpose.attributes.get("perm", [])) != HEADS_FIRST \
            or only_reader(value, graph, consumers) is None:
        return value, 123, []
    reshape = producers.get(transpose.inputs[0])
    heads = graph.shapes.get(transpose.inputs[0])
    if reshape is None or reshape.op_type != "Reshape" or heads is None \
            or len(heads) != 4 or heads[0] != 1 \
            or only_reader(reshape.outputs[0], graph, consumers) is not transpose:
        return value, 123, []
    return reshape.inputs[0], 213, [reshape, transpose]


def transposed_heads(value: str, rows: int, graph: Graph, consumers) -> list[Node]:
    """[Reshape, Transpose] if a projection's `value` ([1, S, H*D] or [S, H*D], S = `rows`)
    is only read by Reshape(·, [1, S, H, D]), itself only read by Transpose(·, [0, 2, 3, 1]):
    the projection writes its result transposed and the views go. Else []."""
    reshape = only_reader(value, graph, consumers, ("Reshape",))
    heads = None if reshape is None else graph.shapes.get(reshape.outputs[0])
    if heads is None or len(heads) != 4 or heads[0] != 1 or heads[1] != rows:
        return []
    transpose = only_reader(reshape.outputs[0], graph, consumers, ("Transpose",))
    if transpose is None or list(transpose.attributes.get("perm", [])) != [0, 2, 3, 1]:
        return []
    return [reshape, transpose]


def stored_result(value: str, graph: Graph, consumers) -> tuple[int, list[Node]]:
    """(order, view nodes) if the product's `value` [1, H, S, D] is only read by
    Transpose(·, [0, 2, 1, 3]), itself read by a Reshape or not at all: the product writes the
    [S, H, D] array with order 213, and the views go. Else (123, [])."""
    transpose = only_reader(value, graph, consumers)
    shape = graph.shapes.get(value)
    if transpose is None or transpose.op_type != "Transpose" or shape is None \
            or len(shape) != 4 or shape[0] != 1 \
            or list(transpose.attributes.get("perm", [])) != HEADS_FIRST:
        return 123, []
    reshape = only_reader(transpose.outputs[0], graph, consumers)
    if reshape is not None and reshape.op_type == "Reshape" \
            and math.prod(graph.shapes.get(reshape.outputs[0], (0,))) == math.prod(shape):
        return 213, [transpose, reshape]
    return 213, [transpose]


def transposed_quantized_keys(graph: Graph) -> Graph:
    """`graph` with each dynamically quantized key projection read only as K^T
    (`transposed_heads`) written transposed, as a float one is: quantized._matmul_integer's
    int8 matmul writes its sums as [N, S] (out_order 21), and the nodes after it (the zero
    point's share, the Cast, the scale, the bias) work on that layout, their per-column
    constants as (N, 1) columns. The result is K^T [H, D, S], which one Reshape to
    [1, H, D, S] (a view) gives the scores, in place of the Reshape and the Transpose (a
    copy, and a numpy node between two runs of kernels)."""
    from tuner.ir.task import Task
    from tuner.network.fused import FUSED_OP_TYPES

    consumers, producers = consumers_of(graph.nodes), producers_of(graph.nodes)
    consts = graph.initializers
    initializers, shapes = dict(graph.initializers), dict(graph.shapes)
    replaced: dict[int, Node] = {}
    dropped: set[int] = set()
    for kernel in graph.nodes:
        task = kernel.attributes.get("task") if kernel.op_type == FUSED_OP_TYPES["matmul"] \
            else None
        if task is None or task.dtype != "int8" or task.attr_dict.get("out_order", 12) != 12 \
                or task.attr_dict.get("bias") or task.attr_dict.get("out_type"):
            continue
        m, n, _ = task.shape
        chain = _dequantizing_chain(kernel.outputs[0], n, graph, consumers, producers)
        if chain is None:
            continue
        add, times, negated, cast, mul, scale_maker, bias_add, bias = chain
        views = transposed_heads(bias_add.outputs[0], m, graph, consumers)
        if not views:
            continue
        column = (n, 1)

        def as_column(name: str) -> str:
            initializers[f"{name}::column"] = consts[name].reshape(column)
            return f"{name}::column"

        attrs = {**task.attr_dict, "out_order": 21}
        replaced[id(kernel)] = Node(kernel.op_type, kernel.name, kernel.inputs, kernel.outputs,
                                    {**kernel.attributes, "task": Task.create(
                                        task.op, task.shape, task.dtype, **attrs)})
        replaced[id(times)] = _with_input(times, negated, as_column(negated))
        replaced[id(bias_add)] = _with_input(bias_add, bias, as_column(bias))
        shapes[times.outputs[0]] = column
        if scale_maker is not None:  # a weight scale per column
            weight_scale = next(i for i in scale_maker.inputs if i in consts)
            replaced[id(scale_maker)] = _with_input(scale_maker, weight_scale,
                                                    as_column(weight_scale))
            shapes[scale_maker.outputs[0]] = column
        for value in (kernel.outputs[0], add.outputs[0], cast.outputs[0], mul.outputs[0],
                      bias_add.outputs[0]):
            shapes[value] = (n, m)
        reshape, transpose = views
        target = f"{transpose.name}::shape"
        initializers[target] = np.array(graph.shapes[transpose.outputs[0]], np.int64)
        replaced[id(transpose)] = Node("Reshape", transpose.name, (bias_add.outputs[0], target),
                                       transpose.outputs)
        dropped.add(id(reshape))
    if not replaced:
        return graph
    return rewritten(graph, replaced, dropped, initializers, shapes=shapes)


def _with_input(node: Node, old: str, new: str) -> Node:
    """`node` reading `new` where it read `old`."""
    return Node(node.op_type, node.name, tuple(new if i == old else i for i in node.inputs),
                node.outputs, node.attributes, node.domain)


def _dequantizing_chain(sums: str, n: int, graph: Graph, consumers, producers):
    """The nodes after an int8 matmul's stored sums that quantized._matmul_integer and
    quantize_dynamic write, each the only reader of the one before: Add(sums, Mul(zero point,
    negated column sums)), Cast to float, Mul by a scale (one value, or a run-time one times
    a weight scale per column), Add of a bias per column; as (add, times, negated, cast, mul,
    the Mul making a per-column scale or None, bias add, bias), else None."""
    consts = graph.initializers
    add = only_reader(sums, graph, consumers, ("Add",))
    share = next((i for i in add.inputs if i != sums), None) if add is not None else None
    times = producers.get(share) if share else None
    negated = next((i for i in times.inputs if i in consts), None) \
        if times is not None and times.op_type == "Mul" else None
    if negated is None or consts[negated].shape != (n,) \
            or only_reader(share, graph, consumers) is not add:
        return None
    cast = only_reader(add.outputs[0], graph, consumers, ("Cast",))
    if cast is None or int(cast.attributes.get("to", 0)) != 1:
        return None
    mul = only_reader(cast.outputs[0], graph, consumers, ("Mul",))
    scale = next((i for i in mul.inputs if i != cast.outputs[0]), None) if mul else None
    if scale is None or graph.shapes.get(scale) is None:
        return None
    scale_maker = None
    if math.prod(graph.shapes[scale]) != 1:
        scale_maker = producers.get(scale)
        constants = [i for i in scale_maker.inputs if i in consts] if scale_maker else []
        if scale_maker is None or scale_maker.op_type != "Mul" or len(constants) != 1 \
                or consts[constants[0]].shape != (n,) \
                or only_reader(scale, graph, consumers) is not mul:
            return None
    bias_add = only_reader(mul.outputs[0], graph, consumers, ("Add",))
    bias = next((i for i in bias_add.inputs if i in consts), None) if bias_add else None
    if bias is None or consts[bias].shape != (n,):
        return None
    return add, times, negated, cast, mul, scale_maker, bias_add, bias
