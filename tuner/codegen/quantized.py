"""Code generation for int8 contractions: the dot product, the lane-wise product, the epilogue.

An int8 task (tuner.ir.dag.Quantization) multiplies uint8 activations by int8 weights and sums in
int32. Its dot axis (DOT_GROUP = 4 reduction lanes, innermost, annotated `dot`) is summed by the
integer dot-product instruction of the target, chosen by the machine model from its own and
the weights' range (`Machine.int8_instruction`):

- `vpdpbusd` (AVX512-VNNI, AVX-VNNI): each int32 lane adds the 4 products of 4 uint8 and 4
  int8 bytes, exactly. Both operands are vectors of 4-byte groups, one group per output lane.
- `pmaddwd` (AVX2, AVX-512 without VNNI): each int32 lane adds 2 products of int16 values,
  exactly. The bytes are widened to int16 and the group is summed as two pairs: (0, 1) and
  (2, 3). Centered operands (two uint8 activations less their zero points, in int16) are
  summed so on every CPU, by `vpdpwssd` on VNNI CPUs: the same pairs, added to the
  accumulator by the same instruction.
- `pmaddubsw` (AVX2, AVX-512BW without VNNI), for weights of reduced range only: each int16
  lane adds a pair of uint8 x int8 products, and `vpmaddwd` with ones adds two of those into
  the int32 lane; both operands are 4-byte groups as for vpdpbusd. The instruction saturates a
  pair's sum to int16 (255 x 127 x 2 > 32767), so on full-range int8 weights it is inexact
  (onnxruntime's MLAS uses it so); on weights in [-64, 64] (onnxruntime's `reduce_range`,
  tuner.ir.dag.REDUCED_WEIGHT_RANGE) no pair can saturate and it is exact, with one multiply
  fewer per group than widening to int16 and no shuffle of the broadcast activation.

How an operand's group is read follows from its layout along the vector axis and the dot axis,
as for float32 reads: a broadcast (the group's 4 bytes, one int32 for all lanes), a packed
weight (the group innermost, so one contiguous load of lanes x 4 bytes) or 4 vector loads, one
per group element, interleaved by shuffles (activations along the output's pixels: 4 channel
planes). Partial vectors are padded to the nearest width the instruction has and cut after it.

The epilogue (`epilogue`) rounds as ONNX's QuantizeLinear does (half to even, `llvm.roundeven`)
after clamping in float32, where the clamp bounds are integers, so clamping first changes no
result and keeps the float-to-int conversion in range.
"""

from __future__ import annotations

from dataclasses import replace

from llvmlite import ir

from tuner.ir.layout import PAIR_LEVEL
from tuner.codegen.irutil import (F32, I8, I16, I32, I64, Lin, elem_ptr, intrinsic, low_bytes,
                                  materialize, runtime_loop, splat, type_name)

IR_TYPES = {"float32": F32, "uint8": I8, "int8": I8, "int32": I32, "int16": I16}

# The instruction's intrinsic by the int32 lanes it has: vpdpbusd(acc, u8 groups, s8 groups),
# pmaddwd(int16 pairs, int16 pairs).
VPDPBUSD = {16: "llvm.x86.avx512.vpdpbusd.512", 8: "llvm.x86.avx512.vpdpbusd.256",
            4: "llvm.x86.avx512.vpdpbusd.128"}
PMADDWD = {16: "llvm.x86.avx512.pmaddw.d.512", 8: "llvm.x86.avx2.pmadd.wd",
           4: "llvm.x86.sse2.pmadd.wd"}
# vpdpwssd(acc, int16 pairs, int16 pairs): vpmaddwd's pair sums added to acc (AVX512-VNNI,
# AVX-VNNI), for centered operands (tuner.ir.dag.Quantization.centered) on VNNI CPUs.
VPDPWSSD = {16: "llvm.x86.avx512.vpdpwssd.512", 8: "llvm.x86.avx512.vpdpwssd.256",
            4: "llvm.x86.avx512.vpdpwssd.128"}
# pmaddubsw(uint8 pairs, int8 pairs) -> int16 pair sums, saturated (exact for weights of
# reduced range, tuner.ir.dag.REDUCED_WEIGHT_RANGE), by the int32 lanes of vpmaddwd after it.
PMADDUBSW = {16: "llvm.x86.avx512.pmaddubs.w.512", 8: "llvm.x86.avx2.pmadd.ub.sw",
             4: "llvm.x86.ssse3.pmadd.ub.sw.128"}


