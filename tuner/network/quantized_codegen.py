"""A quantized model's elementwise chains as generated functions of its package's library.

(Any other QuantizeLinear or DequantizeLinear of one scale and zero point is a generated
function of its own in a package, `quantize_ir` and `dequantize_ir`: numpy's float32
operations in numpy's order, so its bytes and floats.)

Between its int8 kernels, a quantized model is chains of elementwise nodes that numpy would
run one pass each, with float temporaries between them, outside the package's runs of kernels.
Two chains matter, and each becomes one node here, which a package runs with one generated
function, in one pass, inside its segment and on the kernels' threads.

**A residual Add** (`quantize_static`, QDQ): two DequantizeLinear nodes, a float Add
(sometimes a Relu after it) and a QuantizeLinear:

    a (uint8) -> DequantizeLinear --\
                                     Add -> [Relu] -> QuantizeLinear -> y (uint8)
    b (uint8) -> DequantizeLinear --/

In numpy that is five passes over the tensor with float32 temporaries between them: on Zen 3
the 16 residual blocks of a quantized ResNet-50 took 25 ms of its 119 ms at one thread, more
than any of its layers, and each split the package's run of kernels in two. `fuse_quantized_adds`
makes each such chain one `TunerQuantizedAdd` node of (a, b), and `quantized_add_ir` the
function a package runs it with, inside its segment, in one pass and on the kernels' threads:

    void <symbol>(uint8_t *restrict out, const uint8_t *restrict a, const uint8_t *restrict b);

(`int8_t` for an operand or output whose zero point is int8.) It computes what the five nodes
compute, in the same float32 operations in the same order, so its output equals theirs bit
for bit:

    real = (float(a) - a_zero) * a_scale + (float(b) - b_zero) * b_scale
    real = max(real, 0)                                         (with a Relu)
    y    = saturate(round_half_even(real / y_scale) + y_zero)   (ONNX QuantizeLinear)

No fused multiply-add: the product is rounded to float32 before the sum, as numpy rounds it;
the division stays a division (LLVM keeps both without fast-math flags).

Only per-tensor scales and zero points that are initializers, operands of the same static
shape (no broadcasting) and 8-bit types are taken; any other such chain stays numpy nodes.
The node exists only in packages (write_package rewrites the graph when it generates the
functions): the numpy runtime has no implementation of it.

**A dequantized product** (`quantize_dynamic`): the int32 sums of a MatMulInteger (an int8
kernel here) cast to float, times the run-time scale (the activation's, from its
DynamicQuantizeLinear, times the weight's), plus the float bias, and often a GELU (the FFN's
first layer, as an Erf chain or a Gelu node: patterns.match_gelu) or a Relu, or a residual
Add:

    void <symbol>(float *restrict out, const int32_t *restrict sums, const float *restrict params,
                  const float *restrict weight_scale, const int32_t *restrict negated_sums,
                  const float *restrict bias, const float *restrict residual);
    out = gelu(float(sums + int(params[1]) * negated_sums[column])
               * (params[0] * weight_scale[column]) + bias[column]) + residual
        (bias, gelu or max(., 0), residual where the model has them; weight_scale[0] per tensor)

`params` are the two floats of the activation's range (its scale and zero point, below), so
no node runs between the range and the product: the kernel sums the stored activation times
the weight, and the zero point's share (quantized._matmul_integer) is added here, in int32 as
numpy adds it. Where the scale is some other value (of one element, or one per column), the
function takes it instead: out = float(sums) * scale[column] + .... The cast, products and
sums are numpy's float32 and int32 operations in the same order, so without GELU the output
is numpy's bit for bit; the GELU is tuner.codegen.vmath's, as in the float kernels' epilogue
(within a few float32 roundings of numpy's float64 Erf). On Zen 3 at one thread, the
BERT-base layer quantized by quantize_dynamic spent 11.9 ms of its 32.6 in the GELU's five
numpy nodes alone; the numpy nodes that made each product's scale, zero point and bias
(a Gather, Casts, Muls, a Reshape, a Concat: about 10 us each) and its residual Add split the
package's run of kernels in eight (`fuse_dequantized_products`).

**A dynamic quantization** (`quantize_dynamic`): DynamicQuantizeLinear quantizes a float
activation with the scale and zero point of its own range. numpy takes seven passes over it
(min, max, the division, rounding, the zero point, clipping, the cast), on one thread: 1.2-1.6
ms of the BERT-base layer's 14 ms on Zen 3 at one thread or two. `fuse_dynamic_quantizations`
makes the node two generated functions, the range in one pass and the quantization in
another, shared among the threads:

    void <symbol>(float *restrict out, const float *restrict x);      /* out[2]: scale, zero */
    void <symbol>(uint8_t *restrict out, const float *restrict x, const float *restrict params);

    low, high = min(0, min(x)), max(0, max(x))
    scale     = (high - low) / 255, or 1 where that is 0
    zero      = clip(round_half_even(0 - low / scale), 0, 255)
    out       = saturate(round_half_even(x / scale) + zero)             (ONNX QuantizeLinear)

in the float32 operations of quant_ops.dynamic_quantize_linear, in its order, so the outputs
equal numpy's bit for bit (a NaN in x is dropped by the range here, where numpy's min and max
return it). The scale and the zero point reach the dequantized products through the two
floats, and any other node that reads them through a Gather (and a Cast to uint8) of them;
a convolution, which pads its input with the zero point, through its zero points operand,
which one more function makes of the two floats (`fuse_zero_points`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from llvmlite import ir

from tuner.codegen import vmath
from tuner.codegen.irutil import (F32, I1, I8, I32, I64, elem_ptr, intrinsic, low_bytes,
                                  masked_load, masked_store, runtime_loop, splat, type_name, vec_type)
from tuner.ir.machine import Machine
from tuner.network.fused import FUSED_OPS
from tuner.network.graph import (Graph, Node, consumers_of, only_reader, producers_of, rewritten,
                                 without_unread)
from tuner.network.patterns import match_gelu
from tuner.network.quantized import scalar_quantization
from tuner.network.row_codegen import combine_lanes, over_row, over_rows

QUANTIZED_ADD = "TunerQuantizedAdd"
DEQUANTIZED_PRODUCT = "TunerDequantizedProduct"
QUANTIZATION_RANGE = "TunerQuantizationRange"
DYNAMIC_QUANTIZE = "TunerDynamicQuantize"
ZERO_POINTS = "TunerZeroPoints"
FLOAT, UINT8 = 1, 2  # ONNX's TensorProto.FLOAT and UINT8, a Cast's `to`
# Below this many elements a call is a few microseconds on one thread, about what waking the
# other threads (GOMP_parallel) costs, so it stays on the calling thread.
PARALLEL_ELEMENTS = 1 << 15
# Elements of a table lookup per step (`table_lookup_ir`): one byte each, a load and a store
# in a scalar loop, the steps shared among the threads.
LOOKUP_BLOCK = 1 << 14


@dataclass(frozen=True, slots=True)
class QuantizedAdd:
    """What a TunerQuantizedAdd node computes (module docstring): the scales and zero points
    of its operands a and b and of its output y, their types ('uint8' or 'int8'), and
    whether a Relu follows the sum. The node's attributes are its fields (`asdict`)."""

    a_scale: float
    a_zero: int
    a_type: str
    b_scale: float
    b_zero: int
    b_type: str
    y_scale: float
    y_zero: int
    y_type: str
    relu: int


