"""Quantized models: the QDQ layers of a graph fused into int8 tasks.

`onnxruntime.quantization.quantize_static` (QDQ format, its default) writes each quantized
layer as DequantizeLinear nodes in front of a float Conv / MatMul / Gemm (of the activation,
of the int8 weight initializer, of the int32 bias) and a QuantizeLinear after it, sometimes
with the Relu between. `fuse_quantized` replaces each such chain by one `TunerConv` /
`TunerMatMul` node of an int8 task (tuner.ir.dag.Quantization), which reads the quantized
activation and writes the quantized output (out_type uint8), or the float output where no
QuantizeLinear follows (out_type float32), with its constants computed here:

- the weight as stored (int8, zero point 0: a nonzero weight zero point leaves the layer in
  float, with a note); a weight in [-64, 64] (quantized with `reduce_range=True`, as
  onnxruntime advises for CPUs without VNNI) makes a task of reduced range
  (tuner.ir.dag.REDUCED_WEIGHT_RANGE), summed exactly by vpmaddubsw on AVX2;
- the int32 bias: the stored one (whose scale ONNX fixes at x_scale * w_scale), minus the
  input zero point times the weight's sum per output channel, since the kernel multiplies
  the stored activation and pads it with its zero point;
- the scale per output channel in float32, x_scale * w_scale[k] / y_scale as onnxruntime's
  QLinearConv computes it (x_scale * w_scale[k] for a float output);
- the zero points (input, output).

int8 activations (quantize_static's default activation type) are first re-typed as uint8: a
QuantizeLinear to int8 whose every reader is a DequantizeLinear quantizes to uint8 with zero
point + 128 instead, and those readers dequantize with it: the same real values, exactly
(`unsigned_activations`). The kernels multiply uint8 activations by int8 weights.

The operator form (`quant_format=QOperator`) is taken too: a QLinearConv or QLinearMatMul with
uint8 activations becomes the same int8 task (its int8 activations would need its neighbours
re-typed with it, which this does not do: it then runs in numpy, noted).

`quantize_dynamic`'s MatMulInteger, whose activation DynamicQuantizeLinear quantizes at run
time, becomes an int8 matmul writing its int32 sums, and the share of the run-time zero point
(`_matmul_integer`); a package folds that share and the Cast, Mul and Add after it into one
generated function (quantized_codegen.py). Its ConvInteger becomes an int8 conv2d writing its
int32 sums, the zero point in its padding, and its share subtracted the same way
(`_conv_integer`).

A MaxPool or a view (Reshape, Transpose: attention's heads) between a DequantizeLinear and a
QuantizeLinear of the same quantization pools or moves the quantized values instead
(`quantized_passthroughs`). What stays: Q/DQ pairs around other
operators (an average pooling) run in numpy (quant_ops.py), or in a package as generated
functions (quantized_codegen.quantize_ir, dequantize_ir; a residual Add's and an elementwise
chain's as one: quantized_codegen.py, quantized_tables.py); and a layer whose quantization
this does not take (per-axis activations, uint8 weights, a bias of another scale) is
dequantized and runs as a float layer, noted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tuner.ir.dag import fits_reduced_range
from tuner.ir.task import Task
from tuner.network.fused import FUSED_OP_TYPES
from tuner.network.attention import batched_shape, stored_operand, stored_result
from tuner.network.graph import Graph, Node, consumers_of, only_reader, producers_of, rewritten
from tuner.network.ops_nn import spatial_pads


def unsigned_activations(graph: Graph) -> Graph:
    """`graph` with its int8 activations re-typed as uint8 (see the module docstring)."""
    consumers = consumers_of(graph.nodes)
    initializers = dict(graph.initializers)
    renamed: dict[int, Node] = {}
    for node in graph.nodes:
        if node.op_type != "QuantizeLinear" or len(node.inputs) < 3:
            continue
        zero = graph.initializers.get(node.inputs[2])
        readers = consumers.get(node.outputs[0], [])
        if zero is None or zero.dtype != np.int8 or zero.size != 1 or not readers or \
                node.outputs[0] in graph.outputs or \
                any(r.op_type != "DequantizeLinear" or len(r.inputs) < 3 or
                    r.inputs[0] != node.outputs[0] for r in readers):
            continue
        if any(graph.initializers.get(r.inputs[2]) is None for r in readers):
            continue
        for user in [node] + readers:
            name = user.inputs[2] + "::uint8"
            initializers[name] = (graph.initializers[user.inputs[2]].astype(np.int16)
                                  + 128).astype(np.uint8)
            inputs = user.inputs[:2] + (name,) + user.inputs[3:]
            renamed[id(user)] = Node(user.op_type, user.name, inputs, user.outputs,
                                     user.attributes, user.domain)
    if not renamed:
        return graph
    return rewritten(graph, renamed, set(), initializers)


# Operators that move or keep elements without computing new values: between a
# DequantizeLinear and a QuantizeLinear of the same quantization they act on the quantized
# values as they are (`quantized_passthroughs`).
QUANTIZED_VIEWS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")


def quantized_passthroughs(graph: Graph) -> Graph:
    """`graph` with each DequantizeLinear -> X -> QuantizeLinear chain whose two
    quantizations are the same (`scalar_quantization`: equal scales, zero points and types)
    made one X of the quantized values, where X is a MaxPool or a view (QUANTIZED_VIEWS): the
    same result exactly, since a view moves values and the maximum commutes with increasing
    maps, and QuantizeLinear(DequantizeLinear(q)) is q (the float32 round trip of an integer
    of at most 9 bits stays far within half a step).
    quantize_static writes a ResNet's stem pool so: three numpy passes over 64x112x112 (1.4 ms
    on Zen 3) become one over bytes. It writes the Reshape and Transpose that split
    attention's heads so too, each with the quantization of its input (onnxruntime drops
    those pairs the same way): the views then show through to the products, which read the
    quantized heads where the projections wrote them (`_quantized_product`). A dequantized
    value that other nodes read stays."""
    consumers, producers = consumers_of(graph.nodes), producers_of(graph.nodes)
    replaced: dict[int, Node] = {}
    dropped: set[int] = set()
    for node in graph.nodes:
        if node.op_type not in ("MaxPool",) + QUANTIZED_VIEWS \
                or node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
            continue
        dq = producers.get(node.inputs[0])
        q = only_reader(node.outputs[0], graph, consumers, ("QuantizeLinear",))
        if dq is None or dq.op_type != "DequantizeLinear" or q is None:
            continue
        quantization = scalar_quantization(dq, graph)
        if quantization is None or quantization != scalar_quantization(q, graph):
            continue
        replaced[id(q)] = Node(node.op_type, node.name, (dq.inputs[0],) + node.inputs[1:],
                               q.outputs, node.attributes, node.domain)
        dropped.add(id(node))
        if all(r is node for r in consumers[dq.outputs[0]]) and \
                dq.outputs[0] not in graph.outputs:
            dropped.add(id(dq))
    if not replaced:
        return graph
    return rewritten(graph, replaced, dropped, dict(graph.initializers))


EIGHT_BIT = {np.dtype(np.uint8): "uint8", np.dtype(np.int8): "int8"}


def scalar_quantization(node: Node, graph: Graph) -> tuple[float, int, str] | None:
    """(scale, zero point, type: 'uint8' or 'int8') of a Quantize- or DequantizeLinear node
    whose scale is a one-element float32 initializer, positive and finite (so the map is
    increasing), and whose zero point is a one-element 8-bit initializer; else None."""
    if len(node.inputs) < 3 or node.attributes.get("block_size", 0):
        return None
    scale, zero = (graph.initializers.get(name) for name in node.inputs[1:3])
    if scale is None or zero is None or scale.size != 1 or zero.size != 1 \
            or zero.dtype not in EIGHT_BIT or scale.dtype != np.float32:
        return None
    value = float(scale.reshape(()))
    if not (value > 0 and math.isfinite(value)):
        return None
    return value, int(zero.reshape(())), EIGHT_BIT[zero.dtype]


def fuse_quantized(graph: Graph) -> tuple[Graph, list[str]]:
    """The graph with its QDQ layers fused into int8 task nodes, and notes on the quantized
    layers left in float."""
    graph = quantized_passthroughs(unsigned_activations(graph))
    consumers, producers = consumers_of(graph.nodes), producers_of(graph.nodes)
    notes: list[str] = []
    initializers = dict(graph.initializers)
    replaced: dict[int, Node] = {}
    absorbed: set[int] = set()
    inserted: dict[int, tuple[Node, ...]] = {}
    shapes = dict(graph.shapes)
    for node in graph.nodes:
        if id(node) in absorbed:
            continue
        if node.op_type in ("MatMulInteger", "ConvInteger"):
            make = _matmul_integer if node.op_type == "MatMulInteger" else _conv_integer
            fused = make(node, graph, producers, initializers, shapes, notes)
            if fused is not None:
                replaced[id(node)], inserted[id(node)] = fused[0], fused[1]
            continue
        if node.op_type == "MatMul":
            product = _quantized_product(node, graph, consumers, producers)
            if isinstance(product, str):
                notes.append(f"MatMul '{node.name}' runs in float: {product}")
                continue
            if product is not None:
                fused, nodes, constants = product
                for label, value in constants:
                    initializers[f"{node.name}::{label}"] = value
                replaced[id(nodes[-1])] = fused
                absorbed.update(id(n) for n in nodes)
                continue
        if node.op_type in ("Conv", "MatMul", "Gemm"):
            layer = _QuantizedLayer.match(node, graph, consumers, producers)
        elif node.op_type in ("QLinearConv", "QLinearMatMul"):
            layer = _QuantizedLayer.operator(node, graph)
        else:
            continue
        if layer is None:
            continue
        if isinstance(layer, str):
            where = "in float" if node.op_type in ("Conv", "MatMul", "Gemm") else "in numpy"
            notes.append(f"{node.op_type} '{node.name}' runs {where}: {layer}")
            continue
        task, constants = layer.task(graph)
        names = []
        for label, value in constants:
            name = f"{node.name}::{label}"
            initializers[name] = value
            names.append(name)
        fused = Node(FUSED_OP_TYPES[task.op], node.name, (layer.x,) + tuple(names),
                     (layer.nodes[-1].outputs[0],), {"task": task})
        replaced[id(layer.nodes[-1])] = fused
        absorbed.update(id(n) for n in layer.nodes)
        absorbed.update(id(n) for n in layer.constant_nodes)
        x_dq = producers.get(node.inputs[0])
        # a dequantized activation that other nodes read too stays for them
        if x_dq is not None and x_dq.op_type == "DequantizeLinear" and layer.constant_nodes \
                and all(id(r) in absorbed for r in consumers.get(x_dq.outputs[0], [])):
            absorbed.add(id(x_dq))
    # constant dequantizations nothing reads any more go with their layers
    return rewritten(graph, replaced, absorbed - replaced.keys(), initializers, inserted,
                     shapes), notes


def _quantized_product(node: Node, graph: Graph, consumers, producers):
    """A MatMul of two dequantized uint8 activations quantized per tensor (quantize_static's
    attention products) as an int8 batch_matmul task, which subtracts both zero points in the
    kernel (templates/batch_matmul.py): requantized where a QuantizeLinear to uint8 follows
    (a Relu between taken in), else dequantized to float32; its operands read and its result
    written through attention's head views where they are the only readers (attention.py).
    (the fused node, the nodes it replaces in graph order, the constants it adds), None where
    `node` is no such product, or the reason (a str) it stays in float."""
    consts = graph.initializers
    dqs = [producers.get(value) for value in node.inputs]
    if any(dq is None or dq.op_type != "DequantizeLinear" or dq.inputs[0] in consts
           for dq in dqs):
        return None
    quantizations = [scalar_quantization(dq, graph) for dq in dqs]
    if any(q is None or q[2] != "uint8" for q in quantizations):
        return "its operands are not uint8 activations quantized per tensor"
    a, b = (graph.shapes.get(value) for value in node.inputs)
    shape = batched_shape(a, b)
    if shape is None:
        return (f"its operands are not two static stacks of matrices with the same leading "
                f"dimensions ({a} and {b})")
    nodes, operands, orders = [node], [], []
    for dq in dqs:
        if only_reader(dq.outputs[0], graph, consumers) is node:
            stored, order, views = stored_operand(dq.inputs[0], graph, consumers, producers)
            nodes += [dq] + views
        else:  # the dequantized value stays for its other readers
            stored, order = dq.inputs[0], 123
        operands.append(stored)
        orders.append(order)
    current, relu = node.outputs[0], 0
    after = only_reader(current, graph, consumers, ("Relu",))
    if after is not None:
        nodes.append(after)
        current, relu = after.outputs[0], 1
    q = only_reader(current, graph, consumers, ("QuantizeLinear",))
    out = None if q is None else scalar_quantization(q, graph)
    if out is not None and out[2] == "uint8":
        nodes.append(q)
        current = q.outputs[0]
    else:
        out = None
    out_order, out_views = stored_result(current, graph, consumers)
    nodes += out_views
    (a_scale, a_zero, _), (b_scale, b_zero, _) = quantizations
    scale = np.float32(a_scale) * np.float32(b_scale)
    if out is not None:
        scale = scale / np.float32(out[0])
    task = Task.create("batch_matmul", shape, "int8",
                       relu=relu, out_type=1 if out is not None else 2, a_order=orders[0],
                       b_order=orders[1], out_order=out_order)
    constants = [("scale", np.full(b[-1], scale, np.float32)),
                 ("zero_points", np.array([a_zero, out[1] if out else 0, b_zero], np.int32))]
    position = {id(n): i for i, n in enumerate(graph.nodes)}
    nodes.sort(key=lambda n: position[id(n)])  # the last one makes the result
    result = nodes[-1].outputs[0]
    if result not in graph.shapes:
        return f"the shape of its result '{result}' is not static"
    fused = Node(FUSED_OP_TYPES["batch_matmul"], node.name,
                 tuple(operands) + tuple(f"{node.name}::{label}" for label, _ in constants),
                 (result,), {"task": task, "result_shape": graph.shapes[result]})
    return fused, nodes, constants


def _integer_operands(node: Node, graph: Graph, producers, ndim: int):
    """(input, weight, input zero point or None, reason or None) of a MatMulInteger or
    ConvInteger: the weight an int8 constant of `ndim` dimensions with zero point 0, the
    input uint8 with one zero point (a constant, or DynamicQuantizeLinear's)."""
    consts = graph.initializers
    a, b = node.inputs[0], node.inputs[1]
    a_zero = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    b_zero = node.inputs[3] if len(node.inputs) > 3 and node.inputs[3] else None
    weight = consts.get(b)
    maker = producers.get(a_zero) if a_zero else None
    unsigned = a_zero is None or (a_zero in consts and consts[a_zero].dtype == np.uint8
                                  and consts[a_zero].size == 1) or \
        (maker is not None and maker.op_type == "DynamicQuantizeLinear")
    reason = None
    if weight is None or weight.dtype != np.int8 or weight.ndim != ndim:
        reason = f"its weight is not an int8 constant {'matrix' if ndim == 2 else 'kernel'}"
    elif b_zero is not None and (b_zero not in consts or np.any(consts[b_zero] != 0)):
        reason = "its weight's zero point is not 0"
    elif not unsigned or (a_zero is not None and a_zero not in consts and
                          graph.shapes.get(a_zero, ()) != ()):
        reason = "its input is not uint8 with one zero point"
    return a, weight, a_zero, reason


def _matmul_integer(node: Node, graph: Graph, producers, initializers: dict, shapes: dict,
                    notes: list[str]):
    """A MatMulInteger (quantize_dynamic's: a uint8 activation quantized at run time by
    DynamicQuantizeLinear, an int8 weight with zero point 0) as an int8 matmul writing its
    int32 sums: (the node standing for it, the nodes before that one), or None with a note.

    An input zero point that is a constant is folded into the kernel's bias (-zero_point x
    the weight's column sums). One known at run time only is not: the kernel sums the stored
    activation times the weight, and three nodes subtract the zero point's share, as
    MatMulInteger's own sum does (Cast, a Mul by the negated column sums, an Add after the
    kernel), where a package folds them into the dequantization that follows
    (quantized_codegen.py: no node left, and no pass over its sums of its own)."""
    a, weight, a_zero, reason = _integer_operands(node, graph, producers, 2)
    shape = graph.shapes.get(a)
    if reason is None and (shape is None or len(shape) < 2 or shape[-1] != weight.shape[0]):
        reason = "its input is not a static stack of rows"
    if reason is not None:
        notes.append(f"MatMulInteger '{node.name}' runs in numpy: {reason}")
        return None
    k, n = weight.shape
    rows = math.prod(shape[:-1])
    return _integer_layer(
        node, "matmul", lambda bias: Task.create(
            "matmul", (rows, n, k), "int8", bias=bias, out_type=0,
            reduce_range=fits_reduced_range(weight)),
        weight, weight.astype(np.int64).sum(axis=0), a_zero, graph, initializers, shapes,
        pads=False)


def _conv_integer(node: Node, graph: Graph, producers, initializers: dict, shapes: dict,
                  notes: list[str]):
    """A ConvInteger (quantize_dynamic's convolutions) as an int8 conv2d writing its int32
    sums: (the node standing for it, the nodes before that one), or None with a note. ONNX
    pads the input after subtracting its zero point, which is the kernel padding the stored
    input with the zero point and the zero point's share (-zero_point x the weight's sums per
    output channel) subtracted from every sum. A constant zero point goes into the kernel's
    zero points and bias. One known at run time only reaches the kernel's zero points
    through three nodes before it (Cast, Reshape, Concat), and its share is added after it
    as MatMulInteger's is (Mul, Add), where a package folds it into the dequantization
    (quantized_codegen.py), and the three nodes into one function of the range."""
    x, weight, x_zero, reason = _integer_operands(node, graph, producers, 4)
    shape = graph.shapes.get(x)
    layer = None
    if reason is None and shape is None:
        reason = "its input shape is not static"
    if reason is None:
        layer = _QuantizedLayer(node, x, weight=weight, shape=shape)
        reason = layer._conv_attributes()
    if reason is not None:
        notes.append(f"ConvInteger '{node.name}' runs in numpy: {reason}")
        return None
    n, c, h, w = shape
    k, _, r, s = weight.shape
    return _integer_layer(
        node, "conv2d", lambda bias: Task.create(
            "conv2d", (n, c, h, w, k, r, s), "int8", bias=bias, out_type=0,
            reduce_range=fits_reduced_range(weight), **layer.conv),
        weight, weight.reshape(k, -1).astype(np.int64).sum(axis=1).reshape(k, 1, 1), x_zero,
        graph, initializers, shapes, pads=True)


def _integer_layer(node: Node, op: str, task_of, weight: np.ndarray, sums: np.ndarray,
                   x_zero: str | None, graph: Graph, initializers: dict, shapes: dict,
                   pads: bool):
    """The int8 `op` kernel of a MatMulInteger or ConvInteger of input node.inputs[0]:
    (the node standing for it, the nodes before that one). `task_of(bias)` makes its task,
    `sums` are the weight's sums per output channel, shaped to broadcast over the output. A
    constant input zero point goes into the kernel's zero points and bias. A run-time one's
    share is added after the kernel (Cast, Mul by the negated sums, Add), and where the
    kernel `pads` its input with the zero point, three nodes before it make its zero points
    operand (Cast, Reshape, Concat); else they are 0 (K's last group meets zero weights)."""
    consts, name, x = graph.initializers, node.name, node.inputs[0]
    initializers[f"{name}::weight"] = np.ascontiguousarray(weight)
    weight_name, points = f"{name}::weight", f"{name}::zero_points"
    if x_zero is None or x_zero in consts:
        zero = int(consts[x_zero].reshape(())) if x_zero else 0
        initializers[f"{name}::bias"] = (-zero * sums).reshape(-1).astype(np.int32)
        initializers[points] = np.array([zero, 0], np.int32)
        return Node(FUSED_OP_TYPES[op], name, (x, weight_name, f"{name}::bias", points),
                    node.outputs, {"task": task_of(True)}), ()
    stored, zero, share = f"{name}::stored_sums", f"{name}::zero", f"{name}::zero_share"
    initializers[f"{name}::negated_sums"] = (-sums).astype(np.int32)
    shapes.update({zero: (), share: sums.shape})
    if node.outputs[0] in shapes:
        shapes[stored] = shapes[node.outputs[0]]
    before = [Node("Cast", f"{name}::zero_int32", (x_zero,), (zero,), {"to": 6})]
    if pads:
        initializers[f"{name}::one"] = np.array([1], np.int64)
        initializers[f"{name}::no_output_zero"] = np.zeros(1, np.int32)
        shapes.update({f"{name}::zero_1": (1,), points: (2,)})
        before += [Node("Reshape", f"{name}::zero_vector", (zero, f"{name}::one"),
                        (f"{name}::zero_1",)),
                   Node("Concat", points, (f"{name}::zero_1", f"{name}::no_output_zero"),
                        (points,), {"axis": 0})]
    else:
        initializers[points] = np.zeros(2, np.int32)
    kernel = Node(FUSED_OP_TYPES[op], name, (x, weight_name, points), (stored,),
                  {"task": task_of(False)})
    return (Node("Add", f"{name}::zero_point_share", (stored, share), node.outputs),
            (*before, kernel, Node("Mul", f"{name}::zero_times_sums",
                                   (zero, f"{name}::negated_sums"), (share,))))


@dataclass(slots=True)
class _QuantizedLayer:
    """A matched quantized layer, filled in as it is matched: the quantized input and its
    quantization, the int8 weight (KCRS for a convolution, K x N for a product) with its scale
    per output channel, the int32 bias, the Relu, the output's quantization (None: a float
    output), and the nodes it replaces."""

    node: Node
    x: str                                   # the quantized (uint8) input value
    x_scale: np.float32 = np.float32(1)
    x_zero: int = 0
    weight: np.ndarray | None = None
    w_scale: np.ndarray | None = None
    bias: np.ndarray | None = None           # int64, at x_scale * w_scale
    relu: int = 0
    y_scale: np.float32 | None = None
    y_zero: int | None = None
    shape: tuple[int, ...] | None = None     # of the input
    conv: dict | None = None                 # stride, pad, dilation, groups
    nodes: list[Node] = field(default_factory=list)           # the layer, Relu, QuantizeLinear
    constant_nodes: list[Node] = field(default_factory=list)  # its constants' DequantizeLinear

    @staticmethod
    def match(node: Node, graph: Graph, consumers, producers):
        """The layer, None where `node` is no quantized layer, or the reason (a str) it is
        one this does not fuse."""
        consts = graph.initializers
        x_dq, w_dq = producers.get(node.inputs[0]), producers.get(node.inputs[1])
        if x_dq is None or w_dq is None or x_dq.op_type != "DequantizeLinear" or \
                w_dq.op_type != "DequantizeLinear":
            return None
        layer = _QuantizedLayer(node, x_dq.inputs[0])
        x_scale, x_zero = _scalar(x_dq, 1, consts), _scalar(x_dq, 2, consts)
        if x_scale is None or x_zero is None:
            return "its input's scale and zero point are not one constant each"
        if _zero_type(x_dq, 2, consts) != np.uint8:
            return "its input is int8 and read as such by other nodes (the kernels take uint8)"
        layer.x_scale, layer.x_zero = np.float32(x_scale), int(x_zero)
        weight = consts.get(w_dq.inputs[0])
        if weight is None or weight.dtype != np.int8:
            return "its weight is not an int8 constant"
        w_scale = consts.get(w_dq.inputs[1])
        w_zero = consts.get(w_dq.inputs[2]) if len(w_dq.inputs) > 2 else None
        if w_scale is None or (len(w_dq.inputs) > 2 and w_zero is None):
            return "its weight's scale or zero point is not constant"
        if w_zero is not None and np.any(w_zero != 0):
            return "its weight's zero point is not 0"
        layer.constant_nodes.append(w_dq)
        gemm = node.op_type == "Gemm"
        if gemm and (node.attributes.get("transA", 0) or node.attributes.get("alpha", 1.0) != 1
                     or node.attributes.get("beta", 1.0) != 1):
            return "the Gemm transposes its input or scales its terms"
        out_axis = 0 if node.op_type == "Conv" or (gemm and node.attributes.get("transB", 0)) \
            else 1
        channels = weight.shape[out_axis]
        if w_scale.size not in (1, channels) or (w_scale.size > 1 and
                                                 w_dq.attributes.get("axis", 1) % weight.ndim
                                                 != out_axis):
            return "its weight is quantized along an axis other than its output channels"
        layer.weight = weight.T if out_axis == 0 and node.op_type != "Conv" else weight
        layer.w_scale = np.broadcast_to(w_scale.astype(np.float32).reshape(-1), (channels,))
        bias_input = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
        if bias_input is not None:
            b_dq = producers.get(bias_input)
            stored = consts.get(b_dq.inputs[0]) if b_dq is not None and \
                b_dq.op_type == "DequantizeLinear" else None
            if stored is None or stored.dtype != np.int32 or stored.size != channels:
                return "its bias is not a quantized int32 constant"
            b_scale = consts.get(b_dq.inputs[1])
            expected = layer.x_scale * layer.w_scale
            if b_scale is None or not np.allclose(np.broadcast_to(b_scale.reshape(-1),
                                                                  (channels,)),
                                                  expected, rtol=1e-6, atol=0):
                return "its bias is not quantized with the input's times the weight's scale"
            layer.bias = stored.reshape(-1).astype(np.int64)
            layer.constant_nodes.append(b_dq)
        layer.nodes = [node]
        current = node.outputs[0]
        relu = only_reader(current, graph, consumers, ("Relu",))
        if relu is not None:
            layer.relu = 1
            layer.nodes.append(relu)
            current = relu.outputs[0]
        q = only_reader(current, graph, consumers, ("QuantizeLinear",))
        if q is not None:
            y_scale, y_zero = _scalar(q, 1, consts), _scalar(q, 2, consts)
            if y_scale is not None and y_zero is not None and \
                    _zero_type(q, 2, consts) == np.uint8:
                layer.y_scale, layer.y_zero = np.float32(y_scale), int(y_zero)
                layer.nodes.append(q)
        layer.shape = graph.shapes.get(node.inputs[0])
        if layer.shape is None:
            return "its input shape is not static"
        if node.op_type == "Conv":
            reason = layer._conv_attributes()
            if reason:
                return reason
        elif len(layer.shape) < 2:
            return "its input is not a matrix"
        return layer

    @staticmethod
    def operator(node: Node, graph: Graph):
        """The layer of a QLinearConv (x, x_scale, x_zero_point, w, w_scale, w_zero_point,
        y_scale, y_zero_point[, B]) or QLinearMatMul (the same without B), or the reason it
        stays a numpy node."""
        consts = graph.initializers
        layer = _QuantizedLayer(node, node.inputs[0], nodes=[node])
        values = [_scalar(node, i, consts) for i in (1, 2, 6, 7)]
        if any(v is None for v in values):
            return "its input's and output's scales and zero points are not constants"
        if any(_zero_type(node, i, consts) != np.uint8 for i in (2, 7)):
            return "its activations are int8 (the kernels take uint8: quantize them as uint8)"
        layer.x_scale, layer.x_zero = np.float32(values[0]), int(values[1])
        layer.y_scale, layer.y_zero = np.float32(values[2]), int(values[3])
        weight = consts.get(node.inputs[3])
        w_zero = consts.get(node.inputs[5]) if node.inputs[5] else None
        w_scale = consts.get(node.inputs[4])
        if weight is None or weight.dtype != np.int8 or w_scale is None:
            return "its weight is not an int8 constant with a constant scale"
        if w_zero is not None and np.any(w_zero != 0):
            return "its weight's zero point is not 0"
        conv = node.op_type == "QLinearConv"
        channels = weight.shape[0] if conv else weight.shape[-1]
        if weight.ndim != (4 if conv else 2) or w_scale.size not in (1, channels):
            return "its weight is not a 2-D kernel or matrix quantized per output channel"
        layer.weight = weight
        layer.w_scale = np.broadcast_to(w_scale.astype(np.float32).reshape(-1), (channels,))
        if conv and len(node.inputs) > 8 and node.inputs[8]:
            bias = consts.get(node.inputs[8])
            if bias is None or bias.dtype != np.int32:
                return "its bias is not an int32 constant"
            layer.bias = bias.reshape(-1).astype(np.int64)
        layer.shape = graph.shapes.get(node.inputs[0])
        if layer.shape is None:
            return "its input shape is not static"
        if conv:
            return layer._conv_attributes() or layer
        return layer if len(layer.shape) >= 2 else "its input is not a matrix"

    def _conv_attributes(self) -> str | None:
        a, shape = self.node.attributes, self.shape
        if len(shape) != 4 or self.weight.ndim != 4:
            return "it is not a 2-D convolution"
        kernel = list(a.get("kernel_shape", self.weight.shape[2:]))
        strides = list(a.get("strides", [1, 1]))
        dilations = list(a.get("dilations", [1, 1]))
        begin, end = spatial_pads(shape, kernel, strides, dilations, a)
        pads = begin + end
        if len(set(strides)) > 1 or len(set(dilations)) > 1 or len(set(pads)) > 1:
            return (f"the conv2d template takes one stride, dilation and symmetric pad "
                    f"(strides {strides}, dilations {dilations}, pads {pads})")
        self.conv = dict(stride=strides[0], pad=pads[0], dilation=dilations[0],
                         groups=int(a.get("group", 1)))
        return None

    def task(self, graph: Graph) -> tuple[Task, list[tuple[str, np.ndarray]]]:
        """The int8 task and its constants after the activation, in operand order."""
        conv = self.node.op_type in ("Conv", "QLinearConv")
        weight = np.ascontiguousarray(self.weight)
        # the sum of the weights each output channel multiplies an input's zero point by
        sums = weight.reshape(weight.shape[0], -1).astype(np.int64).sum(axis=1) if conv \
            else weight.astype(np.int64).sum(axis=0)
        bias = (self.bias if self.bias is not None else 0) - self.x_zero * sums
        has_bias = self.bias is not None or self.x_zero != 0
        if self.y_scale is not None:
            out_type = 1
            scale = (self.x_scale * self.w_scale / self.y_scale).astype(np.float32)
        else:
            out_type = 2
            scale = (self.x_scale * self.w_scale).astype(np.float32)
        zero_points = np.array([self.x_zero, self.y_zero or 0], dtype=np.int32)
        reduced = fits_reduced_range(weight)
        if conv:
            n, c, h, w = self.shape
            k, _, r, s = weight.shape
            task = Task.create("conv2d", (n, c, h, w, k, r, s), "int8", bias=has_bias,
                               relu=self.relu, out_type=out_type, reduce_range=reduced,
                               **self.conv)
        else:
            task = Task.create("matmul", (math.prod(self.shape[:-1]), weight.shape[1],
                                          weight.shape[0]), "int8", bias=has_bias,
                               relu=self.relu, out_type=out_type, reduce_range=reduced)
        constants = [("weight", weight)]
        if has_bias:
            constants.append(("bias", np.asarray(bias, np.int64).astype(np.int32)))
        constants += [("scale", scale), ("zero_points", zero_points)]
        return task, constants


def _zero_type(node: Node, index: int, consts) -> np.dtype | None:
    """The element type of the node's constant zero point at input `index`: uint8 where it
    has none (ONNX's default), None where it is not a constant."""
    if index >= len(node.inputs) or not node.inputs[index]:
        return np.dtype(np.uint8)
    value = consts.get(node.inputs[index])
    return None if value is None else value.dtype


def _scalar(node: Node, index: int, consts) -> float | None:
    """The one value of the node's constant input `index`; None if not that (a missing zero
    point is 0)."""
    if index >= len(node.inputs) or not node.inputs[index]:
        return 0 if index == 2 else None
    value = consts.get(node.inputs[index])
    return None if value is None or value.size != 1 else value.reshape(()).item()