def input_zero_point(b: ir.IRBuilder, zero_points: ir.Value, etype: ir.Type) -> ir.Value:
    """The input's zero point (zero_points[0]) as an element of type `etype`."""
    value = b.load(zero_points, typ=I32, align=4)
    return b.trunc(value, etype) if etype != I32 else value


def _widen(b: ir.IRBuilder, value: ir.Value, signed: bool, to: ir.Type) -> ir.Value:
    """uint8 (zero-extended) or int8 (sign-extended) values as `to` (lanes kept)."""
    target = ir.VectorType(to, value.type.count) if isinstance(value.type, ir.VectorType) else to
    return b.sext(value, target) if signed else b.zext(value, target)


def centering(b: ir.IRBuilder, dag, zero_points: ir.Value) -> tuple:
    """The zero points the kernel of a centered task (tuner.ir.dag.Quantization.centered)
    subtracts from its two operands, zero_points[0] and [2], as int32; (None, None) for the
    others, whose kernels multiply the stored values."""
    if not dag.centered:
        return None, None
    return tuple(b.load(b.gep(zero_points, [ir.Constant(I64, at)], source_etype=I32),
                        typ=I32, align=4) for at in (0, 2))


def multiply_add(b: ir.IRBuilder, x: ir.Value, w: ir.Value, total: ir.Value, dag,
                 zeros: tuple) -> ir.Value:
    """total + x * w, lane by lane, in int32: `x` and `w` the operands of `dag` (uint8 and
    int8), less `zeros` (`centering`) where it is centered. (Products taken in int16 with
    vpmullw, where they fit, and widened after measured slower: the mobilenetv2 depthwise
    default 21.6 against 28.8 GOPS on Zen 3.)"""
    factors = []
    for value, op, zero in zip((x, w), (dag.lhs, dag.rhs), zeros):
        wide = _widen(b, value, op.dtype == "int8", I32)
        if zero is not None:
            wide = b.sub(wide, splat(b, zero, value.type.count)
                         if isinstance(value.type, ir.VectorType) else zero)
        factors.append(wide)
    return b.add(total, b.mul(*factors))


# ------------------------------------------------------------------------------ dot product

def dot(em, fn, ctx, lhs, rhs, total: ir.Value) -> ir.Value:
    """`total` plus the dot product of the group `ctx.dot` of `lhs` (uint8) and `rhs` (int8),
    for every lane of the vector `ctx` stands in (or one scalar)."""
    b, dag = fn.b, em.dag
    part = ctx.dot
    group = part.extent
    at = [ctx.enter(part, Lin((), g), 1) for g in range(group)]
    zeros = centering(b, dag, fn.ptrs["zero_points"])
    if ctx.vec is None:
        for g in range(group):
            total = multiply_add(b, _element(em, fn, at, g, lhs), _element(em, fn, at, g, rhs),
                                 total, dag, zeros)
        return total
    width = ctx.vec[2]
    x, w = (_Group(em, fn, ctx, at, acc, op.dtype == "int8")
            for acc, op in ((lhs, dag.lhs), (rhs, dag.rhs)))
    instruction = em.machine.int8_instruction(dag.reduced_range, dag.centered)
    if instruction == "pmaddubsw":
        native = _native(width, PMADDUBSW, em.machine.lanes)
        quads = ir.VectorType(I8, 4 * native)
        pairs = ir.VectorType(I16, 2 * native)
        fn_bytes = intrinsic(b.module, PMADDUBSW[native], pairs, [quads, quads])
        fn_words = intrinsic(b.module, PMADDWD[native], ir.VectorType(I32, native),
                             [pairs, pairs])
        as_bytes = [b.bitcast(_resize(b, v.quads(), native), quads) for v in (x, w)]
        sums = b.call(fn_words, [b.call(fn_bytes, as_bytes),
                                 ir.Constant(pairs, [1] * (2 * native))])
        return b.add(total, _resize(b, sums, width))
    if instruction == "vpdpbusd":
        native = _native(width, VPDPBUSD, em.machine.lanes)
        vt = ir.VectorType(I32, native)
        fn_dot = intrinsic(b.module, VPDPBUSD[native], vt, [vt, vt, vt])
        out = b.call(fn_dot, [_resize(b, total, native), _resize(b, x.quads(), native),
                              _resize(b, w.quads(), native)])
        return _resize(b, out, width)
    if instruction == "vpdpwssd":  # vpmaddwd and the add in one instruction
        native = _native(width, VPDPWSSD, em.machine.lanes)
        vt = ir.VectorType(I32, native)
        fn_dot = intrinsic(b.module, VPDPWSSD[native], vt, [vt, vt, vt])
        out = _resize(b, total, native)
        for (xp, wp) in zip(x.pairs(zeros[0]), w.pairs(zeros[1])):
            out = b.call(fn_dot, [out] + [b.bitcast(_resize(b, v, 2 * native), vt)
                                          for v in (xp, wp)])
        return _resize(b, out, width)
    native = _native(width, PMADDWD, em.machine.lanes)
    pairs = ir.VectorType(I16, 2 * native)
    fn_dot = intrinsic(b.module, PMADDWD[native], ir.VectorType(I32, native), [pairs, pairs])
    for (xp, wp) in zip(x.pairs(zeros[0]), w.pairs(zeros[1])):
        sums = b.call(fn_dot, [_resize(b, xp, 2 * native), _resize(b, wp, 2 * native)])
        total = b.add(total, _resize(b, sums, width))
    return total