def fuse_quantized_adds(graph: Graph) -> Graph:
    """`graph` with each DequantizeLinear pair -> Add -> [Relu] -> QuantizeLinear chain (module
    docstring) made one QUANTIZED_ADD node; a DequantizeLinear that other nodes read too
    stays for them."""
    consumers, producers = consumers_of(graph.nodes), producers_of(graph.nodes)
    replaced: dict[int, Node] = {}
    absorbed: set[int] = set()
    for node in graph.nodes:
        if node.op_type != "QuantizeLinear" or node.domain not in ("", "ai.onnx"):
            continue
        y = scalar_quantization(node, graph)
        before = producers.get(node.inputs[0])
        relu = before is not None and before.op_type == "Relu"
        add = producers.get(before.inputs[0]) if relu else before
        if y is None or add is None or add.op_type != "Add" or len(add.inputs) != 2 \
                or only_reader(add.outputs[0], graph, consumers) is not (before if relu
                                                                          else node) \
                or (relu and only_reader(before.outputs[0], graph, consumers) is not node):
            continue
        dequantized = [producers.get(name) for name in add.inputs]
        operands = [_dequantized_operand(dq, graph) for dq in dequantized]
        shape = graph.shapes.get(add.outputs[0])
        if None in operands or shape is None \
                or any(graph.shapes.get(source) != shape for source, _ in operands):
            continue
        (a, (a_scale, a_zero, a_type)), (b, (b_scale, b_zero, b_type)) = operands
        params = QuantizedAdd(a_scale, a_zero, a_type, b_scale, b_zero, b_type, *y, int(relu))
        replaced[id(node)] = Node(QUANTIZED_ADD, add.name, (a, b), node.outputs,
                                  asdict(params))
        absorbed.update({id(add), id(before)})
        for dq in dequantized:
            if all(id(reader) in absorbed for reader in consumers[dq.outputs[0]]) \
                    and dq.outputs[0] not in graph.outputs:
                absorbed.add(id(dq))
    if not replaced:
        return graph
    return rewritten(graph, replaced, absorbed, dict(graph.initializers))


def _dequantized_operand(dq: Node | None, graph: Graph):
    """(the quantized input, its quantization) of a DequantizeLinear node, else None."""
    if dq is None or dq.op_type != "DequantizeLinear" or dq.domain not in ("", "ai.onnx"):
        return None
    quantization = scalar_quantization(dq, graph)
    return None if quantization is None else (dq.inputs[0], quantization)


