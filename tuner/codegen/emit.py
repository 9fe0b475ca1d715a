"""Code generation: a LoopNest becomes an LLVM module, with nothing left for LLVM to guess.

`emit_llvm(nest, target)` writes one kernel function `void <name>(out, in0, in1[, bias]
[, residual])` (all pointers `noalias`) and one `<name>_pack_<operand>(dst, src)` per
layout-rewritten operand.

What the generator decides itself, because LLVM's auto-vectorizer reaches under half of peak
on its own (a tiled matmul at 44 GFLOPS against 97-107 with explicit vectors, Zen 4):
- vectorized loops become explicit `<W x float>` values; each operand is read as a broadcast
  (index invariant in the vector axis), a contiguous (masked where padded) load, or a gather,
  whichever its index expression calls for;
- unrolled loops are unrolled here, with their indices folded to constants, so the local
  accumulator of a cache_write tile is indexed by constants and SROA keeps it in registers;
- tails: a loop whose tile does not fit its remaining extent gets a dynamic trip count; at the
  cache_write point and at the start of the innermost unrolled/vectorized region the generator
  branches once on "is this a full tile" into a constant-extent fast path and a general path,
  and inside a constant-extent path a constant tail is peeled. So a prime extent costs one extra
  copy of the inner code, not a guard per element;
- parallel loops are outlined into `void body(ptr)` and run with `GOMP_parallel`, each thread
  taking a static block of iterations (dispatch costs ~0 µs with libgomp's spinning threads,
~10 µs with OMP_WAIT_POLICY=passive, ~30 µs with pthread_create/join).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from llvmlite import ir

from tuner.ir.dag import DOT_GROUP, Affine, Operand
from tuner.codegen.irutil import (F32, I1, I32, I64, PTR, VOID, Lin, as_value, byte_size,
                                  ceil_div, elem_ptr, fma, gomp_parallel, intrinsic, lane_offsets,
                                  masked_load, masked_store, materialize, outlined_function, relu,
                                  runtime_loop, shared_pointers, smin, splat, static_block,
                                  transpose, transpose_shuffles, var, vec_type)
from tuner.codegen import amx, quantized
from tuner.errors import ScheduleError
from tuner.ir.layout import (PAIR_LEVEL, LocalPad, PartKey, local_pad_plans, packed_dtype,
                          packed_layout, padded_shape, padding, prefetch_panel, read_operand,
                          regroup_dim, regrouped_flat, regrouped_shape, region_start,
                          row_major, strided_load, transposed_copy)
from tuner.ir.machine import Machine
from tuner.ir.schedule import Loop, LoopNest, LoopPart
from tuner.ir.target import Target
from tuner.codegen.vmath import gelu

@dataclass(frozen=True)
class Access:
    """How generated code finds element offsets in one buffer."""
    ptr: str
    flat: Affine | None = None                       # offset over axis values ...
    guards: tuple[tuple[Affine, int], ...] = ()      # ... with dims that may leave [0, size)
    strides: dict[PartKey, int] | None = None        # or: offset = sum(loop var * stride)
    local: bool = False  # the accumulator tile: sized for full tiles, so never masked
    # a packed operand: also sized for full tiles, zero where a tile overhangs, so read whole
    # in a partial vector (only the output's lanes are masked)
    packed: bool = False
    etype: ir.Type = F32   # the element type in memory
    fill: bool = False     # padded reads return the input zero point (an int8 task's data)
    # a padded copy of ours, PAD_SLACK_BYTES longer than its rows: a strided vector is read
    # as whole vectors, past the lanes it needs (_load_strided)
    slack: bool = False


# Bytes allocated past the rows of a padded copy (root or local), so that a vector of lanes
# up to MAX_STRIDED_LOAD elements apart, whose first lane is in the copy, is read as whole
# vectors: up to (16 lanes - 1) x (4 + 1) float32 past that lane, 300 bytes. A masked load
# of the last part instead is a scalar load and insert per byte for int8 data on AVX2 (no
# masked byte loads): 132 vpinsrb in a stride-2 int8 depthwise kernel, 1.3-2.2x slower than
# onnxruntime's on MobileNetV2's stride-2 layers (Zen 3).
PAD_SLACK_BYTES = 320


@dataclass(frozen=True)
class Ctx:
    """Where emission stands: loop variables, remaining extent per axis, vector lane, tile."""
    vars: dict[PartKey, tuple[Lin, int]] = field(default_factory=dict)  # (value, step)
    rem: dict[str, int | ir.Value] = field(default_factory=dict)
    bound: dict[str, int] = field(default_factory=dict)  # the largest `rem` can be here
    vec: tuple[str, int, int] | None = None              # (axis, level, width)
    vec_rem: ir.Value | None = None                      # active lanes, when not all are
    partition: bool = False                              # peel constant tails from here on
    acc: Access | None = None
    dot: LoopPart | None = None                          # an int8 task's dot loop, entered

    def enter(self, part: LoopPart, value: Lin, rem, vec=None, vec_rem=None) -> "Ctx":
        return replace(self, vars={**self.vars, (part.axis, part.level): (value, part.step)},
                       rem={**self.rem, part.axis: rem},
                       bound={**self.bound, part.axis: part.step}, vec=vec or self.vec,
                       vec_rem=vec_rem if vec else self.vec_rem)

    def axis_value(self, axis: str) -> Lin:
        total = Lin()
        for (a, _), (value, step) in self.vars.items():
            if a == axis:
                total = total + value.scale(step)
        return total


# Rows of a transposed copy written together (`_emit_transposed`): the source's columns are
# read TRANSPOSE_BLOCK floats at a time, half a cache line.
TRANSPOSE_BLOCK = 8


class Fn:
    """One LLVM function being written: its builder and the buffer pointers it can see."""

    def __init__(self, func: ir.Function, ptrs: dict[str, ir.Value] | None = None):
        self.func = func
        entry = func.append_basic_block("entry")
        start = func.append_basic_block("start")
        # allocas go to a block of their own, before a branch to the code, where SROA finds them
        self._allocas = ir.IRBuilder(entry)
        self._allocas.position_before(self._allocas.branch(start))
        self.b = ir.IRBuilder(start)
        self.ptrs = dict(ptrs or {})
        self.local_pad_buffers: dict[str, ir.Value] = {}

    def alloca(self, typ: ir.Type) -> ir.Value:
        slot = self._allocas.alloca(typ)
        slot.align = 64
        slot.type = PTR  # llvmlite still types allocas; the IR it prints is opaque anyway
        return slot


def emit_llvm(nest: LoopNest, target: Target, name: str = "kernel") -> ir.Module:
    """The module for `target`: its threads, and vectors of its machine's width."""
    return _Emitter(nest, target.threads, name, target.machine).module


