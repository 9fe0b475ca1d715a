"""A good schedule for any contraction, before any tuning: the expert's first guess.

It builds the register-blocked micro-kernel that reached and passed OpenBLAS on one core (a
matmul at 97-107 GFLOPS against numpy's 78 at 512^3 on Zen 4; a tiled loop left to LLVM's
auto-vectorizer reached 44):
- vectorize the spatial axis along which every input is either invariant (broadcast) or
  contiguous, preferring one along which the constant operand can be packed (conv2d: output
  channels with the weight packed, input pixels broadcast; matmul: columns of B);
- 1-2 native vectors wide, unroll a second spatial axis so that the accumulators fill the
  machine's vector registers less the operands of one reduction step (machine.py: 32 zmm on
  AVX-512 give 14 rows of 2 vectors, 16 ymm on AVX2 give 6 rows of 2), accumulate them
  locally (cache_write) across the whole reduction, apply the epilogue on write-back;
- unroll the innermost reduction a little (a reduction axis that does not index the same input
  dimension as the unrolled rows: unrolling a 3x3 convolution's `kw` beside rows of `ow` keeps
  a sliding window of broadcasts live, see `tuner.ir.layout.window_broadcasts`; where the input is
  loaded as vectors instead, as in depthwise convolution along `ow`, the reduction that shares
  the rows' dimension is the one unrolled, so each loaded row feeds several rows, with the
  width and rows of `window_width` and `window_rows`), keep the vector
  axis's outer tiles outermost (a packed weight panel stays in L2 while the other loops
  sweep), pad at the root (or per outer tile, where tiles read disjoint inputs), and run
  the fused outer loops in parallel when there is more than one thread.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tuner.codegen.emit import emit_llvm
from tuner.ir.dag import ComputeDAG
from tuner.errors import ScheduleError
from tuner.ir.layout import (MAX_CODE_SIZE, SPARE_REGISTERS, code_size, ir_instructions,
                          local_pad_bytes, local_padding_pays, operand_registers,
                          partitioning_axes, root_pad_bytes, shares_input_dimension,
                          vector_cost)
from tuner.ir.machine import Machine
from tuner.ir.schedule import (Annotate, CacheWrite, Fuse, LayoutRewrite, LoopNest, Pad, Reorder,
                            Split, Step, apply_steps)
from tuner.ir.target import Target

REDUCE_UNROLL = 4


def rows_for(extent: int, budget: int, least: int = 1) -> int:
    """Rows of a register tile over an axis of `extent`: between half of `budget` (and at
    least `least`, see `least_rows`) and all of it, the count that wastes least on the last
    partial tile (the larger within 1%). A tail tile costs more than its share of rows (it
    runs a second, guarded copy of the loop): measured on Zen 5, the 7x7-pixel 1x1
    convolution of ResNet's last stage (49 pixels, 2 zmm of channels) ran at 222 GFLOPS with
    7 rows and 175 with 13 (3 tiles and a tail of 10)."""
    if extent <= budget:
        return extent
    low = max(1, -(-budget // 2), min(least, budget))
    return min(range(low, budget + 1),
               key=lambda c: (round(-(-extent // c) * c / extent, 2), -c))


@dataclass(frozen=True, slots=True)
class RegisterTile:
    """The expert's choices: vector axis and width, the unrolled axis and its count, and the
    unrolled inner part of the last reduction axis."""
    vector_axis: str
    width: int
    unrolled_axis: str | None
    count: int
    reduce_axis: str | None
    reduce_unroll: int


def least_rows(machine: Machine, width: int) -> int:
    """The fewest rows worth a register tile of `width` floats: accumulators 1.5x the
    machine's FMA issue rate x latency. With just that many, loads and loop overhead show:
    x86-64-v3 code on Zen 5 (16 ymm), a 128x768x768 product ran at 107 GFLOPS with 4 rows of
    2 ymm (8 accumulators, a divisor of 128) and 121 with 6 rows (12, and a tail of 2);
    1024x1024x1024: 104 and 123."""
    chunks = -(-width // machine.lanes)
    return -(-3 * machine.min_accumulators // (2 * chunks))


def tile_rows(machine: Machine, width: int) -> int:
    """Rows of `width` floats whose accumulators fit the register file beside the operands."""
    chunks = -(-width // machine.lanes)
    return max(1, machine.accumulator_budget(chunks + SPARE_REGISTERS) // chunks)


def window_width(extent: int, lanes: int) -> int:
    """The vector width of a windowed tile (`window_rows`) over an axis of `extent`: equal
    tiles of one or two vectors each, whichever wastes fewer lanes (two on a tie: one weight
    broadcast then feeds twice the FMAs). Measured on Zen 5 at 1 thread, 3x3 depthwise with
    vectors along `ow`: 56 columns as 2 tiles of 28 (2 zmm, the second 12 lanes) 104-110
    GFLOPS, 16-wide tiles (3 and a tail of 8) 65; 28 columns as one tile of 28: 82-154, as
    16 and a tail: 48-60; x86-64-v3 (8 lanes), 56 columns: 7 tiles of 8 75, 4 of 14 (2 ymm)
    42."""
    def used(chunks: int) -> tuple[float, int]:  # lanes used, then wider
        tiles = -(-extent // (chunks * lanes))
        return round(extent / (tiles * chunks * lanes), 2), chunks
    chunks = max((1, 2), key=used)
    tiles = -(-extent // (chunks * lanes))
    return -(-extent // tiles)


def window_rows(machine: Machine, chunks: int, window: int) -> int:
    """Rows of a register tile whose input is loaded as vectors (not broadcast), with the
    reduction axis that shares the rows' input dimension (`kh` beside rows of `oh`) unrolled
    `window` times: row i at step j reads the input row that row i+1 reads at step j-1, so
    each loaded input vector feeds up to `window` FMAs. The register file holds the
    accumulators, about one loaded vector per accumulator (x86 FMAs also read their vector
    operand from memory, so LLVM reloads rather than spills) and the window's weight
    broadcasts. Measured on Zen 5 at 1 thread (3x3 depthwise, vectors along `ow`, rows of
    `oh`): mobilenetv2.dw3x3 with `kw` unrolled beside 28 rows (the default until then) 57-64
    GFLOPS, `kh` unrolled beside 14 rows 85-91, 28 rows 53; 2 zmm wide: 7 rows 104-154, 6
    rows 66-83, 12 rows 52-72."""
    return max(1, (machine.vector_registers - window) // (2 * chunks))


def register_tile(dag: ComputeDAG, target: Target) -> RegisterTile | None:
    lanes = target.machine.lanes
    spatial = [a for a in dag.spatial_axes if a.extent > 1]
    if not spatial:
        return None
    vec = min(spatial, key=lambda a: (vector_cost(dag, a.name, lanes), -a.extent))
    others = [a for a in spatial if a is not vec]
    machine = target.machine
    unrolled = None
    if others:
        lhs_stride = {a.name: abs(dag.lhs.flat().coef(a.name)) or 1 << 30 for a in others}
        unrolled = max(others, key=lambda a: (min(a.extent, 8), -lhs_stride[a.name]))
    reduce_axes = [r for r in dag.reduce_axes if r.name != dag.dot_axis]
    window = None
    if unrolled is not None:
        sharing = [r for r in reduce_axes if shares_input_dimension(dag, unrolled.name, r.name)]
        if sharing and dag.lhs.depends_on(vec.name) and \
                sharing[-1].extent <= 2 * REDUCE_UNROLL:
            window = sharing[-1]
        else:  # no sliding window of broadcasts (tuner.ir.layout.window_broadcasts)
            reduce_axes = [r for r in reduce_axes if r not in sharing] or reduce_axes
    if window is not None:
        width = window_width(vec.extent, lanes)
    elif vec.extent >= 2 * lanes and vec.extent % (2 * lanes) in (0,) or \
            vec.extent >= 4 * lanes:
        width = 2 * lanes
    elif vec.extent >= lanes:
        width = lanes
    else:
        width = vec.extent
    if window is None and vec.extent % width and vec.extent % lanes == 0:
        width = lanes
    chunks = -(-width // lanes)
    count = 1
    if unrolled is not None:
        budget = window_rows(machine, chunks, window.extent) if window else \
            tile_rows(machine, width)
        count = rows_for(unrolled.extent, budget, least_rows(machine, width))
    last = window or (reduce_axes[-1] if reduce_axes else None)
    reduce_unroll = 1
    if window is not None:
        reduce_unroll = window.extent
    elif last is not None:
        reduce_unroll = last.extent if last.extent <= 2 * REDUCE_UNROLL else REDUCE_UNROLL
        unrolled_tile = {vec.name: width, last.name: reduce_unroll}
        if unrolled is not None:
            unrolled_tile[unrolled.name] = count
        needed = count * chunks + operand_registers(dag, unrolled_tile, vec.name, chunks, machine)
        if needed > machine.vector_registers:
            reduce_unroll = 1  # a full register file leaves no room for the next step's loads
    return RegisterTile(vec.name, width, unrolled.name if unrolled else None, count,
                        last.name if last else None, reduce_unroll)


def default_schedule(dag: ComputeDAG, target: Target) -> tuple[Step, ...]:
    """The expert schedule; where its register tile would unroll more code than a build may
    compile (gathers make a body long), the tile unrolls less: the default always builds."""
    return default_lowered(dag, target)[0]


def default_lowered(dag: ComputeDAG, target: Target) -> tuple[tuple[Step, ...], LoopNest]:
    """The default schedule and its loop nest, lowered once (the tuner and a build need
    both)."""
    tile = register_tile(dag, target)
    if tile is None:
        return (), apply_steps(dag, ())
    while True:
        steps, nest = _padded_locally(dag, tiled_schedule(dag, target, tile))
        if _builds(nest, target) or (tile.count == 1 and tile.reduce_unroll == 1):
            return steps, nest
        tile = replace(tile, reduce_unroll=1) if tile.reduce_unroll > 1 else \
            replace(tile, count=max(1, tile.count // 2))


def _padded_locally(dag: ComputeDAG, steps: tuple[Step, ...]
                    ) -> tuple[tuple[Step, ...], LoopNest]:
    """`steps` with local padding in place of the root copy where outer tiles read disjoint
    parts of the padded input (depthwise and grouped convolutions) and the copies made per
    tile add up to at most twice the root copy: each row is then read from memory once and
    used from cache (tuner.ir.layout.LocalPad), where the root copy writes the whole padded input
    out and reads it back (the stride-2 depthwise default: 10 -> 14 GFLOPS on Zen 5). Returns
    the schedule chosen and its nest."""
    nest = apply_steps(dag, steps)
    if not local_padding_pays(dag):
        return steps, nest
    local = tuple(Pad(s.operand, "local") if isinstance(s, Pad) else s for s in steps)
    local_nest = apply_steps(dag, local)
    try:
        copied = local_pad_bytes(local_nest)
    except ScheduleError:
        return steps, nest
    return (local, local_nest) if copied <= 2 * root_pad_bytes(nest) else (steps, nest)


def _builds(nest: LoopNest, target: Target) -> bool:
    """Whether the builder accepts the nest: its estimate within MAX_CODE_SIZE, as the
    builder checks first (tuner.ir.layout.check_code_size: an int8 tile of 4 ymm x 3 rows
    tried for yolo's 1x1 head, 255 channels, was estimated at 17,010 and refused there,
    whatever its IR), and its IR at most MAX_CODE_SIZE instructions. The estimate alone
    decides when it is well below the limit; near it (it is off by up to 2x) the IR is
    emitted and counted: the stride-2 5x5 conv's default at 2 threads was estimated below the
    limit and emitted 15,184."""
    estimate = code_size(nest, target.machine.lanes)
    if estimate > MAX_CODE_SIZE:
        return False
    if estimate <= MAX_CODE_SIZE // 4:
        return True
    return ir_instructions(str(emit_llvm(nest, target))) <= MAX_CODE_SIZE


def tiled_schedule(dag: ComputeDAG, target: Target, tile: RegisterTile) -> tuple[Step, ...]:
    """The expert schedule around a given register tile (benchmarks vary the tile)."""
    vec = dag.axis(tile.vector_axis)
    width = tile.width
    unrolled = dag.axis(tile.unrolled_axis) if tile.unrolled_axis else None
    count = tile.count

    steps: list[Step] = [Split(vec.name, (width,))]
    outer = [f"{vec.name}.0"]
    inner = [f"{vec.name}.1"]
    if unrolled is not None:
        steps.append(Split(unrolled.name, (count,)))
        inner.insert(0, f"{unrolled.name}.1")
    for a in dag.spatial_axes:
        if a is vec:
            continue
        outer.append(f"{a.name}.0" if a is unrolled else a.name)
    # Depthwise and grouped layers: each channel's input is read once, by its own outer
    # tiles, so the channels go outermost (the weight panel is small there; the input is
    # not, and vector tiles outermost re-read all of it per tile) and the input is padded
    # per channel (`_padded_locally`). Defaults at 1 thread on Zen 5: mobilenetv2.dw3x3
    # 53 -> 68 GFLOPS, the stride-2 depthwise 144x57x57 14.5 -> 16.7, ResNeXt's 32-group 3x3
    # 39 -> 55.
    first = [name for name in outer if name.split(".")[0] in partitioning_axes(dag)]
    outer = first + [name for name in outer if name not in first]

    # every reduction loop in order, the last one split by the tile's reduction unroll
    reduce_loops = [r.name for r in dag.reduce_axes
                    if r.name not in (tile.reduce_axis, dag.dot_axis)]
    unroll_reduce = None
    if tile.reduce_axis is not None:
        last = dag.axis(tile.reduce_axis)
        if tile.reduce_unroll >= last.extent:
            reduce_loops.append(last.name)
            unroll_reduce = last.name if last.extent > 1 else None
        else:
            steps.append(Split(last.name, (tile.reduce_unroll,)))
            reduce_loops += [f"{last.name}.0", f"{last.name}.1"]
            unroll_reduce = f"{last.name}.1"
    dot = [dag.dot_axis] if dag.dot_axis else []  # an int8 task's group, innermost
    steps.append(Reorder(tuple(outer + reduce_loops + inner + dot)))

    at = outer[-1]
    if target.threads > 1 and len(outer) > 1:
        steps.append(Fuse(tuple(outer)))
        at = "+".join(outer)
    if target.threads > 1:
        steps.append(Annotate(at, "parallel"))
    if unroll_reduce:
        steps.append(Annotate(unroll_reduce, "unroll"))
    if len(inner) > 1:
        steps.append(Annotate(inner[0], "unroll"))
    if width > 1:
        steps.append(Annotate(inner[-1], "vectorize"))
    steps += [Annotate(name, "dot") for name in dot]
    steps.append(CacheWrite(at))
    for op in dag.inputs:
        if op.padded:
            steps.append(Pad(op.name, "root"))
        if op.constant and op is not dag.bias:
            steps.append(LayoutRewrite(op.name))
    return tuple(steps)  # a wrong one raises ScheduleError where it is first lowered