def quantized_add_ir(symbol: str, count: int, add: QuantizedAdd, machine: Machine,
                     threads: int) -> str:
    """The LLVM IR of `void symbol(out, a, b)` over `count` elements of each (module
    docstring), in vectors of the machine's float lanes, shared among `threads` in static
    blocks of vectors; the last partial vector on the calling thread."""
    lanes = machine.lanes
    module = ir.Module(name=symbol)

    def vector(b: ir.IRBuilder, args: list[ir.Value], at: ir.Value, n: int) -> None:
        f32 = vec_type(lanes)

        def const(value: float) -> ir.Constant:
            return ir.Constant(f32, [float(value)] * lanes)

        def real(pointer: ir.Value, scale: float, zero: int, etype: str) -> ir.Value:
            loaded = _load(b, elem_ptr(b, pointer, at, I8), n, lanes, I8)
            widen = b.sext if etype == "int8" else b.zext
            value = b.sitofp(widen(loaded, vec_type(lanes, I32)), f32)
            return b.fmul(b.fsub(value, const(zero)), const(scale))

        total = b.fadd(real(args[1], add.a_scale, add.a_zero, add.a_type),
                       real(args[2], add.b_scale, add.b_zero, add.b_type))
        if add.relu:
            total = b.select(b.fcmp_ordered(">", total, const(0)), total, const(0))
        out = _quantize(b, total, const(add.y_scale), const(add.y_zero), add.y_type, machine)
        _store(b, out, elem_ptr(b, args[0], at, I8), n)

    return _over_elements(module, symbol, 3, count, lanes, threads, vector)


def _quantize(b: ir.IRBuilder, real: ir.Value, scale: ir.Value, zero: ir.Value,
              etype: str, machine: Machine) -> ir.Value:
    """ONNX QuantizeLinear of the float32 vector `real`: saturate(round_half_even(real /
    scale) + zero) to `etype` ('uint8' or 'int8'), as bytes; `scale` and `zero` are float32
    vectors. A true division, as numpy's: a reciprocal multiply rounds ties differently."""
    f32 = real.type
    q = b.fdiv(real, scale)
    q = b.call(intrinsic(b.module, f"llvm.roundeven.{type_name(f32)}", f32, [f32]), [q])
    q = b.fadd(q, zero)
    info = np.iinfo(etype)
    low = ir.Constant(f32, [float(info.min)] * f32.count)
    high = ir.Constant(f32, [float(info.max)] * f32.count)
    q = b.select(b.fcmp_ordered("<", q, low), low, q)
    q = b.select(b.fcmp_ordered(">", q, high), high, q)
    return low_bytes(b, b.fptosi(q, vec_type(f32.count, I32)), machine.vector_bits == 512)


def quantize_ir(symbol: str, count: int, etype: str, machine: Machine, threads: int) -> str:
    """The LLVM IR of `void symbol(out, x, scale, zero_point)`: ONNX QuantizeLinear of
    `count` float32 values with one scale and zero point (of `etype`, as out), in
    quant_ops.quantize's float32 operations and order (so numpy's bytes), in vectors shared
    among `threads` (`_over_elements`)."""
    lanes = machine.lanes

    def vector(b: ir.IRBuilder, args: list[ir.Value], at: ir.Value, n: int) -> None:
        scale, zero = _scalar_quantization(b, args[2], args[3], etype, lanes)
        real = _load(b, elem_ptr(b, args[1], at), n, lanes, F32)
        _store(b, _quantize(b, real, scale, zero, etype, machine), elem_ptr(b, args[0], at, I8),
               n)

    return _over_elements(ir.Module(name=symbol), symbol, 4, count, lanes, threads, vector)


def dequantize_ir(symbol: str, count: int, etype: str, machine: Machine, threads: int) -> str:
    """The LLVM IR of `void symbol(out, x, scale, zero_point)`: ONNX DequantizeLinear of
    `count` values of `etype` with one scale and zero point, (float32(x) - zero) * scale in
    float32 as quant_ops.dequantize_linear computes it, in vectors shared among `threads`."""
    lanes = machine.lanes
    vector_type = vec_type(lanes, F32)

    def vector(b: ir.IRBuilder, args: list[ir.Value], at: ir.Value, n: int) -> None:
        scale, zero = _scalar_quantization(b, args[2], args[3], etype, lanes)
        stored = _load(b, elem_ptr(b, args[1], at, I8), n, lanes, I8)
        real = b.sitofp(stored, vector_type) if etype == "int8" else \
            b.uitofp(stored, vector_type)
        _store(b, b.fmul(b.fsub(real, zero), scale), elem_ptr(b, args[0], at), n)

    return _over_elements(ir.Module(name=symbol), symbol, 4, count, lanes, threads, vector)


def table_lookup_ir(symbol: str, count: int, threads: int) -> str:
    """The LLVM IR of `void symbol(out, x, table)` (quantized_tables.py): out[i] =
    table[x[i] as a byte] for the `count` elements, in blocks of LOOKUP_BLOCK shared among
    `threads` (`_over_elements`)."""

    def block(b: ir.IRBuilder, args: list[ir.Value], at: ir.Value, n: int) -> None:
        def element(i: ir.Value) -> None:
            index = b.add(at, i)
            byte = b.load(elem_ptr(b, args[1], index, I8), typ=I8)
            value = b.load(elem_ptr(b, args[2], b.zext(byte, I64), I8), typ=I8)
            b.store(value, elem_ptr(b, args[0], index, I8))

        runtime_loop(b, 0, n, element, "lookup")

    return _over_elements(ir.Module(name=symbol), symbol, 3, count, LOOKUP_BLOCK, threads,
                          block)


