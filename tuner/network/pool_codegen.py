"""A model's 2-D MaxPool and its GlobalAveragePool as generated functions of its package's
library.

numpy's MaxPool runs on one thread and makes a pass over memory per tap and axis: ResNet-50's
3x3 stride-2 pool on 64x112x112 took 0.38 ms alone and 0.45-0.65 ms inside the graph at either
thread count (Zen 5). This function takes 0.086 ms alone at 1 thread, 0.068 at 2, and runs in
the segment with the kernels around it, on the package's threads.

    void <symbol>(float *out, const float *x);   /* out[N,C,OH,OW], x[N,C,H,W] */

The planes (n, c) are shared among the threads in static blocks (GOMP_parallel, as the
kernels do). Per output row, the maximum of its window's input rows is taken first (vectors
along the row) into a row buffer, then per output column the maximum of its window's cells of
that buffer: contiguous vectors at stride 1, the even lanes of two at stride 2, a gather at
larger strides. The windows are known when the function is generated. Each output row has a
table of its taps' input rows, a tap in the padding replaced by another tap of the same window
(a maximum does not change when an element is counted twice); along a row, the padding is
cells of -inf around the row in its buffer. So the code has no bounds tests. A window with no
tap inside the input is left to numpy (`pool_windows` says None).

GlobalAveragePool, the same way: a plane's mean in float32 (as numpy's, which is a product
with a vector of ones), 4.8 us for ResNet-50's 2048x7x7 against 8 in numpy, and in the graph
it reads the last convolution's output while that is still in cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llvmlite import ir

from tuner.codegen.irutil import (F32, I1, I32, I64, PTR, VOID, gomp_parallel, intrinsic,
                                  masked_load, masked_store, outlined_function, runtime_loop,
                                  shared_pointers, splat, static_block, vec_type)
from tuner.ir.machine import Machine
from tuner.network.ops_nn import _kernel_attrs, _out_size, spatial_pads


@dataclass(frozen=True, slots=True)
class PoolWindows:
    """Per spatial axis (rows, then columns): for each output index, the input indices of its
    window's taps, those in the padding replaced by one inside."""

    in_shape: tuple[int, int, int, int]
    out_shape: tuple[int, int, int, int]
    rows: tuple[tuple[int, ...], ...]
    cols: tuple[tuple[int, ...], ...]
    col_stride: int
    col_dilation: int
    col_begin: int  # the padding before the first column


def pool_windows(in_shape: tuple[int, ...], attrs: dict) -> PoolWindows | None:
    """The windows of a MaxPool with these attributes on an NCHW input, or None where this
    generator does not apply (not 2-D, or a window with no tap inside the input)."""
    if len(in_shape) != 4 or "kernel_shape" not in attrs or len(attrs["kernel_shape"]) != 2:
        return None
    kernel = [int(k) for k in attrs["kernel_shape"]]
    strides, dilations = _kernel_attrs(attrs, kernel)
    begin, end = spatial_pads(in_shape, kernel, strides, dilations, attrs)
    ceil = bool(attrs.get("ceil_mode", 0))
    axes = []
    for size, k, s, d, b, e in zip(in_shape[2:], kernel, strides, dilations, begin, end):
        out = _out_size(size, k, s, d, b, e, ceil)
        windows = []
        for o in range(out):
            taps = [o * s - b + q * d for q in range(k)]
            inside = [t for t in taps if 0 <= t < size]
            if not inside:
                return None
            windows.append(tuple(t if 0 <= t < size else inside[0] for t in taps))
        if not windows:
            return None
        axes.append(tuple(windows))
    n, c = in_shape[:2]
    return PoolWindows(tuple(in_shape), (n, c, len(axes[0]), len(axes[1])), axes[0], axes[1],
                       strides[1], dilations[1], begin[1])


