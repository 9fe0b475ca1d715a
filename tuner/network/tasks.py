"""Task extraction: which layers of a graph are tuned, as what `Task`, with what fused.

A Conv the conv2d template can express (2-D, one stride, one symmetric pad, one dilation, a
constant weight) and a MatMul / Gemm with a constant 2-D weight become one node each of the new
op types `TunerConv` / `TunerMatMul`, carrying the `Task` in its attributes and its constants
(weight, bias) as initializers of the rewritten graph. A MatMul of two activations with the
same batch dimensions (attention's Q·Kᵀ and scores·V) becomes a `TunerBatchMatMul` of the
batch_matmul template, with nothing folded into it. What follows a layer is folded into it
while the templates can compute it (Ansor's fused epilogues): BatchNormalization, a per-channel
constant Mul fold into the weight and bias, a per-channel constant Add into the bias, Relu
becomes the epilogue, and so does Clip(0, 6) (ReLU6, the templates' relu=6); a Clip with other
bounds stays a numpy node and is noted. A GELU, as one Gelu node or as the elementwise chain
exporters write (patterns.match_gelu), becomes the templates' `gelu` epilogue. An Add (or a
two-input Sum) of another activation of the layer's output shape (a ResNet block's skip
connection, the residual of a transformer layer) becomes the templates' `residual`, added before
the activation that may follow it; the fused node then takes the place of the Add, where both of
its operands exist. Decomposed LayerNorm and Softmax chains are first replaced by their single
nodes (patterns.fuse_decomposed), and attention's scale folded into a projection
(attention.py), whose Reshape/Transpose views the batch_matmul tasks then read through. A
layer the templates cannot express stays a numpy node too, with a note: a model is never
refused for it. Identical tasks are counted, since they are tuned once.

A 1x1 convolution of stride s > 1 without padding reads every s-th pixel of every s-th row, and
is that convolution of stride 1 on those pixels: it becomes a MaxPool with a 1x1 window and
stride s (the pixels, exactly; a package generates it, pool_codegen.py) and a conv2d task of
stride 1 (`subsampled_pointwise_convs`), whose template reads its pixels as one contiguous
axis. The strided kernel's vectors take two loads and a shuffle each along a row, and its
rows of 14 or 28 pixels leave tiles part empty: on Zen 3, one thread, 48 trials each,
1x512x28x28 -> 1024 of stride 2 reached 62.5 GFLOPS, 1x512x14x14 -> 1024 of stride 1 91.4
(1x256x56x56 -> 512: 73.8 against 85.9).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from tuner.network.attention import (batched_shape, fold_attention_scale, stored_operand,
                                     stored_result, transposed_heads,
                                     transposed_quantized_keys)
from tuner.network.graph import (Graph, Node, consumers_of, fold_constants, merge_duplicates,
                                 producers_of, rewritten)
from tuner.network.fused import FUSED_OP_TYPES
from tuner.network.quantized import fuse_quantized
from tuner.network.ops import legacy_broadcast
from tuner.network.ops_nn import spatial_pads
from tuner.network.patterns import fuse_decomposed, match_gelu
from tuner.ir.task import Task


@dataclass(frozen=True, slots=True)
class TaskUse:
    """A row of the task table: a task, how many nodes run it, and its share of the FLOPs of
    all the model's tasks (operators left to numpy are not counted)."""

    task: Task
    occurrences: int
    flops: float  # of one occurrence
    share: float
    nodes: tuple[str, ...]


@dataclass(frozen=True, slots=True, eq=False)
class Extraction:
    """The rewritten graph (fused task nodes), its task table (largest share first), and notes
    on what was left to numpy and why."""

    graph: Graph
    tasks: tuple[TaskUse, ...]
    notes: tuple[str, ...]


@dataclass(slots=True)
class _Layer:
    """A layer being fused: its weight and bias so far (float64), the nodes it replaced."""

    weight: np.ndarray | None  # KCRS for conv, K x N for matmul (float64 once anything is
    # folded); None for a product of two activations
    bias: np.ndarray | None
    relu: int  # templates/_common.RELU_VALUES: 0 none, 1 ReLU, 6 ReLU6
    nodes: list[Node]
    out_channels: int
    residual: str | None = None  # the activation added before the ReLU
    gelu: int = 0  # templates/_common.GELU_VALUES: 0 none, 1 erf form, 2 tanh form
    batched: bool = False  # a product of two activations: its second operand is no weight
    transposed: bool = False  # a matmul writing its result transposed (attention's keys)
    operands: tuple[str, ...] = ()  # a product's operands as stored (attention.py)
    views: list[Node] = field(default_factory=list)  # the views before it that it reads through