def _scalar_quantization(b: ir.IRBuilder, scale: ir.Value, zero: ir.Value, etype: str,
                         lanes: int) -> tuple[ir.Value, ir.Value]:
    """The scale (float32) and the zero point (a byte of `etype`) at the two pointers, as
    float32 vectors of `lanes`."""
    point = b.load(zero, typ=I8)
    point = b.sitofp(point, F32) if etype == "int8" else b.uitofp(point, F32)
    return splat(b, b.load(scale, typ=F32, align=4), lanes), splat(b, point, lanes)


def _over_elements(module: ir.Module, symbol: str, pointers: int, count: int, lanes: int,
                   threads: int, vector) -> str:
    """`void symbol(...)` (`pointers` pointers) running `vector(builder, pointers, at, n)`
    over `count` elements, a vector of `lanes` from element `at` at a time (`n` of its lanes
    in range), the vectors shared among `threads` in static blocks from PARALLEL_ELEMENTS
    elements on; the last partial vector on the calling thread."""
    vectors, tail = divmod(count, lanes)

    def full(b: ir.IRBuilder, args: list[ir.Value], v: ir.Value) -> None:
        vector(b, args, b.mul(v, ir.Constant(I64, lanes)), lanes)

    def last(b: ir.IRBuilder, args: list[ir.Value]) -> None:
        if tail:
            vector(b, args, ir.Constant(I64, vectors * lanes), tail)

    return over_rows(module, symbol, pointers, vectors,
                     threads if count >= PARALLEL_ELEMENTS else 1, full, last)


def _load(b: ir.IRBuilder, pointer: ir.Value, n: int, lanes: int, etype: ir.Type) -> ir.Value:
    """`lanes` elements from `pointer`, of which only the first `n` are read (a row's last
    partial vector, through a masked load: nothing past the buffer is touched)."""
    if n == lanes:
        return b.load(pointer, typ=vec_type(lanes, etype), align=1)
    return masked_load(b, pointer, _first(n, lanes), lanes, etype)


def _store(b: ir.IRBuilder, value: ir.Value, pointer: ir.Value, n: int) -> None:
    """The first `n` lanes of `value` to `pointer`."""
    if n == value.type.count:
        b.store(value, pointer, align=1)
    else:
        masked_store(b, value, pointer, _first(n, value.type.count))


def _first(n: int, lanes: int) -> ir.Constant:
    return ir.Constant(ir.VectorType(I1, lanes), [int(i < n) for i in range(lanes)])


# ------------------------------------------------------------------ dequantized products
@dataclass(frozen=True, slots=True)
class DequantizedProduct:
    """What a TunerDequantizedProduct node computes (module docstring) over `rows` x
    `width` int32 sums: with a bias of `width` floats or not, the GELU form
    (templates/_common.GELU_VALUES: 0 none, 1 erf, 2 tanh), and a residual of the output's
    shape added last or not. `dynamic`: the scale and the input zero point are a
    DynamicQuantizeLinear's, read from its range's two floats at run time, the scale times
    the weight's, and the sums are a kernel's of the stored activation, to which this adds
    the zero point's share (zero point x the negated column sums of the weight).
    `per_channel`: the scale (or the weight's, where dynamic) has one value per channel, not
    one. The channels, which the bias and the negated sums have one value each of, are the
    columns, or with `row_channels` K the rows, row r being channel r % K (a convolution's
    N x K x (H x W) output, a product written transposed)."""

    rows: int
    width: int
    bias: bool
    gelu: int
    residual: bool = False
    relu: bool = False  # a Relu after the bias, where no GELU is
    dynamic: bool = False
    per_channel: bool = False
    row_channels: int = 0
    residual_relu: bool = False  # a Relu after the residual Add


