"""Schedules as data: the steps, their JSON form, and the loop nest they produce.

A schedule is a tuple of small frozen steps, as in Ansor and tinygrad; it is stored as JSON and
replayed by applying the steps again, never as code. `apply_steps` turns (ComputeDAG, steps) into
a `LoopNest` and checks legality where each step is applied, raising `ScheduleError` with the
bad value, so nothing invalid reaches code generation.

Steps (loops are named `axis` before a split, `axis.0 .. axis.m` after it, `a+b` when fused):
    Split(axis, factors)      axis -> axis.0 (ceil(N / prod)), axis.1 (factors[0]), ...; a
                              factor need not divide: the last partial tile is a tail
    Reorder(order)            the new order of all loops, outermost first
    Fuse(loops)               consecutive loops -> one (to parallelise several outer loops)
    Annotate(loop, annotation) parallel (outermost, spatial), vectorize (innermost, spatial,
                              explicit LLVM vectors), unroll (fully, by the generator), dot
                              (an int8 task's dot axis, unsplit and innermost, inside the
                              vectorized loop: summed by the CPU's dot-product instruction),
                              amx (an int8 matmul's reduction block of 16 dot groups, 64
                              bytes: the whole register tile is summed by AMX tile
                              instructions, tuner/codegen/amx.py; `check_amx` says where)
    CacheWrite(at)            accumulate the output tile below loop `at` in a local buffer
                              (registers when the tile is unrolled); all reduction loops must be
                              inside; bias and ReLU are applied on write-back (epilogue fusion)
    Pad(operand, mode)        'inline' (bounds-checked reads), 'root' (a padded copy first) or
                              'local' (a padded copy of what each outer tile reads, made in
                              the tile: tuner.ir.layout.local_pad_plan)
    LayoutRewrite(operand)    pack a constant operand in loop order, once, at build time
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields, replace

from tuner.ir.dag import ComputeDAG
from tuner.errors import ScheduleError

ANNOTATIONS = ("parallel", "vectorize", "unroll", "dot", "amx")
PAD_MODES = ("inline", "root", "local")
MAX_VECTOR_LANES = 64        # a format limit: the search asks for at most 4 native vectors
MAX_TILE_FLOATS = 1 << 16    # a 256 KiB local accumulator still fits any thread's stack


@dataclass(frozen=True, slots=True)
class Split:
    axis: str
    factors: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Reorder:
    order: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Fuse:
    loops: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Annotate:
    loop: str
    annotation: str


@dataclass(frozen=True, slots=True)
class CacheWrite:
    at: str


@dataclass(frozen=True, slots=True)
class Pad:
    operand: str
    mode: str


@dataclass(frozen=True, slots=True)
class LayoutRewrite:
    operand: str


Step = Split | Reorder | Fuse | Annotate | CacheWrite | Pad | LayoutRewrite
STEP_KINDS: dict[str, type] = {"split": Split, "reorder": Reorder, "fuse": Fuse,
                               "annotate": Annotate, "cache_write": CacheWrite, "pad": Pad,
                               "layout_rewrite": LayoutRewrite}
_KIND_OF = {cls: name for name, cls in STEP_KINDS.items()}


# ---------------------------------------------------------------------------------- JSON form

def step_to_json(step: Step) -> dict:
    out: dict = {"kind": _KIND_OF[type(step)]}
    for f in fields(step):
        value = getattr(step, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def step_from_json(data) -> Step:
    if not isinstance(data, dict) or data.get("kind") not in STEP_KINDS:
        raise ScheduleError(f"not a schedule step: {data!r}; expected an object whose 'kind' is "
                            f"one of {', '.join(STEP_KINDS)}")
    cls = STEP_KINDS[data["kind"]]
    names = [f.name for f in fields(cls)]
    if set(data) != set(names) | {"kind"}:
        raise ScheduleError(f"step {data!r} must have exactly the fields {names}")
    values = {}
    for f in fields(cls):
        value = data[f.name]
        if f.name in ("factors",):
            if not isinstance(value, list) or not all(type(v) is int for v in value):
                raise ScheduleError(f"split factors must be a list of integers, got {value!r}")
            value = tuple(value)
        elif f.name in ("order", "loops"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ScheduleError(f"{f.name} must be a list of loop names, got {value!r}")
            value = tuple(value)
        elif not isinstance(value, str):
            raise ScheduleError(f"{data['kind']} {f.name} must be a string, got {value!r}")
        values[f.name] = value
    return cls(**values)


def schedule_to_json(steps) -> str:
    """Canonical text: equal schedules give equal strings (used as identity in the records)."""
    return json.dumps([step_to_json(s) for s in steps], sort_keys=True, separators=(",", ":"))


def schedule_from_json(text) -> tuple[Step, ...]:
    data = json.loads(text) if isinstance(text, str) else text
    if not isinstance(data, list):
        raise ScheduleError(f"a schedule is a JSON list of steps, got {type(data).__name__}")
    return tuple(step_from_json(d) for d in data)


# ------------------------------------------------------------------------------- loop nest

@dataclass(frozen=True, slots=True)
class LoopPart:
    """One level of one axis: `extent` trips of `step` indices each."""
    axis: str
    level: int
    extent: int
    step: int


@dataclass(frozen=True, slots=True)
class Loop:
    name: str
    parts: tuple[LoopPart, ...]  # several when fused, outermost first
    reduce: bool
    kind: str = "serial"
    # the trips of all parts, derived once: the search reads it for every candidate
    extent: int = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "extent", math.prod(p.extent for p in self.parts))


@dataclass(frozen=True, slots=True)
class LoopNest:
    dag: ComputeDAG
    loops: tuple[Loop, ...]
    cache_write_at: int | None = None  # the tile is loops[cache_write_at + 1:]
    pad: tuple[tuple[str, str], ...] = ()
    layout_rewrite: tuple[str, ...] = ()

    def index(self, name: str) -> int:
        for i, loop in enumerate(self.loops):
            if loop.name == name:
                return i
        names = ", ".join(l.name for l in self.loops)
        raise ScheduleError(f"no loop named {name!r}; loops are {names}")

    def pad_mode(self, operand: str) -> str:
        return dict(self.pad).get(operand, "inline")

    @property
    def tile_loops(self) -> tuple[Loop, ...]:
        if self.cache_write_at is None:
            return ()
        return self.loops[self.cache_write_at + 1:]


def initial_nest(dag: ComputeDAG) -> LoopNest:
    loops = tuple(Loop(a.name, (LoopPart(a.name, 0, a.extent, 1),), a.reduce) for a in dag.axes)
    return LoopNest(dag, loops)


def apply_steps(dag: ComputeDAG, steps, check: bool = True) -> LoopNest:
    """The loop nest `steps` make; `check=False` skips only the whole-nest limits (for the
    annotator, which sizes a schedule by trying it). The code-size bound depends on the
    target's vector width and is checked by `tuner.ir.layout.check_code_size`."""
    nest = initial_nest(dag)
    for step in steps:
        nest = _APPLY[type(step)](nest, step)
    if check:
        check_nest(nest)
    return nest


