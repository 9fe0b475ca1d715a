"""An ONNX model as our own plain data: load, fix static shapes, fold constant subgraphs, merge
duplicate nodes.

Everything after loading (the numpy runtime, task extraction, packaging) reads a `Graph`, never a
protobuf: the `onnx` package is needed to read the file and nowhere else, and a graph we rewrite
(fused nodes, folded weights) is the same kind of value as one we loaded. Shapes are static:
`onnx.shape_inference` propagates the input shapes, and a symbolic input dimension (a batch
`N`) must be given by the caller, because a tuned kernel is compiled for one shape. Constant
subgraphs (the weights of the `light` zoo models are `ConstantOfShape` nodes; exporters write
`Shape -> Gather -> Unsqueeze -> Concat -> Reshape` chains) are computed once here, so that the
runtime and the task extraction see initializers where the weights are. A node that computes
what an earlier one does (`merge_duplicates`) is dropped: onnxruntime's `quantize_dynamic` gives
each of attention's three projections its own Reshape and DynamicQuantizeLinear of the same
hidden state, three passes where one does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from tuner.errors import TunerError

if TYPE_CHECKING:  # onnx is imported where a model is read, not with this module
    import onnx

# Each folding round re-runs shape inference so that a folded `Shape` feeds a `Reshape` whose
# output shape becomes static, which may let another `Shape` fold; exporters' chains are short.
MAX_FOLD_ROUNDS = 8
# Constants larger than this (elements) go back to shape inference as typed inputs, not data:
# serialising VGG-19's 400 MB of folded weights for each round took seconds; only small integer
# tensors (shapes, axes) matter to its data propagation.
INFERENCE_DATA_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class Node:
    """One operator application; attributes are plain Python values (int, float, str, lists,
    numpy arrays for tensors); a missing optional input is the empty name ''."""

    op_type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict = field(default_factory=dict, compare=False)
    domain: str = ""


@dataclass(frozen=True, slots=True, eq=False)
class Graph:
    """Nodes in topological order; `inputs` are the runtime inputs with static shapes;
    `shapes` holds every static tensor shape shape inference found (not necessarily all)."""

    inputs: dict[str, tuple[int, ...]]
    outputs: tuple[str, ...]
    nodes: tuple[Node, ...]
    initializers: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]
    opset: int
    name: str = ""


def load_model(model, inputs: dict[str, tuple[int, ...]] | None = None) -> Graph:
    """`model` is a path to an .onnx file or an `onnx.ModelProto`; `inputs` gives the shape of
    an input whose dimensions are symbolic (and may restate a static one)."""
    proto = _read(model) if isinstance(model, (str, os.PathLike)) else model
    proto = _with_input_shapes(proto, dict(inputs or {}))
    held: dict[str, np.ndarray] = {}
    for _ in range(MAX_FOLD_ROUNDS):
        proto = _infer_shapes(proto)
        graph = _to_graph(proto, held)
        folded = fold_constants(graph, KEPT_ON_LOAD)
        if len(folded.nodes) == len(graph.nodes):
            return merge_duplicates(folded)
        proto, held = _replace_graph(proto, folded)
    return merge_duplicates(fold_constants(_to_graph(_infer_shapes(proto), held), KEPT_ON_LOAD))


def _read(path) -> "onnx.ModelProto":
    import onnx
    from google.protobuf.message import DecodeError

    try:
        proto = onnx.load(os.fspath(path))
    except FileNotFoundError:
        raise TunerError(f"no ONNX file at '{os.fspath(path)}'") from None
    except (DecodeError, ValueError, RuntimeError, OSError) as err:
        raise TunerError(f"'{os.fspath(path)}' is not a readable ONNX model: "
                         f"{_first_line(err)}") from None
    if not proto.graph.node and not proto.graph.output:
        raise TunerError(f"'{os.fspath(path)}' is not a readable ONNX model: it has no graph")
    return proto


def _first_line(err: Exception) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _runtime_inputs(proto, held=()):
    constant = {t.name for t in proto.graph.initializer} | set(held)
    return [v for v in proto.graph.input if v.name not in constant]


def _with_input_shapes(proto, given: dict):
    """A copy of `proto` whose runtime inputs have only fixed dimensions."""
    import onnx

    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    inputs = {v.name: v for v in _runtime_inputs(proto)}
    unknown = sorted(set(given) - set(inputs))
    if unknown:
        raise TunerError(f"the model has no input '{unknown[0]}'; its inputs are "
                         f"{', '.join(repr(n) for n in inputs) or 'none'}")
    for name, value in inputs.items():
        dims = value.type.tensor_type.shape.dim
        if name in given:
            shape = tuple(int(d) for d in given[name])
            if len(shape) != len(dims) or min(shape, default=1) < 1:
                raise TunerError(f"input '{name}' expects {len(dims)} positive dimensions, got "
                                 f"'{','.join(str(d) for d in shape)}'")
            for dim, size in zip(dims, shape):
                if dim.HasField("dim_value") and dim.dim_value != size:
                    raise TunerError(f"input '{name}' has dimension {dim.dim_value} where "
                                     f"{size} was given")
                dim.Clear()
                dim.dim_value = size
            continue
        for index, dim in enumerate(dims):
            if not dim.HasField("dim_value") or dim.dim_value < 1:
                label = f" ('{dim.dim_param}')" if dim.dim_param else ""
                raise TunerError(f"input '{name}' has a symbolic dimension {index}{label}; give "
                                 f"its shape, e.g. {name}=" + ",".join(
                                     str(d.dim_value) if d.HasField("dim_value") else "1"
                                     for d in dims))
    return proto


def _infer_shapes(proto):
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except onnx.shape_inference.InferenceError as err:
        raise TunerError(f"ONNX shape inference failed: {str(err).splitlines()[0]}") from None


def _attribute_value(attr):
    import onnx
    from onnx import numpy_helper

    kind = onnx.AttributeProto
    if attr.type == kind.TENSOR:
        return numpy_helper.to_array(attr.t)
    if attr.type == kind.TENSORS:
        return [numpy_helper.to_array(t) for t in attr.tensors]
    if attr.type == kind.STRING:
        return attr.s.decode()
    if attr.type == kind.STRINGS:
        return [s.decode() for s in attr.strings]
    if attr.type in (kind.GRAPH, kind.GRAPHS):
        # Control flow (If, Loop, Scan) is not run: the node is reported as unsupported.
        return "<subgraph>"
    return onnx.helper.get_attribute_value(attr)


def _static_shape(value_info) -> tuple[int, ...] | None:
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
    return None if any(d < 1 for d in dims) else dims


def _to_graph(proto, held: dict[str, np.ndarray]) -> Graph:
    """Our graph of `proto`, whose constants are its initializers and the arrays `held`."""
    from onnx import numpy_helper

    onnx_graph = proto.graph
    initializers = {t.name: numpy_helper.to_array(t) for t in onnx_graph.initializer}
    initializers.update(held)
    inputs = {v.name: _static_shape(v) for v in _runtime_inputs(proto, held)}
    shapes = {}
    for value in list(onnx_graph.value_info) + list(onnx_graph.input) + list(onnx_graph.output):
        shape = _static_shape(value)
        if shape is not None:
            shapes[value.name] = shape
    shapes.update({name: tuple(a.shape) for name, a in initializers.items()})
    nodes = [Node(n.op_type, n.name or f"{n.op_type}_{i}", tuple(n.input), tuple(n.output),
                  {a.name: _attribute_value(a) for a in n.attribute}, n.domain)
             for i, n in enumerate(onnx_graph.node)]
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    return Graph(inputs, tuple(v.name for v in onnx_graph.output),
                 topological_order(nodes, set(initializers) | set(inputs)), initializers,
                 shapes, opset, onnx_graph.name)


def topological_order(nodes, available: set[str]) -> tuple[Node, ...]:
    """Nodes sorted so that each runs after its producers (files are meant to be sorted
    already; not all are). A cycle or an input nobody produces is a TunerError."""
    known = set(available) | {""}
    pending, ordered = list(nodes), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.inputs)]
        if not ready:
            node = pending[0]
            missing = next(i for i in node.inputs if i not in known)
            raise TunerError(f"node '{node.name}' ({node.op_type}) reads '{missing}', "
                             f"which no node, input or initializer produces")
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
        ordered += ready
        for node in ready:
            known.update(node.outputs)
    return tuple(ordered)


# Kept when a model is loaded, though their inputs are constant: a quantized weight's
# DequantizeLinear, which tasks.extract_tasks reads to make an int8 task of its layer (and then
# folds where it makes none).
KEPT_ON_LOAD = frozenset({"DequantizeLinear"})


def fold_constants(graph: Graph, kept_types=frozenset()) -> Graph:
    """Runs, once, every node whose inputs are all constants (and `Shape` of any tensor whose
    shape is static), but those of `kept_types`, and keeps its outputs as initializers."""
    from tuner.network.ops import OPS, run_node, shape_of

    constants = dict(graph.initializers)
    kept = []
    for node in graph.nodes:
        static_shape = node.op_type == "Shape" and node.inputs[0] in graph.shapes
        foldable = node.op_type in OPS and node.op_type not in kept_types and \
            node.domain in ("", "ai.onnx") and (
            static_shape or all(i in constants or i == "" for i in node.inputs))
        if not foldable:
            kept.append(node)
            continue
        if static_shape:
            values = [shape_of(graph.shapes[node.inputs[0]], node.attributes)]
        else:
            values = run_node(node, [constants.get(i) for i in node.inputs], graph.opset)
        constants.update(zip(node.outputs, values))
    used = {i for n in kept for i in n.inputs} | set(graph.outputs)
    initializers = {k: v for k, v in constants.items() if k in used}
    shapes = dict(graph.shapes)
    shapes.update({k: tuple(v.shape) for k, v in initializers.items()})
    return Graph(graph.inputs, graph.outputs, tuple(kept), initializers, shapes, graph.opset,
                 graph.name)


# Operators whose outputs are not a function of their inputs and attributes: never merged.
NONDETERMINISTIC = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform",
                              "RandomUniformLike", "Multinomial", "Bernoulli"})


def merge_duplicates(graph: Graph) -> Graph:
    """`graph` without the nodes that compute what an earlier node computes: the same
    operator and attributes on the same inputs, constants of up to INFERENCE_DATA_LIMIT
    elements compared by value (exporters give each Reshape its own shape initializer). Their
    readers read the earlier node's outputs. A node that writes a graph output, has a
    subgraph or draws random numbers stays."""
    same: dict[str, str] = {}  # value -> the value it equals, made earlier
    by_value: dict[tuple, str] = {}
    for name, value in graph.initializers.items():
        if value.size <= INFERENCE_DATA_LIMIT:
            same[name] = by_value.setdefault(_frozen(value), name)
    outputs = set(graph.outputs)
    made: dict[tuple, Node] = {}
    replaced: dict[int, Node] = {}
    dropped: set[int] = set()
    for original in graph.nodes:
        node = original
        inputs = tuple(same.get(i, i) for i in node.inputs)
        if inputs != node.inputs:
            node = replaced[id(original)] = Node(node.op_type, node.name, inputs, node.outputs,
                                                 node.attributes, node.domain)
        if node.op_type in NONDETERMINISTIC or any(
                isinstance(v, str) and v == "<subgraph>" for v in node.attributes.values()):
            continue
        key = (node.op_type, node.domain, inputs, _frozen(node.attributes),
               tuple(bool(o) for o in node.outputs))
        earlier = made.get(key)
        if earlier is None or outputs.intersection(node.outputs):
            made.setdefault(key, node)
            continue
        same.update((o, e) for o, e in zip(node.outputs, earlier.outputs) if o)
        dropped.add(id(original))
    if not replaced and not dropped:
        return graph
    return rewritten(graph, replaced, dropped, graph.initializers)


def _frozen(value):
    """`value` (an attribute or a constant) as a hashable key that equals another's where
    the values are equal and of one type."""
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__,) + tuple(_frozen(v) for v in value)
    return (type(value).__name__, value)


def _replace_graph(proto, graph: Graph):
    """`proto` with `graph`'s nodes and small initializers (for another round of shape
    inference), and the large constants held apart, declared to it as typed inputs."""
    from onnx import helper, numpy_helper

    # Outputs are unique (SSA), names need not be: a node is recognised by its outputs.
    keep = {n.outputs for n in graph.nodes}
    old_nodes = [n for n in proto.graph.node if tuple(n.output) in keep]
    del proto.graph.node[:]
    proto.graph.node.extend(old_nodes)
    # IR 3 listed initializers among the inputs; from IR 4 they need not be, as here.
    proto.ir_version = max(proto.ir_version, 4)
    small = {k: v for k, v in graph.initializers.items() if v.size <= INFERENCE_DATA_LIMIT}
    held = {k: v for k, v in graph.initializers.items() if k not in small}
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(numpy_helper.from_array(np.asarray(v), k)
                                   for k, v in small.items())
    runtime = [v for v in proto.graph.input if v.name in graph.inputs]
    del proto.graph.input[:]
    proto.graph.input.extend(runtime)
    proto.graph.input.extend(
        helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
        for k, v in held.items())
    del proto.graph.value_info[:]
    return proto, held


# ---------------------------------------------------------------- reading and rewriting a graph
def consumers_of(nodes) -> dict[str, list[Node]]:
    """The nodes that read each value, in graph order, each once (Mul(d, d) is one reader)."""
    readers: dict[str, list[Node]] = {}
    for node in nodes:
        for name in dict.fromkeys(node.inputs):
            readers.setdefault(name, []).append(node)
    return readers


def producers_of(nodes) -> dict[str, Node]:
    """The node that makes each value."""
    return {name: node for node in nodes for name in node.outputs}


def only_reader(name: str, graph: Graph, consumers, op_types=None) -> Node | None:
    """The one node that reads `name` (of one of `op_types`, if given), where nothing else
    does and it is no graph output; else None."""
    readers = consumers.get(name, [])
    if len(readers) != 1 or name in graph.outputs or \
            (op_types is not None and readers[0].op_type not in op_types):
        return None
    return readers[0]


def without_unread(graph: Graph) -> Graph:
    """`graph` without the nodes whose outputs no node reads and no graph output is (a
    rewrite's leftovers: what made a value the rewritten nodes read no more), nor the
    initializers only they read."""
    read = set(graph.outputs)
    unread = set()
    for node in reversed(graph.nodes):
        if read.intersection(node.outputs):
            read.update(node.inputs)
        else:
            unread.add(id(node))
    return rewritten(graph, {}, unread, graph.initializers) if unread else graph


def scalar_constant(name: str, graph: Graph) -> float | None:
    """The value of a one-element initializer, else None."""
    value = graph.initializers.get(name)
    return float(value.reshape(())) if value is not None and value.size == 1 else None


def rewritten(graph: Graph, replaced: dict[int, Node], dropped: set[int],
              initializers: dict[str, np.ndarray],
              inserted: dict[int, tuple[Node, ...]] | None = None,
              shapes: dict[str, tuple[int, ...]] | None = None) -> Graph:
    """`graph` with nodes replaced (by the id of the node they replace) and dropped (ids),
    nodes `inserted` before the node of an id, of `initializers` those still read, and
    `shapes` (those of the values the new nodes make too) where given."""
    inserted = inserted or {}
    nodes = tuple(new for n in graph.nodes if id(n) not in dropped
                  for new in inserted.get(id(n), ()) + (replaced.get(id(n), n),))
    used = {i for n in nodes for i in n.inputs} | set(graph.outputs)
    return Graph(graph.inputs, graph.outputs, nodes,
                 {k: v for k, v in initializers.items() if k in used},
                 graph.shapes if shapes is None else shapes, graph.opset, graph.name)