def fuse_dequantized_products(graph: Graph) -> Graph:
    """`graph` with each int32 kernel output's Cast -> Mul (a scale per tensor or per
    channel) -> [Add of a constant bias per channel] -> [Relu or GELU] -> [Add of a residual
    [-> Relu]] chain (module docstring) made one DEQUANTIZED_PRODUCT node of (sums, scale[,
    bias][, residual]); a Reshape that keeps the last dimension may stand before the GELU or
    the residual. Where the sums are a MatMulInteger's of a DynamicQuantizeLinear's output
    (quantized._matmul_integer: the kernel's sums plus the zero point's share, then the
    Cast), and its scale and zero point are those of the range before it
    (`fuse_dynamic_quantizations`, run first), the node reads the range's two floats
    instead: (sums, params, weight scale, negated sums[, bias][, residual]). The nodes that
    made the share, the scale and the zero point then go where nothing else reads them
    (graph.without_unread)."""
    consumers, producers = consumers_of(graph.nodes), producers_of(graph.nodes)
    position = {id(node): index for index, node in enumerate(graph.nodes)}
    replaced: dict[int, Node] = {}
    absorbed: set[int] = set()
    for cast in graph.nodes:
        if cast.op_type != "Cast" or cast.domain not in ("", "ai.onnx") \
                or int(cast.attributes.get("to", 0)) != FLOAT or id(cast) in absorbed:
            continue
        shape = graph.shapes.get(cast.inputs[0])
        sums, share = _zero_point_share(cast.inputs[0], graph, producers, consumers)
        kernel = producers.get(sums)
        if kernel is None or kernel.op_type not in FUSED_OPS or not shape \
                or kernel.attributes["task"].dag().output.dtype != "int32":
            continue
        mul = only_reader(cast.outputs[0], graph, consumers, ("Mul",))
        scale = _other_operand(mul, cast.outputs[0])
        if scale is None \
                or graph.shapes.get(mul.outputs[0]) != graph.shapes.get(cast.outputs[0]):
            continue
        dynamic = None
        if share is not None:
            dynamic = _dynamic_quantization(share, scale, graph, producers)
            if dynamic is None:
                continue  # a zero point of another kind: the nodes stay
        chain, value, bias = [cast, mul], mul.outputs[0], None
        add = only_reader(value, graph, consumers, ("Add",))
        row = _other_operand(add, value)
        if row is not None and row in graph.initializers \
                and graph.initializers[row].dtype == np.float32 \
                and _channel_axis(row, shape, graph) is not None \
                and graph.shapes.get(add.outputs[0]) == shape:
            chain, value, bias = chain + [add], add.outputs[0], row
        gelu = 0
        relu = only_reader(value, graph, consumers, ("Relu",))
        if relu is not None:
            chain, value = chain + [relu], relu.outputs[0]
        view = only_reader(value, graph, consumers, ("Reshape",))
        viewed = view is not None and graph.shapes.get(view.outputs[0], ())[-1:] == shape[-1:]
        for start, nodes in ((value, chain), (viewed and view.outputs[0], chain + [view])):
            if not start or relu:
                continue
            found = match_gelu(start, position[id(nodes[-1])] + 1, graph, consumers)
            if found is not None:
                gelu, chain, value = found[0], nodes + found[1], found[1][-1].outputs[0]
                break
        residual = None
        for start, nodes in ((value, chain), (viewed and not gelu and view.outputs[0],
                                              chain + [view])):
            if not start:
                continue
            add = only_reader(start, graph, consumers, ("Add",))
            other = _other_operand(add, start)
            # the sum of two products (a residual block's two branches) is one's, not both's
            if other is not None and id(add) not in absorbed \
                    and other not in graph.initializers \
                    and graph.shapes.get(other) == graph.shapes.get(start) \
                    and graph.shapes.get(add.outputs[0]) == graph.shapes.get(start):
                residual, chain = other, nodes + [add]
                break
        after = only_reader(chain[-1].outputs[0], graph, consumers, ("Relu",)) \
            if residual is not None else None
        if after is not None:  # a residual block's Relu after its sum
            chain = chain + [after]
        inputs = (sums, scale)
        if dynamic is not None:
            range_params, weight_scale, negated = dynamic
            inputs = (sums, range_params, weight_scale, negated)
        factor = inputs[-2] if dynamic is not None else scale
        axes = {name: _channel_axis(name, shape, graph)
                for name in (factor, bias, inputs[-1] if dynamic else None) if name}
        channel = {axis for axis in axes.values() if axis not in (None, ALL)}
        if None in axes.values() or len(channel) > 1 \
                or (bias and axes[bias] == ALL) or (dynamic and axes[inputs[-1]] == ALL):
            continue  # constants that broadcast otherwise than one per channel: nodes stay
        axis = channel.pop() if channel else len(shape) - 1
        by_column = axis == len(shape) - 1
        params = DequantizedProduct(
            math.prod(shape[:axis + (not by_column)]), math.prod(shape[axis + (not by_column):]),
            bias is not None, gelu, residual is not None, relu is not None,
            dynamic is not None, axes[factor] != ALL, 0 if by_column else shape[axis],
            after is not None)
        inputs += ((bias,) if bias else ()) + ((residual,) if residual else ())
        replaced[id(chain[-1])] = Node(DEQUANTIZED_PRODUCT, chain[-1].name, inputs,
                                       chain[-1].outputs[:1], asdict(params))
        absorbed.update(id(node) for node in chain)
    if not replaced:
        return graph
    return without_unread(rewritten(graph, replaced, absorbed - replaced.keys(),
                                    dict(graph.initializers)))


def _zero_point_share(value: str, graph: Graph, producers, consumers) -> tuple[str, str | None]:
    """(the kernel's sums, the zero point's share) where `value` is their Add as
    quantized._matmul_integer writes it, read by one node; else (value, None)."""
    add = producers.get(value)
    if add is None or add.op_type != "Add" or len(add.inputs) != 2 \
            or only_reader(value, graph, consumers) is None:
        return value, None
    for sums, share in (add.inputs, add.inputs[::-1]):
        maker = producers.get(sums)
        if maker is not None and maker.op_type in FUSED_OPS \
                and only_reader(sums, graph, consumers) is add \
                and only_reader(share, graph, consumers) is add:
            return sums, share
    return value, None