def pack_function_name(kernel: str, operand: str) -> str:
    return f"{kernel}_pack_{operand}"


class _Emitter:
    def __init__(self, nest: LoopNest, threads: int, name: str, machine: Machine):
        self.nest, self.dag, self.threads, self.name = nest, nest.dag, threads, name
        self.lanes, self.line_bytes = machine.lanes, machine.cache_line_bytes
        self.machine = machine
        self.acc_type = F32 if self.dag.quant is None else I32
        self.prefetch = {op.name: plan for op in nest.dag.inputs
                         if (plan := prefetch_panel(nest, op)) is not None}
        self.part_extents = {(p.axis, p.level): p.extent for loop in nest.loops
                             for p in loop.parts}
        self.module = ir.Module(name=name)
        self.extents = self.dag.extents
        self.accesses = {op.name: self._access(op) for op in self.dag.inputs}
        self.accesses["out"] = Access("out", self.dag.output.flat(),
                                      etype=quantized.IR_TYPES[self.dag.output.dtype])
        self.n_parallel = 0
        self.amx = amx.uses_amx(nest)
        if self.amx and not machine.amx:
            raise ScheduleError(f"amx: the target CPU {machine.cpu!r} has no AMX int8 tiles "
                                f"(amx-tile, amx-int8)")
        for op in self.dag.inputs:
            if op.name in nest.layout_rewrite:
                self._emit_pack(op)
        self._emit_kernel()

    # ------------------------------------------------------------------ accesses
    def _access(self, op: Operand) -> Access:
        typed = dict(etype=quantized.IR_TYPES[op.dtype], fill=op.fill_zero_point)
        if op.name in self.nest.layout_rewrite:
            return Access(op.name, strides=row_major(packed_layout(self.nest, op, self.machine)),
                          packed=True,
                          etype=quantized.IR_TYPES[packed_dtype(self.nest, op, self.machine)])
        dim = regroup_dim(self.nest, op)
        if dim is not None:  # read from its regrouped copy (_emit_regroup)
            return Access(op.name, regrouped_flat(op, self.extents, dim, self.dag.dot_axis),
                          **typed)
        if transposed_copy(self.nest, op):  # read from its transposed copy (_emit_transposed)
            return Access(op.name, read_operand(self.nest, op).flat(), **typed)
        pads = padding(op, self.extents) if op.padded else [(0, 0)] * len(op.shape)
        if self.nest.pad_mode(op.name) in ("root", "local") and any(lo or hi for lo, hi in pads):
            shifted = Operand(op.name, padded_shape(op, self.extents),
                              tuple(Affine(e.terms, e.const + lo)
                                    for e, (lo, _) in zip(op.index, pads)))
            return Access(op.name, shifted.flat(), slack=True, **typed)
        guards = tuple((e, s) for e, s, (lo, hi) in zip(op.index, op.shape, pads) if lo or hi)
        return Access(op.name, op.flat(), guards, **typed)

    def _fill(self, fn: Fn, acc: Access) -> ir.Value:
        """What a padded read of `acc` returns: zero, or the input zero point."""
        if not acc.fill:
            return ir.Constant(acc.etype, 0.0 if acc.etype == F32 else 0)
        return quantized.input_zero_point(fn.b, fn.ptrs["zero_points"], acc.etype)

    def _offset(self, ctx: Ctx, acc: Access) -> Lin:
        if acc.strides is not None:
            total = Lin()
            for key, stride in acc.strides.items():
                # a pair's element (layout.packed_layout): entered by the packing loops;
                # the kernel's dot leaf reads whole pairs, from its first element
                if key[1] != PAIR_LEVEL or key in ctx.vars:
                    total = total + ctx.vars[key][0].scale(stride)
            return total
        return self._affine(ctx, acc.flat)

    def _affine(self, ctx: Ctx, expr: Affine) -> Lin:
        total = Lin((), expr.const)
        for axis, coef in expr.terms:
            total = total + ctx.axis_value(axis).scale(coef)
        return total

    @staticmethod
    def _lane_stride(ctx: Ctx, acc_or_expr) -> int:
        axis, level, _ = ctx.vec
        if isinstance(acc_or_expr, Affine):
            return acc_or_expr.coef(axis) * ctx.vars[(axis, level)][1]
        if acc_or_expr.strides is not None:
            return acc_or_expr.strides.get((axis, level), 0)
        return acc_or_expr.flat.coef(axis) * ctx.vars[(axis, level)][1]

    def _guard(self, fn: Fn, ctx: Ctx, acc: Access, width: int | None):
        """i1 (or <W x i1>) that is true where every padded index is in bounds."""
        b, cond = fn.b, None
        for expr, size in acc.guards:
            value = materialize(b, self._affine(ctx, expr))
            if width:
                value = b.add(splat(b, value, width),
                              lane_offsets(width, self._lane_stride(ctx, expr)))
                lo = ir.Constant(value.type, [0] * width)
                hi = ir.Constant(value.type, [size] * width)
            else:
                lo, hi = ir.Constant(I64, 0), ir.Constant(I64, size)
            ok = b.and_(b.icmp_signed(">=", value, lo), b.icmp_signed("<", value, hi))
            cond = ok if cond is None else b.and_(cond, ok)
        return cond

    def _load_scalar(self, fn: Fn, ctx: Ctx, acc: Access, offset: Lin, extra=None):
        """A scalar read; `extra` is one more condition under which it is valid."""
        b = fn.b
        off = materialize(b, offset)
        ok = self._guard(fn, replace(ctx, vec=None), acc, None) if acc.guards else None
        if extra is not None:
            ok = extra if ok is None else b.and_(ok, extra)
        size = byte_size(acc.etype)
        if ok is None:
            return b.load(elem_ptr(b, fn.ptrs[acc.ptr], off, acc.etype), typ=acc.etype,
                          align=size)
        safe = b.select(ok, off, ir.Constant(I64, 0))  # element 0 is always readable
        value = b.load(elem_ptr(b, fn.ptrs[acc.ptr], safe, acc.etype), typ=acc.etype,
                       align=size)
        return b.select(ok, value, self._fill(fn, acc))

    def _active(self, fn: Fn, ctx: Ctx, lane: int | None = None):
        """Which lanes of a partial vector are real: a mask, or one lane's i1."""
        if ctx.vec_rem is None:
            return None
        b = fn.b
        if lane is not None:
            return b.icmp_signed("<", ir.Constant(I64, lane), ctx.vec_rem)
        width = ctx.vec[2]
        return b.icmp_signed("<", lane_offsets(width, 1), splat(b, ctx.vec_rem, width))

    def load(self, fn: Fn, ctx: Ctx, acc: Access) -> ir.Value:
        b = fn.b
        offset = self._offset(ctx, acc)
        if ctx.vec is None:
            return self._load_scalar(fn, ctx, acc, offset)
        width = ctx.vec[2]
        stride = self._lane_stride(ctx, acc)
        if stride == 0:  # lane 0 is always active
            return splat(b, self._load_scalar(fn, ctx, acc, offset), width)
        if stride == 1:
            ptr = elem_ptr(b, fn.ptrs[acc.ptr], materialize(b, offset), acc.etype)
            mask = self._guard(fn, ctx, acc, width) if acc.guards else None
            active = None if acc.local or acc.packed else self._active(fn, ctx)
            if active is not None:
                mask = active if mask is None else b.and_(mask, active)
            if mask is None:
                return b.load(ptr, typ=vec_type(width, acc.etype), align=byte_size(acc.etype))
            fill = splat(b, self._fill(fn, acc), width) if acc.fill else None
            return masked_load(b, ptr, mask, width, acc.etype, fill)
        if strided_load(stride, len(acc.guards)):
            rem = None if acc.packed else ctx.vec_rem
            return self._load_strided(fn, acc, materialize(b, offset), width, stride, rem)
        lanes = ir.Constant(vec_type(width, acc.etype), ir.Undefined)
        for lane in range(width):
            lane_ctx = self._lane_ctx(ctx, lane)
            extra = None if acc.local or acc.packed else self._active(fn, ctx, lane)
            value = self._load_scalar(fn, lane_ctx, acc, self._offset(lane_ctx, acc), extra)
            lanes = b.insert_element(lanes, value, ir.Constant(I32, lane))
        return lanes

    @staticmethod
    def _load_strided(fn: Fn, acc: Access, first: ir.Value, width: int, stride: int,
                      rem: ir.Value | None) -> ir.Value:
        """Lanes `stride` elements apart from element `first`: the span they cover read as
        contiguous vectors (the last one masked to the span, so nothing past the last lane
        is read), joined, and every stride-th element picked by one shuffle. In a partial
        vector of `rem` lanes every load is masked to the span of those lanes. From a padded
        copy (`acc.slack`) every part is read whole, unmasked."""
        b = fn.b
        span = (width - 1) * stride + 1
        if acc.slack:  # read whole: the copy has room past its last element
            span = -(-span // width) * width
        reach = None  # elements the active lanes cover: (rem - 1) * stride + 1
        if rem is not None and not acc.slack:
            reach = splat(b, b.add(b.mul(rem, ir.Constant(I64, stride)),
                                   ir.Constant(I64, 1 - stride)), width)
        parts = []
        etype, size = acc.etype, byte_size(acc.etype)
        for start in range(0, span, width):
            ptr = elem_ptr(b, fn.ptrs[acc.ptr], b.add(first, ir.Constant(I64, start)), etype)
            count = min(width, span - start)
            mask = None if count == width else \
                ir.Constant(ir.VectorType(I1, width), [i < count for i in range(width)])
            if reach is not None:
                offsets = ir.Constant(ir.VectorType(I64, width),
                                      [start + i for i in range(width)])
                active = b.icmp_signed("<", offsets, reach)
                mask = active if mask is None else b.and_(mask, active)
            parts.append(b.load(ptr, typ=vec_type(width, etype), align=size) if mask is None
                         else masked_load(b, ptr, mask, width, etype))
        while len(parts) > 1:  # pairwise concatenation: shuffles take two equal vectors
            if len(parts) % 2:
                parts.append(ir.Constant(parts[0].type, None))
            size = 2 * parts[0].type.count
            joined = ir.Constant(ir.VectorType(I32, size), list(range(size)))
            parts = [b.shuffle_vector(x, y, joined) for x, y in zip(parts[::2], parts[1::2])]
        pick = ir.Constant(ir.VectorType(I32, width), [i * stride for i in range(width)])
        return b.shuffle_vector(parts[0], ir.Constant(parts[0].type, ir.Undefined), pick)

    def store(self, fn: Fn, ctx: Ctx, acc: Access, value: ir.Value) -> None:
        b = fn.b
        offset = self._offset(ctx, acc)
        partial = ctx.vec is not None and ctx.vec_rem is not None and not acc.local
        size = byte_size(acc.etype)
        if ctx.vec is not None and self._lane_stride(ctx, acc) != 1:
            for lane in range(ctx.vec[2]):
                lane_ctx = self._lane_ctx(ctx, lane)
                ptr = elem_ptr(b, fn.ptrs[acc.ptr],
                               materialize(b, self._offset(lane_ctx, acc)), acc.etype)
                item = b.extract_element(value, ir.Constant(I32, lane))
                if partial:
                    with b.if_then(self._active(fn, ctx, lane)):
                        b.store(item, ptr, align=size)
                else:
                    b.store(item, ptr, align=size)
            return
        ptr = elem_ptr(b, fn.ptrs[acc.ptr], materialize(b, offset), acc.etype)
        if partial:
            masked_store(b, value, ptr, self._active(fn, ctx))
        else:
            b.store(value, ptr, align=size)

    @staticmethod
    def _lane_ctx(ctx: Ctx, lane: int) -> Ctx:
        axis, level, _ = ctx.vec
        first, step = ctx.vars[(axis, level)]
        return replace(ctx, vars={**ctx.vars, (axis, level): (first + lane, step)}, vec=None,
                       vec_rem=None)

    # ------------------------------------------------------------------ leaves
    def _zero(self, ctx: Ctx) -> ir.Value:
        return ir.Constant(vec_type(ctx.vec[2], self.acc_type) if ctx.vec else self.acc_type,
                           None)

    def _prefetch_next_panels(self, fn: Fn, ctx: Ctx, loop: Loop) -> None:
        """In each step through a packed operand's panel (an iteration of the innermost loop
        that steps through it): prefetch into L2 the step's share of the next panel's lines.
        The P passes over the panel times its R steps number the executions e = j R + r,
        and execution e takes lines [e k, e k + k), k = ceil(lines / (P R)), so the next
        panel arrives evenly over the current one's passes. Branch-free: a conditional
        block in the loop made LLVM spill accumulators of full register tiles
        (layout.prefetch_panel says when and why)."""
        entered = {(p.axis, p.level) for p in loop.parts}
        for name, plan in self.prefetch.items():
            if plan.steps[-1] not in entered:
                continue
            pass_, passes = self._mixed_radix(ctx, plan.reuse)
            step, steps = self._mixed_radix(ctx, plan.steps)
            esize = byte_size(self.accesses[name].etype)
            lines = -(-esize * plan.stride // self.line_bytes)
            share = -(-lines // (passes * steps))
            execution = pass_.scale(steps) + step
            b = fn.b
            first = materialize(b, execution.scale(share))
            # integer arithmetic: the last panel's next is outside the buffer, which a
            # prefetch may name (it never faults) but an inbounds GEP may not
            panel = materialize(b, (ctx.vars[plan.part][0] + 1).scale(esize * plan.stride))
            base = b.add(b.ptrtoint(fn.ptrs[name], I64), panel)
            prefetch = intrinsic(b.module, "llvm.prefetch.p0", VOID, [PTR, I32, I32, I32])
            for i in range(share):
                line = smin(b, b.add(first, ir.Constant(I64, i)), lines - 1)
                address = b.add(base, b.mul(line, ir.Constant(I64, self.line_bytes)))
                # read, locality 2 (L2: prefetcht1), data cache
                b.call(prefetch, [b.inttoptr(address, PTR), ir.Constant(I32, 0),
                                  ir.Constant(I32, 2), ir.Constant(I32, 1)])

    def _mixed_radix(self, ctx: Ctx, keys: tuple[PartKey, ...]) -> tuple[Lin, int]:
        """The loops `keys` (outer first) as one number: their values in mixed radix, and how
        many values it takes."""
        value, count = Lin(), 1
        for key in reversed(keys):
            value, count = value + ctx.vars[key][0].scale(count), count * self.part_extents[key]
        return value, count

    def leaf_compute(self, fn: Fn, ctx: Ctx) -> None:
        target = ctx.acc or self.accesses["out"]
        lhs, rhs = self.accesses[self.dag.lhs.name], self.accesses[self.dag.rhs.name]
        if self.dag.quant is not None:
            total = self.load(fn, ctx, target)
            if ctx.dot is not None:
                total = quantized.dot(self, fn, ctx, lhs, rhs, total)
            else:
                total = quantized.multiply_add(
                    fn.b, self.load(fn, ctx, lhs), self.load(fn, ctx, rhs), total, self.dag,
                    quantized.centering(fn.b, self.dag, fn.ptrs["zero_points"]))
            self.store(fn, ctx, target, total)
            return
        x = self.load(fn, ctx, lhs)
        w = self.load(fn, ctx, rhs)
        self.store(fn, ctx, target, fma(fn.b, x, w, self.load(fn, ctx, target)))

    def leaf_init_acc(self, fn: Fn, ctx: Ctx) -> None:
        self.store(fn, ctx, ctx.acc, self._zero(ctx))

    def _addends(self, fn: Fn, ctx: Ctx, value: ir.Value | None) -> ir.Value:
        """`value` (None: nothing yet) plus the bias and the residual, where the task has
        them."""
        for op in self.dag.addends:
            term = self.load(fn, ctx, self.accesses[op.name])
            value = term if value is None else \
                fn.b.fadd(value, term) if self.acc_type == F32 else fn.b.add(value, term)
        return self._zero(ctx) if value is None else value

    def leaf_writeback(self, fn: Fn, ctx: Ctx) -> None:
        self._write_out(fn, ctx, self.load(fn, ctx, ctx.acc))

    def _write_out(self, fn: Fn, ctx: Ctx, value: ir.Value) -> None:
        """The epilogue: `value` from the local tile plus bias and residual, ReLU, stored;
        an int8 task's sum plus bias through its Quantization."""
        if self.dag.quant is not None:
            scale = self.load(fn, ctx, self.accesses["scale"]) \
                if self.dag.quant.scale is not None else None
            self.store(fn, ctx, self.accesses["out"],
                       quantized.epilogue(fn.b, self.dag, self._addends(fn, ctx, value), scale,
                                          fn.ptrs["zero_points"], self.machine))
            return
        self.store(fn, ctx, self.accesses["out"],
                   self._activate(fn, self._addends(fn, ctx, value)))

    def _activate(self, fn: Fn, value: ir.Value) -> ir.Value:
        """The task's activation (ReLU, ReLU6 or GELU) of `value`, or `value`."""
        if self.dag.relu:
            return relu(fn.b, value, self.dag.relu)
        if self.dag.gelu:
            return gelu(fn.b, value, self.dag.gelu)
        return value

    def leaf_init_out(self, fn: Fn, ctx: Ctx) -> None:
        self.store(fn, ctx, self.accesses["out"], self._addends(fn, ctx, None))

    def leaf_activate_out(self, fn: Fn, ctx: Ctx) -> None:
        out = self.accesses["out"]
        self.store(fn, ctx, out, self._activate(fn, self.load(fn, ctx, out)))

    # ------------------------------------------------------------------ loops
    def emit_loops(self, fn: Fn, loops, ctx: Ctx, leaf,
                   local_pads: tuple[LocalPad, ...] = (), compute: bool = False) -> None:
        """`loops` around `leaf`, with the copies of `local_pads` made where they belong and,
        in the loops of the computation (`compute`), the prefetches of packed operands."""
        spec = region_start(loops)
        at_depth = {plan.depth: [p for p in local_pads if p.depth == plan.depth]
                    for plan in local_pads}

        def go(fn: Fn, pos: int, ctx: Ctx, specialized: bool = False,
               copied: bool = False) -> None:
            if pos in at_depth and not copied:
                self._emit_local_pads(fn, ctx, at_depth[pos],
                                      lambda f, c: go(f, pos, c, specialized, True))
            elif pos == len(loops):
                leaf(fn, ctx)
            elif pos == spec and not specialized:
                self.specialize(fn, loops[pos:], ctx, lambda f, c: go(f, pos, c, True, True))
            else:
                def body(f: Fn, c: Ctx, loop=loops[pos]) -> None:
                    if compute:
                        self._prefetch_next_panels(f, c, loop)
                    go(f, pos + 1, c)
                self.emit_loop(fn, loops[pos], ctx, body)

        go(fn, 0, ctx)

    def specialize(self, fn: Fn, loops, ctx: Ctx, then) -> None:
        """Branch once into a constant-extent fast path where every tile is full."""
        ctx = replace(ctx, partition=True)
        axes = {p.axis for loop in loops for p in loop.parts}
        dynamic = sorted(a for a in axes if not isinstance(ctx.rem[a], int))
        if not dynamic:
            then(fn, ctx)
            return
        b = fn.b
        cond = None
        for a in dynamic:
            eq = b.icmp_signed("==", ctx.rem[a], ir.Constant(I64, ctx.bound[a]))
            cond = eq if cond is None else b.and_(cond, eq)
        full = replace(ctx, rem={**ctx.rem, **{a: ctx.bound[a] for a in dynamic}})
        with b.if_else(cond) as (fast, general):
            with fast:
                then(fn, full)
            with general:
                then(fn, ctx)

    def emit_loop(self, fn: Fn, loop: Loop, ctx: Ctx, inner) -> None:
        if loop.kind == "parallel" and self.threads > 1 and loop.extent > 1:
            self.emit_parallel(fn, loop, ctx, inner)
            return
        if len(loop.parts) > 1:
            runtime_loop(fn.b, 0, loop.extent,
                         lambda v: self.enter_parts(fn, loop.parts, ctx, v, inner), loop.name)
            return
        part = loop.parts[0]
        rem, step = ctx.rem[part.axis], part.step
        if loop.kind == "vectorize":
            self.emit_vector(fn, part, ctx, inner)
            return
        if loop.kind == "dot":  # the leaf reads the whole group (quantized.dot)
            inner(fn, replace(ctx.enter(part, Lin(), rem), dot=part))
            return
        if loop.kind == "unroll" and isinstance(rem, int):
            for t in range(-(-rem // step)):
                inner(fn, ctx.enter(part, Lin((), t), min(step, rem - t * step)))
            return
        if loop.kind == "unroll":  # a partial tile: every copy, each behind its own check
            b = fn.b
            for t in range(part.extent):
                left = b.sub(rem, ir.Constant(I64, t * step))
                with b.if_then(b.icmp_signed(">", left, ir.Constant(I64, 0))):
                    inner(fn, ctx.enter(part, Lin((), t), smin(b, step, left)))
            return
        if ctx.bound.get(part.axis, rem if isinstance(rem, int) else step + 1) <= step:
            # one trip: a constant index, so a local tile indexed by it stays in registers
            inner(fn, ctx.enter(part, Lin((), 0), rem))
        elif isinstance(rem, int) and rem % step == 0:
            runtime_loop(fn.b, 0, rem // step,
                         lambda v: inner(fn, ctx.enter(part, var(v), step)), loop.name)
        elif isinstance(rem, int) and ctx.partition:
            full = rem // step
            if full:
                runtime_loop(fn.b, 0, full,
                             lambda v: inner(fn, ctx.enter(part, var(v), step)), loop.name)
            inner(fn, ctx.enter(part, Lin((), full), rem - full * step))
        else:
            def body(v):
                left = fn.b.sub(as_value(rem), fn.b.mul(v, ir.Constant(I64, step)))
                inner(fn, ctx.enter(part, var(v), smin(fn.b, step, left)))
            runtime_loop(fn.b, 0, ceil_div(fn.b, rem, step), body, loop.name)

    def emit_vector(self, fn: Fn, part: LoopPart, ctx: Ctx, inner) -> None:
        """Vectors of the machine's width: on AVX-512 a 48-lane loop is three <16 x float>
        chunks (six <8 x float> on AVX2), since
        LLVM widens odd vector types and then keeps them out of registers. A partial tile
        (dynamic `rem`) uses full-width chunks with the inactive lanes masked off."""
        rem = ctx.rem[part.axis]
        if isinstance(rem, int):
            for first in range(0, rem, self.lanes):
                width = min(self.lanes, rem - first)
                vec = (part.axis, part.level, width) if width > 1 else None
                inner(fn, ctx.enter(part, Lin((), first), width, vec))
            return
        b = fn.b
        for first in range(0, part.extent, self.lanes):
            width = min(self.lanes, part.extent - first)
            left = b.sub(rem, ir.Constant(I64, first))
            with b.if_then(b.icmp_signed(">", left, ir.Constant(I64, 0))):
                inner(fn, ctx.enter(part, Lin((), first), left,
                                    (part.axis, part.level, width), left))

    def enter_parts(self, fn: Fn, parts, ctx: Ctx, v: ir.Value, inner) -> None:
        """Decode a (fused) loop's variable into its parts and enter them all."""
        b = fn.b
        indices = []
        for k, part in enumerate(reversed(parts)):
            idx = v
            if k < len(parts) - 1:
                idx = b.urem(v, ir.Constant(I64, part.extent))
                v = b.udiv(v, ir.Constant(I64, part.extent))
            indices.append(idx)
        checks = []
        for part, idx in zip(parts, reversed(indices)):  # outer to inner, as `rem` requires
            rem = ctx.rem[part.axis]
            if isinstance(rem, int) and rem % part.step == 0 and rem // part.step == part.extent:
                new_rem = part.step
            else:
                left = b.sub(as_value(rem), b.mul(idx, ir.Constant(I64, part.step)))
                new_rem = smin(b, part.step, left)
                if not (isinstance(rem, int) and -(-rem // part.step) == part.extent):
                    checks.append(b.icmp_signed(">", left, ir.Constant(I64, 0)))
            ctx = ctx.enter(part, var(idx), new_rem)
        if not checks:
            inner(fn, ctx)
            return
        cond = checks[0]
        for c in checks[1:]:
            cond = b.and_(cond, c)
        with b.if_then(cond):
            inner(fn, ctx)

    def emit_parallel(self, fn: Fn, loop: Loop, ctx: Ctx, inner) -> None:
        assert all(isinstance(r, int) for r in ctx.rem.values()) and not ctx.vars
        self.parallel_for(fn, loop.extent, loop.name,
                          lambda sub, v: self.enter_parts(sub, loop.parts, ctx, v, inner))

    def parallel_for(self, fn: Fn, trips: int, name: str, body) -> None:
        """for v in 0..trips: body(sub, v), run by `self.threads` threads (GOMP_parallel),
        each taking one static block of iterations; `sub` is the outlined function, which
        sees every buffer pointer of `fn`."""
        self.n_parallel += 1
        outlined = outlined_function(self.module, f"{self.name}.par{self.n_parallel}")
        keys = list(fn.ptrs)
        gomp_parallel(fn.b, outlined, fn.alloca(ir.ArrayType(PTR, len(keys))),
                      [fn.ptrs[key] for key in keys], self.threads)
        sub = Fn(outlined)
        sub.ptrs.update(zip(keys, shared_pointers(sub.b, outlined, len(keys))))
        lo, hi = static_block(sub.b, trips)
        runtime_loop(sub.b, lo, hi, lambda v: body(sub, v), name)
        sub.b.ret_void()

    def _extern(self, name: str, ret, args) -> ir.Function:
        fn = self.module.globals.get(name)
        return fn if fn is not None else ir.Function(self.module, ir.FunctionType(ret, args),
                                                     name=name)

    # ------------------------------------------------------------------ functions
    def _root_ctx(self) -> Ctx:
        return Ctx(rem=dict(self.extents), bound=dict(self.extents))

    @staticmethod
    def _plain_loops(parts) -> list[Loop]:
        return [Loop(f"{p.axis}.{p.level}", (p,), False) for p in parts]

    def _emit_kernel(self) -> None:
        names = ["out"] + [op.name for op in self.dag.inputs]
        func = ir.Function(self.module, ir.FunctionType(VOID, [PTR] * len(names)),
                           name=self.name)
        for arg, name in zip(func.args, names):
            arg.name = name
            arg.add_attribute("noalias")
        fn = Fn(func, dict(zip(names, func.args)))
        if self.amx:
            amx.request_permission(fn.b)
        frees = []
        for op in self.dag.inputs:
            dim = regroup_dim(self.nest, op)
            if dim is not None:
                frees.append(self._emit_regroup(fn, op, dim))
            elif transposed_copy(self.nest, op):
                frees.append(self._emit_transposed(fn, op))
            elif op.padded and self.nest.pad_mode(op.name) == "root" \
                    and op.name not in self.nest.layout_rewrite:
                frees.append(self._emit_root_pad(fn, op))
        spatial = self._plain_loops(LoopPart(a.name, 0, a.extent, 1)
                                    for a in self.dag.spatial_axes)
        nest = self.nest
        local = local_pad_plans(nest)
        if nest.cache_write_at is None:
            self.emit_loops(fn, spatial, self._root_ctx(), self.leaf_init_out)
            self.emit_loops(fn, nest.loops, self._root_ctx(), self.leaf_compute, local,
                            compute=True)
            if self.dag.activated:
                self.emit_loops(fn, spatial, self._root_ctx(), self.leaf_activate_out)
        else:
            at = nest.cache_write_at
            self.emit_loops(fn, nest.loops[:at + 1], self._root_ctx(), self._emit_tile, local,
                            compute=True)
        for ptr in frees:
            if ptr is not None:
                fn.b.call(self._extern("free", VOID, [PTR]), [ptr])
        fn.b.ret_void()

    def _emit_tile(self, fn: Fn, ctx: Ctx) -> None:
        tile = self.nest.tile_loops
        spatial_tile = [l for l in tile if not l.reduce]
        tile_parts = [p for l in spatial_tile for p in l.parts]
        size = math.prod(p.extent for p in tile_parts)

        head = amx.headroom(self.nest) if self.amx else 0

        def body(fn: Fn, ctx: Ctx) -> None:
            slot = fn.alloca(ir.ArrayType(self.acc_type, head + size))
            if head:
                slot = fn.b.gep(slot, [ir.Constant(I64, head)], source_etype=self.acc_type)
            fn.ptrs = {**fn.ptrs, f"acc{id(slot)}": slot}
            acc = Access(f"acc{id(slot)}", strides=row_major(tile_parts), local=True,
                         etype=self.acc_type)
            c = replace(ctx, acc=acc)
            if self.amx:
                amx.emit_tile(self, fn, c)
            else:
                self.emit_loops(fn, spatial_tile, c, self.leaf_init_acc)
                self.emit_loops(fn, tile, c, self.leaf_compute, compute=True)
            self._emit_writeback(fn, spatial_tile, c)

        self.specialize(fn, tile, ctx, body)

    def _emit_writeback(self, fn: Fn, loops, ctx: Ctx) -> None:
        """The local tile written back to the output. Where the tile is vectorized along an
        axis that is not contiguous in the output (output channels, in NCHW), and an unrolled
        axis of the tile is (the output's row), blocks of the tile are transposed in
        registers so that each output row is written with vector stores and its residual
        read with vector loads, instead of a store and a load per lane."""
        pair = self._transposable(loops)
        if pair is None:
            self.emit_loops(fn, loops, ctx, self.leaf_writeback)
            return
        row, vec = pair
        # the pair's loops and the single-trip loops inside them on their axes move innermost
        inner = [loop for pick in (row, vec) for loop in loops[loops.index(pick):]
                 if loop.parts[0].axis == pick.parts[0].axis]
        outer = [loop for loop in loops if loop not in inner]
        self.emit_loops(fn, outer, ctx,
                        lambda f, c: self._writeback_transposed(f, c, row, vec, inner))

    def _transposable(self, loops) -> tuple[Loop, Loop] | None:
        """(row loop, vector loop) of a write-back that `_writeback_transposed` serves: the
        vector loop steps through an axis that is not contiguous in the output, the row loop
        is unrolled through one that is, with step 1, and inside each of them only
        single-trip loops step through its axis."""
        if any(len(loop.parts) != 1 for loop in loops):
            return None
        vecs = [loop for loop in loops if loop.kind == "vectorize"]
        if len(vecs) != 1 or self.dag.quant is not None:
            return None
        vec, out = vecs[0], self.dag.output.flat()

        def innermost(loop: Loop) -> bool:
            return all(later.extent == 1 for later in loops[loops.index(loop) + 1:]
                       if later.parts[0].axis == loop.parts[0].axis)

        if out.coef(vec.parts[0].axis) * vec.parts[0].step == 1 or not innermost(vec):
            return None
        for loop in loops:
            part = loop.parts[0]
            if (loop.kind == "unroll" and part.step == 1 and out.coef(part.axis) == 1
                    and part.axis != vec.parts[0].axis and loop.extent > 1
                    and innermost(loop)):
                return loop, vec
        return None

    def _writeback_transposed(self, fn: Fn, ctx: Ctx, row: Loop, vec: Loop,
                              inner: list[Loop]) -> None:
        rpart, vpart = row.parts[0], vec.parts[0]
        rows, cols = ctx.rem[rpart.axis], ctx.rem[vpart.axis]
        if not (isinstance(rows, int) and isinstance(cols, int)):  # a partial tile
            self.emit_loops(fn, inner, ctx, self.leaf_writeback)
            return
        for loop in inner:  # the single-trip loops: index 0, whatever the tile's extent
            if loop is not row and loop is not vec:
                ctx = ctx.enter(loop.parts[0], Lin(), ctx.rem[loop.parts[0].axis])
        for v0 in range(0, cols, self.lanes):
            width = min(self.lanes, cols - v0)
            for r0 in range(0, rows, self.lanes):
                count = min(self.lanes, rows - r0)
                if min(count, width) < 2 or count * width <= transpose_shuffles(count, width):
                    # nothing to transpose, or more shuffles than stores per lane: lane-wise
                    for r in range(r0, r0 + count):
                        at = ctx.enter(rpart, Lin((), r), 1)
                        self.leaf_writeback(fn, at.enter(
                            vpart, Lin((), v0), width,
                            (vpart.axis, vpart.level, width) if width > 1 else None))
                    continue
                tile = [self.load(fn, ctx.enter(rpart, Lin((), r0 + r), 1).enter(
                            vpart, Lin((), v0), width, (vpart.axis, vpart.level, width)),
                                  ctx.acc) for r in range(count)]
                for lane, value in enumerate(transpose(fn.b, tile, width)):
                    at = ctx.enter(vpart, Lin((), v0 + lane), 1).enter(
                        rpart, Lin((), r0), count,
                        (rpart.axis, rpart.level, count) if count > 1 else None)
                    self._write_out(fn, at, value)

    def _copy_per_call(self, fn: Fn, op: Operand, key: str, rows: int, size: int,
                       row) -> ir.Value:
        """A buffer of `size` bytes (malloc), filled once per call by `row(sub, r)` for r in
        range(rows), which finds it at `sub.ptrs[key]`; the kernel then reads `op` from it,
        and frees it (the buffer is returned). The rows are shared among the threads when
        there are several: a serial copy took more time than the whole depthwise
        convolution at two threads."""
        b = fn.b
        dst = b.call(self._extern("malloc", PTR, [I64]), [ir.Constant(I64, size)])
        fn.ptrs = {**fn.ptrs, key: dst}
        if self.threads > 1 and rows > 1:
            self.parallel_for(fn, rows, key, row)
        else:
            runtime_loop(b, 0, rows, lambda r: row(fn, r), key)
        fn.ptrs = {**{k: v for k, v in fn.ptrs.items() if k != key}, op.name: dst}
        return dst

    def _emit_root_pad(self, fn: Fn, op: Operand):
        """A padded copy of `op`, written once per call, row by row (`_pad_row`)."""
        pads = padding(op, self.extents)
        if not any(lo or hi for lo, hi in pads):
            return None
        shape = padded_shape(op, self.extents)
        rows = math.prod(shape[:-1])
        key = f"pad.{op.name}"
        etype = self.accesses[op.name].etype

        def row(sub: Fn, r: ir.Value) -> None:
            out_row = elem_ptr(sub.b, sub.ptrs[key], sub.b.mul(r, ir.Constant(I64, shape[-1])),
                               etype)
            self._pad_row(sub, op, sub.ptrs[op.name], out_row, r)

        return self._copy_per_call(fn, op, key, rows,
                                   byte_size(etype) * rows * shape[-1] + PAD_SLACK_BYTES, row)

    def _emit_transposed(self, fn: Fn, op: Operand):
        """The transposed copy of `op` (tuner.ir.layout.transposed_copy), written once per
        call: [..., R, C] from the source's [..., C, R] in blocks of TRANSPOSE_BLOCK rows of
        the copy, each column of the block a contiguous run of the source (read along rows,
        written along TRANSPOSE_BLOCK rows at once; a row at a time read the source a cache
        line per element: 2048x49 floats took 50-90 us, against 20-40 for the kernel's whole
        2048x49x8 product, on Zen 3)."""
        *outer, rows, width = read_operand(self.nest, op).shape
        blocks = -(-rows // TRANSPOSE_BLOCK)
        key = f"transposed.{op.name}"
        etype = self.accesses[op.name].etype
        count = math.prod(outer) * blocks

        def block(sub: Fn, index: ir.Value) -> None:
            b = sub.b
            plane = b.udiv(index, ir.Constant(I64, blocks))
            first = b.mul(b.urem(index, ir.Constant(I64, blocks)),
                          ir.Constant(I64, TRANSPOSE_BLOCK))
            src = elem_ptr(b, sub.ptrs[op.name], b.add(b.mul(
                plane, ir.Constant(I64, rows * width)), first), etype)
            dst = elem_ptr(b, sub.ptrs[key], b.add(b.mul(plane, ir.Constant(I64, rows * width)),
                                                   b.mul(first, ir.Constant(I64, width))), etype)
            # the block's rows: TRANSPOSE_BLOCK, or what is left of the last block
            height = b.select(b.icmp_unsigned("<", b.add(first, ir.Constant(
                I64, TRANSPOSE_BLOCK)), ir.Constant(I64, rows)), ir.Constant(
                I64, TRANSPOSE_BLOCK), b.sub(ir.Constant(I64, rows), first))

            def column(c: ir.Value) -> None:
                run = elem_ptr(b, src, b.mul(c, ir.Constant(I64, rows)), etype)

                def element(i: ir.Value) -> None:
                    value = b.load(elem_ptr(b, run, i, etype), typ=etype)
                    b.store(value, elem_ptr(b, dst, b.add(b.mul(i, ir.Constant(I64, width)),
                                                          c), etype))

                runtime_loop(b, 0, height, element, f"{key}.row")

            runtime_loop(b, 0, width, column, f"{key}.column")

        return self._copy_per_call(fn, op, key, count,
                                   byte_size(etype) * math.prod(outer) * rows * width, block)

    def _emit_regroup(self, fn: Fn, op: Operand, dim: int):
        """The regrouped copy of the int8 activation `op` (tuner.ir.layout.regroup_dim),
        with its padding, written once per call: per row of the copy (every dimension of
        `regrouped_shape` but the last two), the DOT_GROUP source rows of its group
        interleaved (quantized.regroup_row), the input zero point where a row lies in the
        padding; rows shared among the threads as the padded copy's are."""
        shape = regrouped_shape(op, self.extents, dim)
        pads = padding(op, self.extents)
        rows, row_bytes = math.prod(shape[:-2]), shape[-2] * shape[-1]
        key = f"regroup.{op.name}"
        i8 = ir.IntType(8)
        memset = intrinsic(self.module, "llvm.memset.p0.i64", VOID, [PTR, i8, I64, ir.IntType(1)])
        strides = op.strides()

        def row(sub: Fn, r: ir.Value) -> None:
            sb = sub.b
            fill = self._fill(sub, self.accesses[op.name])
            out = elem_ptr(sb, sub.ptrs[key], sb.mul(r, ir.Constant(I64, row_bytes)), i8)
            sb.call(memset, [out, fill, ir.Constant(I64, row_bytes), ir.Constant(ir.IntType(1), 0)])
            inside, base, group = self._row_source(sb, r, shape[:-2], op, dim)
            first = sb.mul(group, ir.Constant(I64, DOT_GROUP))  # the group's first channel
            with sb.if_then(inside):
                rows_of_group, present = [], []
                for g in range(DOT_GROUP):
                    channel = sb.add(first, ir.Constant(I64, g))
                    ok = sb.icmp_unsigned("<", channel, ir.Constant(I64, op.shape[dim]))
                    present.append(ok)
                    channel = sb.select(ok, channel, ir.Constant(I64, 0))
                    rows_of_group.append(elem_ptr(sb, sub.ptrs[op.name], sb.add(
                        base, sb.mul(channel, ir.Constant(I64, strides[dim]))), i8))
                left = elem_ptr(sb, out, ir.Constant(I64, pads[-1][0] * shape[-1]), i8)
                quantized.regroup_row(sb, rows_of_group, present, fill, left, op.shape[-1])

        return self._copy_per_call(fn, op, key, rows,
                                   rows * row_bytes + quantized.REGROUP_SLACK, row)

    def _row_source(self, b: ir.IRBuilder, r: ir.Value, dims: tuple[int, ...], op: Operand,
                    group_dim: int | None = None):
        """Where row `r` of a copy of `op` comes from, the copy's rows indexed row-major by
        `dims` (the padded shape but its last dimension; the regrouped one but its last two):
        (i1, true where the row lies inside `op`; the offset of its first element in `op`;
        the index along `group_dim`, which the caller places itself, or None)."""
        pads = padding(op, self.extents)
        inside, offset, group, v = None, ir.Constant(I64, 0), None, r
        for dim in reversed(range(len(dims))):  # innermost first
            idx = b.urem(v, ir.Constant(I64, dims[dim])) if dim else v
            v = b.udiv(v, ir.Constant(I64, dims[dim])) if dim else v
            if dim == group_dim:
                group = idx
                continue
            lo, _ = pads[dim]
            s_idx = b.sub(idx, ir.Constant(I64, lo))
            ok = b.icmp_unsigned("<", s_idx, ir.Constant(I64, op.shape[dim]))
            inside = ok if inside is None else b.and_(inside, ok)
            offset = b.add(offset, b.mul(s_idx, ir.Constant(I64, op.strides()[dim])))
        return (ir.Constant(I1, 1) if inside is None else inside), offset, group

    def _emit_local_pads(self, fn: Fn, ctx: Ctx, plans: list[LocalPad], then) -> None:
        """The copies of `plans` for the iteration `ctx` stands in (tuner.ir.layout.LocalPad),
        then `then(fn, ctx)` reading each operand from its buffer, through a base pointer
        moved back to the copied run's first row so that the padded operand's indices apply
        unchanged."""
        b = fn.b
        saved = fn.ptrs
        moved = {}
        for plan in plans:
            op = self.dag.operand(plan.operand)
            pads = padding(op, self.extents)
            shape = plan.padded_shape
            buffer = fn.local_pad_buffers.get(op.name)
            etype = self.accesses[op.name].etype
            if buffer is None:
                slack = -(-PAD_SLACK_BYTES // byte_size(etype))
                buffer = fn.alloca(ir.ArrayType(etype, plan.rows * shape[-1] + slack))
                fn.local_pad_buffers[op.name] = buffer
            first = Lin()  # the run's first padded row: the box's lowest corner
            stride = 1
            for dim in reversed(range(len(shape) - 1)):
                expr = op.index[dim]
                first = first + self._affine(ctx, Affine(expr.terms, expr.const
                                                         + pads[dim][0])).scale(stride)
                stride *= shape[dim]
            first = materialize(b, first)
            total = ir.Constant(I64, math.prod(shape[:-1]))
            count = smin(b, plan.rows, b.sub(total, first))
            src = saved[op.name]

            def row(i: ir.Value, buffer=buffer, first=first, src=src, op=op,
                    etype=etype) -> None:
                out_row = elem_ptr(b, buffer, b.mul(i, ir.Constant(I64, shape[-1])), etype)
                self._pad_row(fn, op, src, out_row, b.add(first, i))

            runtime_loop(b, 0, count, row, f"pad.{op.name}")
            moved[op.name] = elem_ptr(b, buffer, b.mul(first, ir.Constant(I64, -shape[-1])),
                                      etype)
        fn.ptrs = {**saved, **moved}
        then(fn, ctx)
        fn.ptrs = saved

    def _pad_row(self, fn: Fn, op: Operand, src: ir.Value, out_row: ir.Value,
                 r: ir.Value) -> None:
        """Row `r` of the zero-padded form of `op` (every dimension but the last, row-major)
        into `out_row`: a row of zeros where the row lies in the padding, else zeros, a
        memcpy of the source row, zeros (a select per element would keep LLVM from
        vectorizing the copy, and depthwise layers are copy-bound). An int8 task's data is
        padded with its zero point (a byte, so memset still fills it)."""
        b = fn.b
        pads = padding(op, self.extents)
        shape = padded_shape(op, self.extents)
        (left, right), width = pads[-1], op.shape[-1]
        i8 = ir.IntType(8)
        memset = intrinsic(self.module, "llvm.memset.p0.i64", VOID, [PTR, i8, I64, ir.IntType(1)])
        memcpy = intrinsic(self.module, "llvm.memcpy.p0.p0.i64", VOID,
                           [PTR, PTR, I64, ir.IntType(1)])
        no = ir.Constant(ir.IntType(1), 0)
        access = self.accesses[op.name]
        esize = byte_size(access.etype)
        byte = self._fill(fn, access) if access.fill else ir.Constant(i8, 0)

        def zero(at, floats: int) -> None:
            if floats:
                b.call(memset, [at, byte, ir.Constant(I64, esize * floats), no])

        inside, src_off, _ = self._row_source(b, r, shape[:-1], op)
        with b.if_else(inside) as (copy, blank):
            with copy:
                zero(out_row, left)
                b.call(memcpy, [elem_ptr(b, out_row, ir.Constant(I64, left), access.etype),
                                elem_ptr(b, src, src_off, access.etype),
                                ir.Constant(I64, esize * width), no])
                zero(elem_ptr(b, out_row, ir.Constant(I64, left + width), access.etype), right)
            with blank:
                zero(out_row, shape[-1])

    def _emit_pack(self, op: Operand) -> None:
        """<name>_pack_<op>(dst, src): the packed layout, zero where a tile overhangs the
        shape."""
        func = ir.Function(self.module, ir.FunctionType(VOID, [PTR, PTR]),
                           name=pack_function_name(self.name, op.name))
        fn = Fn(func, {"dst": func.args[0], "src": func.args[1]})
        parts = packed_layout(self.nest, op, self.machine)
        axes = sorted({p.axis for p in parts})
        ctx = Ctx()
        guards = tuple((Affine(((a, 1),)), self.extents[a]) for a in axes)
        if op.padded:  # an int8 weight's last channel group overhangs: zeros there
            guards += tuple((e, size) for e, size, (lo, hi) in
                            zip(op.index, op.shape, padding(op, self.extents)) if lo or hi)
        etype = quantized.IR_TYPES[op.dtype]
        src = Access("src", op.flat(), guards, etype=etype)
        dst = Access("dst", strides=row_major(parts),
                     etype=quantized.IR_TYPES[packed_dtype(self.nest, op, self.machine)])

        def go(i: int, ctx: Ctx) -> None:
            if i == len(parts):
                value = self.load(fn, ctx, src)
                if dst.etype != etype:  # int8 weights widened for vpmaddwd
                    value = fn.b.sext(value, dst.etype)
                self.store(fn, ctx, dst, value)
                return
            p = parts[i]
            runtime_loop(fn.b, 0, p.extent,
                         lambda v: go(i + 1, replace(ctx, vars={**ctx.vars, (p.axis, p.level):
                                                                (var(v), p.step)})),
                         f"{p.axis}.{p.level}")

        go(0, ctx)
        fn.b.ret_void()
