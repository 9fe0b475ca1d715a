"""Packaging a model for deployment: its tuned kernels as one shared library, its graph as JSON,
its weights as .npz, in one directory that `deploy.load_package` runs without the tuner.

    libtuner_kernels.so   every task's kernel (aot.build_library: one symbol per task, as
    tuner_kernels.h       `tune build` writes them for C builds), with its header and the
    tuner_kernels.o       relocatable object for static linking
    graph.json            the rewritten graph: numpy nodes with JSON-safe attributes, fused
                          nodes naming their kernel symbol, operand order, packed layouts
    weights.npz           every initializer and tensor-valued attribute, under keys that
                          graph.json names (ONNX names may hold any character)

A task without a tuned record for the target gets the default schedule, as `tuner.build` does;
the result says which. Weights are stored in the model's own layout and packed at load time by
the library's own `<symbol>_pack_<operand>` functions: building then compiles each kernel once
(into the library) rather than once more in this process only to call its pack function, the
.npz holds the model's weights as the ONNX file had them (folded), inspectable and comparable,
and the packed layout cannot disagree with the code that reads it, because that code wrote it.
The cost is one pass over the weights when the package is loaded.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuner.errors import TunerError
from tuner.network.deploy import (FORMAT, FORMAT_VERSION, GRAPH_FILE, LIBRARY_NAME, WEIGHTS_FILE,
                                cpu_flags)
from tuner.network.fused import FUSED_OPS
from tuner.network.graph import (Graph, Node, consumers_of, load_model, only_reader, producers_of,
                               rewritten)
from tuner.network.runtime import check_supported
from tuner.network.segments import group_runs, kernel_runs, slot_bases
from tuner.network.quantized_tables import TABLE_LOOKUP, fuse_quantized_tables
from tuner.network.quantized import scalar_quantization
from tuner.network.quantized_codegen import (DEQUANTIZED_PRODUCT, DYNAMIC_QUANTIZE,
                                             QUANTIZATION_RANGE, QUANTIZED_ADD, ZERO_POINTS,
                                             fuse_dequantized_products,
                                             fuse_dynamic_quantizations, fuse_quantized_adds,
                                             fuse_zero_points)
from tuner.network.tasks import extract_tasks
from tuner.ir.target import Target
from tuner.replay.source import NoRecordWarning, ScheduleSource


@dataclass(frozen=True, slots=True)
class PackagedTask:
    """One task of the package: its C symbol, how many nodes call it, where its schedule
    came from (`tuned` False: no record for the target, the default schedule)."""

    task_key: str
    symbol: str
    occurrences: int
    tuned: bool
    gflops: float | None
    share: float  # of the model's task FLOPs


@dataclass(frozen=True, slots=True)
class PackageBuild:
    """What `write_package` wrote, and the extraction's notes (layers left to numpy)."""

    directory: Path
    graph_file: Path
    weights_file: Path
    library: Path | None  # None: the model has no task, nothing to compile
    header: Path | None
    tasks: tuple[PackagedTask, ...]
    notes: tuple[str, ...]
    source: str  # where the schedules were read from

    @property
    def defaulted(self) -> tuple[PackagedTask, ...]:
        return tuple(k for k in self.tasks if not k.tuned)