def _dynamic_quantization(share: str, scale: str, graph: Graph, producers):
    """(the range's params, the weight's scale (an initializer), the negated column sums)
    where `share` is Mul(Cast(zero point), negated sums) and `scale` Mul(the run-time
    scale, a constant float32 weight scale), the scale and zero point read from one
    QUANTIZATION_RANGE's params (`fuse_dynamic_quantizations`: a Gather of each, the zero
    point cast to uint8, then to int32); else None."""
    times = producers.get(share)
    if times is None or times.op_type != "Mul" or len(times.inputs) != 2:
        return None
    consts = graph.initializers
    negated = next((i for i in times.inputs if i in consts and consts[i].dtype == np.int32),
                   None)
    zero = _other_operand(times, negated) if negated else None
    to_int = producers.get(zero) if zero else None
    if to_int is None or to_int.op_type != "Cast" or int(to_int.attributes.get("to", 0)) != 6:
        return None
    to_byte = producers.get(to_int.inputs[0])
    if to_byte is None or to_byte.op_type != "Cast" \
            or int(to_byte.attributes.get("to", 0)) != UINT8:
        return None
    zero_from = _range_float(to_byte.inputs[0], graph, producers)
    product = producers.get(scale)
    if zero_from is None or zero_from[1] != 1 or product is None \
            or product.op_type != "Mul" or len(product.inputs) != 2:
        return None
    for scale_value, weight in (product.inputs, product.inputs[::-1]):
        scale_from = _range_float(scale_value, graph, producers)
        weight_scale = consts.get(weight)
        if scale_from == (zero_from[0], 0) and weight_scale is not None \
                and weight_scale.dtype == np.float32:
            return zero_from[0], weight, negated
    return None


def _range_float(value: str, graph: Graph, producers) -> tuple[str, int] | None:
    """(params, index) where `value` is a Gather of one of a QUANTIZATION_RANGE's two floats
    by a constant index; else None."""
    gather = producers.get(value)
    if gather is None or gather.op_type != "Gather" or len(gather.inputs) != 2:
        return None
    index = graph.initializers.get(gather.inputs[1])
    maker = producers.get(gather.inputs[0])
    if index is None or index.size != 1 or maker is None \
            or maker.op_type != QUANTIZATION_RANGE:
        return None
    return gather.inputs[0], int(index.reshape(()))


def _other_operand(node: Node | None, value: str) -> str | None:
    """The operand of a two-input node besides `value`, which it reads once."""
    if node is None or len(node.inputs) != 2 or node.inputs.count(value) != 1 \
            or len(node.outputs) != 1:
        return None
    return node.inputs[1] if node.inputs[0] == value else node.inputs[0]


ALL = -1  # `_channel_axis` of a value that is one number for the whole product


def _relu(b: ir.IRBuilder, value: ir.Value) -> ir.Value:
    """numpy's maximum(value, 0): NaN and -0.0 kept."""
    zero = ir.Constant(value.type, None)
    return b.select(b.fcmp_unordered(">=", value, zero), value, zero)


def _channel_axis(name: str, shape: tuple[int, ...], graph: Graph) -> int | None:
    """The axis of a product of `shape` along which `name` (broadcast as numpy does) varies,
    its one dimension that is not 1 and equals the product's there; ALL where it is one
    value; None where it is neither or its shape is unknown."""
    value = graph.initializers.get(name)
    of = value.shape if value is not None else graph.shapes.get(name)
    if of is None or len(of) > len(shape):
        return None
    if math.prod(of) == 1:
        return ALL
    aligned = (1,) * (len(shape) - len(of)) + tuple(of)
    varying = [axis for axis, size in enumerate(aligned) if size != 1]
    return varying[0] if len(varying) == 1 and aligned[varying[0]] == shape[varying[0]] \
        else None