def extract_tasks(graph: Graph) -> Extraction:
    """Finds the tasks of `graph` and returns it rewritten with one node per fused layer."""
    graph, notes = fuse_quantized(graph)
    # layers reading one run-time zero point make one zero points operand, not one each
    graph = merge_duplicates(graph)
    graph = fold_constants(graph)  # the dequantized weights of layers left in float
    graph = subsampled_pointwise_convs(graph)
    graph, decomposed = fuse_decomposed(graph)
    notes += decomposed
    graph, folds = fold_attention_scale(graph, consumers_of(graph.nodes))
    notes += folds
    graph = transposed_quantized_keys(graph)
    consumers, producers = consumers_of(graph.nodes), producers_of(graph.nodes)
    position = {id(node): index for index, node in enumerate(graph.nodes)}
    absorbed: set[int] = set()
    replaced: dict[int, Node] = {}
    initializers = dict(graph.initializers)
    for node in graph.nodes:
        if id(node) in absorbed:
            continue
        start = _start_layer(node, graph, notes, consumers, producers)
        if start is None:
            continue
        x, layer, make_task = start
        if not layer.batched:
            _fuse_following(layer, graph, consumers, notes, absorbed, position)
        if node.op_type == "MatMul" and not layer.batched and layer.residual is None:
            rows = math.prod(graph.shapes[x][:-1])
            views = transposed_heads(layer.nodes[-1].outputs[0], rows, graph, consumers)
            layer.nodes.extend(views)
            layer.transposed = bool(views)
        last = layer.nodes[-1]
        task = make_task(layer)
        op_type = FUSED_OP_TYPES[task.op]
        weight_name, bias_name = f"{node.name}::weight", f"{node.name}::bias"
        if layer.batched:
            inputs = layer.operands
        else:
            # No copy unless folded: a transposed Gemm weight stays a view (VGG's fc6: 400 MB).
            initializers[weight_name] = np.asarray(layer.weight, dtype=np.float32)
            inputs = (x, weight_name)
        if layer.bias is not None:
            initializers[bias_name] = layer.bias.astype(np.float32)
            inputs += (bias_name,)
        if layer.residual is not None:
            inputs += (layer.residual,)
        attributes = {"task": task}
        if layer.batched or layer.transposed:  # its result is a view's ([1, S, H*D]), not
            # [B, M, N] / [M, N]
            attributes["result_shape"] = graph.shapes[last.outputs[0]]
        fused = Node(op_type, node.name, inputs, (last.outputs[0],), attributes)
        # at the last node it replaces: every input exists there (a residual may be computed
        # after the layer's first node), and the nodes in between did not read the chain
        replaced[id(last)] = fused
        absorbed.update(id(n) for n in layer.nodes + layer.views)
    result = rewritten(graph, replaced, absorbed - replaced.keys(), initializers)
    return Extraction(result, _task_table(result.nodes), tuple(notes))




