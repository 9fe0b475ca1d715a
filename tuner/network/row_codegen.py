"""A model's LayerNormalization and Softmax as generated functions of its package's library.

numpy runs both on one thread, in float64, with a pass over the whole tensor for every step
(the cast, the mean, the deviations, their squares, their mean, the scaling; the maximum, the
exponentials, their sum, the division), and between segments: a transformer's LayerNorms and
Softmaxes would cut its kernels' segments in pieces. Here the tensor is `rows x width` floats
(C order, a row contiguous), the rows are shared among the package's threads in static blocks
(GOMP_parallel, as the kernels do), and the function runs inside the segment, on the kernels'
threads, reading what the kernel before it left in cache. A row of a few thousand floats stays
in L1 through the passes over it.

    /* LayerNormalization: out, x [rows, width]; scale, bias [width], each only if generated */
    void <symbol>(float *restrict out, const float *restrict x
                  [, const float *restrict scale][, const float *restrict bias]);
    /* Softmax: out, x [rows, width], each row normalised */
    void <symbol>(float *restrict out, const float *restrict x);

Everything is float32, in vectors of the machine's lanes; a reduction keeps several independent
accumulators (to hide the add's latency) and adds their lanes as a tree, and the last partial
vector of a row is a masked load or store, its mask known when the function is generated.

LayerNorm's variance is the corrected two-pass one (Chan, Golub and LeVeque 1983): a first pass
gives a rough mean m, the second sums d = x - m and d², and the mean is m + c with c = sum(d)/n,
the variance sum(d²)/n - c². For x within a factor two of m, x - m is exact in float32
(Sterbenz), so the output (d - c) / sqrt(var + eps) does not carry the rounding of the mean: at
mean 1000 and deviation 0.01 a plain two-pass's x - mean is off by at least half a float32 ulp
of 1000 (0.3% of the deviation; 1% measured), and E[x²] - mean² is noise. The cost is an add
per element in the second pass and a subtraction in the third. 1/sqrt(var + eps) is a
correctly rounded sqrt and division once per row, not an rsqrt estimate.

Softmax subtracts the row's maximum before the exponential (tuner.codegen.vmath.exp), so inputs past
88.7, where e^x overflows float32, do not; a row holding NaN, or all -inf, gives NaN as numpy's
formula does.

`row_view` says when a node is such a function, and over which rows and width.
"""

from __future__ import annotations

import math
from typing import Callable

from llvmlite import ir

from tuner.codegen.irutil import (F32, I1, I32, I64, PTR, VOID, carried_loop, elem_ptr,
                          gomp_parallel, intrinsic,
                          masked_store, outlined_function, runtime_loop, shared_pointers, splat,
                          static_block, vec_type)
from tuner.ir.machine import Machine
from tuner.codegen.vmath import exp

State = tuple[ir.Value, ...]
Step = Callable[[ir.Value, int, State], State]


def row_view(op_type: str, attrs: dict, in_shape: tuple[int, ...],
             opset: int) -> tuple[int, int] | None:
    """(rows, width) of a LayerNormalization or Softmax node on an input of `in_shape`, or
    None where these functions do not apply. LayerNormalization normalises over axes
    axis..end (`axis` default -1), in float32 only (`stash_type` 1); its optional outputs
    Mean and InvStdDev are not made here (the caller checks the node has none). Softmax from
    opset 13 normalises along `axis` (default -1) alone, which must be the last; before, the
    input is flattened to 2-D at `axis` (default 1), any axis."""
    rank = len(in_shape)
    if op_type == "LayerNormalization":
        if int(attrs.get("stash_type", 1)) != 1:
            return None
        axis = int(attrs.get("axis", -1))
    elif op_type == "Softmax":
        axis = int(attrs.get("axis", -1 if opset >= 13 else 1))
    else:
        return None
    if not -rank <= axis < rank:
        return None
    axis %= rank
    if op_type == "Softmax" and opset >= 13 and axis != rank - 1:
        return None
    rows, width = math.prod(in_shape[:axis]), math.prod(in_shape[axis:])
    return (rows, width) if rows and width else None