def dequantized_product_ir(symbol: str, product: DequantizedProduct, machine: Machine,
                           threads: int) -> str:
    """The LLVM IR of `void symbol(out, sums, scale[, bias][, residual])`, or with `dynamic`
    `void symbol(out, sums, params, weight_scale, negated_sums[, bias][, residual])` (module
    docstring): rows shared among `threads` in static blocks, each in vectors of the
    machine's float lanes; a constant per channel read per column, or once per row."""
    lanes, width = machine.lanes, product.width
    full, tail = divmod(width, lanes)
    module = ir.Module(name=symbol)

    def row(b: ir.IRBuilder, args: list[ir.Value], r: ir.Value) -> None:
        start = b.mul(r, ir.Constant(I64, width))
        channel = b.urem(r, ir.Constant(I64, product.row_channels)) \
            if product.row_channels else None
        operands = iter(args[2:])
        if product.dynamic:
            params, scale_of, negated = next(operands), next(operands), next(operands)
            run_scale = splat(b, b.load(params, typ=F32, align=4), lanes)
            # a whole number in [0, 255]: the range rounds and clips it
            point = b.load(elem_ptr(b, params, ir.Constant(I64, 1)), typ=F32, align=4)
            point = splat(b, b.fptosi(point, I32), lanes)
        else:
            scale_of, negated = next(operands), None
        bias = next(operands) if product.bias else None
        residual = next(operands) if product.residual else None

        def of_row(pointer: ir.Value, etype: ir.Type, at: ir.Value | None) -> ir.Value:
            return splat(b, b.load(elem_ptr(b, pointer, at, etype), typ=etype), lanes)

        def per_channel(pointer: ir.Value, etype: ir.Type):
            """A constant per channel: the row's, or a function of the vector's columns."""
            if channel is not None:
                value = of_row(pointer, etype, channel)
                return lambda at, n: value
            return lambda at, n: _load(b, elem_ptr(b, pointer, at, etype), n, lanes, etype)

        if product.per_channel:
            scale = per_channel(scale_of, F32)
        else:
            whole = of_row(scale_of, F32, ir.Constant(I64, 0))

            def scale(at: ir.Value, n: int) -> ir.Value:
                return whole
        negated_of = per_channel(negated, I32) if negated is not None else None
        bias_of = per_channel(bias, F32) if bias is not None else None

        def vector(at: ir.Value, n: int) -> None:
            here = b.add(start, at)
            sums = _load(b, elem_ptr(b, args[1], here, I32), n, lanes, I32)
            if negated_of is not None:  # int32 arithmetic, as numpy's Mul and Add wrap
                sums = b.add(sums, b.mul(point, negated_of(at, n)))
            factor = scale(at, n)
            if product.dynamic:  # float32(scale x weight scale), as numpy's Mul
                factor = b.fmul(run_scale, factor)
            value = b.fmul(b.sitofp(sums, vec_type(lanes)), factor)
            if bias_of is not None:
                value = b.fadd(value, bias_of(at, n))
            if product.relu:
                value = _relu(b, value)
            if product.gelu:
                value = vmath.gelu(b, value, product.gelu)
            if residual is not None:
                value = b.fadd(value, _load(b, elem_ptr(b, residual, here), n, lanes, F32))
            if product.residual_relu:
                value = _relu(b, value)
            _store(b, value, elem_ptr(b, args[0], here), n)

        runtime_loop(b, 0, full, lambda v: vector(b.mul(v, ir.Constant(I64, lanes)), lanes),
                     "column")
        if tail:
            vector(ir.Constant(I64, full * lanes), tail)

    elements = product.rows * width
    pointers = 3 + 2 * product.dynamic + product.bias + product.residual
    return over_rows(module, symbol, pointers, product.rows,
                     threads if elements >= PARALLEL_ELEMENTS else 1, row)


# ------------------------------------------------------------------ dynamic quantizations
def fuse_dynamic_quantizations(graph: Graph) -> Graph:
    """`graph` with each DynamicQuantizeLinear of a float32 tensor of static shape made a
    QUANTIZATION_RANGE node (the scale and zero point, as two floats) and a DYNAMIC_QUANTIZE
    node (module docstring); the scale and zero point outputs, where read, are a Gather of
    those floats (and a Cast to uint8 of the zero point)."""
    replaced: dict[int, Node] = {}
    inserted: dict[int, tuple[Node, ...]] = {}
    initializers, shapes = dict(graph.initializers), dict(graph.shapes)
    for node in graph.nodes:
        if node.op_type != "DynamicQuantizeLinear" or node.domain not in ("", "ai.onnx") \
                or not node.outputs or not node.outputs[0] \
                or graph.shapes.get(node.inputs[0]) is None:
            continue
        x, name = node.inputs[0], node.name
        y, scale, zero = (tuple(node.outputs) + ("", ""))[:3]
        count = math.prod(graph.shapes[x])
        params = f"{name}::scale_and_zero"
        shapes[params] = (2,)
        made = [Node(QUANTIZATION_RANGE, f"{name}::range", (x,), (params,), {"count": count})]
        for position, (value, kind) in enumerate(((scale, "scale"), (zero, "zero"))):
            if not value:
                continue
            index = f"{name}::{kind}_index"
            initializers[index] = np.array(position, np.int64)
            gathered = value if kind == "scale" else f"{name}::zero_float"
            shapes[gathered] = ()
            made.append(Node("Gather", f"{name}::{kind}", (params, index), (gathered,),
                             {"axis": 0}))
            if kind == "zero":
                made.append(Node("Cast", f"{name}::zero_uint8", (gathered,), (value,),
                                 {"to": UINT8}))
        inserted[id(node)] = tuple(made)
        replaced[id(node)] = Node(DYNAMIC_QUANTIZE, name, (x, params), (y,), {"count": count})
    if not replaced:
        return graph
    return rewritten(graph, replaced, set(), initializers, inserted, shapes)