def write_package(path_or_graph, out_dir, schedules: ScheduleSource, target: Target,
                  inputs: dict | None = None, allow_foreign_target: bool = False,
                  name: str = LIBRARY_NAME) -> PackageBuild:
    """Builds the package of a model (an .onnx path, an `onnx.ModelProto` or a loaded
    `Graph`) into `out_dir`, with each task's schedule chosen from `schedules` for `target`
    (tuner/replay/source.py); `name` names the library (lib<name>.so, <name>.h)."""
    from tuner.replay.aot import build_library, c_name

    if isinstance(path_or_graph, Graph):
        if inputs:
            raise TunerError("input shapes are given when loading a model, not with a Graph")
        graph = path_or_graph
    else:
        graph = load_model(path_or_graph, inputs)
    extraction = extract_tasks(graph)
    check_supported(extraction.graph, FUSED_OPS)  # before anything is compiled
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoRecordWarning)  # reported as `tuned` below
        choices = [schedules.choose(use.task, target, allow_foreign_target)
                   for use in extraction.tasks]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_task = {c.task: c for c in choices}
    graph = fuse_zero_points(fuse_dequantized_products(fuse_dynamic_quantizations(
        fuse_quantized_adds(fuse_quantized_tables(_masked_softmaxes(extraction.graph))))))
    generated, node_functions = _node_functions(graph, target, name)
    calls = {}  # node output -> (the function serving the node, its operand count)
    for node in graph.nodes:
        if node.op_type in FUSED_OPS:
            calls[node.outputs[0]] = (c_name(node.attributes["task"]), len(node.inputs))
        elif node.outputs[0] in generated:
            function = generated[node.outputs[0]]
            calls[node.outputs[0]] = (function.symbol, len(function.operands))

    views = _views(graph)

    def in_library(node: Node) -> bool:
        return node.outputs[0] in calls

    def is_view(node: Node) -> bool:
        return node.outputs[0] in views

    nodes = group_runs(graph.nodes, lambda n: in_library(n) or is_view(n))
    runs = kernel_runs(nodes, in_library, is_view)
    segments = [_segment_function(f"{name}_segment{number}",
                                  [calls[nodes[i].outputs[0]] for i in run
                                   if in_library(nodes[i])], run, target)
                for number, run in enumerate(runs)]
    in_runs = {nodes[i].outputs[0] for run in runs for i in run}
    library = (build_library(choices, out, name, tuple(node_functions) + tuple(segments))
               if choices or node_functions else None)
    arrays = _ArrayStore()
    document = {
        "format": FORMAT, "version": FORMAT_VERSION, "name": graph.name,
        "opset": graph.opset,
        "inputs": [{"name": n, "shape": list(s)} for n, s in graph.inputs.items()],
        "outputs": list(graph.outputs),
        "library": library.shared_library.name if library else None,
        "target": {"cpu": target.cpu, "threads": target.threads, "key": target.key,
                   "cpu_flags": cpu_flags(target.features)},
        "initializers": {tensor: arrays.add(value, f"initializer '{tensor}'")
                         for tensor, value in graph.initializers.items()},
        "nodes": [_node_json(node, graph, by_task, generated, arrays,
                             views.get(node.outputs[0]) if node.outputs[0] in in_runs else None)
                  for node in nodes],
        "segments": [{"function": function.symbol, "nodes": list(run)}
                     for function, run in zip(segments, runs)],
    }
    graph_file, weights_file = out / GRAPH_FILE, out / WEIGHTS_FILE
    graph_file.write_text(json.dumps(document, indent=1) + "\n")
    np.savez(weights_file, **arrays.arrays)
    tasks = tuple(PackagedTask(use.task.key, c_name(use.task), use.occurrences,
                                   by_task[use.task].tuned, by_task[use.task].gflops,
                                   use.share)
                    for use in extraction.tasks)
    return PackageBuild(out, graph_file, weights_file,
                        library.shared_library if library else None,
                        library.header if library else None, tasks, extraction.notes,
                        schedules.name)


def _segment_function(symbol: str, calls: list[tuple[str, int]], nodes: range, target):
    """The segment function of a run of kernel nodes (tuner/network/segments.py): it calls
    each node's function (`calls`: its symbol and operand count) with its (out, operand...)
    pointers from consecutive slots."""
    from llvmlite import ir

    from tuner.replay.aot import LinkedFunction
    from tuner.codegen.irutil import I64, PTR, VOID
    from tuner.codegen.jit import compile_ir_object

    module = ir.Module(name=symbol)
    function = ir.Function(module, ir.FunctionType(VOID, [PTR]), name=symbol)
    builder = ir.IRBuilder(function.append_basic_block("entry"))
    slots = function.args[0]
    callees = {}
    for (callee, operands), base in zip(calls, slot_bases([n for _, n in calls])):
        if callee not in callees:
            callees[callee] = ir.Function(
                module, ir.FunctionType(VOID, [PTR] * (1 + operands)), name=callee)
        arguments = [builder.load(builder.gep(slots, [ir.Constant(I64, base + k)],
                                              source_etype=PTR), typ=PTR)
                     for k in range(1 + operands)]
        builder.call(callees[callee], arguments)
    builder.ret_void()
    declaration = (f"/* segment: calls the functions of nodes {nodes.start}..{nodes.stop - 1} "
                   f"of graph.json in order, on the pointers in slots: per node its output "
                   f"then its operands */\nvoid {symbol}(void *const *slots);")
    return LinkedFunction(symbol, compile_ir_object(str(module), target), declaration)


