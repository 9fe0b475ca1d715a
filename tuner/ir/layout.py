"""Layout facts of a loop nest: one definition each, for codegen, features, search and defaults.

What code generation will do with each buffer follows from the schedule alone, and several
modules need to know it before any code exists (the cost model's features, the code-size bound
that keeps compile times predictable, the default schedule's choice of vector axis):

- `padding`: the zeros an operand's index expressions can reach outside its shape;
- `packed_parts` / `row_major`: the layout of a layout-rewritten constant operand (its loop
  levels in loop order, Ansor's layout rewrite) and its strides;
- `lane_stride` / `access_class`: how an operand is read along the vectorized loop: a broadcast
  (stride 0), one contiguous vector load per chunk (stride 1, or a packed operand), `stride`
  contiguous loads and a shuffle (a small stride, up to `MAX_STRIDED_LOAD`, without bounds
  checks: stride-2 convolutions), or a gather of one scalar load per lane;
- `prefetch_panel`: the slice of a packed operand that the kernel prefetches ahead (the next
  outermost tile of it), if any;
- `inline_guards`: the padded dimensions read with bounds checks (inline padding);
- `region_start`: where the innermost run of unrolled / vectorized loops begins;
- `root_pad_bytes`: the padded copies made per call (root padding);
- `transposed_copy` / `read_operand`: an activation the vectors broadcast, copied per call with
  its reduction dimension innermost (a 1x1 convolution's data as [N, P, C]);
- `regroup_dim` / `regrouped_shape` / `regrouped_flat`: an int8 activation copied with its
  channels in groups of DOT_GROUP innermost, so that each dot group is 4 contiguous bytes;
- `local_pad_plan`: where a locally padded operand is copied, and how much (local padding);
- `vector_chunks`: native vectors per vectorized iteration, for the target's lanes;
- `operand_registers`: the vector registers one reduction step of a register tile needs
  besides its accumulators (with the sliding-window broadcasts of unrolled convolutions);
- `code_size`: the IR instructions the generator emits once unrolled, which bounds compile time;
  `ir_instructions` counts them in emitted IR.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, replace

from tuner.ir.dag import DOT_GROUP, Affine, ComputeDAG, Operand
from tuner.ir.machine import Machine
from tuner.ir.schedule import Loop, LoopNest, LoopPart, Pad, ScheduleError, Step

PartKey = tuple[str, int]  # (axis, level)

# Compile time is about linear in the IR instructions the generator emits: 0.19 ms each
# (log-log fit, exponent 0.96, over 117 sampled schedules of the benchmark shapes on Zen 5,
# `python bench/compile_time.py`); schedules up to 15,000 instructions compiled in at most
# 2.2 s, larger ones took up to 59 s. The builder refuses IR above this before compiling it
# (tuner/codegen/jit.py); the annotator keeps its estimate below it.
MAX_CODE_SIZE = 15_000
# A spatial axis whose tiles do not divide it makes the generator emit a general path beside
# the full-tile one (each unrolled copy behind its own check, masked vectors). The general
# path is shared by every axis with a tail, so the IR grows by less with each further one:
# emitted IR over the tail-free estimate, medians over 300 sampled schedules (AVX-512 and
# AVX2, Zen 5): 0.7 with no tail, 3.0 with one, 4.8 with two (one sample with three: 23).
TAIL_FACTORS = (1, 4, 7)    # by the number of spatial axes with a tail; x2 for each beyond
# The per-access counts below give about half the IR really emitted for tile-free schedules
# (loop control, address arithmetic, the pack and pad functions): measured median 1.7-2.3x.
OVERHEAD_FACTOR = 2
# IR instructions per access, as tuner/codegen/emit.py writes them
GUARD_COST = 5          # per padded dimension: index, two compares, and, (per lane or vector)
SCALAR_LOAD_COST = 3    # address, load, and a select / insert
VECTOR_LOAD_COST = 2    # address and load (masked: a call)
ACC_UPDATE_COST = 3     # accumulator load, fma, store per chunk
GELU_COST = 55          # tuner/vmath.gelu per vector: 54 (erf form) or 50 (tanh) instructions
# int8 bodies are longer than the float32 ones these costs describe (a dot group reads 4
# elements per operand, widens and shuffles them, then the dot instruction and an add per
# pair): emitted IR over this estimate, medians over 100 sampled schedules of four int8
# tasks on Zen 3 (vpmaddwd): 2.5 with a dot loop (p90 4.0), 1.6 without (depthwise).
INT8_FACTORS = {True: 3, False: 2}   # by whether the nest has a dot loop
# Lanes up to this many elements apart are read as that many contiguous vector loads and one
# shuffle (vpermt2ps on AVX-512) instead of a scalar load and an insert per lane.
MAX_STRIDED_LOAD = 4
# Local padding copies the rows one iteration of the outer loops reads into a buffer on the
# stack of the thread that runs it: it has to fit a thread's stack beside the accumulator tile
# (schedule.MAX_TILE_FLOATS), and it only pays while it stays in cache for its iteration (every
# x86-64 core of the kind targeted has an L2 of 512 KiB or more).
MAX_LOCAL_PAD_BYTES = 256 * 1024
# Registers a register tile needs besides its accumulators and loaded vectors: one broadcast
# and one spare, so the allocator never has to spill.
SPARE_REGISTERS = 2


def padding(operand: Operand, extents: dict[str, int]) -> list[tuple[int, int]]:
    """(before, after) zeros per dimension that the index expressions can reach."""
    out = []
    for expr, size in zip(operand.index, operand.shape):
        lo, hi = expr.bounds(extents)
        out.append((max(0, -lo), max(0, hi - (size - 1))))
    return out


def padded_shape(operand: Operand, extents: dict[str, int]) -> tuple[int, ...]:
    """The shape of `operand` with its padding (`padding`) around every dimension."""
    return tuple(s + lo + hi for s, (lo, hi) in zip(operand.shape, padding(operand, extents)))


def has_padding(operand: Operand, extents: dict[str, int]) -> bool:
    return operand.padded and any(lo or hi for lo, hi in padding(operand, extents))


def transposed_copy(nest: LoopNest, op: Operand) -> bool:
    """Whether the kernel reads the float32 activation `op` from a copy with its last two
    dimensions swapped, made once per call: an activation the vector loop broadcasts whose
    last dimension is indexed by a spatial axis alone and the one before it by a reduction
    axis alone, as a 1x1 convolution's data [N, C, P] is when the vectors run along the
    output channels. A register tile then reads a few floats of a row of pixels per channel,
    a cache line each, over and over for every tile (2048 lines a tile for ResNet-50's last
    1x1 layers), where from [N, P, C] it reads each of its pixels' channels in order: on
    Zen 3, one thread, 64 trials each, the 1x1 conv 2048 -> 512 on 7x7 reached 56 GFLOPS;
    the same product reading its input as [P, C] (matmul 49x512x2048, its output written
    transposed) 87.8."""
    dag = nest.dag
    if dag.quant is not None or op.constant or op is dag.output or len(op.index) < 2 \
            or op.name in nest.layout_rewrite or has_padding(op, dag.extents):
        return False
    vec = vector_loop(nest)
    if vec is None or op.depends_on(vec.parts[0].axis):
        return False
    extents = dag.extents

    def alone(expr: Affine) -> str | None:
        terms = [(axis, coef) for axis, coef in expr.terms if extents[axis] > 1]
        return terms[0][0] if len(terms) == 1 and terms[0][1] == 1 and expr.const == 0 \
            else None

    spatial, reduced = alone(op.index[-1]), alone(op.index[-2])
    return spatial is not None and reduced is not None and not dag.axis(spatial).reduce \
        and dag.axis(reduced).reduce


def read_operand(nest: LoopNest, op: Operand) -> Operand:
    """`op` as the kernel reads it: its transposed copy's layout (`transposed_copy`), or its
    own."""
    if not transposed_copy(nest, op):
        return op
    return replace(op, shape=op.shape[:-2] + (op.shape[-1], op.shape[-2]),
                   index=op.index[:-2] + (op.index[-1], op.index[-2]), reshaped_from=None)


def transposed_copy_bytes(nest: LoopNest) -> int:
    """Bytes of the transposed copies (`transposed_copy`) the kernel makes per call."""
    return sum(4 * op.size for op in nest.dag.inputs if transposed_copy(nest, op))


def packed_parts(nest: LoopNest, operand: Operand) -> list[LoopPart]:
    """A rewritten operand's layout: its loop levels in loop order (Ansor's layout rewrite)."""
    return [p for loop in nest.loops for p in loop.parts if operand.depends_on(p.axis)]


# The level of the virtual loop part that `packed_layout` makes of a dot group's low pair.
PAIR_LEVEL = 1000


def packed_dtype(nest: LoopNest, operand: Operand, machine: Machine) -> str:
    """The element type of a packed operand: its own, except an int8 task's weight packed for
    a vpmaddwd machine with a dot loop, which is stored widened to int16 (tuner/codegen/
    quantized.py): the kernel then feeds it to vpmaddwd as it is loaded, where int8 would be
    sign-extended and shuffled into pairs on every reduction step."""
    if (operand.dtype == "int8" and nest.loops
            and machine.int8_instruction(nest.dag.reduced_range, nest.dag.centered) == "pmaddwd"
            and nest.loops[-1].kind == "dot" and operand.name in nest.layout_rewrite):
        return "int16"
    return operand.dtype


def packed_layout(nest: LoopNest, operand: Operand, machine: Machine) -> list[LoopPart]:
    """The loop parts of a packed operand's layout, outermost first: `packed_parts`, except
    for an int16-packed weight (`packed_dtype`) read along the vector loop, whose dot group
    of 4 is stored as two pairs, the pair index outside the vector's lanes and the pair's two
    elements inside them (pair-major): one vector load is then one vpmaddwd operand. The
    pair index is the group's own part with step 2; the element in the pair a part of level
    PAIR_LEVEL and step 1, which the kernel's loops never enter (the dot leaf reads pairs)."""
    parts = packed_parts(nest, operand)
    vec = vector_loop(nest)
    if (packed_dtype(nest, operand, machine) != "int16" or vec is None or len(parts) < 2
            or (parts[-2].axis, parts[-2].level) != (vec.parts[0].axis, vec.parts[0].level)):
        return parts
    dot = parts[-1]
    pair = LoopPart(dot.axis, dot.level, dot.extent // 2, 2)
    element = LoopPart(dot.axis, PAIR_LEVEL, 2, 1)
    return parts[:-2] + [pair, parts[-2], element]


def row_major(parts: list[LoopPart]) -> dict[PartKey, int]:
    strides, acc = {}, 1
    for p in reversed(parts):
        strides[(p.axis, p.level)] = acc
        acc *= p.extent
    return strides


@dataclass(frozen=True, slots=True)
class PrefetchPanel:
    """A packed operand's panel: the slice that one iteration of its outermost loop level
    reads. While the loops inside that level make their passes over the current panel, the
    kernel prefetches the next one (`stride` elements on) into L2, spread evenly over the
    passes (codegen `_prefetch_next_panels`)."""

    part: PartKey                # the operand's outermost loop level of extent > 1
    stride: int                  # elements from one panel to the next
    reuse: tuple[PartKey, ...]   # loops inside it that do not index the operand (passes)
    steps: tuple[PartKey, ...]   # loops inside it that do, the innermost last


def prefetch_panel(nest: LoopNest, operand: Operand) -> PrefetchPanel | None:
    """Where the kernel prefetches the next panel of a packed (constant) operand, or None.

    In a model each layer's weights come from memory (ResNet-50's are ~100 MB, past any L3),
    and the hardware prefetchers, which follow sequential streams, do not run ahead of a
    schedule that reads a panel several times (once per pass over the output tiles) before it
    moves on. Measured on Zen 5, 1 thread, with the weights cold (another copy on each call),
    without / with the prefetch: ResNet-50's 1x1 512->2048 0.70 / 0.55 ms (warm 0.48 /
    0.49), 2048->512 0.66 / 0.52 (warm 0.44 / 0.50), res5's 3x3 (590 KB panels) 1.12 /
    1.04 (warm 0.91-0.92 / 0.97-0.99, in separate runs); a ResNet-50 package rebuilt from
    the same records 41.1-41.6 / 39.7-40.2 ms. Conditions, each from a measurement there:
    - the panel is re-read: some loop inside it does not index the operand. A panel read
      once (a matrix-vector product) streams, and the hardware does that best: prefetching
      made the classifier (1x1000x2048) slower, warm and cold;
    - no condition on the panel's size: res5's 3x3 with 1152 KB panels, more than the L2,
      still gained (cold 1.18 / 1.03 ms, warm 0.93-0.99 / 0.96). Requiring room for two
      panels in L2 left the 3x3s of res5 out, and the package took 37.8-38.6 ms at 1 thread
      against 37.0-37.5 without that condition, 20.1-20.5 at 2 threads against 19.4-20.2;
    - a loop inside the panel steps through it, so that each step prefetches its share.
    """
    if operand.name not in nest.layout_rewrite:
        return None
    parts = packed_parts(nest, operand)
    wide = [p for p in parts if p.extent > 1]
    if not wide:
        return None
    panel = (wide[0].axis, wide[0].level)
    strides = row_major(parts)
    order = [(p, loop.kind) for loop in nest.loops for p in loop.parts]
    inside = [p for p, kind in order[[(p.axis, p.level) for p, _ in order].index(panel) + 1:]
              if p.extent > 1 and kind not in ("unroll", "vectorize", "dot")]
    steps = tuple((p.axis, p.level) for p in inside if operand.depends_on(p.axis))
    if not steps:
        return None
    # passes over the panel: the levels outside the innermost step that do not index it
    # (inside it they re-read one step's lines, which L1 holds)
    last = [(p.axis, p.level) for p in inside].index(steps[-1])
    reuse = tuple((p.axis, p.level) for p in inside[:last] if not operand.depends_on(p.axis))
    if not reuse:
        return None
    return PrefetchPanel(panel, strides[panel], reuse, steps)


def vector_loop(nest: LoopNest) -> Loop | None:
    """The vectorized loop: the innermost one, or the one just outside an int8 task's dot
    loop."""
    loops = nest.loops
    if loops and loops[-1].kind == "dot":
        loops = loops[:-1]
    return loops[-1] if loops and loops[-1].kind == "vectorize" else None


def lane_stride(nest: LoopNest, operand: Operand, loop: Loop | None = None) -> int:
    """Elements between neighbouring iterations of `loop` (default: the innermost loop) in
    the buffer as the kernel reads it; a packed operand is laid out in loop order."""
    loop = loop or (nest.loops[-1] if nest.loops else None)
    if loop is None:
        return 0
    part = loop.parts[-1]
    if operand.name in nest.layout_rewrite:
        if not operand.depends_on(part.axis):
            return 0
        return row_major(packed_parts(nest, operand))[(part.axis, part.level)]
    return read_operand(nest, operand).flat().coef(part.axis) * part.step


def access_class(nest: LoopNest, operand: Operand) -> str:
    """'broadcast', 'contiguous', 'strided' or 'gather': how the vectorized loop reads
    `operand` ('scalar' without a vectorized loop). The output is never 'strided' (a
    scattered write-back stores lane by lane)."""
    vec = vector_loop(nest)
    if vec is None:
        return "scalar"
    stride = lane_stride(nest, operand, vec)
    if stride in (0, 1):
        return "broadcast" if stride == 0 else "contiguous"
    if strided_load(stride, inline_guards(nest, operand)) and operand is not nest.dag.output:
        return "strided"
    return "gather"


def strided_load(stride: int, guards: int) -> bool:
    """Whether lanes `stride` apart are loaded whole (see MAX_STRIDED_LOAD): not with bounds
    checks, which are per lane."""
    return 2 <= stride <= MAX_STRIDED_LOAD and guards == 0


def inline_guards(nest: LoopNest, operand: Operand) -> int:
    """Padded dimensions of `operand` that the inner loop reads with bounds checks."""
    if not operand.padded or operand.name in nest.layout_rewrite:
        return 0
    if nest.pad_mode(operand.name) in ("root", "local"):
        return 0
    return sum(1 for lo, hi in padding(operand, nest.dag.extents) if lo or hi)


def region_start(loops) -> int | None:
    """First loop of the innermost run of unrolled / vectorized (and dot) loops."""
    start = None
    for i in range(len(loops) - 1, -1, -1):
        if loops[i].kind in ("unroll", "vectorize", "dot"):
            start = i
        else:
            break
    return start


def root_pad_bytes(nest: LoopNest) -> int:
    """Bytes of the zero-padded copies the kernel makes of its root-padded inputs per call."""
    total = 0
    for op in nest.dag.inputs:
        if nest.pad_mode(op.name) != "root" or op.name in nest.layout_rewrite or not op.padded:
            continue
        pads = padding(op, nest.dag.extents)
        if any(lo or hi for lo, hi in pads):
            total += 4 * math.prod(padded_shape(op, nest.dag.extents))
    return total


def regroup_dim(nest: LoopNest, op: Operand) -> int | None:
    """The dimension of an int8 activation `op` that the kernel reads from a regrouped copy:
    a copy made once per call (with the padding, as root padding makes it) in which that
    dimension, the one the dot axis indexes, is split into groups of DOT_GROUP stored
    innermost (NCHW -> N, C/4, H, W, 4). A dot group of an NCHW activation is otherwise 4
    bytes a plane apart, put together from 4 loads, 3 shifts and 3 ors per row of a register
    tile (tuner/codegen/quantized.py), against one 4-byte load from the copy, which costs a
    pass over the input. Taken where the dimension's index is DOT_GROUP x (other axes) + the
    dot axis (a group never straddles an operand group of a grouped convolution), the
    dimension is not already the innermost, and the operand is padded at the root or not at
    all (inline and local padding keep their reads); None elsewhere."""
    dag = nest.dag
    if dag.quant is None or dag.dot_axis is None or op.constant \
            or op.name in nest.layout_rewrite:
        return None
    dims = [d for d, expr in enumerate(op.index) if expr.coef(dag.dot_axis)]
    if len(dims) != 1 or dims[0] == len(op.index) - 1:
        return None
    expr = op.index[dims[0]]
    if expr.coef(dag.dot_axis) != 1 or expr.const % DOT_GROUP or any(
            c % DOT_GROUP for a, c in expr.terms if a != dag.dot_axis):
        return None
    padded = op.padded and any(lo or hi for lo, hi in padding(op, dag.extents))
    if padded and nest.pad_mode(op.name) != "root":
        return None
    return dims[0]


def regrouped_shape(op: Operand, extents: dict[str, int], dim: int) -> tuple[int, ...]:
    """The shape of the regrouped copy (`regroup_dim`): the padded shape with dimension `dim`
    counted in groups, and the group's DOT_GROUP elements as a last dimension."""
    shape = list(padded_shape(op, extents))
    shape[dim] = -(-shape[dim] // DOT_GROUP)
    return tuple(shape) + (DOT_GROUP,)


def regrouped_flat(op: Operand, extents: dict[str, int], dim: int, dot_axis: str) -> Affine:
    """The element offset of `op`'s index in its regrouped copy (`regrouped_shape`)."""
    shape = regrouped_shape(op, extents, dim)
    strides = [math.prod(shape[d + 1:]) for d in range(len(shape))]
    terms: dict[str, int] = {}
    const = 0
    for d, (expr, (lo, _)) in enumerate(zip(op.index, padding(op, extents))):
        for axis, coef in expr.terms:
            scaled = (1 if axis == dot_axis else coef // DOT_GROUP * strides[d]) if d == dim \
                else coef * strides[d]
            terms[axis] = terms.get(axis, 0) + scaled
        const += (expr.const + lo) // DOT_GROUP * strides[d] if d == dim \
            else (expr.const + lo) * strides[d]
    return Affine(tuple((a, c) for a, c in terms.items() if c), const)


@dataclass(frozen=True, slots=True)
class LocalPad:
    """Local padding of one operand: at the start of every iteration of `nest.loops[:depth]`,
    the rows of its zero-padded form (every dimension but the last, padded) that the
    iteration can read, `rows` at most, are copied into a buffer of the running thread, which
    the kernel then reads without bounds checks. Depthwise and grouped convolutions, whose
    channels are not shared between outer tiles, so read each input row once, from cache,
    where a copy at the root writes the whole padded input out to memory and reads it back."""
    operand: str
    depth: int
    padded_shape: tuple[int, ...]
    rows: int     # the buffer: rows of padded_shape[-1] floats
    copies: int   # iterations of the outer loops: copies made per call

    @property
    def buffer_bytes(self) -> int:
        return 4 * self.rows * self.padded_shape[-1]

    @property
    def bytes_per_call(self) -> int:
        """Bytes copied per call, at most (tail iterations copy fewer rows)."""
        return self.buffer_bytes * self.copies


def local_pad_plan(nest: LoopNest, operand: Operand) -> LocalPad:
    """Where the copy of a locally padded `operand` is made: in the outermost loop (above
    the accumulator tile) one iteration of which reads at most MAX_LOCAL_PAD_BYTES of it.

    An iteration of the outer loops fixes the outer parts of their axes; the rest of each
    axis spans the step of its innermost entered part. The rows read form a box in every
    dimension but the last; the copy takes the run of padded rows from the box's first row to
    its last, so the buffer has the padded operand's row strides and the kernel indexes it
    as the whole padded operand, from a base pointer moved back to the run's first row.
    Derived from the schedule alone, so a record replays the same on every machine."""
    dag = nest.dag
    pads = padding(operand, dag.extents)
    if not operand.padded or not any(lo or hi for lo, hi in pads):
        raise ScheduleError(f"pad {operand.name!r} local: the operand has no padding")
    if any(c < 0 for expr in operand.index for _, c in expr.terms):
        raise ScheduleError(f"pad {operand.name!r} local: an index decreases along an axis")
    shape = padded_shape(operand, dag.extents)
    limit = len(nest.loops) if nest.cache_write_at is None else nest.cache_write_at + 1
    span = dict(dag.extents)
    copies = 1
    smallest = None
    for depth, loop in enumerate(nest.loops[:limit], start=1):
        for part in loop.parts:
            span[part.axis] = min(span[part.axis], part.step)
        copies *= loop.extent
        rows = _box_rows(operand, shape, span)
        if 4 * rows * shape[-1] <= MAX_LOCAL_PAD_BYTES:
            return LocalPad(operand.name, depth, shape, rows, copies)
        smallest = 4 * rows * shape[-1]
    detail = f" (the smallest copy is {smallest // 1024} KiB)" if smallest else ""
    raise ScheduleError(f"pad {operand.name!r} local: no outer loop reads at most "
                        f"{MAX_LOCAL_PAD_BYTES // 1024} KiB of it per iteration{detail}; "
                        f"pad it at the root")


def _box_rows(operand: Operand, shape: tuple[int, ...], span: dict[str, int]) -> int:
    """Padded rows from the first to the last row of the box that the index expressions
    reach when each axis ranges over `span[axis]` values."""
    rows, stride = 1, 1
    for dim in reversed(range(len(shape) - 1)):
        expr = operand.index[dim]
        extent = min(shape[dim], 1 + sum(c * (span[a] - 1) for a, c in expr.terms))
        rows += (extent - 1) * stride
        stride *= shape[dim]
    return rows


def partitioning_axes(dag: ComputeDAG) -> list[str]:
    """Spatial axes (of extent > 1) that index a dimension without padding of some padded
    input: the channels of a depthwise or grouped convolution, the images of a batch. Outer
    tiles along them read disjoint parts of that input."""
    axes = []
    for op in dag.inputs:
        if not has_padding(op, dag.extents):
            continue
        for expr, (lo, hi) in zip(op.index, padding(op, dag.extents)):
            axes += [a for a, _ in expr.terms if not (lo or hi) and not dag.axis(a).reduce
                     and dag.extents[a] > 1 and a not in axes]
    return axes


def local_padding_pays(dag: ComputeDAG) -> bool:
    """Whether outer tiles can read disjoint parts of a padded input (`partitioning_axes`),
    so that a copy per tile reads each row once. Where no such axis exists (a dense
    convolution's channels are a reduction), every outer tile reads the whole input and a
    copy per tile only repeats the root copy."""
    return bool(partitioning_axes(dag))


def _padded_locally(nest: LoopNest) -> list[Operand]:
    return [op for op in nest.dag.inputs if op.padded and nest.pad_mode(op.name) == "local"
            and op.name not in nest.layout_rewrite]


def local_pad_plans(nest: LoopNest) -> tuple[LocalPad, ...]:
    """The plans of the nest's locally padded inputs (ScheduleError where one has none)."""
    return tuple(local_pad_plan(nest, op) for op in _padded_locally(nest))


def pad_at_root_where_local_fails(steps: tuple[Step, ...], nest: LoopNest
                                  ) -> tuple[tuple[Step, ...], LoopNest]:
    """`steps` and their `nest` with root padding for every locally padded input that no
    outer tile is small enough to copy (`local_pad_plan`): what a sampler does with a
    sketch's local padding where the sampled tiles do not allow it."""
    root = set()
    for op in _padded_locally(nest):
        try:
            local_pad_plan(nest, op)
        except ScheduleError:
            root.add(op.name)
    if not root:
        return steps, nest
    steps = tuple(Pad(s.operand, "root") if isinstance(s, Pad) and s.operand in root else s
                  for s in steps)
    pad = tuple((name, "root" if name in root else mode) for name, mode in nest.pad)
    return steps, replace(nest, pad=pad)


def local_pad_bytes(nest: LoopNest) -> int:
    """Bytes the kernel copies per call into the buffers of its locally padded inputs."""
    return sum(plan.bytes_per_call for plan in local_pad_plans(nest))


def vector_lanes(nest: LoopNest) -> int:
    """Lanes the vectorized loop really has: a tile that covers its whole axis in whole
    vectors (29 columns in 32 lanes) has only the axis' extent (its constant tail lanes are
    masked, never emitted)."""
    vec = vector_loop(nest)
    if vec is None:
        return 1
    return min(vec.extent, nest.dag.extents[vec.parts[0].axis])


def vector_chunks(nest: LoopNest, lanes: int) -> int:
    vec = vector_loop(nest)
    return -(-vec.extent // lanes) if vec else 1


def _read_cost(nest: LoopNest, operand: Operand, lanes: int) -> int:
    vec = vector_loop(nest)
    guards = inline_guards(nest, operand)
    kind = access_class(nest, operand)
    scalar = SCALAR_LOAD_COST + GUARD_COST * guards
    if kind in ("scalar", "broadcast"):
        return scalar
    if kind == "contiguous":
        return vector_chunks(nest, lanes) * (VECTOR_LOAD_COST + GUARD_COST * guards)
    if kind == "strided":  # a load per stride and chunk, then the shuffles that merge them
        return vector_chunks(nest, lanes) * lane_stride(nest, operand, vec) * \
            (VECTOR_LOAD_COST + 1)
    return vector_lanes(nest) * (scalar + 1)  # one guarded scalar load and an insert per lane


def spatial_tails(nest: LoopNest) -> int:
    """Spatial axes whose outermost tile is partial (a tail the generator peels)."""
    extents = nest.dag.extents
    covered = {p.axis: p.step * p.extent for loop in nest.loops for p in loop.parts
               if p.level == 1}
    # a tile that covers its whole axis has a constant extent: no general path
    return sum(1 for axis, size in covered.items()
               if not nest.dag.axis(axis).reduce and extents[axis] % size
               and extents[axis] > size)


def code_size(nest: LoopNest, lanes: int) -> int:
    """IR instructions the generator emits once unrolled, for vectors of `lanes` floats.

    Every unrolled copy of the compute body reads both operands (a gather costs a guarded
    scalar load per lane) and updates the accumulator; the output tile is initialised and
    written back once per unrolled tile position (a scatter costs a store per lane; a tile
    transposed on write-back emits fewer, so this bound is loose for it). Tails and overhead
    scale it by the measured factors above."""
    size = OVERHEAD_FACTOR * tail_factor(spatial_tails(nest)) * _body_size(nest, lanes)
    if nest.dag.quant is not None:
        size *= INT8_FACTORS[bool(nest.loops) and nest.loops[-1].kind == "dot"]
    return size


def tail_factor(tails: int) -> int:
    last = len(TAIL_FACTORS) - 1
    return TAIL_FACTORS[min(tails, last)] * 2 ** max(0, tails - last)


def _body_size(nest: LoopNest, lanes: int) -> int:
    dag = nest.dag
    chunks = vector_chunks(nest, lanes)
    unrolled = math.prod(l.extent for l in nest.loops if l.kind == "unroll")
    body = (_read_cost(nest, dag.lhs, lanes) + _read_cost(nest, dag.rhs, lanes)
            + ACC_UPDATE_COST * chunks)
    out_kind = access_class(nest, dag.output)
    write = vector_lanes(nest) * 2 if out_kind == "gather" else chunks * 2
    if dag.gelu:  # once per output vector, in the write-back
        write += GELU_COST * chunks
    if nest.cache_write_at is None:
        return unrolled * (body + write)
    tile_unrolled = math.prod(l.extent for l in nest.tile_loops
                              if l.kind == "unroll" and not l.reduce)
    return unrolled * body + tile_unrolled * (write + 2 * chunks)


def check_code_size(nest: LoopNest, lanes: int) -> None:
    size = code_size(nest, lanes)
    if size > MAX_CODE_SIZE:
        raise ScheduleError(f"unrolling makes about {size} IR instructions; at most "
                            f"{MAX_CODE_SIZE} (unroll fewer loops, or gather less)")


def ir_instructions(ir_text: str) -> int:
    """Instructions in an LLVM IR text: the indented, non-comment lines of its bodies."""
    return sum(1 for line in ir_text.splitlines()
               if line.startswith("  ") and not line.lstrip().startswith(";"))


def shares_input_dimension(dag: ComputeDAG, a: str, b: str) -> bool:
    """Whether some input dimension is indexed by both axes (conv2d: `ow` and `kw` both
    index the input's columns, `oh` and `kh` its rows)."""
    return any(expr.coef(a) and expr.coef(b) for op in dag.inputs for expr in op.index)


def window_broadcasts(dag: ComputeDAG, unrolled: dict[str, int], vector_axis: str | None) -> int:
    """Broadcast registers an unrolled register tile keeps live across reduction steps.

    When an unrolled reduction axis and an unrolled row axis index the same input dimension
    (a 3x3 convolution's `kw` and `ow`), the element row i reads at step j is the one row i-1
    reads at step j+1, and LLVM keeps such broadcasts in registers from one step to the next:
    one per row. Measured on Zen 5, resnet50.res3.3x3 with 2 zmm of output channels and `kw`
    unrolled: 10 rows (20 accumulators + 2 loaded + 10 broadcasts = 32) ran at 217 GFLOPS,
    12 rows at 119 (spilling); on AVX2, 4 rows at 115 and 6 at 59. `unrolled` maps each axis
    to the product of its unrolled tile extents."""
    reduce = [a.name for a in dag.reduce_axes if unrolled.get(a.name, 1) > 1]
    rows = [a.name for a in dag.spatial_axes
            if a.name != vector_axis and unrolled.get(a.name, 1) > 1]
    windowed = [r for r in rows if any(shares_input_dimension(dag, r, k) for k in reduce)]
    return math.prod(unrolled[r] for r in windowed) if windowed else 0


def operand_registers(dag: ComputeDAG, unrolled: dict[str, int], vector_axis: str | None,
                      chunks: int, machine: Machine) -> int:
    """Vector registers one reduction step of a register tile needs besides its
    accumulators: the loaded vectors, and the broadcasts (`window_broadcasts`) or one
    broadcast and a spare.

    With a reduction axis unrolled on a 32-register file, LLVM's scheduler loads the next
    step's vectors before this step's FMAs issue, so the loaded vectors count twice. Measured
    from the assembly (matmul 1024 and a 1x1 conv over 256 channels, reduction unrolled 2-4,
    most accumulator rows without a stack access):

        registers  vectors/row  rolled  unrolled
        32 zmm     2            14      13        (znver4, znver5, skylake-avx512, x86-64-v4)
        32 zmm     3             9       8
        16 ymm     2             6       6        (x86-64-v3, znver3)
        16 ymm     3             4       4

    On 16 registers the scheduler keeps the next loads back, and the count stays once."""
    reduction_unrolled = any(unrolled.get(a.name, 1) > 1 for a in dag.reduce_axes)
    lookahead = reduction_unrolled and machine.vector_registers >= 32
    loaded = 2 * chunks if lookahead else chunks
    instruction = machine.int8_instruction(dag.reduced_range, dag.centered)
    if dag.dot_axis is not None and instruction == "pmaddwd":
        # a group of 4 is two vectors of int16 pairs, and each vpmaddwd's product is a
        # register of its own before it is added
        loaded = 2 * loaded + 1
    elif dag.dot_axis is not None and instruction == "vpdpwssd":
        loaded = 2 * loaded  # the pairs; the instruction adds its sums in place
    elif dag.dot_axis is not None and instruction == "pmaddubsw":
        # the product is a register of its own before it is added, beside the ones
        # vpmaddwd sums its int16 pairs with
        loaded += 2
    return loaded + max(SPARE_REGISTERS, window_broadcasts(dag, unrolled, vector_axis))


def tile_operand_registers(nest: LoopNest, machine: Machine) -> int:
    """`operand_registers` of the innermost unrolled / vectorized region of a loop nest."""
    start = region_start(nest.loops)
    unrolled: dict[str, int] = {}
    for loop in nest.loops[start:] if start is not None else ():
        if loop.kind == "unroll":
            for p in loop.parts:
                unrolled[p.axis] = unrolled.get(p.axis, 1) * p.extent
    vec = vector_loop(nest)
    return operand_registers(nest.dag, unrolled, vec.parts[0].axis if vec else None,
                             vector_chunks(nest, machine.lanes), machine)


def vector_cost(dag: ComputeDAG, axis: str, lanes: int) -> float:
    """How costly `axis` is to vectorize before any schedule exists (the default schedule
    and the annotator's first choice), per vector of a reduction step: packed constants and
    contiguous reads are cheap, gathers are not. A scattered write-back stores each of the
    `lanes` lanes on its own (an extract and a scalar store, ~2 loads' worth), once per output
    vector, so it weighs its lanes against the reduction length that accumulated it: a 1x1
    convolution over 64 channels writes back often enough to prefer vectors along its pixels,
    a 3x3 one over 576 (channels x window) does not. (A tile unrolled along the output's row
    is transposed on write-back instead, `codegen._writeback_transposed`, which costs less;
    this estimate, made before the tile exists, keeps the lane-at-a-time price.)"""
    cost = 0.0
    for op in (dag.lhs, dag.rhs):
        if not op.depends_on(axis):
            continue
        if op.constant:
            cost += 0.5               # packed so that this axis is contiguous
        elif op.flat().coef(axis) == 1:
            cost += 1.0               # a contiguous load
        elif strided_load(op.flat().coef(axis), 0):
            cost += op.flat().coef(axis)  # that many loads and a shuffle
        else:
            cost += 10.0              # a gather
    if dag.output.flat().coef(axis) != 1:
        reduction = math.prod(a.extent for a in dag.reduce_axes)
        cost += 0.25 + 2.0 * lanes / reduction
    return cost