def quantization_range_ir(symbol: str, count: int, machine: Machine) -> str:
    """The LLVM IR of `void symbol(out, x)`: out[0], out[1] = the scale and the zero point of
    `count` floats of x (module docstring), in one pass on the calling thread with the
    machine's accumulators for the minimum and the maximum."""
    lanes = machine.lanes
    module = ir.Module(name=symbol)
    zero = ir.Constant(vec_type(lanes), None)

    def scale_and_zero(b: ir.IRBuilder, args: list[ir.Value]) -> None:
        def smaller(u, v):
            return b.select(b.fcmp_ordered("<", u, v), u, v)

        def larger(u, v):
            return b.select(b.fcmp_ordered(">", u, v), u, v)

        def step(at, n, state):  # lanes past the end read 0, which the range holds anyway
            value = _load(b, elem_ptr(b, args[1], at), n, lanes, F32)
            return (smaller(state[0], value), larger(state[1], value))
        states = over_row(b, count, lanes, max(1, machine.min_accumulators // 2),
                          (zero, zero), step)
        low = combine_lanes(b, [s[0] for s in states], smaller)
        high = combine_lanes(b, [s[1] for s in states], larger)
        scale = b.fdiv(b.fsub(high, low), ir.Constant(F32, 255.0))
        scale = b.select(b.fcmp_ordered("==", scale, ir.Constant(F32, 0.0)),
                         ir.Constant(F32, 1.0), scale)
        point = b.fsub(ir.Constant(F32, 0.0), b.fdiv(low, scale))
        point = b.call(intrinsic(module, "llvm.roundeven.f32", F32, [F32]), [point])
        point = smaller(larger(point, ir.Constant(F32, 0.0)), ir.Constant(F32, 255.0))
        b.store(scale, args[0], align=4)
        b.store(point, elem_ptr(b, args[0], ir.Constant(I64, 1)), align=4)

    # a reduction over every element: no rows to share, only the part after them
    return over_rows(module, symbol, 2, 0, 1, lambda b, args, r: None, scale_and_zero)


def dynamic_quantize_ir(symbol: str, count: int, machine: Machine, threads: int) -> str:
    """The LLVM IR of `void symbol(out, x, params)`: out = saturate(round_half_even(x /
    params[0]) + params[1]) as uint8 over `count` elements (module docstring), in vectors of
    the machine's float lanes shared among `threads` in static blocks; the last partial vector
    on the calling thread."""
    lanes = machine.lanes
    module = ir.Module(name=symbol)

    def vector(b: ir.IRBuilder, args: list[ir.Value], at: ir.Value, n: int) -> None:
        scale = splat(b, b.load(args[2], typ=F32, align=4), lanes)
        point = splat(b, b.load(elem_ptr(b, args[2], ir.Constant(I64, 1)), typ=F32,
                                align=4), lanes)
        out = _quantize(b, _load(b, elem_ptr(b, args[1], at), n, lanes, F32), scale, point,
                        "uint8", machine)
        _store(b, out, elem_ptr(b, args[0], at, I8), n)

    return _over_elements(module, symbol, 3, count, lanes, threads, vector)


def fuse_zero_points(graph: Graph) -> Graph:
    """`graph` with each int32[2] zero points operand made of a range's zero point (the
    Concat of its Reshape to [1], after the Cast to uint8 and to int32 of its Gather, and a
    constant 0: quantized._conv_integer) made one ZERO_POINTS node of the range's params,
    which a generated function serves: out[0] = int(params[1]), out[1] = 0."""
    producers = producers_of(graph.nodes)
    consts = graph.initializers
    replaced: dict[int, Node] = {}
    for concat in graph.nodes:
        if concat.op_type != "Concat" or len(concat.inputs) != 2 \
                or int(concat.attributes.get("axis", 0)) != 0:
            continue
        first, second = concat.inputs
        if second not in consts or consts[second].dtype != np.int32 \
                or consts[second].shape != (1,) or consts[second][0] != 0:
            continue
        chain = [producers.get(first)]
        for op_type, to in (("Reshape", None), ("Cast", 6), ("Cast", UINT8)):
            node = chain[-1]
            if node is None or node.op_type != op_type \
                    or (to is not None and int(node.attributes.get("to", 0)) != to):
                break
            chain.append(producers.get(node.inputs[0]))
        else:
            shape = graph.shapes.get(first)
            source = _range_float(chain[-2].inputs[0], graph, producers)
            if shape == (1,) and source is not None and source[1] == 1:
                replaced[id(concat)] = Node(ZERO_POINTS, concat.name, (source[0],),
                                            concat.outputs)
    if not replaced:
        return graph
    return without_unread(rewritten(graph, replaced, set(), dict(graph.initializers)))


def zero_points_ir(symbol: str) -> str:
    """The LLVM IR of `void symbol(int32_t *out, const float *params)` (`fuse_zero_points`):
    the range's zero point, a whole number in [0, 255], and the output's 0."""
    module = ir.Module(name=symbol)

    def write(b: ir.IRBuilder, args: list[ir.Value]) -> None:
        point = b.load(elem_ptr(b, args[1], ir.Constant(I64, 1)), typ=F32, align=4)
        b.store(b.fptosi(point, I32), args[0], align=4)
        b.store(ir.Constant(I32, 0), elem_ptr(b, args[0], ir.Constant(I64, 1), I32), align=4)

    return over_rows(module, symbol, 2, 0, 1, lambda b, args, r: None, write)