def _with_loops(nest: LoopNest, loops: tuple[Loop, ...]) -> LoopNest:
    # what dataclasses.replace does, without its introspection: the search applies ~10 steps
    # to each of thousands of candidates a round
    return LoopNest(nest.dag, loops, nest.cache_write_at, nest.pad, nest.layout_rewrite)


def _split(nest: LoopNest, step: Split) -> LoopNest:
    i = nest.index(step.axis)
    loop = nest.loops[i]
    if len(loop.parts) != 1 or loop.parts[0].level != 0 or loop.name != loop.parts[0].axis:
        raise ScheduleError(f"split: {step.axis!r} is not an unsplit axis")
    if not step.factors or any(f < 1 for f in step.factors):
        raise ScheduleError(f"split {step.axis}: factors must be integers >= 1, "
                            f"got {list(step.factors)}")
    extent = loop.parts[0].extent
    inner = math.prod(step.factors)
    trips = (-(-extent // inner),) + step.factors
    new = []
    for level, trip in enumerate(trips):
        stride = math.prod(trips[level + 1:])
        new.append(Loop(f"{step.axis}.{level}", (LoopPart(step.axis, level, trip, stride),),
                        loop.reduce))
    return _with_loops(nest, nest.loops[:i] + tuple(new) + nest.loops[i + 1:])


def _reorder(nest: LoopNest, step: Reorder) -> LoopNest:
    names = [l.name for l in nest.loops]
    if sorted(step.order) != sorted(names):
        raise ScheduleError(f"reorder: {list(step.order)} is not a permutation of the loops "
                            f"{names}")
    by_name = {l.name: l for l in nest.loops}
    return _with_loops(nest, tuple(by_name[n] for n in step.order))


def _fuse(nest: LoopNest, step: Fuse) -> LoopNest:
    if len(step.loops) < 2:
        raise ScheduleError(f"fuse needs at least two loops, got {list(step.loops)}")
    first = nest.index(step.loops[0])
    span = nest.loops[first:first + len(step.loops)]
    if tuple(l.name for l in span) != step.loops:
        raise ScheduleError(f"fuse: loops {list(step.loops)} are not consecutive in the order "
                            f"{[l.name for l in nest.loops]}")
    if len({l.reduce for l in span}) != 1:
        raise ScheduleError(f"fuse: {list(step.loops)} mixes spatial and reduction loops")
    if any(l.kind != "serial" for l in span):
        raise ScheduleError("fuse loops before annotating them")
    fused = Loop("+".join(step.loops), tuple(p for l in span for p in l.parts), span[0].reduce)
    return _with_loops(nest, nest.loops[:first] + (fused,) + nest.loops[first + len(span):])


def _annotate(nest: LoopNest, step: Annotate) -> LoopNest:
    if step.annotation not in ANNOTATIONS:
        raise ScheduleError(f"annotate: kind must be one of {', '.join(ANNOTATIONS)}, "
                            f"got {step.annotation!r}")
    i = nest.index(step.loop)
    loop = nest.loops[i]
    if loop.kind != "serial":
        raise ScheduleError(f"annotate: loop {loop.name!r} is already {loop.kind}")
    if step.annotation == "parallel" and loop.reduce:
        raise ScheduleError(f"cannot parallelise reduction loop {loop.name!r}")
    if step.annotation == "vectorize" and loop.reduce:
        raise ScheduleError(f"cannot vectorize reduction loop {loop.name!r}")
    if step.annotation == "dot" and (loop.name != nest.dag.dot_axis or len(loop.parts) > 1):
        raise ScheduleError(f"dot: loop {loop.name!r} is not the unsplit dot axis "
                            f"({nest.dag.dot_axis or 'this task has none'})")
    if step.annotation == "amx" and not loop.reduce:
        raise ScheduleError(f"amx: loop {loop.name!r} is not a reduction loop")
    if step.annotation in ("vectorize", "unroll", "amx") and len(loop.parts) > 1:
        raise ScheduleError(f"cannot {step.annotation} fused loop {loop.name!r}")
    annotated = Loop(loop.name, loop.parts, loop.reduce, step.annotation)
    return _with_loops(nest, nest.loops[:i] + (annotated,) + nest.loops[i + 1:])


def _cache_write(nest: LoopNest, step: CacheWrite) -> LoopNest:
    if nest.cache_write_at is not None:
        raise ScheduleError("cache_write given twice")
    return replace(nest, cache_write_at=nest.index(step.at))


def _pad(nest: LoopNest, step: Pad) -> LoopNest:
    operand = _operand(nest.dag, step.operand, "pad")
    if not operand.padded:
        raise ScheduleError(f"pad: operand {step.operand!r} has no padding")
    if step.mode not in PAD_MODES:
        raise ScheduleError(f"pad mode must be one of {', '.join(PAD_MODES)}, got {step.mode!r}")
    if step.operand in dict(nest.pad):
        raise ScheduleError(f"pad given twice for {step.operand!r}")
    return replace(nest, pad=nest.pad + ((step.operand, step.mode),))


def _layout_rewrite(nest: LoopNest, step: LayoutRewrite) -> LoopNest:
    operand = _operand(nest.dag, step.operand, "layout_rewrite")
    if not operand.constant:
        raise ScheduleError(f"layout_rewrite: operand {step.operand!r} is not constant")
    if step.operand in nest.layout_rewrite:
        raise ScheduleError(f"layout_rewrite given twice for {step.operand!r}")
    return replace(nest, layout_rewrite=nest.layout_rewrite + (step.operand,))


def _operand(dag: ComputeDAG, name: str, what: str):
    names = [op.name for op in dag.inputs]
    if name not in names:
        raise ScheduleError(f"{what}: no input operand {name!r}; operands are {names}")
    return dag.operand(name)


_APPLY = {Split: _split, Reorder: _reorder, Fuse: _fuse, Annotate: _annotate,
          CacheWrite: _cache_write, Pad: _pad, LayoutRewrite: _layout_rewrite}


def check_nest(nest: LoopNest) -> None:
    """Whole-nest legality: what no single step can check on its own."""
    loops = nest.loops
    last_level: dict[str, int] = {}
    for loop in loops:
        for part in loop.parts:
            if last_level.get(part.axis, -1) > part.level:
                raise ScheduleError(f"loop {part.axis}.{part.level} must stay inside the outer "
                                    f"loops of axis {part.axis!r} (the order of its tiles)")
            last_level[part.axis] = part.level
    dotted = bool(loops) and loops[-1].kind == "dot"
    for i, loop in enumerate(loops):
        if loop.kind == "parallel" and i != 0:
            raise ScheduleError(f"parallel loop {loop.name!r} must be the outermost loop")
        if loop.kind == "dot" and i != len(loops) - 1:
            raise ScheduleError(f"dot loop {loop.name!r} must be the innermost loop")
        if loop.kind == "vectorize":
            if i != len(loops) - 1 - dotted:
                raise ScheduleError(f"vectorized loop {loop.name!r} must be the innermost loop"
                                    + (" outside the dot loop" if dotted else ""))
            if loop.extent > MAX_VECTOR_LANES:
                raise ScheduleError(f"vectorized loop {loop.name!r} has {loop.extent} lanes; "
                                    f"at most {MAX_VECTOR_LANES}")
    if nest.dag.quant is not None and nest.cache_write_at is None:
        raise ScheduleError("an int8 kernel sums in a local int32 tile: it needs cache_write")
    if nest.cache_write_at is not None:
        at = nest.cache_write_at
        outside_reduce = [l.name for l in loops[:at + 1] if l.reduce]
        if outside_reduce:
            raise ScheduleError(f"cache_write at {loops[at].name!r}: reduction loops "
                                f"{outside_reduce} are outside the tile")
        tile = math.prod(l.extent for l in loops[at + 1:] if not l.reduce)
        if tile > MAX_TILE_FLOATS:
            raise ScheduleError(f"cache_write at {loops[at].name!r}: the tile has {tile} "
                                f"floats; at most {MAX_TILE_FLOATS}")
    if any(loop.kind == "amx" for loop in loops):
        check_amx(nest)


def check_amx(nest: LoopNest) -> None:
    """Where AMX tiles can sum the register tile (tuner/codegen/amx.py): an int8 matmul of
    uint8 A and packed int8 B whose zero points the caller folds (not centered); the amx
    loop is `k.1`, one tile's 16 dot groups (64 bytes of A's row), with the rest of the
    reduction (`k.0`) inside the tile too; the tile's rows are one loop of `i` and its
    columns one vectorized loop of `j` inside it (the local sums row-major, as the tiles are
    stored), at least a tile's 16 of each (or all of a smaller matrix) and at most what the 8
    tile registers hold (`amx_tile_counts`); and A, where
    its last group overhangs K, padded at the root (a tile reads whole groups)."""
    from tuner.ir.machine import (AMX_GROUP_BYTES, AMX_TILE_BYTES, AMX_TILE_COLUMNS,
                                  AMX_TILE_ROWS, amx_tile_counts)

    dag, loops = nest.dag, nest.loops
    amx = [l for l in loops if l.kind == "amx"]
    if dag.op != "matmul" or dag.quant is None or dag.quant.centered:
        raise ScheduleError(f"amx: only an int8 matmul of uint8 A and int8 weights is summed "
                            f"by AMX tiles, not {dag.op} ({'float32' if dag.quant is None else 'centered int8'})")
    if dag.rhs.name not in nest.layout_rewrite:
        raise ScheduleError(f"amx: the weights {dag.rhs.name!r} must be packed "
                            f"(layout_rewrite): a tile reads them in groups of 4 rows")
    groups = AMX_TILE_BYTES // AMX_GROUP_BYTES
    if len(amx) != 1 or amx[0].parts[0] != LoopPart("k", 1, groups, 1):
        raise ScheduleError(f"amx: the amx loop must be k.1 of extent {groups} (one tile's "
                            f"dot groups), got {[(l.name, l.extent) for l in amx]}")
    at = nest.cache_write_at
    if at is None or nest.index("k.0") <= at:
        raise ScheduleError("amx: the whole reduction (k.0, k.1) must be inside the "
                            "cache_write tile")
    tile = [l for l in nest.tile_loops if not l.reduce and l.extent > 1]
    rows = [l for l in tile if l.parts[0].axis == "i"]
    cols = [l for l in tile if l.parts[0].axis == "j"]
    if len(rows) > 1 or len(cols) > 1 or (rows and cols and tile.index(rows[0]) >
                                          tile.index(cols[0])):
        raise ScheduleError(f"amx: the tile must be one loop of i outside one loop of j, got "
                            f"{[l.name for l in tile]}")
    if cols and cols[0].kind != "vectorize":
        raise ScheduleError(f"amx: the tile's column loop {cols[0].name!r} must be vectorized")
    extent = {l.parts[0].axis: l.extent for l in tile}
    for axis, whole in (("i", AMX_TILE_ROWS), ("j", AMX_TILE_COLUMNS)):
        # a tile's rows (columns) are 16, or all of a smaller matrix's
        least = min(whole, dag.axis(axis).extent)
        if extent.get(axis, 1) < least:
            raise ScheduleError(f"amx: the tile has {extent.get(axis, 1)} of {axis}'s "
                                f"{dag.axis(axis).extent}; at least {least}")
    if amx_tile_counts(extent.get("i", 1), extent.get("j", 1)) is None:
        raise ScheduleError(f"amx: a tile of {extent.get('i', 1)} x {extent.get('j', 1)} sums "
                            f"needs more than the 8 tile registers")
    if dag.lhs.padded and nest.pad_mode(dag.lhs.name) != "root":
        raise ScheduleError(f"amx: {dag.lhs.name!r} overhangs K in its last dot group and "
                            f"must be padded at the root")