def _element(em, fn, at, g: int, acc) -> ir.Value:
    """Element `g` of the group, scalar: from a pair-major layout (layout.packed_layout) at
    pair g // 2, element g % 2."""
    pair = next((key for key in acc.strides or () if key[1] == PAIR_LEVEL), None)
    if pair is None:
        return em.load(fn, at[g], acc)
    b = fn.b
    offset = b.add(materialize(b, em._offset(at[0], acc)), ir.Constant(
        I64, (g // 2) * acc.strides[(pair[0], at[0].dot.level)] + g % 2))
    return b.load(elem_ptr(b, fn.ptrs[acc.ptr], offset, acc.etype), typ=acc.etype, align=2)


def _native(width: int, table: dict[int, str], lanes: int) -> int:
    """The narrowest width of the instruction that holds `width` int32 lanes."""
    return min(n for n in table if n >= width and n <= max(lanes, 4))


def _resize(b: ir.IRBuilder, v: ir.Value, count: int) -> ir.Value:
    """`v` cut or padded with zero lanes to `count` lanes."""
    have = v.type.count
    if have == count:
        return v
    zero = ir.Constant(v.type, None)
    mask = ir.Constant(ir.VectorType(I32, count), [i if i < have else have for i in range(count)])
    return b.shuffle_vector(v, zero, mask)


def _interleave(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    """[x0, y0, x1, y1, ...] from two vectors of equal lanes."""
    n = x.type.count
    mask = ir.Constant(ir.VectorType(I32, 2 * n), [k // 2 + (n if k % 2 else 0)
                                                   for k in range(2 * n)])
    return b.shuffle_vector(x, y, mask)


class _Group:
    """One operand's group of 4 elements per lane, read the way its layout allows, and
    given in the form each instruction takes."""

    def __init__(self, em, fn, ctx, at, acc, signed: bool):
        b = self.b = fn.b
        self.signed, self.width = signed, ctx.vec[2]
        group = len(at)
        lane_stride = em._lane_stride(ctx, acc)
        dot_stride = _dot_stride(ctx, acc)
        self.group = self.packed = self.vectors = self.wide_pairs = None
        wide = acc.etype == I16  # a weight packed as int16 pairs (layout.packed_dtype)
        base = None
        if acc.packed:
            base = materialize(b, em._offset(at[0], acc))
        if wide and lane_stride == 0:  # each pair one int32, broadcast
            pairs = [b.load(elem_ptr(b, fn.ptrs[acc.ptr], b.add(base, ir.Constant(I64, 2 * p)),
                                     I16), typ=I32, align=2) for p in range(group // 2)]
            self.wide_pairs = [b.bitcast(splat(b, pair, self.width),
                                         ir.VectorType(I16, 2 * self.width)) for pair in pairs]
        elif wide:  # pair-major: each pair's lanes one vector
            stride = acc.strides[(ctx.dot.axis, ctx.dot.level)]
            self.wide_pairs = [b.load(elem_ptr(b, fn.ptrs[acc.ptr],
                                               b.add(base, ir.Constant(I64, p * stride)), I16),
                                      typ=ir.VectorType(I16, 2 * self.width), align=2)
                               for p in range(group // 2)]
        elif lane_stride == 0:
            scalar = [replace(c, vec=None, vec_rem=None) for c in at]
            self.group = _read_group(em, fn, scalar, acc, dot_stride)
        elif dot_stride == 1 and lane_stride == group and (acc.packed or not acc.guards):
            # a packed weight, or a regrouped activation (tuner.ir.layout.regroup_dim): the
            # lanes' groups are one contiguous run, read whole in a partial vector too (both
            # buffers have room past their last group; only the output's lanes are kept)
            base = base if base is not None else materialize(b, em._offset(at[0], acc))
            ptr = elem_ptr(b, fn.ptrs[acc.ptr], base, acc.etype)
            self.packed = b.load(ptr, typ=ir.VectorType(I8, group * self.width), align=1)
        else:
            self.vectors = [em.load(fn, c, acc) for c in at]

    def quads(self) -> ir.Value:
        """vpdpbusd's form: <W x i32>, each lane the 4 bytes of its group."""
        b, width = self.b, self.width
        if self.group is not None:
            return splat(b, self.group, width)
        if self.packed is not None:
            return b.bitcast(self.packed, ir.VectorType(I32, width))
        v = self.vectors
        low, high = _interleave(b, v[0], v[1]), _interleave(b, v[2], v[3])
        as16 = ir.VectorType(I16, width)
        quads = _interleave(b, b.bitcast(low, as16), b.bitcast(high, as16))
        return b.bitcast(quads, ir.VectorType(I32, width))

    def pairs(self, zero: ir.Value | None = None) -> list[ir.Value]:
        """pmaddwd's form: two <2W x i16>, the group's elements (0, 1) and (2, 3) of every
        lane, widened, less `zero` (an int32 zero point, `centering`) where given."""
        pairs = self._widened_pairs()
        if zero is None:
            return pairs
        zero16 = splat(self.b, self.b.trunc(zero, I16), 2 * self.width)
        return [self.b.sub(pair, zero16) for pair in pairs]

    def _widened_pairs(self) -> list[ir.Value]:
        b, width = self.b, self.width
        if self.wide_pairs is not None:
            return self.wide_pairs
        if self.group is not None and not self.signed:
            # the group's 4 bytes broadcast as one int32, each pair's two bytes then spread
            # to int16 lanes with zero bytes above them by one shuffle (vpshufb)
            quads = b.bitcast(splat(b, self.group, width), ir.VectorType(I8, 4 * width))
            zero = ir.Constant(quads.type, None)
            return [b.bitcast(b.shuffle_vector(quads, zero, ir.Constant(
                        ir.VectorType(I32, 4 * width),
                        [4 * (k // 4) + first + (k % 4) // 2 if k % 2 == 0 else 4 * width
                         for k in range(4 * width)])), ir.VectorType(I16, 2 * width))
                    for first in (0, 2)]
        if self.group is not None:  # widened once, each pair broadcast as one int32
            quad = b.bitcast(self.group, ir.VectorType(I8, 4))
            words = b.bitcast(_widen(b, quad, self.signed, I16), ir.VectorType(I32, 2))
            none = ir.Constant(words.type, ir.Undefined)
            return [b.bitcast(b.shuffle_vector(words, none, ir.Constant(
                        ir.VectorType(I32, width), [first] * width)),
                              ir.VectorType(I16, 2 * width)) for first in (0, 1)]
        if self.packed is not None:
            wide = b.bitcast(_widen(b, self.packed, self.signed, I16),
                             ir.VectorType(I32, 2 * width))
            out = []
            for first in (0, 1):
                pick = ir.Constant(ir.VectorType(I32, width), [2 * l + first
                                                               for l in range(width)])
                half = b.shuffle_vector(wide, ir.Constant(wide.type, ir.Undefined), pick)
                out.append(b.bitcast(half, ir.VectorType(I16, 2 * width)))
            return out
        v = [_widen(b, x, self.signed, I16) for x in self.vectors]
        return [_interleave(b, v[0], v[1]), _interleave(b, v[2], v[3])]


def _read_group(em, fn, at, acc, dot_stride: int) -> ir.Value:
    """A broadcast operand's group of 4 bytes as one int32 (the first in its low byte): one
    load where the group is contiguous and read without bounds checks, else a scalar read
    per element, put together with shifts (LLVM turns a vector built by inserts and then
    broadcast into an insert per lane of the broadcast)."""
    b = fn.b
    if dot_stride == 1 and not acc.guards:
        ptr = elem_ptr(b, fn.ptrs[acc.ptr], materialize(b, em._offset(at[0], acc)), acc.etype)
        return b.load(ptr, typ=I32, align=1)
    group = None
    for g, c in enumerate(at):
        value = b.zext(em._load_scalar(fn, c, acc, em._offset(c, acc)), I32)
        if g:
            value = b.shl(value, ir.Constant(I32, 8 * g))
        group = value if group is None else b.or_(group, value)
    return group


def _dot_stride(ctx, acc) -> int:
    """Elements between neighbouring elements of the group in `acc`'s buffer."""
    axis, level = ctx.dot.axis, ctx.dot.level
    if acc.strides is not None:
        return acc.strides.get((axis, level), 0)
    return acc.flat.coef(axis)


# --------------------------------------------------------------------- the regrouped copy

REGROUP_CHUNK = 16  # bytes of each of the group's rows per step: 64 bytes stored
# Bytes allocated past a regrouped copy's end: a partial vector of groups is read whole (the
# widest, 16 lanes of 4 bytes, reaches 60 bytes past the last group it needs).
REGROUP_SLACK = 64


def regroup_row(b: ir.IRBuilder, rows: list[ir.Value], present: list[ir.Value],
                fill: ir.Value, out: ir.Value, width: int) -> None:
    """One row of a regrouped copy (tuner.ir.layout.regroup_dim): out[4 w + g] = rows[g][w]
    for w < `width`, or `fill` (the input zero point) where `present[g]` (i1) is false,
    `rows[g]` then pointing at any readable row. A step reads REGROUP_CHUNK bytes of each
    row and interleaves them into one store (two shuffles deep, as `quads` does); the last
    columns go one at a time."""
    chunks, tail = divmod(width, REGROUP_CHUNK)
    vec = ir.VectorType(I8, REGROUP_CHUNK)
    fills = splat(b, fill, REGROUP_CHUNK)

    def chunk(v: ir.Value) -> None:
        at = b.mul(v, ir.Constant(I64, REGROUP_CHUNK))
        loaded = [b.select(ok, b.load(elem_ptr(b, row, at, I8), typ=vec, align=1), fills)
                  for row, ok in zip(rows, present)]
        as16 = ir.VectorType(I16, REGROUP_CHUNK)
        quads = _interleave(b, b.bitcast(_interleave(b, loaded[0], loaded[1]), as16),
                            b.bitcast(_interleave(b, loaded[2], loaded[3]), as16))
        b.store(quads, elem_ptr(b, out, b.mul(at, ir.Constant(I64, 4)), I8), align=1)

    def column(w: ir.Value) -> None:
        for g, (row, ok) in enumerate(zip(rows, present)):
            value = b.select(ok, b.load(elem_ptr(b, row, w, I8), typ=I8), fill)
            b.store(value, elem_ptr(b, out, b.add(b.mul(w, ir.Constant(I64, 4)),
                                                 ir.Constant(I64, g)), I8))

    if chunks:
        runtime_loop(b, 0, chunks, chunk, "regroup")
    if tail:
        runtime_loop(b, chunks * REGROUP_CHUNK, width, column, "regroup.tail")


# -------------------------------------------------------------------------------- epilogue

def epilogue(b: ir.IRBuilder, dag, value: ir.Value, scale: ir.Value | None,
             zero_points: ir.Value, machine) -> ir.Value:
    """The Quantization of `dag` on `value`, the int32 sum plus bias (a vector or a
    scalar): the values to store, of the output's type, for `machine` (`low_bytes`)."""
    quant = dag.quant
    vector = isinstance(value.type, ir.VectorType)
    count = value.type.count if vector else None

    def const(t, x):
        return ir.Constant(ir.VectorType(t, count), [x] * count) if vector else ir.Constant(t, x)

    def spread(x):
        return splat(b, x, count) if vector else x

    if quant.out_type == "int32":
        if dag.relu:
            zero = const(I32, 0)
            value = b.select(b.icmp_signed(">", value, zero), value, zero)
        return value
    f32 = ir.VectorType(F32, count) if vector else F32
    real = b.fmul(b.sitofp(value, f32), scale)
    if quant.out_type == "float32":
        if dag.relu:
            zero = const(F32, 0.0)
            real = b.select(b.fcmp_ordered(">", real, zero), real, zero)
        return real
    zp_ptr = b.gep(zero_points, [ir.Constant(I64, 1)], source_etype=I32)
    zp = b.load(zp_ptr, typ=I32, align=4)
    zp_real = b.sitofp(zp, F32)
    high = spread(b.fsub(ir.Constant(F32, 255.0), zp_real))
    low = const(F32, 0.0) if dag.relu else spread(b.fneg(zp_real))
    real = b.select(b.fcmp_ordered("<", real, low), low, real)
    real = b.select(b.fcmp_ordered(">", real, high), high, real)
    rounded = b.call(intrinsic(b.module, f"llvm.roundeven.{type_name(f32)}", f32, [f32]),
                     [real])
    i32 = ir.VectorType(I32, count) if vector else I32
    quantized = b.add(b.fptosi(rounded, i32), spread(zp))
    return low_bytes(b, quantized, machine.vector_bits == 512)