def subsampled_pointwise_convs(graph: Graph) -> Graph:
    """`graph` with each float Conv of a 1x1 constant kernel, stride s > 1 and no padding
    made a MaxPool (1x1 window, stride s) of its input and the Conv of stride 1 on that (see
    the module docstring); convolutions of one input at one stride share their MaxPool."""
    consts = graph.initializers
    shapes = dict(graph.shapes)
    replaced: dict[int, Node] = {}
    inserted: dict[int, tuple[Node, ...]] = {}
    pooled: dict[tuple[str, tuple[int, ...]], str] = {}
    for node in graph.nodes:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") \
                or len(node.inputs) < 2 or node.inputs[1] not in consts:
            continue
        x, weight = node.inputs[0], consts[node.inputs[1]]
        shape, attrs = shapes.get(x), node.attributes
        strides = [int(v) for v in attrs.get("strides", [1, 1])]
        if shape is None or len(shape) != 4 or weight.ndim != 4 \
                or tuple(weight.shape[2:]) != (1, 1) or max(strides) == 1 \
                or any(attrs.get("pads", [0] * 4)) \
                or attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            continue
        key = (x, tuple(strides))
        if key not in pooled:
            pooled[key] = f"{x}::subsampled{strides[0]}x{strides[1]}"
            shapes[pooled[key]] = tuple(shape[:2]) + tuple(
                (size - 1) // step + 1 for size, step in zip(shape[2:], strides))
            inserted[id(node)] = (Node("MaxPool", f"{node.name}::subsample", (x,),
                                       (pooled[key],), {"kernel_shape": [1, 1],
                                                        "strides": strides}),)
        pointwise = {k: v for k, v in attrs.items() if k not in ("strides", "pads", "auto_pad")}
        replaced[id(node)] = Node("Conv", node.name, (pooled[key],) + node.inputs[1:],
                                  node.outputs, pointwise, node.domain)
    if not replaced:
        return graph
    return rewritten(graph, replaced, set(), dict(consts), inserted, shapes)


def _task_table(nodes) -> tuple[TaskUse, ...]:
    names = defaultdict(list)
    for node in nodes:
        if node.op_type in FUSED_OP_TYPES.values():
            names[node.attributes["task"]].append(node.name)
    counts = Counter({task: len(n) for task, n in names.items()})
    flops = {task: task.dag().flops for task in counts}
    total = sum(flops[t] * c for t, c in counts.items()) or 1.0
    rows = [TaskUse(t, c, flops[t], flops[t] * c / total, tuple(names[t]))
            for t, c in counts.items()]
    return tuple(sorted(rows, key=lambda r: (-r.share, r.task.key)))


def _start_layer(node: Node, graph: Graph, notes: list[str], consumers, producers):
    """(data input name, layer, task maker) if `node` starts a task, else None."""
    if node.op_type == "Conv":
        return _start_conv(node, graph, notes)
    if node.op_type == "MatMul" and node.inputs[1] not in graph.initializers:
        return _start_batch_matmul(node, graph, notes, consumers, producers)
    if node.op_type in ("MatMul", "Gemm"):
        return _start_matmul(node, graph, notes)
    return None


def _start_batch_matmul(node, graph, notes, consumers, producers):
    """A MatMul of two activations: the batch_matmul template's A[b] @ B[b] over the shared
    leading dimensions (numpy's broadcasting of unequal ones is left to numpy), reading its
    operands and writing its result through attention's head views where it can
    (attention.py)."""
    x, y = node.inputs
    a, b = graph.shapes.get(x), graph.shapes.get(y)
    shape = batched_shape(a, b)
    if shape is None:
        notes.append(f"MatMul '{node.name}' runs in numpy: its operands are not two static "
                     f"stacks of matrices with the same leading dimensions ({a} and {b})")
        return None
    x_stored, a_order, x_views = stored_operand(x, graph, consumers, producers)
    y_stored, b_order, y_views = stored_operand(y, graph, consumers, producers)
    out_order, out_views = stored_result(node.outputs[0], graph, consumers)
    layer = _Layer(None, None, 0, [node] + out_views, b[-1], batched=True,
                   operands=(x_stored, y_stored), views=x_views + y_views)
    return x, layer, lambda done: Task.create("batch_matmul", shape, a_order=a_order,
                                              b_order=b_order, out_order=out_order)


def _start_conv(node, graph, notes):
    consts = graph.initializers
    x, w = node.inputs[0], node.inputs[1]
    b = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    shape = graph.shapes.get(x)
    reason = None
    if w not in consts or (b is not None and b not in consts):
        reason = "its weight or bias is not a constant"
    elif shape is None or len(shape) != 4:
        reason = "it is not a 2-D convolution with a static input shape"
    if reason is None:
        weight = consts[w]
        kernel = list(node.attributes.get("kernel_shape", weight.shape[2:]))
        strides = list(node.attributes.get("strides", [1, 1]))
        dilations = list(node.attributes.get("dilations", [1, 1]))
        begin, end = spatial_pads(shape, kernel, strides, dilations, node.attributes)
        pads = begin + end
        if len(set(strides)) > 1 or len(set(dilations)) > 1 or len(set(pads)) > 1:
            reason = (f"the conv2d template takes one stride, dilation and symmetric pad "
                      f"(strides {strides}, dilations {dilations}, pads {pads})")
    if reason is not None:
        notes.append(f"Conv '{node.name}' runs in numpy: {reason}")
        return None
    group = int(node.attributes.get("group", 1))
    layer = _Layer(weight, consts[b].astype(np.float64) if b else None,
                   0, [node], weight.shape[0])
    n, c, h, wd = shape
    k, _, r, s = weight.shape

    def make_task(done: _Layer) -> Task:
        return Task.create("conv2d", (n, c, h, wd, k, r, s), stride=strides[0], pad=pads[0],
                           dilation=dilations[0], groups=group, bias=done.bias is not None,
                           relu=done.relu, residual=done.residual is not None,
                           gelu=done.gelu)
    return x, layer, make_task


def _start_matmul(node, graph, notes):
    consts, a = graph.initializers, node.attributes
    x, w = node.inputs[0], node.inputs[1]
    shape = graph.shapes.get(x)
    gemm = node.op_type == "Gemm"
    c = node.inputs[2] if gemm and len(node.inputs) > 2 and node.inputs[2] else None
    reason = None
    if w not in consts or consts[w].ndim != 2:
        reason = "its weight is not a constant matrix"
    elif shape is None or len(shape) < 2 or (gemm and a.get("transA", 0)):
        reason = "its input is not a static matrix (or Gemm transposes it)"
    weight = bias = None
    if reason is None:
        weight = consts[w]
        if gemm:
            weight = weight.T if a.get("transB", 0) else weight
            if a.get("alpha", 1.0) != 1.0:
                weight = a["alpha"] * weight.astype(np.float64)
        if c is not None and a.get("beta", 1.0) != 0:
            bias = _row_vector(consts.get(c), weight.shape[1])
            if bias is None:
                reason = "its C operand is not a constant row vector"
            else:
                bias = a.get("beta", 1.0) * bias
    if reason is not None:
        notes.append(f"{node.op_type} '{node.name}' runs in numpy: {reason}")
        return None
    layer = _Layer(weight, bias, 0, [node], weight.shape[1])
    m, k = math.prod(shape[:-1]), shape[-1]

    def make_task(done: _Layer) -> Task:
        return Task.create("matmul", (m, done.weight.shape[1], k), bias=done.bias is not None,
                           relu=done.relu, residual=done.residual is not None,
                           gelu=done.gelu, out_order=21 if done.transposed else 12)
    return x, layer, make_task


def _row_vector(value, n: int) -> np.ndarray | None:
    """`value` as a length-n vector if it broadcasts along the last axis only, else None."""
    if value is None or (value.ndim and math.prod(value.shape[:-1]) != 1) or \
            value.size not in (1, n):
        return None
    return np.broadcast_to(value.reshape(-1).astype(np.float64), (n,)).copy()


def _channel_vector(node: Node, current: str, graph: Graph, k: int, conv: bool):
    """The constant operand of an elementwise `node` applied to `current`, as a per-channel
    vector of length k, or None if it is not constant or varies along other axes."""
    other = [i for i in node.inputs if i != current]
    if len(node.inputs) != 2 or len(other) != 1 or other[0] not in graph.initializers:
        return None
    value = graph.initializers[other[0]]
    if node.op_type == "Sub" and node.inputs[0] != current:
        return None
    if not conv:
        return _row_vector(value, k)
    rank = len(graph.shapes.get(current, (0, 0, 0, 0)))
    _, value = legacy_broadcast(np.empty((0,) * rank), value, node.attributes, graph.opset)
    if value.ndim > 4:
        return None
    full = value.reshape((1,) * (4 - value.ndim) + value.shape)
    if full.shape[0] != 1 or full.shape[2:] != (1, 1) or full.shape[1] not in (1, k):
        return None
    return np.broadcast_to(full.reshape(-1).astype(np.float64), (k,)).copy()


def _fuse_following(layer: _Layer, graph: Graph, consumers, notes: list[str],
                    absorbed: set[int], position: dict[int, int]) -> None:
    """Folds the chain after the layer into it while the next node is its output's only
    reader, one the templates compute, and not in another layer already (`absorbed`: the
    Add of a projection shortcut closes two chains, and the first layer takes it); a GELU,
    several nodes reading the output, ends it."""
    conv = layer.nodes[0].op_type == "Conv"
    consts = graph.initializers
    while layer.relu == 0:
        current = layer.nodes[-1].outputs[0]
        gelu = match_gelu(current, position[id(layer.nodes[-1])] + 1, graph, consumers)
        if gelu is not None and not any(id(n) in absorbed for n in gelu[1]):
            layer.gelu = gelu[0]
            layer.nodes.extend(gelu[1])
            return
        readers = consumers.get(current, [])
        if len(readers) != 1 or current in graph.outputs:
            return
        node = readers[0]
        if id(node) in absorbed:
            return
        k = layer.out_channels
        if layer.residual is not None and node.op_type not in ("Relu", "Clip"):
            return  # the bias was added before the residual: nothing more folds into it
        if node.op_type == "Relu":
            layer.relu = 1
        elif node.op_type == "Clip" and _clip_bounds(node, graph) in ((0.0, 6.0), (0.0, np.inf)):
            layer.relu = 6 if _clip_bounds(node, graph)[1] == 6 else 1
        elif node.op_type == "BatchNormalization" and conv and node.inputs[0] == current \
                and all(i in consts for i in node.inputs[1:5]) \
                and not any(node.outputs[1:]):
            scale, beta, mean, var = (consts[i].astype(np.float64) for i in node.inputs[1:5])
            factor = scale / np.sqrt(var + node.attributes.get("epsilon", 1e-5))
            _scale(layer, factor, conv)
            layer.bias = (_bias(layer) - mean) * factor + beta
        elif node.op_type in ("Add", "Sum") and (residual := _residual(node, current, graph)):
            layer.residual = residual
        elif node.op_type in ("Add", "Sub", "Mul"):
            vector = _channel_vector(node, current, graph, k, conv)
            if vector is None:
                return
            if node.op_type == "Mul":
                _scale(layer, vector, conv)
                layer.bias = None if layer.bias is None else layer.bias * vector
            else:
                layer.bias = _bias(layer) + (vector if node.op_type == "Add" else -vector)
        else:
            if node.op_type == "Clip":
                notes.append(f"Clip '{node.name}' after '{layer.nodes[0].name}' runs in "
                             f"numpy: bounds {_clip_bounds(node, graph)} are neither ReLU "
                             f"(0, inf) nor ReLU6 (0, 6)")
            return
        layer.nodes.append(node)


def _residual(node: Node, current: str, graph: Graph) -> str | None:
    """The other operand of an Add of `current` and an activation of the same static shape
    (not a constant, not `current` itself), else None."""
    other = [i for i in node.inputs if i != current]
    if len(node.inputs) != 2 or len(other) != 1 or other[0] in graph.initializers:
        return None
    shape = graph.shapes.get(current)
    return other[0] if shape is not None and graph.shapes.get(other[0]) == shape else None


def _clip_bounds(node: Node, graph: Graph) -> tuple[float, float] | None:
    """A Clip's (min, max): attributes before opset 11, constant inputs from then on (a
    missing bound is unbounded); None where a bound is not a constant."""
    if graph.opset < 11:
        return (float(node.attributes.get("min", -np.inf)),
                float(node.attributes.get("max", np.inf)))
    bounds = []
    for index, unbounded in ((1, -np.inf), (2, np.inf)):
        name = node.inputs[index] if len(node.inputs) > index else ""
        if not name:
            bounds.append(unbounded)
        elif name in graph.initializers and graph.initializers[name].size == 1:
            bounds.append(float(graph.initializers[name].reshape(())))
        else:
            return None
    return bounds[0], bounds[1]


def _bias(layer: _Layer) -> np.ndarray:
    return np.zeros(layer.out_channels) if layer.bias is None else layer.bias


def _scale(layer: _Layer, factor: np.ndarray, conv: bool) -> None:
    """Scales each output channel of the weight (KCRS rows for conv, K x N columns)."""
    per_channel = factor[:, None, None, None] if conv else factor[None, :]
    layer.weight = layer.weight.astype(np.float64) * per_channel