VIEW_OPS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
MASKED_SOFTMAX = "TunerMaskedSoftmax"  # Softmax(x + mask): only a generated function runs it


def _masked_softmaxes(graph: Graph) -> Graph:
    """`graph` with each Add of a mask before a Softmax, where the Softmax's function can
    add it (row_codegen.softmax_ir: one row of mask for all rows, as BERT's [1, 1, 1, S]),
    made one MASKED_SOFTMAX node of (x, mask): the scores are then not written and read
    again, and the Add no longer splits the segment."""
    from tuner.network.row_codegen import row_view

    consumers, producers = consumers_of(graph.nodes), producers_of(graph.nodes)
    replaced, dropped = {}, set()
    for node in graph.nodes:
        if node.op_type != "Softmax" or node.domain not in ("", "ai.onnx"):
            continue
        add = producers.get(node.inputs[0])
        shape = graph.shapes.get(node.inputs[0])
        view = None if shape is None else row_view("Softmax", node.attributes, shape,
                                                   graph.opset)
        if add is None or add.op_type != "Add" or view is None or len(add.inputs) != 2 \
                or only_reader(add.outputs[0], graph, consumers) is not node:
            continue
        for x, mask in (add.inputs, add.inputs[::-1]):
            mask_shape = _shape_of(mask, graph)
            if graph.shapes.get(x) == shape and mask_shape is not None \
                    and len(mask_shape) <= len(shape) and mask_shape[-1:] == (view[1],) \
                    and math.prod(mask_shape) == view[1] == shape[-1]:
                replaced[id(node)] = Node(MASKED_SOFTMAX, node.name, (x, mask),
                                          node.outputs, dict(node.attributes))
                dropped.add(id(add))
                break
    return rewritten(graph, replaced, dropped, graph.initializers) if replaced else graph


def _shape_of(name: str, graph: Graph) -> tuple[int, ...] | None:
    """The static shape of a value or an initializer, if known."""
    if name in graph.initializers:
        return tuple(graph.initializers[name].shape)
    return graph.shapes.get(name)


def _views(graph: Graph) -> dict[str, tuple[int, ...]]:
    """The result shapes of the nodes that only reshape a float tensor: a segment runs them
    as views of their input's bytes (segments.py)."""
    return {node.outputs[0]: tuple(graph.shapes[node.outputs[0]]) for node in graph.nodes
            if node.op_type in VIEW_OPS and node.domain in ("", "ai.onnx")
            and len(node.outputs) == 1 and node.outputs[0] in graph.shapes
            and node.inputs[0] in graph.shapes
            and math.prod(graph.shapes[node.outputs[0]]) == math.prod(
                graph.shapes[node.inputs[0]])}


@dataclass(frozen=True, slots=True)
class _NodeFunction:
    """A generated function serving a node the numpy runtime would run: its symbol, its
    operands in argument order as (operand name, the node's input, shape, constant, element
    type), and the shape and element type of its output."""

    symbol: str
    operands: tuple[tuple[str, str, tuple[int, ...], bool, str], ...]
    out_shape: tuple[int, ...]
    out_dtype: str


def _node_functions(graph: Graph, target, name: str) -> tuple[dict, list]:
    """Generated functions for the nodes that have one: MaxPool and GlobalAveragePool after a
    kernel (pool_codegen.py; a float32 tensor, with the kernels in a segment), and
    LayerNormalization with constant scale and bias, and Softmax, over rows (row_codegen.py);
    a quantized residual Add, a dequantized product and a dynamic quantization
    (quantized_codegen.py). One function per distinct node; returns the function by node
    output, and the compiled functions."""
    from tuner.replay.aot import C_TYPES, LinkedFunction
    from tuner.codegen.jit import compile_ir_object

    # the float32 tensors kernels write (an int8 layer's uint8 output is pooled in numpy)
    made_by_kernels = {node.outputs[0] for node in graph.nodes
                       if (node.op_type in FUSED_OPS
                           and node.attributes["task"].dag().output.dtype == "float32")
                       or node.op_type == DEQUANTIZED_PRODUCT}
    made, served, functions = {}, {}, []
    for node in graph.nodes:
        if node.domain not in ("", "ai.onnx") or any(node.outputs[1:]) \
                or not node.inputs or node.inputs[0] not in graph.shapes:
            continue
        plan = _generation_plan(node, graph, made_by_kernels)
        if plan is None:
            continue
        key, operands, out_shape, out_dtype, generate, comment = plan
        if key not in made:
            symbol = f"{name}_{node.op_type.lower()}{len(made)}"
            arguments = ", ".join(f"const {C_TYPES[dtype]} *restrict {role}"
                                  for role, _, _, _, dtype in operands)
            declaration = (f"/* {node.op_type}: {comment} */\n"
                           f"void {symbol}({C_TYPES[out_dtype]} *restrict out, {arguments});")
            functions.append(LinkedFunction(
                symbol, compile_ir_object(generate(symbol, target.machine, target.threads),
                                          target), declaration))
            made[key] = symbol
        served[node.outputs[0]] = _NodeFunction(made[key], operands, out_shape, out_dtype)
    return served, functions