def layer_norm_ir(symbol: str, rows: int, width: int, epsilon: float, scale: bool, bias: bool,
                  machine: Machine, threads: int) -> str:
    """The LLVM IR of `void symbol(float *out, const float *x[, scale][, bias])`: each row of
    x normalised to mean 0 and variance 1 (population variance), times `scale`, plus `bias`
    (module docstring)."""
    lanes = machine.lanes
    module = ir.Module(name=symbol)
    zero = ir.Constant(vec_type(lanes), None)
    count = ir.Constant(F32, float(width))

    def row(b: ir.IRBuilder, args: list[ir.Value], r: ir.Value) -> None:
        start = b.mul(r, ir.Constant(I64, width))
        out, x = (elem_ptr(b, a, start) for a in args[:2])
        scale_ptr = args[2] if scale else None
        bias_ptr = args[-1] if bias else None

        sums = over_row(b, width, lanes, machine.min_accumulators, (zero,),
                        lambda at, n, s: (b.fadd(s[0], _load(b, x, at, n, lanes, zero)),))
        rough = b.fdiv(combine_lanes(b, [s[0] for s in sums], b.fadd), count)
        rough_v = splat(b, rough, lanes)

        def deviations(at, n, s):
            d = b.fsub(_load(b, x, at, n, lanes, rough_v), rough_v)  # 0 past the row's end
            return b.fadd(s[0], d), _muladd(b, d, d, s[1])
        # two vectors a state: half as many states, the same registers as the first pass
        devs = over_row(b, width, lanes, machine.min_accumulators // 2, (zero, zero),
                        deviations)
        shift = b.fdiv(combine_lanes(b, [s[0] for s in devs], b.fadd), count)
        var = b.fsub(b.fdiv(combine_lanes(b, [s[1] for s in devs], b.fadd), count),
                     b.fmul(shift, shift))
        var = b.select(b.fcmp_ordered("<", var, ir.Constant(F32, 0.0)),
                       ir.Constant(F32, 0.0), var)  # the correction's rounding; NaN stays
        sqrt = intrinsic(module, "llvm.sqrt.f32", F32, [F32])
        inv = b.fdiv(ir.Constant(F32, 1.0),
                     b.call(sqrt, [b.fadd(var, ir.Constant(F32, float(epsilon)))]))
        shift_v, inv_v = splat(b, shift, lanes), splat(b, inv, lanes)

        def normalize(at, n, s):
            v = _load(b, x, at, n, lanes, zero)
            y = b.fmul(b.fsub(b.fsub(v, rough_v), shift_v), inv_v)
            if scale:
                y = b.fmul(y, _load(b, scale_ptr, at, n, lanes, zero))
            if bias:
                y = b.fadd(y, _load(b, bias_ptr, at, n, lanes, zero))
            _store(b, y, out, at, n, lanes)
            return s
        over_row(b, width, lanes, 1, (), normalize)

    return over_rows(module, symbol, 2 + scale + bias, rows, threads, row)


def softmax_ir(symbol: str, rows: int, width: int, machine: Machine, threads: int,
               mask: bool = False) -> str:
    """The LLVM IR of `void symbol(float *out, const float *x[, const float *mask])`: per
    row, m = max(x), out = exp(x - m), then out *= 1 / sum(out) (module docstring); with
    `mask`, x + mask in place of x, the same `width` floats of mask added to every row (an
    attention mask, as BERT's scores get it)."""
    lanes = machine.lanes
    module = ir.Module(name=symbol)
    zero = ir.Constant(vec_type(lanes), None)
    lowest = ir.Constant(vec_type(lanes), [float("-inf")] * lanes)

    def row(b: ir.IRBuilder, args: list[ir.Value], r: ir.Value) -> None:
        start = b.mul(r, ir.Constant(I64, width))
        out, x = (elem_ptr(b, a, start) for a in args[:2])

        def scores(at, n):  # -inf past the row's end
            value = _load(b, x, at, n, lanes, lowest)
            return b.fadd(value, _load(b, args[2], at, n, lanes, zero)) if mask else value

        def larger(u, v):  # NaN is dropped here, but it reaches the sum, so every output
            return b.select(b.fcmp_ordered(">", u, v), u, v)
        maxima = over_row(b, width, lanes, machine.min_accumulators, (lowest,),
                          lambda at, n, s: (larger(s[0], scores(at, n)),))
        top = splat(b, combine_lanes(b, [s[0] for s in maxima], larger), lanes)

        def exponentials(at, n, s):
            e = exp(b, b.fsub(scores(at, n), top))
            _store(b, e, out, at, n, lanes)
            if n < lanes:  # whatever exp made of the lanes past the row's end
                e = b.select(_mask(n, lanes), e, zero)
            return (b.fadd(s[0], e),)
        # an exp is some twenty instructions a vector: they, not the sum's latency, set the
        # pace, and a second state would leave too few registers for exp's constants
        sums = over_row(b, width, lanes, 1, (zero,), exponentials)
        total = combine_lanes(b, [s[0] for s in sums], b.fadd)
        inv = splat(b, b.fdiv(ir.Constant(F32, 1.0), total), lanes)

        def normalize(at, n, s):
            _store(b, b.fmul(_load(b, out, at, n, lanes, zero), inv), out, at, n, lanes)
            return s
        over_row(b, width, lanes, 1, (), normalize)

    return over_rows(module, symbol, 2 + mask, rows, threads, row)