def maxpool_ir(symbol: str, windows: PoolWindows, machine: Machine, threads: int) -> str:
    """The LLVM IR of `void symbol(float *out, const float *x)` (module docstring)."""
    n, c, h, w = windows.in_shape
    oh, ow = windows.out_shape[2:]
    lanes = machine.lanes
    kh, kw = len(windows.rows[0]), len(windows.cols[0])
    module = ir.Module(name=symbol)
    vec = vec_type(lanes)
    ivec = ir.VectorType(I32, lanes)

    def table(name, values, element):
        array = ir.ArrayType(element, len(values))
        g = ir.GlobalVariable(module, array, name=name)
        g.linkage, g.global_constant = "internal", True
        g.initializer = ir.Constant(array, [ir.Constant(element, int(v)) for v in values])
        return g

    # rows[oh][q]: the input row offsets (in floats) of each output row's taps
    row_table = table(f"{symbol}.rows", [t * w for taps in windows.rows for t in taps], I64)
    # A row's maxima sit in `rowbuf` after `begin` cells, between cells of -inf: output column
    # o's tap q is cell o*stride + q*dilation, for every tap, so columns need no table. The
    # buffer reaches past the last vector the columns read (two per tap at stride 2).
    stride, dilation, begin = windows.col_stride, windows.col_dilation, windows.col_begin
    chunks = -(-ow // lanes)
    cells = max(begin + -(-w // lanes) * lanes,
                chunks * lanes * stride + (kw - 1) * dilation + lanes)
    cells = -(-cells // lanes) * lanes

    gather = intrinsic(module, f"llvm.masked.gather.v{lanes}f32.v{lanes}p0", vec,
                       [ir.VectorType(PTR, lanes), I32, ir.VectorType(I1, lanes), vec])

    def mask(count):
        return ir.Constant(ir.VectorType(I1, lanes), [int(i < count) for i in range(lanes)])

    def addresses(b, base, index):
        """<lanes x ptr>: base + 4 * index, lane by lane."""
        wide = ir.VectorType(I64, lanes)
        start = splat(b, b.ptrtoint(base, I64), lanes)
        offsets = b.mul(b.zext(index, wide), ir.Constant(wide, [4] * lanes))
        return b.inttoptr(b.add(start, offsets), ir.VectorType(PTR, lanes))

    def vmax(b, a, v):
        return b.select(b.fcmp_ordered(">", a, v), a, v)

    def plane_rows(b, x_plane, out_plane, rowbuf):
        """One plane: every output row."""
        def output_row(r):
            taps = b.gep(row_table, [ir.Constant(I64, 0), b.mul(r, ir.Constant(I64, kh))],
                         source_etype=row_table.value_type)
            offsets = [b.load(b.gep(taps, [ir.Constant(I64, q)], source_etype=I64), typ=I64)
                       for q in range(kh)]

            def column_chunk(start, count):
                value = None
                for offset in offsets:
                    src = b.gep(x_plane, [b.add(offset, start)], source_etype=F32)
                    if count == lanes:
                        v = b.load(src, typ=vec, align=4)
                    else:
                        v = masked_load(b, src, mask(count), lanes)
                    value = v if value is None else vmax(b, value, v)
                dst = b.gep(rowbuf, [b.add(start, ir.Constant(I64, begin))], source_etype=F32)
                if count == lanes:
                    b.store(value, dst, align=4)
                else:  # the cells after the row stay -inf
                    masked_store(b, value, dst, mask(count))

            full = w // lanes
            if full:
                runtime_loop(b, 0, full, lambda i: column_chunk(
                    b.mul(i, ir.Constant(I64, lanes)), lanes), "w")
            if w % lanes:
                column_chunk(ir.Constant(I64, full * lanes), w % lanes)

            out_row = b.gep(out_plane, [b.mul(r, ir.Constant(I64, ow))], source_etype=F32)

            def output_chunk(chunk, count):
                value = None
                for q in range(kw):
                    first = b.add(b.mul(chunk, ir.Constant(I64, lanes * stride)),
                                  ir.Constant(I64, q * dilation))
                    src = b.gep(rowbuf, [first], source_etype=F32)
                    if stride == 1:
                        v = b.load(src, typ=vec, align=4)
                    elif stride == 2:  # the even cells of two vectors
                        second = b.gep(src, [ir.Constant(I64, lanes)], source_etype=F32)
                        v = b.shuffle_vector(
                            b.load(src, typ=vec, align=4), b.load(second, typ=vec, align=4),
                            ir.Constant(ivec, [2 * i for i in range(lanes)]))
                    else:
                        steps = ir.Constant(ivec, [stride * i for i in range(lanes)])
                        v = b.call(gather, [addresses(b, src, steps), ir.Constant(I32, 4),
                                            mask(lanes), ir.Constant(vec, None)])
                    value = v if value is None else vmax(b, value, v)
                dst = b.gep(out_row, [b.mul(chunk, ir.Constant(I64, lanes))], source_etype=F32)
                if count == lanes:
                    b.store(value, dst, align=4)
                else:
                    masked_store(b, value, dst, mask(count))

            if ow // lanes:
                runtime_loop(b, 0, ow // lanes, lambda i: output_chunk(i, lanes), "ow")
            if ow % lanes:
                output_chunk(ir.Constant(I64, ow // lanes), ow % lanes)

        runtime_loop(b, 0, oh, output_row, "oh")

    def planes(b, x, out, lo, hi):
        rowbuf = b.alloca(ir.ArrayType(F32, cells))
        rowbuf.align = 64
        rowbuf.type = PTR  # llvmlite still types allocas; the IR it prints is opaque anyway
        lowest = ir.Constant(vec, [float("-inf")] * lanes)
        for cell in range(0, cells, lanes):
            b.store(lowest, b.gep(rowbuf, [ir.Constant(I64, cell)], source_etype=F32), align=4)

        def plane(p):
            x_plane = b.gep(x, [b.mul(p, ir.Constant(I64, h * w))], source_etype=F32)
            out_plane = b.gep(out, [b.mul(p, ir.Constant(I64, oh * ow))], source_etype=F32)
            plane_rows(b, x_plane, out_plane, rowbuf)
        runtime_loop(b, lo, hi, plane, "plane")

    return _over_planes(module, symbol, n * c, threads, planes)


def _over_planes(module: ir.Module, symbol: str, count: int, threads: int, planes) -> str:
    """`void symbol(float *out, const float *x)` that runs `planes(builder, x, out, lo, hi)`
    on planes [lo, hi) of `count`, shared among `threads` in static blocks (irutil's
    gomp_parallel and static_block, as codegen.parallel_for runs the kernels' loops)."""
    function = ir.Function(module, ir.FunctionType(VOID, [PTR, PTR]), name=symbol)
    out_arg, x_arg = function.args
    for arg in function.args:
        arg.add_attribute("noalias")
    b = ir.IRBuilder(function.append_basic_block("entry"))
    if threads <= 1 or count == 1:
        planes(b, x_arg, out_arg, ir.Constant(I64, 0), ir.Constant(I64, count))
        b.ret_void()
        return str(module)
    body = outlined_function(module, f"{symbol}.par")
    data = b.alloca(ir.ArrayType(PTR, 2))
    data.type = PTR
    gomp_parallel(b, body, data, [x_arg, out_arg], threads)
    b.ret_void()
    sb = ir.IRBuilder(body.append_basic_block("entry"))
    x, out = shared_pointers(sb, body, 2)
    lo, hi = static_block(sb, count)
    planes(sb, x, out, lo, hi)
    sb.ret_void()
    return str(module)


def global_average_pool_ir(symbol: str, in_shape: tuple[int, ...], machine: Machine,
                           threads: int) -> str:
    """The LLVM IR of `void symbol(float *out, const float *x)`: out[p] = the mean of plane p
    of x[N, C, *spatial], in float32, vectors along the plane and their lanes added as a
    tree."""
    planes_count, pixels = in_shape[0] * in_shape[1], math.prod(in_shape[2:])
    lanes = machine.lanes
    module = ir.Module(name=symbol)
    vec = vec_type(lanes)
    mask = ir.Constant(ir.VectorType(I1, lanes), [int(i < pixels % lanes)
                                                  for i in range(lanes)])

    def planes(b, x, out, lo, hi):
        acc = b.alloca(vec)  # promoted to a register (SROA) where the chunks are a loop
        acc.type = PTR

        def plane(p):
            base = b.gep(x, [b.mul(p, ir.Constant(I64, pixels))], source_etype=F32)
            full = pixels // lanes
            if full <= 16:  # unrolled: a classifier's plane is a few vectors
                total = ir.Constant(vec, None)
                for chunk in range(full):
                    src = b.gep(base, [ir.Constant(I64, chunk * lanes)], source_etype=F32)
                    total = b.fadd(total, b.load(src, typ=vec, align=4))
            else:
                b.store(ir.Constant(vec, None), acc)

                def add_chunk(chunk):
                    src = b.gep(base, [b.mul(chunk, ir.Constant(I64, lanes))],
                                source_etype=F32)
                    b.store(b.fadd(b.load(acc, typ=vec), b.load(src, typ=vec, align=4)), acc)
                runtime_loop(b, 0, full, add_chunk, "chunk")
                total = b.load(acc, typ=vec)
            if pixels % lanes:
                src = b.gep(base, [ir.Constant(I64, pixels // lanes * lanes)],
                            source_etype=F32)
                total = b.fadd(total, masked_load(b, src, mask, lanes))
            width = lanes
            while width > 1:
                width //= 2
                low = b.shuffle_vector(total, total, ir.Constant(
                    ir.VectorType(I32, width), list(range(width))))
                high = b.shuffle_vector(total, total, ir.Constant(
                    ir.VectorType(I32, width), list(range(width, 2 * width))))
                total = b.fadd(low, high)
            mean = b.fdiv(b.extract_element(total, ir.Constant(I32, 0)),
                          ir.Constant(F32, float(pixels)))
            b.store(mean, b.gep(out, [p], source_etype=F32))
        runtime_loop(b, lo, hi, plane, "plane")

    return _over_planes(module, symbol, planes_count, threads, planes)