def _generation_plan(node: Node, graph: Graph, made_by_kernels: set[str]):
    """(key, operands, output shape, output element type, generate(symbol, machine, threads)
    -> IR, comment) for a node that a generated function can serve, else None. Nodes with the
    same key share a function."""
    from templates._common import GELU_VALUES
    from tuner.network.pool_codegen import global_average_pool_ir, maxpool_ir, pool_windows
    from tuner.network.quantized_codegen import (DequantizedProduct, QuantizedAdd,
                                                 dequantize_ir, dequantized_product_ir,
                                                 dynamic_quantize_ir, quantization_range_ir,
                                                 quantize_ir, quantized_add_ir,
                                                 table_lookup_ir, zero_points_ir)
    from tuner.network.row_codegen import layer_norm_ir, row_view, softmax_ir

    shape = tuple(graph.shapes[node.inputs[0]])
    text = "x".join(map(str, shape))
    x = (("x", node.inputs[0], shape, False, "float32"),)
    if node.op_type == QUANTIZED_ADD:
        add = QuantizedAdd(**node.attributes)
        count = math.prod(shape)
        operands = tuple((role, source, shape, source in graph.initializers, dtype)
                         for role, source, dtype in zip("ab", node.inputs,
                                                        (add.a_type, add.b_type)))
        relu = " max(., 0)," if add.relu else ""
        return ((add, count), operands, shape, add.y_type,
                lambda s, m, t: quantized_add_ir(s, count, add, m, t),
                f"out[{text}] = quantize(dequantize(a) + dequantize(b)),{relu} as ONNX's "
                f"DequantizeLinear, Add, QuantizeLinear compute it")
    if node.op_type == DEQUANTIZED_PRODUCT:
        product = DequantizedProduct(**node.attributes)
        roles = (("sums", "int32"),) + (
            (("params", "float32"), ("weight_scale", "float32"), ("negated_sums", "int32"))
            if product.dynamic else (("scale", "float32"),))
        roles += ((("bias", "float32"),) if product.bias else ()) + \
            ((("residual", "float32"),) if product.residual else ())
        operands = tuple((role, source, _shape_of(source, graph),
                          source in graph.initializers, dtype)
                         for (role, dtype), source in zip(roles, node.inputs))
        out = tuple(graph.shapes[node.outputs[0]])
        channel = f"[row % {product.row_channels}]" if product.row_channels else "[column]"
        at = channel if product.per_channel else "[0]"
        sums = f"float(sums + int(params[1]) * negated_sums{channel}) * (params[0] * " \
            f"weight_scale{at})" if product.dynamic else f"float(sums) * scale{at}"
        bias = f" + bias{channel}" if product.bias else ""
        gelu = ", then max(., 0)" if product.relu else \
            f", then GELU ({GELU_VALUES[product.gelu]})" if product.gelu else ""
        residual = ", then + residual" if product.residual else ""
        residual += ", then max(., 0)" if product.residual_relu else ""
        return (product, operands, out, "float32",
                lambda s, m, t: dequantized_product_ir(s, product, m, t),
                f"out[{product.rows}x{product.width}] = {sums}{bias}{gelu}{residual}")
    if node.op_type == QUANTIZATION_RANGE:
        count = node.attributes["count"]
        return ((QUANTIZATION_RANGE, count), x, (2,), "float32",
                lambda s, m, t: quantization_range_ir(s, count, m),
                f"out[2] = the scale and zero point of x[{text}] (DynamicQuantizeLinear)")
    quantization = scalar_quantization(node, graph) \
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") else None
    if quantization is not None:  # one scale and zero point (no blocks)
        etype = quantization[2]
        count = math.prod(shape)
        quantize = node.op_type == "QuantizeLinear"
        generate = quantize_ir if quantize else dequantize_ir
        operands = (("x", node.inputs[0], shape, False, "float32" if quantize else etype),
                    ("scale", node.inputs[1], _shape_of(node.inputs[1], graph), True,
                     "float32"),
                    ("zero_point", node.inputs[2], _shape_of(node.inputs[2], graph), True,
                     etype))
        formula = "saturate(round_half_even(x / scale) + zero_point)" if quantize else \
            "(float(x) - zero_point) * scale"
        return ((node.op_type, count, etype), operands, shape,
                etype if quantize else "float32",
                lambda s, m, t: generate(s, count, etype, m, t),
                f"out[{text}] = {formula} ({node.op_type}, one scale and zero point)")
    if node.op_type == TABLE_LOOKUP:
        count = math.prod(shape)
        x_type, y_type = node.attributes["x_type"], node.attributes["y_type"]
        operands = (("x", node.inputs[0], shape, False, x_type),
                    ("table", node.inputs[1], (256,), True, y_type))
        return ((TABLE_LOOKUP, count), operands, shape, y_type,
                lambda s, m, t: table_lookup_ir(s, count, t),
                f"out[{text}] = table[x]: an elementwise chain of the quantized x "
                f"(quantized_tables.py)")
    if node.op_type == ZERO_POINTS:
        return (ZERO_POINTS, (("params", node.inputs[0], (2,), False, "float32"),), (2,),
                "int32", lambda s, m, t: zero_points_ir(s),
                "out[2] = the zero point of a range's params (int(params[1])), then 0")
    if node.op_type == DYNAMIC_QUANTIZE:
        count = node.attributes["count"]
        params = ("params", node.inputs[1], (2,), False, "float32")
        return ((DYNAMIC_QUANTIZE, count), x + (params,), shape, "uint8",
                lambda s, m, t: dynamic_quantize_ir(s, count, m, t),
                f"out[{text}] = saturate(round(x / params[0]) + params[1]) "
                f"(DynamicQuantizeLinear)")
    if node.op_type in ("MaxPool", "GlobalAveragePool"):
        if node.inputs[0] not in made_by_kernels:
            return None
        if node.op_type == "MaxPool":
            windows = pool_windows(shape, node.attributes)
            if windows is None:
                return None
            out = windows.out_shape
            return (windows, x, out, "float32",
                    lambda s, m, t: maxpool_ir(s, windows, m, t),
                    f"out[{'x'.join(map(str, out))}] from x[{text}]")
        if len(shape) < 3:
            return None
        out = shape[:2] + (1,) * (len(shape) - 2)
        return (("GlobalAveragePool", shape), x, out, "float32",
                lambda s, m, t: global_average_pool_ir(s, shape, m, t),
                f"out[{'x'.join(map(str, out))}] from x[{text}]")
    if node.op_type == MASKED_SOFTMAX:
        rows, width = row_view("Softmax", node.attributes, shape, graph.opset)
        mask = node.inputs[1]
        operands = x + (("mask", mask, _shape_of(mask, graph), mask in graph.initializers,
                         "float32"),)
        return (("Softmax", rows, width, "mask"), operands, shape, "float32",
                lambda s, m, t: softmax_ir(s, rows, width, m, t, mask=True),
                f"out, x[{rows}x{width}], each row plus mask[{width}] normalised")
    view = row_view(node.op_type, node.attributes, shape, graph.opset)
    if view is None:
        return None
    rows, width = view
    if node.op_type == "Softmax":
        return (("Softmax", rows, width), x, shape, "float32",
                lambda s, m, t: softmax_ir(s, rows, width, m, t),
                f"out, x[{rows}x{width}], each row normalised")
    constants = [name for name in node.inputs[1:3] if name]
    if any(name not in graph.initializers or graph.initializers[name].size != width
           for name in constants) or len(node.inputs) < 2 or not node.inputs[1]:
        return None
    epsilon = float(node.attributes.get("epsilon", 1e-5))
    bias = len(constants) == 2
    operands = x + tuple((role, name, graph.initializers[name].shape, True, "float32")
                         for role, name in zip(("scale", "bias"), constants))
    return (("LayerNormalization", rows, width, epsilon, bias), operands, shape, "float32",
            lambda s, m, t: layer_norm_ir(s, rows, width, epsilon, True, bias, m, t),
            f"out, x[{rows}x{width}] normalised per row (epsilon {epsilon:g}), scale, "
            f"bias [{width}]")