def over_rows(module: ir.Module, symbol: str, pointers: int, rows: int, threads: int,
              row: Callable[[ir.IRBuilder, list[ir.Value], ir.Value], None],
              after: Callable[[ir.IRBuilder, list[ir.Value]], None] | None = None) -> str:
    """`void symbol(ptr noalias, ...)` (`pointers` of them) that runs `row(builder, pointers,
    r)` for r in range(rows), shared among `threads` in static blocks (irutil's gomp_parallel
    and static_block, as pool_codegen._over_planes does for two pointers), then
    `after(builder, pointers)` on the calling thread."""
    function = ir.Function(module, ir.FunctionType(VOID, [PTR] * pointers), name=symbol)
    for arg in function.args:
        arg.add_attribute("noalias")
    b = ir.IRBuilder(function.append_basic_block("entry"))
    if threads <= 1 or rows <= 1:
        runtime_loop(b, 0, rows, lambda r: row(b, list(function.args), r), "row")
    else:
        body = outlined_function(module, f"{symbol}.par")
        data = b.alloca(ir.ArrayType(PTR, pointers))
        data.type = PTR
        gomp_parallel(b, body, data, list(function.args), threads)
        sb = ir.IRBuilder(body.append_basic_block("entry"))
        args = shared_pointers(sb, body, pointers)
        lo, hi = static_block(sb, rows)
        runtime_loop(sb, lo, hi, lambda r: row(sb, args, r), "row")
        sb.ret_void()
    if after is not None:
        after(b, list(function.args))
    b.ret_void()
    return str(module)


def over_row(b: ir.IRBuilder, width: int, lanes: int, slots: int, init: State,
             step: Step) -> list[State]:
    """Runs `step(at, n, state) -> state` over the vectors of a row of `width` floats (`at`
    the i64 index of the vector's first float, `n` its floats: `lanes`, fewer for the last),
    the vectors dealt in turn to `slots` independent states that each start at `init` and
    stay in registers across the loop; returns the states."""
    full, tail = divmod(width, lanes)
    slots = max(1, min(slots, full))
    groups, rest = divmod(full, slots)
    size = len(init)
    states = [init] * slots
    if groups:
        def group(g: ir.Value, flat: list[ir.Value]) -> list[ir.Value]:
            first = b.mul(g, ir.Constant(I64, slots * lanes))
            return [v for s in range(slots) for v in step(
                b.add(first, ir.Constant(I64, s * lanes)), lanes,
                tuple(flat[s * size:(s + 1) * size]))]
        flat = carried_loop(b, groups, [v for s in states for v in s], group, "chunk")
        states = [tuple(flat[s * size:(s + 1) * size]) for s in range(slots)]
    for s in range(rest):
        states[s] = step(ir.Constant(I64, (groups * slots + s) * lanes), lanes, states[s])
    if tail:
        states[rest] = step(ir.Constant(I64, full * lanes), tail, states[rest])
    return states


def combine_lanes(b: ir.IRBuilder, vectors: list[ir.Value],
                  combine: Callable[[ir.Value, ir.Value], ir.Value]) -> ir.Value:
    """The lanes of `vectors` combined into one float: the vectors pairwise, then halves of
    the last one (lanes a power of two), a tree at each level."""
    while len(vectors) > 1:
        vectors = [combine(*vectors[i:i + 2]) if i + 1 < len(vectors) else vectors[i]
                   for i in range(0, len(vectors), 2)]
    total = vectors[0]
    half = total.type.count
    while half > 1:
        half //= 2
        low, high = (b.shuffle_vector(total, total, ir.Constant(
            ir.VectorType(I32, half), list(range(k, k + half)))) for k in (0, half))
        total = combine(low, high)
    return b.extract_element(total, ir.Constant(I32, 0))


def _mask(n: int, lanes: int) -> ir.Constant:
    return ir.Constant(ir.VectorType(I1, lanes), [int(i < n) for i in range(lanes)])


def _load(b: ir.IRBuilder, base: ir.Value, at: ir.Value, n: int, lanes: int,
          fill: ir.Value) -> ir.Value:
    """`lanes` floats from base[at], of which past the first `n` the lanes of `fill` (irutil's
    masked_load fills with zeros; a maximum wants -inf)."""
    ptr, vec = elem_ptr(b, base, at), vec_type(lanes)
    if n == lanes:
        return b.load(ptr, typ=vec, align=4)
    load = intrinsic(b.module, f"llvm.masked.load.v{lanes}f32.p0", vec,
                     [PTR, I32, ir.VectorType(I1, lanes), vec])
    return b.call(load, [ptr, ir.Constant(I32, 4), _mask(n, lanes), fill])


def _store(b: ir.IRBuilder, value: ir.Value, base: ir.Value, at: ir.Value, n: int,
           lanes: int) -> None:
    ptr = elem_ptr(b, base, at)
    if n == lanes:
        b.store(value, ptr, align=4)
    else:
        masked_store(b, value, ptr, _mask(n, lanes))


def _muladd(b: ir.IRBuilder, x: ir.Value, y: ir.Value, z: ir.Value) -> ir.Value:
    """x * y + z, fused where the target has FMA (llvm.fmuladd; irutil.fma would be a libm
    call per lane without it)."""
    t = x.type
    name = f"llvm.fmuladd.v{t.count}f32"
    return b.call(intrinsic(b.module, name, t, [t, t, t]), [x, y, z])
