"""An analytic estimate of a schedule's speed from the machine model: the cost model's prior.

Before the XGBoost model has measurements to learn from, candidates are ranked by this instead
of by chance, and afterwards it is one of the model's features (`estimate`), so what the model
learns on one machine starts from what the machine model says about the next. It is a
roofline in cycles, with the effects that separate fast register-blocked kernels from slow ones:

- **FMA issue.** The program issues (padded iterations / vector width x native chunks) FMA
  instructions. Their rate is the machine's FMA issue rate, unless
  - the accumulators of the register tile are too few to hide the FMA latency (rate <=
    accumulators / latency), or too many for the register file (spills: rate halves);
  - the accumulators live in memory (no local tile, or one the generator cannot keep in
    registers): every FMA then also loads and stores its accumulator (one store per cycle),
    consecutive updates of one accumulator wait for store-to-load forwarding, and measured
    kernels of this kind ran 5x slower still (`MEMORY_ACCUMULATOR_FACTOR`);
  - the operands need more loads than the load ports give (a gather is a load per lane), or
    the bounds checks of inline padding add instructions beyond the issue width.
- **Memory.** Bytes moved into L1 from L2, L3 and DRAM, from the footprints of the loop
  subtrees against the cache sizes (`footprints`, which costmodel/features.py reads too).
- **Extras.** A root pad copy per call (written out and read back); the copies of local
  padding (read once into a buffer that stays in cache, shared among the threads); parallel
  loops divide the work by the threads, with the imbalance of a static split.

The figure is in GFLOPS at a nominal clock: only the ranking it gives matters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tuner.ir.layout import (access_class, inline_guards, lane_stride, local_pad_bytes,
                          packed_parts, padding, read_operand, region_start, root_pad_bytes,
                          tile_operand_registers, transposed_copy_bytes, vector_chunks,
                          vector_loop)
from tuner.ir.dag import Operand
from tuner.ir.machine import Machine
from tuner.ir.schedule import Loop, LoopNest, LoopPart
from tuner.ir.target import Target

NOMINAL_HZ = 3.0e9
ISSUE_WIDTH = 4              # instructions per cycle a loop body sustains, roughly
STORE_FORWARD_CYCLES = 5     # store-to-load forwarding of an accumulator kept in memory
STORES_PER_CYCLE = 1
GUARD_OPS = 4                # per padded dimension of a bounds-checked read: index, 2 compares, and
# Accumulating in memory (no local tile, or one the generator leaves in a stack array) ran
# 5-10x slower than the load/store counts alone predict (res2.3x3 on Zen 5: 2-13 GFLOPS
# against 20-60 for register tiles of the same sample): the dependent load-FMA-store chains
# through L1 and the output's cache misses. Measured, not derived.
MEMORY_ACCUMULATOR_FACTOR = 0.2
# Sustained bytes per cycle into L1 from each level, per core: typical of Zen 3-5 and
# Intel server cores (L2 64 B/cycle, L3 ~32, DRAM ~8 at one core's share).
BYTES_PER_CYCLE = {"l2": 64.0, "l3": 32.0, "dram": 8.0}
PARALLEL_OVERHEAD_CYCLES = 10_000  # waking the OpenMP team, a few microseconds
COPY_BYTES_PER_CYCLE = 16.0        # memset + memcpy of a pad copy


def _layout(nest: LoopNest, role: str) -> tuple[str, Operand]:
    """How buffer `role` (a BUFFERS entry) is laid out in `nest`, and its operand: "tile" (the
    accumulation target in a local tile), "packed" (a constant operand rewritten at build
    time) or "affine" (the operand's layout as the kernel reads it: layout.read_operand)."""
    dag = nest.dag
    op = {"lhs": read_operand(nest, dag.lhs), "rhs": read_operand(nest, dag.rhs),
          "acc": dag.output}[role]
    if role == "acc" and nest.cache_write_at is not None:
        return "tile", op
    return ("packed" if op.name in nest.layout_rewrite else "affine"), op


class Buffer:
    """Footprint of one buffer (lhs, rhs, or the accumulation target) as the loop parts around
    the innermost loop are entered one by one (`enter`), innermost first."""

    def __init__(self, nest: LoopNest, role: str, line_floats: int):
        dag = nest.dag
        self.line_floats = line_floats
        self.kind, op = _layout(nest, role)
        self.inside = 1  # a tile or packed buffer: the elements of the parts entered so far
        if self.kind == "tile":
            self.keys = {(p.axis, p.level) for loop in nest.tile_loops if not loop.reduce
                         for p in loop.parts}
            return
        if self.kind == "packed":
            self.keys = {(p.axis, p.level) for p in packed_parts(nest, op)}
            return
        pads = padding(op, dag.extents) if op.padded else [(0, 0)] * len(op.shape)
        self.dims = tuple((tuple((a, abs(c)) for a, c in dict(e.terms).items()), size + lo + hi)
                          for e, size, (lo, hi) in zip(op.index, op.shape, pads))
        self.spans = [1] * len(self.dims)  # of each dimension, inside the parts entered
        self.dims_of = {}                  # axis -> the dimensions whose index it enters
        for d, (coefs, _) in enumerate(self.dims):
            for a, _ in coefs:
                self.dims_of.setdefault(a, []).append(d)

    def enter(self, part: LoopPart, ranges: dict[str, int]) -> None:
        """`ranges`: the index span of each axis inside the parts entered, `part` included."""
        if self.kind != "affine":
            if (part.axis, part.level) in self.keys:
                self.inside *= part.extent
            return
        for d in self.dims_of.get(part.axis, ()):
            coefs, size = self.dims[d]
            span = sum(c * ranges.get(a, 0) for a, c in coefs) + 1
            self.spans[d] = span if span < size else size

    def footprint(self) -> tuple[float, float]:
        """(elements, cache lines) touched inside the parts entered."""
        if self.kind != "affine":
            return self.inside, self.inside / self.line_floats
        elements = 1
        for span in self.spans:
            elements *= span
        innermost = self.spans[-1] if self.spans else 1
        return elements, elements / min(self.line_floats, innermost)


BUFFERS = ("lhs", "rhs", "acc")


def buffer_stride(nest: LoopNest, role: str, loop: Loop) -> int:
    """Elements of `role` (a BUFFERS entry) between consecutive iterations of `loop`: 1 for a
    register tile or a packed operand, which are laid out in the order they are read."""
    kind, op = _layout(nest, role)
    if kind != "affine":
        return 1
    part = loop.parts[-1]
    return op.flat().coef(part.axis) * part.step


@dataclass(frozen=True, slots=True)
class Level:
    """A loop of a nest and what the subtree it heads touches: per buffer (BUFFERS order) the
    elements and the cache lines."""
    loop: Loop
    elements: tuple[float, ...]
    lines: tuple[float, ...]


def footprints(nest: LoopNest, machine: Machine) -> list[Level]:
    """Every loop of `nest` from the innermost out, with the footprints of its subtree. The
    estimate and the features (costmodel/features.py) both read them: computed once."""
    line_floats = machine.cache_line_bytes // 4
    buffers = [Buffer(nest, role, line_floats) for role in BUFFERS]
    ranges: dict[str, int] = {}
    levels = []
    for loop in reversed(nest.loops):
        for p in loop.parts:
            ranges[p.axis] = ranges.get(p.axis, 0) + (p.extent - 1) * p.step
            for b in buffers:
                b.enter(p, ranges)
        touched = [b.footprint() for b in buffers]
        levels.append(Level(loop, tuple(e for e, _ in touched), tuple(n for _, n in touched)))
    return levels


def _fma_rate(nest: LoopNest, machine: Machine) -> float:
    """Vector FMA instructions per cycle the innermost code sustains."""
    dag, loops = nest.dag, nest.loops
    vec = vector_loop(nest)
    width = vec.extent if vec else 1
    chunks = vector_chunks(nest, machine.lanes)
    start = region_start(loops)
    region = [l for l in loops[start:] if l.kind == "unroll"] if start is not None else []
    spatial_unrolled = math.prod(l.extent for l in region if not l.reduce)
    reduce_unrolled = math.prod(l.extent for l in region if l.reduce)
    accumulators = spatial_unrolled * chunks
    fmas = accumulators * reduce_unrolled  # per pass through the region

    loads = guard_ops = 0.0
    for op in (dag.lhs, dag.rhs):
        kind = access_class(nest, op)
        copies = math.prod(l.extent for l in region if op.depends_on(l.parts[0].axis))
        stride = lane_stride(nest, op, vec) if kind == "strided" else 1
        per = {"scalar": 1, "broadcast": 1, "contiguous": chunks, "strided": chunks * stride,
               "gather": width}[kind]
        loads += copies * per * (2 if kind == "gather" else 1)  # a gather inserts too
        guard_ops += copies * per * GUARD_OPS * inline_guards(nest, op)

    tile = nest.tile_loops
    in_registers = bool(tile) and all(l.kind in ("unroll", "vectorize")
                                      for l in tile if not l.reduce)
    rate = float(machine.fma_per_cycle if machine.has_fma else 1)
    operands = tile_operand_registers(nest, machine)
    if in_registers:
        rate = min(rate, accumulators / machine.fma_latency)
        if accumulators + operands > machine.vector_registers:
            rate /= 2.0
        memory_ops = 0.0
    else:
        rate = min(rate, STORES_PER_CYCLE, accumulators /
                   (machine.fma_latency + STORE_FORWARD_CYCLES)) * MEMORY_ACCUMULATOR_FACTOR
        memory_ops = 2.0 * fmas
    rate = min(rate, machine.loads_per_cycle * fmas / max(1.0, loads + memory_ops / 2))
    uops = fmas + loads + memory_ops + guard_ops
    rate = min(rate, ISSUE_WIDTH * fmas / uops)
    return max(rate, 1e-3)


def _memory_cycles(nest: LoopNest, machine: Machine, levels: list[Level]) -> float:
    """Cycles to bring data into L1 from the levels below, at their bandwidths."""
    caches = (("l2", machine.l1d_bytes), ("l3", machine.l2_bytes), ("dram", machine.l3_bytes))
    n = len(nest.loops)
    trips_outside = [1] * n  # of loops[i]: the product of the extents of loops[:i]
    for i in range(1, n):
        trips_outside[i] = trips_outside[i - 1] * nest.loops[i - 1].extent
    totals = [sum(4 * e for e in level.elements) for level in levels]  # innermost first
    lines = [sum(level.lines) for level in levels]
    cycles = 0.0
    for source, capacity in caches:
        # the outermost subtree whose working set fits this cache is reloaded once per
        # iteration of the loops around it
        moved = None
        for depth in range(n):
            if totals[depth] > capacity:
                break
            moved = lines[depth] * machine.cache_line_bytes * trips_outside[n - 1 - depth]
        if moved is None:  # not even the innermost loop fits: stream everything
            moved = lines[0] * machine.cache_line_bytes * trips_outside[n - 1]
        cycles += moved / BYTES_PER_CYCLE[source]
    return cycles


def estimate_gflops(nest: LoopNest, target: Target,
                    levels: list[Level] | None = None) -> float:
    """`levels`: the nest's `footprints`, where the caller has them already."""
    machine = target.machine
    dag, loops = nest.dag, nest.loops
    if not loops:
        return 0.0
    vec = vector_loop(nest)
    width = vec.extent if vec else 1
    chunks = vector_chunks(nest, machine.lanes)
    padded = math.prod(l.extent for l in loops)
    fma_instructions = padded / width * chunks
    if loops[-1].kind == "dot":  # an int8 group: one vpdpbusd, else two instructions
        instruction = machine.int8_instruction(dag.reduced_range, dag.centered)
        fma_instructions *= (1 if instruction == "vpdpbusd" else 2) / loops[-1].extent
    compute = fma_instructions / _fma_rate(nest, machine)
    if levels is None:
        levels = footprints(nest, machine)
    cycles = max(compute, _memory_cycles(nest, machine, levels))
    if nest.cache_write_at is None:  # separate init (and epilogue) passes over the output
        passes = 1 + len(dag.addends) + dag.activated
        cycles += passes * 4 * dag.output.size / BYTES_PER_CYCLE["l2"]
    cycles += local_pad_bytes(nest) / COPY_BYTES_PER_CYCLE
    threads = target.threads
    first = loops[0]
    if first.kind == "parallel" and threads > 1 and first.extent > 1:
        share = -(-first.extent // threads) / first.extent
        cycles = cycles * share + PARALLEL_OVERHEAD_CYCLES
    cycles += 2 * (root_pad_bytes(nest) + transposed_copy_bytes(nest)) / COPY_BYTES_PER_CYCLE
    return dag.flops / (cycles / NOMINAL_HZ) / 1e9