class _ArrayStore:
    """Arrays for the .npz under generated keys ('a0', 'a1', ...)."""

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def add(self, value, what: str) -> str:
        array = np.asarray(value)
        if array.dtype.hasobject:  # would need pickle to load
            raise TunerError(f"{what} holds Python objects ({array.dtype}); a package stores "
                             f"numeric and string tensors only")
        key = f"a{len(self.arrays)}"
        self.arrays[key] = array
        return key


def _node_json(node: Node, graph: Graph, by_task, generated: dict,
               arrays: _ArrayStore, view: tuple[int, ...] | None) -> dict:
    entry = {"op_type": node.op_type, "name": node.name, "domain": node.domain,
             "inputs": list(node.inputs), "outputs": list(node.outputs)}
    if node.op_type in FUSED_OPS:
        entry["attributes"] = {}
        entry["kernel"] = _kernel_json(node, graph, by_task[node.attributes["task"]])
        return entry
    entry["attributes"] = {name: _attribute_json(value, arrays, node, name)
                           for name, value in node.attributes.items()}
    if view is not None:  # a view of a value its segment made (segments.py)
        entry["view"] = {"result_shape": list(view)}
    if node.outputs[0] in generated:  # a generated function; the attributes say what it does
        function = generated[node.outputs[0]]
        entry["kernel"] = {"symbol": function.symbol, "operands": [
            {"name": role, "input": source, "shape": list(shape), "constant": constant,
             "packed": None, "dtype": dtype}
            for role, source, shape, constant, dtype in function.operands],
            "output_shape": list(function.out_shape),
            "result_shape": list(function.out_shape), "output_dtype": function.out_dtype}
    return entry


