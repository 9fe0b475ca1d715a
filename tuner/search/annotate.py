"""Annotation: the numbers a sketch leaves open, sampled, mutated and turned into steps.

An `Annotation` is the genome of the evolutionary search: tile sizes of every split axis, the
vectorized axis, the auto-unroll limit and how many outer loops run in parallel. `to_steps`
makes the schedule (a tuple of steps) from (dag, sketch, annotation, target); everything it
makes is valid by construction (tests check thousands of samples), and `sample`, `mutate` and
`crossover` only ever return annotations that stay valid.

Defaults follow Ansor (TVM auto_scheduler): tile sizes from random factorizations of each
extent (a few with tails, which the code generator handles without per-element guards), the
innermost vector tile a multiple of the target's lanes, auto-unroll in {0, 16, 64, 512}, outer
loops fused until there are 16 iterations per thread.

Unlike Ansor, the machine model (tuner/ir/machine.py) shapes the space: the innermost tile (S3)
must keep its accumulators in the vector register file beside the operands of one reduction
step (`fits`), and most samples (`REGISTER_TILE_PROBABILITY`) are register tiles built the way
an expert builds them: a vector of 1-4 native vectors times rows of another spatial axis up to
what the registers hold, unrolled, accumulated locally across the whole reduction. That is
the structure that reaches peak (a tile sized for 32 zmm registers spills on 16 ymm ones), so
the search finds it on any CPU without a hand-written seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from tuner.ir.dag import ComputeDAG
from tuner.errors import ScheduleError
from tuner.search.default import least_rows, tile_rows
from tuner.ir.layout import (MAX_CODE_SIZE, code_size, operand_registers,
                          pad_at_root_where_local_fails, vector_cost)
from tuner.ir.machine import (AMX_GROUP_BYTES, AMX_TILE_BYTES, AMX_TILE_COLUMNS, AMX_TILE_ROWS,
                              AMX_TILES, Machine,
                              amx_tile_counts)
from tuner.ir.schedule import (MAX_TILE_FLOATS, MAX_VECTOR_LANES, Annotate, CacheWrite, Fuse,
                            LayoutRewrite, LoopNest, Pad, Reorder, Split, Step, apply_steps)
from tuner.search.sketch import REDUCE_LEVELS, SPATIAL_LEVELS, Sketch
from tuner.ir.target import Target

UNROLL_CHOICES = (0, 16, 64, 512)
TAIL_PROBABILITY = 0.1
ITERATIONS_PER_THREAD = 16
REGISTER_TILE_PROBABILITY = 0.7
MAX_VECTOR_CHUNKS = 4   # native vectors per vectorized iteration


@dataclass(frozen=True, slots=True)
class Annotation:
    tiles: tuple[tuple[str, tuple[int, ...]], ...]  # axis -> inner tile sizes, outer first
    vector_axis: str | None
    unroll_max: int
    parallel_depth: int
    outer_axis: str | None = None  # the spatial axis whose outermost tiles come first

    def tile(self, axis: str) -> tuple[int, ...]:
        return dict(self.tiles)[axis]

    def to_json(self) -> dict:
        return {"tiles": {a: list(f) for a, f in self.tiles}, "vector_axis": self.vector_axis,
                "unroll_max": self.unroll_max, "parallel_depth": self.parallel_depth,
                "outer_axis": self.outer_axis}


def split_axes(dag: ComputeDAG) -> list[str]:
    """The axes an annotation tiles: all but those of extent 1 and an int8 task's dot axis
    (a group of the dot instruction, never split: `lower` puts it innermost)."""
    return [a.name for a in dag.axes if a.extent > 1 and a.name != dag.dot_axis]


def _levels(dag: ComputeDAG, axis: str) -> int:
    return (REDUCE_LEVELS if dag.axis(axis).reduce else SPATIAL_LEVELS) - 1


def _pick(rng: np.random.Generator, options):
    """One of `options`, uniformly: the element `rng.choice(options)` picks (the same draw
    from the generator), without its conversion of `options` to an array, which cost more
    than all the rest of sampling a genome."""
    return options[int(rng.integers(len(options)))]


def divisors(n: int) -> list[int]:
    """The divisors of `n`, ascending, in O(sqrt n): extents can be in the billions."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return small + [n // d for d in reversed(small) if d * d != n]