def _kernel_json(node: Node, graph: Graph, choice) -> dict:
    """How the fused node calls its kernel: `symbol(out, operand...)` in the template's
    operand order, the constant operands read from the named initializers (packed first by
    the named function into the given shape), and the node's output shape (a matmul's output
    is M x N, the node's keeps the activation's leading dimensions)."""
    from tuner.replay.aot import c_name
    from tuner.codegen.emit import pack_function_name
    from tuner.ir.layout import packed_dtype, packed_layout
    task = choice.task
    dag = task.dag()
    nest = choice.nest
    symbol = c_name(task)
    operands = []
    for op, source in zip(dag.inputs, node.inputs):
        packed = None
        if op.name in nest.layout_rewrite:
            machine = choice.target.machine
            packed = {"function": pack_function_name(symbol, op.name),
                      "shape": [p.extent for p in packed_layout(nest, op, machine)],
                      "dtype": packed_dtype(nest, op, machine)}
        # an int8 layer's scale and zero points are initializers too (a dynamically
        # quantized one's are computed at run time)
        # (a dynamically quantized layer's bias is computed at run time too)
        constant = source in graph.initializers and (op.constant or op in dag.quant_operands)
        operands.append({"name": op.name, "input": source, "shape": list(op.array_shape),
                         "constant": constant, "packed": packed, "dtype": op.dtype})
    out_shape = dag.output.array_shape
    result_shape = out_shape
    if "result_shape" in node.attributes:  # a view's, whose nodes the kernel replaced
        result_shape = node.attributes["result_shape"]
    elif task.op == "matmul":  # extraction made a task only of a static activation shape
        result_shape = graph.shapes[node.inputs[0]][:-1] + out_shape[-1:]
    return {"symbol": symbol, "task": task.key, "tuned": choice.tuned,
            "threads": choice.target.threads, "operands": operands,
            "output_shape": list(out_shape), "result_shape": list(result_shape),
            "output_dtype": dag.output.dtype}


def _attribute_json(value, arrays: _ArrayStore, node: Node, name: str):
    """A JSON value for an attribute: tensors go to the .npz as {"tensor": key} (a list of
    them as {"tensors": [...]}); ONNX attributes are never dicts, so a dict is such a tag."""
    what = f"attribute '{name}' of node '{node.name}'"
    if isinstance(value, np.ndarray):
        return {"tensor": arrays.add(value, what)}
    if isinstance(value, (list, tuple)) and value and \
            all(isinstance(v, np.ndarray) for v in value):
        return {"tensors": [arrays.add(v, what) for v in value]}
    if isinstance(value, (list, tuple)):
        return [_attribute_json(v, arrays, node, name) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TunerError(f"{what} is a {type(value).__name__}, which a package cannot store")