def _random_factors(rng: np.random.Generator, extent: int, count: int) -> list[int]:
    """`count` inner tile sizes: a random factorization of `extent`, or now and then sizes
    that leave a tail (prime extents have no other useful tiling)."""
    if rng.random() < TAIL_PROBABILITY:
        choices = [c for c in (1, 2, 3, 4, 6, 8, 12, 16, 32) if c <= extent]
        return [_pick(rng, choices) for _ in range(count)]
    left, out = extent, []
    for _ in range(count):
        d = _pick(rng, divisors(left))
        out.append(d)
        left //= d
    rng.shuffle(out)
    return out


def max_vector_lanes(machine: Machine) -> int:
    return min(MAX_VECTOR_LANES, MAX_VECTOR_CHUNKS * machine.lanes)


def _vector_tile(rng: np.random.Generator, extent: int, machine: Machine) -> int:
    """Lanes of the vector tile. Besides half, one to four native vectors: the whole axis in
    whole vectors where it fits (29 -> 32): its one tile has a constant extent, so its last
    vector is masked by a constant and no tile takes the general path of a dynamic tail
    (the stride-2 depthwise layer's 29 output columns: 25 -> 33 GFLOPS on Zen 5)."""
    lanes, widest = machine.lanes, max_vector_lanes(machine)
    options = [w for w in (lanes // 2, lanes, 2 * lanes, 3 * lanes, 4 * lanes)
               if 1 < w <= min(extent, widest)]
    covering = -(-extent // lanes) * lanes
    if extent > lanes // 2 and extent % lanes and covering <= widest:
        options.append(covering)
    if not options:
        return extent if extent <= widest else lanes
    exact = [w for w in options if extent % w == 0 or w >= extent]
    pool = exact if exact and rng.random() > TAIL_PROBABILITY else options
    return _pick(rng, pool)


def _sample_tiles(rng, dag: ComputeDAG, axis: str, vector_axis: str | None,
                  machine: Machine) -> tuple[int, ...]:
    extent = dag.axis(axis).extent
    count = _levels(dag, axis)
    if axis != vector_axis:
        return tuple(_random_factors(rng, extent, count))
    inner = _vector_tile(rng, extent, machine)
    rest = _random_factors(rng, max(1, extent // inner), count - 1)
    return tuple(rest) + (inner,)


def _pick_vector_axis(rng, dag: ComputeDAG, machine: Machine) -> str | None:
    candidates = [a.name for a in dag.spatial_axes if a.extent > 1]
    if not candidates or rng.random() < 0.03:
        return None
    candidates.sort(key=lambda a: vector_cost(dag, a, machine.lanes))
    if rng.random() < 0.7 or len(candidates) == 1:
        return candidates[0]
    return _pick(rng, candidates[1:])


def _pick_outer_axis(rng, dag: ComputeDAG) -> str | None:
    names = [a.name for a in dag.spatial_axes if a.extent > 1]
    return None if not names or rng.random() < 0.5 else _pick(rng, names)


def _outer_axes(dag: ComputeDAG, outer_axis: str | None = None) -> list:
    axes = list(dag.spatial_axes)
    if outer_axis is not None:  # e.g. a matmul's column panels outermost, so B stays in cache
        axes.sort(key=lambda a: a.name != outer_axis)
    return axes


def outer_loops(dag: ComputeDAG, outer_axis: str | None = None) -> list[str]:
    """The S0 group: level 0 of split spatial axes, and unsplit (extent-1) spatial axes."""
    return [a.name if a.extent == 1 else f"{a.name}.0" for a in _outer_axes(dag, outer_axis)]


def _default_parallel_depth(dag: ComputeDAG, ann: Annotation, target: Target) -> int:
    if target.threads == 1:
        return 0
    product, depth = 1, 0
    for a in _outer_axes(dag, ann.outer_axis):
        if product >= target.threads * ITERATIONS_PER_THREAD:
            break
        trips = a.extent if a.extent == 1 else -(-a.extent // math.prod(ann.tile(a.name)))
        product *= trips
        depth += 1
    return depth


def _register_tiles(rng, dag: ComputeDAG, sketch: Sketch, vector_axis: str,
                    machine: Machine) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """Tiles whose innermost level is a register tile: `width` lanes of the vector axis times
    `rows` of one other spatial axis (as many as the registers hold, or a divisor of its
    extent near that), every other spatial axis 1 there. Below the cache_write level nothing
    else is tiled, so the whole local accumulator is the register tile."""
    width = _vector_tile(rng, dag.axis(vector_axis).extent, machine)
    others = [a for a in split_axes(dag) if a != vector_axis and not dag.axis(a).reduce]
    row_axis = _pick(rng, others) if others else None
    rows = 1
    if row_axis is not None:
        budget = min(tile_rows(machine, width), dag.axis(row_axis).extent)
        low = min(budget, max(1, budget // 2, least_rows(machine, width)))
        exact = [d for d in divisors(dag.axis(row_axis).extent) if d <= budget]
        near = [r for r in range(low, budget + 1)]
        rows = _pick(rng, exact if exact[-1] >= low and rng.random() < 0.7 else near)
    free_levels = 2 if sketch.cache_write == "S1" else 1  # spatial levels above the tile
    tiles = []
    for a in split_axes(dag):
        axis = dag.axis(a)
        inner = width if a == vector_axis else rows if a == row_axis else 1
        if axis.reduce:
            tiles.append((a, tuple(_random_factors(rng, axis.extent, _levels(dag, a)))))
            continue
        outer = _random_factors(rng, max(1, axis.extent // inner), free_levels - 1) \
            if free_levels > 1 else []
        fixed = [1] * (_levels(dag, a) - 1 - len(outer))
        tiles.append((a, tuple(outer + fixed + [inner])))
    return tuple(tiles)


def _unroll_covering(rng, tiles, vector_axis: str, machine: Machine) -> int:
    """An auto-unroll limit that unrolls at least the whole register tile."""
    body = math.prod(f[-1] for a, f in tiles if a != vector_axis)
    body *= -(-dict(tiles)[vector_axis][-1] // machine.lanes)
    options = [u for u in UNROLL_CHOICES if u >= body] or [UNROLL_CHOICES[-1]]
    return _pick(rng, options)


def sample(rng: np.random.Generator, dag: ComputeDAG, sketch: Sketch,
           target: Target) -> Annotation:
    machine = target.machine
    if sketch.amx:
        return _sample_amx(rng, dag, target)
    for _ in range(100):
        vector_axis = _pick_vector_axis(rng, dag, machine)
        if (vector_axis is not None and sketch.cache_write is not None
                and rng.random() < REGISTER_TILE_PROBABILITY):
            tiles = _register_tiles(rng, dag, sketch, vector_axis, machine)
            unroll = _unroll_covering(rng, tiles, vector_axis, machine)
        else:
            tiles = tuple((a, _sample_tiles(rng, dag, a, vector_axis, machine))
                          for a in split_axes(dag))
            unroll = _pick(rng, UNROLL_CHOICES)
        ann = Annotation(tiles, vector_axis, unroll, 0, _pick_outer_axis(rng, dag))
        ann = replace(ann, parallel_depth=_default_parallel_depth(dag, ann, target))
        if fits(dag, sketch, ann, machine):
            return ann
    raise ScheduleError(f"no schedule of {dag.op} with extents "
                        f"{','.join(str(a.extent) for a in dag.axes)} fits the limits of this "
                        f"tuner (local tile, vector width, registers) in sketch {sketch.name}")


# (row tiles, column tiles) of an AMX register tile: every pair whose accumulators and operand
# tiles fit the tile registers (tuner.ir.machine.amx_tile_counts)
AMX_SHAPES = tuple((r, c) for r in range(1, AMX_TILES) for c in range(1, AMX_TILES)
                   if amx_tile_counts(r * AMX_TILE_ROWS, c * AMX_TILE_COLUMNS) is not None)


def amx_annotation(dag: ComputeDAG, target: Target, row_tiles: int, column_tiles: int,
                   row_blocks: int = 1, column_blocks: int = 1,
                   outer_axis: str | None = "j", unroll_max: int = 64) -> Annotation:
    """The AMX register tile of `row_tiles` x `column_tiles` tiles (cut to the matrix),
    `row_blocks` x `column_blocks` of them per cache tile (S1), the whole reduction in
    blocks of one tile's 16 dot groups."""
    m, n = dag.axis("i").extent, dag.axis("j").extent
    rows, cols = min(row_tiles * AMX_TILE_ROWS, m), min(column_tiles * AMX_TILE_COLUMNS, n)
    groups = AMX_TILE_BYTES // AMX_GROUP_BYTES
    tiles = {"i": (row_blocks, 1, rows), "j": (column_blocks, 1, cols), "k": (groups,)}
    ann = Annotation(tuple((a, tiles[a]) for a in split_axes(dag)), "j", unroll_max, 0,
                     outer_axis)  # (i is no split axis where M = 1)
    return replace(ann, parallel_depth=_default_parallel_depth(dag, ann, target))


def _sample_amx(rng, dag: ComputeDAG, target: Target) -> Annotation:
    row_tiles, column_tiles = _pick(rng, AMX_SHAPES)
    m, n = dag.axis("i").extent, dag.axis("j").extent
    rows, cols = min(row_tiles * AMX_TILE_ROWS, m), min(column_tiles * AMX_TILE_COLUMNS, n)
    return amx_annotation(dag, target, row_tiles, column_tiles,
                          _random_factors(rng, -(-m // rows), 1)[0],
                          _random_factors(rng, -(-n // cols), 1)[0],
                          _pick_outer_axis(rng, dag), _pick(rng, UNROLL_CHOICES))


def _fits_amx(dag: ComputeDAG, ann: Annotation) -> bool:
    groups = AMX_TILE_BYTES // AMX_GROUP_BYTES
    tiles = dict(ann.tiles)
    if ann.vector_axis != "j" or not {"j", "k"} <= set(tiles) or tiles["k"] != (groups,):
        return False
    i, j = tiles.get("i", (1, 1, 1)), tiles["j"]
    least = [min(tile, dag.axis(a).extent) if a in tiles else 1
             for a, tile in (("i", AMX_TILE_ROWS), ("j", AMX_TILE_COLUMNS))]
    return (i[1] == 1 and j[1] == 1 and i[2] >= least[0] and j[2] >= least[1]
            and amx_tile_counts(i[2], j[2]) is not None)


def register_vectors(dag: ComputeDAG, ann: Annotation, machine: Machine) -> tuple[int, int]:
    """(accumulator vectors, operand vectors) of the innermost tile level: what one
    reduction step keeps live in vector registers. The innermost reduction tiles count as
    unrolled (the register-tile samples unroll them)."""
    inner = {a: f[-1] for a, f in ann.tiles}
    chunks = -(-inner[ann.vector_axis] // machine.lanes) if ann.vector_axis else 1
    rows = math.prod(inner.get(a.name, 1) for a in dag.spatial_axes
                     if a.name != ann.vector_axis)
    return rows * chunks, operand_registers(dag, inner, ann.vector_axis, chunks, machine)


def fits(dag: ComputeDAG, sketch: Sketch, ann: Annotation, machine: Machine) -> bool:
    """The limits no step checks on its own: the vector width, the register file (the
    innermost tile's accumulators beside one step's operands) and the local tile; for the
    AMX sketch, the tile registers and the shape its code generator takes (`_fits_amx`)."""
    if sketch.amx:
        return _fits_amx(dag, ann)
    if ann.vector_axis is not None and \
            ann.tile(ann.vector_axis)[-1] > max_vector_lanes(machine):
        return False
    accumulators, operands = register_vectors(dag, ann, machine)
    if accumulators + operands > machine.vector_registers:
        return False
    if sketch.cache_write is None:
        return True
    first = 0 if sketch.cache_write == "S0" else 1
    tile = 1
    for a in dag.spatial_axes:
        if a.extent > 1:
            tile *= math.prod(ann.tile(a.name)[first:])
    return tile <= MAX_TILE_FLOATS


def to_steps(dag: ComputeDAG, sketch: Sketch, ann: Annotation, target: Target) -> tuple[Step, ...]:
    return lower(dag, sketch, ann, target)[0]


def lower(dag: ComputeDAG, sketch: Sketch, ann: Annotation,
          target: Target) -> tuple[tuple[Step, ...], LoopNest]:
    """The schedule of an annotation and the loop nest it makes, computed together (the
    search lowers each candidate once and hands the nest on). The nest is not checked
    against the whole-nest limits: `tuner.ir.schedule.check_nest` does that."""
    steps: list[Step] = [Split(a, ann.tile(a)) for a in split_axes(dag)]
    spatial = [a.name for a in dag.spatial_axes if a.extent > 1]
    reduce = [a.name for a in dag.reduce_axes if a.extent > 1 and a.name != dag.dot_axis]
    s0 = outer_loops(dag, ann.outer_axis)
    s1 = [f"{a}.1" for a in spatial]
    r0 = [f"{a}.0" for a in reduce] + [a.name for a in dag.reduce_axes if a.extent == 1]
    s2 = [f"{a}.2" for a in spatial]
    r1 = [f"{a}.1" for a in reduce]
    s3 = [f"{a}.3" for a in spatial if a != ann.vector_axis]
    if ann.vector_axis is not None:
        s3.append(f"{ann.vector_axis}.3")
    dot = [dag.dot_axis] if dag.dot_axis else []
    order = s0 + s1 + r0 + s2 + r1 + s3 + dot
    steps.append(Reorder(tuple(order)))

    depth = min(ann.parallel_depth, len(s0)) if target.threads > 1 else 0
    outer = list(s0)
    if depth >= 2:
        fused = "+".join(s0[:depth])
        steps.append(Fuse(tuple(s0[:depth])))
        outer = [fused] + s0[depth:]
    if depth >= 1:
        steps.append(Annotate(outer[0], "parallel"))

    vectorized = None
    if ann.vector_axis is not None and ann.tile(ann.vector_axis)[-1] > 1:
        vectorized = f"{ann.vector_axis}.3"
        steps.append(Annotate(vectorized, "vectorize"))
    extents = _loop_extents(dag, ann)
    unrolled: list[str] = []
    lanes = target.machine.lanes
    product = -(-extents[vectorized] // lanes) if vectorized else 1  # native vectors count
    amx = ["k.1"] if sketch.amx else []  # summed by tiles, not unrolled
    for name in reversed(s2 + r1 + s3):  # auto-unroll: innermost loops first, up to the limit
        if name == vectorized or name in amx:
            continue
        product *= extents[name]
        if product > ann.unroll_max:
            break
        unrolled.append(name)
    steps += [Annotate(name, "unroll") for name in unrolled]
    steps += [Annotate(name, "dot") for name in dot]
    steps += [Annotate(name, "amx") for name in amx]

    if sketch.cache_write == "S0" or (sketch.cache_write == "S1" and not s1):
        steps.append(CacheWrite(outer[-1]))
    elif sketch.cache_write == "S1":
        steps.append(CacheWrite(s1[-1]))
    for op in dag.inputs:
        if op.padded and sketch.pad is not None:
            steps.append(Pad(op.name, sketch.pad))
    steps += [LayoutRewrite(name) for name in sketch.layout_rewrite]
    # tiles too large for a copy each: pad at the root instead
    padded, nest = pad_at_root_where_local_fails(tuple(steps),
                                                 apply_steps(dag, steps, check=False))
    steps = list(padded)
    # gathers make a body many statements long: unroll less until the code is small enough
    while unrolled and code_size(nest, lanes) > MAX_CODE_SIZE:
        steps.remove(Annotate(unrolled.pop(), "unroll"))
        nest = apply_steps(dag, steps, check=False)
    return tuple(steps), nest


def _loop_extents(dag: ComputeDAG, ann: Annotation) -> dict[str, int]:
    out = {}
    for a in split_axes(dag):
        factors = ann.tile(a)
        out[f"{a}.0"] = -(-dag.axis(a).extent // math.prod(factors))
        for level, f in enumerate(factors, start=1):
            out[f"{a}.{level}"] = f
    return out


# ------------------------------------------------------------------------------ evolution

def mutate(rng: np.random.Generator, dag: ComputeDAG, sketch: Sketch, ann: Annotation,
           target: Target) -> Annotation:
    """One of Ansor's mutations, with its probabilities: tile size 0.90, unroll 0.04, loop
    order and vector axis (the compute location, here) 0.025 each, parallel extent 0.01."""
    for _ in range(20):
        r = rng.random()
        if r < 0.90:
            new = _mutate_tile(rng, dag, ann, target)
        elif r < 0.94:
            new = replace(ann, unroll_max=_pick(
                rng, [u for u in UNROLL_CHOICES if u != ann.unroll_max]))
        elif r < 0.965:
            new = replace(ann, outer_axis=_pick_outer_axis(rng, dag))
        elif r < 0.99:
            vector_axis = _pick_vector_axis(rng, dag, target.machine)
            tiles = tuple((a, _sample_tiles(rng, dag, a, vector_axis, target.machine)
                           if a in (vector_axis, ann.vector_axis) else f) for a, f in ann.tiles)
            new = replace(ann, vector_axis=vector_axis, tiles=tiles)
        else:
            limit = len(dag.spatial_axes) if target.threads > 1 else 0
            new = replace(ann, parallel_depth=int(rng.integers(0, limit + 1)))
        if new != ann and fits(dag, sketch, new, target.machine):
            return new
    return ann


def _mutate_tile(rng, dag: ComputeDAG, ann: Annotation, target: Target) -> Annotation:
    """Moves a prime factor between two levels of one axis (Ansor's tile-size mutation); an
    axis with a tail is resampled instead."""
    if not ann.tiles:
        return ann
    axis, factors = ann.tiles[int(rng.integers(len(ann.tiles)))]
    extent = dag.axis(axis).extent
    if extent % math.prod(factors):
        new = _sample_tiles(rng, dag, axis, ann.vector_axis, target.machine)
    else:
        levels = [extent // math.prod(factors)] + list(factors)  # level 0 is implicit
        src = _pick(rng, [i for i, f in enumerate(levels) if f > 1] or [0])
        if levels[src] == 1:
            return ann
        primes = [p for p in range(2, levels[src] + 1)
                  if levels[src] % p == 0 and all(p % q for q in range(2, p))]
        p = _pick(rng, primes)
        dst = _pick(rng, [i for i in range(len(levels)) if i != src])
        levels[src] //= p
        levels[dst] *= p
        new = tuple(levels[1:])
    return replace(ann, tiles=tuple((a, new if a == axis else f) for a, f in ann.tiles))


def crossover(rng: np.random.Generator, dag: ComputeDAG, sketch: Sketch, a: Annotation,
              b: Annotation, machine: Machine) -> Annotation:
    """Tile sizes axis by axis from either parent; the rest from one of them."""
    if a.vector_axis != b.vector_axis:
        return a
    tiles = tuple((axis, fa if rng.random() < 0.5 else fb)
                  for (axis, fa), (_, fb) in zip(a.tiles, b.tiles))
    base = a if rng.random() < 0.5 else b
    child = replace(base, tiles=tiles)
    return child if fits(dag, sketch, child, machine) else a


def genome_from_steps(dag: ComputeDAG, steps: tuple[Step, ...], target: Target,
                      sketches: list[Sketch]) -> tuple[Sketch, Annotation] | None:
    """The (sketch, annotation) that `to_steps` turns into exactly `steps`, if any: measured
    records re-enter the evolutionary population as genomes (a resumed run, another strategy's
    records). Schedules written by hand or by other tools give None."""
    found = genome_and_nest(dag, steps, target, sketches)
    return None if found is None else found[:2]


def genome_and_nest(dag: ComputeDAG, steps: tuple[Step, ...], target: Target,
                    sketches: list[Sketch]) -> tuple[Sketch, Annotation, LoopNest] | None:
    """`genome_from_steps` with the loop nest of `steps`, which finding the genome lowered."""
    tiles = tuple((s.axis, s.factors) for s in steps if isinstance(s, Split))
    # every axis split into the levels an annotation makes (the default schedule splits
    # into two: such a schedule is no genome, and lowering it as one fails)
    if [a for a, _ in tiles] != split_axes(dag) or \
            any(len(factors) != _levels(dag, a) for a, factors in tiles):
        return None
    vector = [s.loop for s in steps if isinstance(s, Annotate) and s.annotation == "vectorize"]
    fused = [s for s in steps if isinstance(s, Fuse)]
    parallel = [s for s in steps if isinstance(s, Annotate) and s.annotation == "parallel"]
    depth = len(fused[0].loops) if fused else (1 if parallel else 0)
    if vector:
        axes = [vector[0].rsplit(".", 1)[0]]
    else:  # no vector axis, or one with a vector tile of 1: only its place in the order shows
        order = next((s.order for s in steps if isinstance(s, Reorder)), ("",))
        last = order[-1].rsplit(".", 1)[0]
        axes = [None] + ([last] if last in split_axes(dag) else [])
    order = next((s.order for s in steps if isinstance(s, Reorder)), ("",))
    first = order[0].rsplit(".", 1)[0]
    outer = [None] + ([first] if first in split_axes(dag) else [])
    for vector_axis in axes:
        for outer_axis in outer:
            for unroll in UNROLL_CHOICES:
                ann = Annotation(tiles, vector_axis, unroll, depth, outer_axis)
                for sketch in sketches:
                    if not fits(dag, sketch, ann, target.machine):
                        continue
                    lowered_steps, nest = lower(dag, sketch, ann, target)
                    if lowered_steps == steps:
                        return sketch, ann, nest
    return None


def expert_seeds(dag: ComputeDAG, sketches: list[Sketch],
                 target: Target) -> list[tuple[Sketch, Annotation]]:
    """The expert register tile in every sketch that can hold it."""
    seeds = [(sketch, expert_annotation(dag, sketch, target)) for sketch in sketches]
    return [(sketch, ann) for sketch, ann in seeds if ann is not None]


def expert_annotation(dag: ComputeDAG, sketch: Sketch, target: Target) -> Annotation | None:
    """The default schedule's register tile, expressed in this sketch's terms: a seed for the
    evolutionary search, so it starts where an expert would and mutates from there."""
    from tuner.search.default import register_tile

    if sketch.amx:  # onnxruntime's AMX kernel's tile: 2 x 2 tiles, 32 x 32 sums
        ann = amx_annotation(dag, target, 2, 2)
        return ann if fits(dag, sketch, ann, target.machine) else None
    tile = register_tile(dag, target)
    if tile is None:
        return None
    inner = {tile.vector_axis: tile.width, tile.unrolled_axis: tile.count,
             tile.reduce_axis: tile.reduce_unroll}
    tiles = []
    for a in split_axes(dag):
        levels = _levels(dag, a)
        tiles.append((a, (1,) * (levels - 1) + (inner.get(a, 1),)))
    chunks = -(-tile.width // target.machine.lanes)
    body = tile.count * tile.reduce_unroll * chunks
    unroll = next((u for u in UNROLL_CHOICES if u >= body), UNROLL_CHOICES[-1])
    ann = Annotation(tuple(tiles), tile.vector_axis, unroll, 0, tile.vector_axis)
    ann = replace(ann, parallel_depth=_default_parallel_depth(dag, ann, target))
    return ann if fits(dag, sketch, ann, target.machine) else None
