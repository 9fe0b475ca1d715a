"""AMX code for the register tile of an int8 matmul (tuner.ir.schedule.check_amx says which).

Intel's AMX (Sapphire Rapids and later) has 8 tile registers of up to 16 rows x 64 bytes and
`tdpbusd`, which adds to a tile of 16 x 16 int32 sums the products of a tile of uint8 A (16
rows of 64 bytes: 16 dot groups of 4) and a tile of int8 B in groups of 4 (16 group rows, each
16 columns x 4 bytes), exactly: 16384 multiply-accumulates per instruction
(tuner/ir/machine.py). The register tile of `rows` x `columns` sums is cut into such tiles
(`amx_tile_counts`): the accumulators stay in tile registers over the whole reduction, which
runs in blocks of one tile's 64 bytes; each block loads one A tile per row tile and one B tile
per column tile, then multiplies every pair. The sums are then stored to the local tile, from
which the write-back applies the epilogue as for every int8 kernel (tuner/codegen/emit.py).

Where the operands come from, as the kernel's layouts have them:
- A is row-major (its root-padded copy where the last dot group overhangs K): a tile is 16
  rows at A's row stride, from the block's first byte, read whole.
- B is packed in loop order (`LayoutRewrite`, tuner/ir/layout.py): the tile's columns and then
  the dot group innermost, inside the amx loop's 16 groups, so a column tile's group row is
  64 contiguous bytes, one group row after the other at the packed stride of `k.1`. The
  packing zero-fills the columns and groups a tile overhangs.
- Tiles at the matrix's edges: a row tile past the last row of A loads fewer rows (a shape
  computed at run time where the tile's extent is); a column tile, always the tile's own
  width (B's padding holds zeros there, and the write-back stores only the real columns).
  A shape computed at run time costs a tile configuration (`ldtilecfg`) where it changes,
  which LLVM's tile configuration passes insert; constant shapes are configured once.

The tile registers need the kernel's permission (Linux: arch_prctl(ARCH_REQ_XCOMP_PERM,
XFEATURE_XTILEDATA)), without which the first tile instruction raises SIGILL. Every process
that runs the code needs it, once; it is inherited by fork and dropped by exec, so a kernel
that uses AMX asks for it itself, on its first call in the process (`request_permission`):
the JIT, the measuring workers, a shared library's users and a package's loader need do
nothing. The code is what clang emits for the `_tile_*` intrinsics (LLVM's `.internal` forms,
the shapes as operands).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from llvmlite import ir

from tuner.codegen.irutil import (I8, I16, I64, PTR, VOID, Lin, carried_loop, elem_ptr, intrinsic,
                                  masked_load, materialize)
from tuner.errors import ScheduleError
from tuner.ir.machine import AMX_GROUP_BYTES, AMX_TILE_BYTES, AMX_TILE_COLUMNS, AMX_TILE_ROWS

SYS_ARCH_PRCTL = 158           # x86-64 Linux
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18
INT32_BYTES = 4


class _TileType(ir.Type):
    """LLVM's `x86_amx`, a tile register's value: only ever an SSA value (llvmlite has no
    such type)."""

    def _to_string(self) -> str:
        return "x86_amx"

    def __eq__(self, other) -> bool:
        return isinstance(other, _TileType)

    def __hash__(self) -> int:
        return hash("x86_amx")


TILE = _TileType()


def _intrinsics(module: ir.Module) -> dict[str, ir.Function]:
    return {
        "zero": intrinsic(module, "llvm.x86.tilezero.internal", TILE, [I16, I16]),
        "load": intrinsic(module, "llvm.x86.tileloadd64.internal", TILE, [I16, I16, PTR, I64]),
        "store": intrinsic(module, "llvm.x86.tilestored64.internal", VOID,
                           [I16, I16, PTR, I64, TILE]),
        "dot": intrinsic(module, "llvm.x86.tdpbusd.internal", TILE,
                         [I16, I16, I16, TILE, TILE, TILE]),
    }


def uses_amx(nest) -> bool:
    return any(loop.kind == "amx" for loop in nest.loops)


def request_permission(b: ir.IRBuilder) -> None:
    """On the first call in this process, ask Linux for the tile registers. The flag is
    written after the call, so two threads may both ask: the request is idempotent."""
    module = b.module
    flag = module.globals.get("tuner.amx_permitted")
    if flag is None:
        flag = ir.GlobalVariable(module, I8, "tuner.amx_permitted")
        flag.linkage = "internal"
        flag.initializer = ir.Constant(I8, 0)
    syscall = module.globals.get("syscall")
    if syscall is None:
        syscall = ir.Function(module, ir.FunctionType(I64, [I64], var_arg=True), "syscall")
    asked = b.icmp_unsigned("!=", b.load(flag, typ=I8), ir.Constant(I8, 0))
    with b.if_then(b.not_(asked), likely=False):
        b.call(syscall, [ir.Constant(I64, SYS_ARCH_PRCTL), ir.Constant(I64, ARCH_REQ_XCOMP_PERM),
                         ir.Constant(I64, XFEATURE_XTILEDATA)])
        b.store(ir.Constant(I8, 1), flag)


def headroom(nest) -> int:
    """Elements of the local tile allocated before its first row: a last row tile shifted
    back by up to a tile's rows (`_starts`) stores its rows there."""
    tile = [loop for loop in nest.tile_loops if not loop.reduce]
    return AMX_TILE_ROWS * next(loop.extent for loop in tile if loop.parts[0].axis == "j"
                                and loop.extent > 1)


def _starts(b: ir.IRBuilder, extent: int, tile: int, left) -> list:
    """Where the tiles of `tile` rows (columns) start in a register tile of `extent` with
    `left` of them real (an int, or a value at run time). The last tile is shifted back to
    end at the last real one, overlapping its neighbour, whose sums it recomputes: every tile
    has one shape, so the 8 tile registers are not split among shapes (LLVM configures them
    once per function, so tiles of two shapes never share one: a 17-row tile as 16 + 1 rows
    ran its allocation out of registers)."""
    starts = []
    for first in range(0, extent, tile):
        if isinstance(left, int):
            starts.append(min(first, left - tile))
            continue
        last = b.sub(left, ir.Constant(I64, tile))
        starts.append(b.select(b.icmp_signed("<", last, ir.Constant(I64, first)), last,
                               ir.Constant(I64, first)))
    return starts


@dataclass(frozen=True)
class _Shape:
    """The one shape of every tile of a kernel: rows, and bytes of a row of sums or of B."""
    rows: ir.Constant
    bytes: ir.Constant


def emit_tile(em, fn, ctx) -> None:
    """The tile's int32 sums over the whole reduction, stored row-major into `ctx.acc`
    (which has `headroom` elements before it)."""
    dag, nest, b = em.dag, em.nest, fn.b
    ops = _intrinsics(b.module)
    tile = nest.tile_loops
    spatial = [loop for loop in tile if not loop.reduce and loop.extent > 1]
    row_loop = next((loop for loop in spatial if loop.parts[0].axis == "i"), None)
    col_loop = next(loop for loop in spatial if loop.parts[0].axis == "j")
    rows = row_loop.extent if row_loop is not None else 1
    columns = col_loop.extent

    # every loop of the tile entered at its first index: the tile's origin
    origin = ctx
    for loop in tile:
        for part in loop.parts:
            origin = origin.enter(part, Lin(), origin.rem[part.axis])
    origin = replace(origin, vec=None, vec_rem=None)

    a_acc, b_acc, out = em.accesses[dag.lhs.name], em.accesses[dag.rhs.name], ctx.acc
    if a_acc.guards or a_acc.flat.coef("k") != AMX_GROUP_BYTES or \
            a_acc.flat.coef(dag.dot_axis) != 1:
        raise ScheduleError(f"amx: {dag.lhs.name!r} is not read as whole rows of dot groups")
    a_row = a_acc.flat.coef("i")
    strides = b_acc.strides
    col_key = (col_loop.parts[0].axis, col_loop.parts[0].level)
    if strides.get((dag.dot_axis, 0)) != 1 or strides.get(col_key) != AMX_GROUP_BYTES:
        raise ScheduleError(f"amx: packed {dag.rhs.name!r} does not hold each group row's "
                            f"columns x 4 bytes contiguous")
    b_row, b_block = strides[("k", 1)], strides[("k", 0)]
    out_row = out.strides[(row_loop.parts[0].axis, row_loop.parts[0].level)] \
        if row_loop is not None else columns
    if out.strides[col_key] != 1:
        raise ScheduleError("amx: the local tile is not row-major")

    # a matrix of fewer than 16 rows (columns) has tiles of that many, all others 16; the
    # rows left come from the loops (the last tile's are M's remainder), the columns are the
    # tile's own: B's packing is zero-filled to whole tiles
    tile_rows = min(AMX_TILE_ROWS, dag.axis("i").extent)
    width = min(AMX_TILE_COLUMNS, dag.axis("j").extent)
    row_starts = _starts(b, rows, tile_rows, ctx.rem["i"])
    col_starts = _starts(b, columns, width, columns)
    shape = _Shape(ir.Constant(I16, tile_rows), ir.Constant(I16, width * INT32_BYTES))

    a_base, b_base = em._offset(origin, a_acc), em._offset(origin, b_acc)

    def at(base: Lin, start, stride: int) -> Lin:
        if isinstance(start, int):
            return base + start * stride
        return base + Lin(((b.mul(start, ir.Constant(I64, stride)), 1),), 0)

    def pointer(name: str, offset: Lin, etype=I8) -> ir.Value:
        return elem_ptr(b, fn.ptrs[name], materialize(b, offset), etype)

    a_rows = [pointer(dag.lhs.name, at(a_base, start, a_row)) for start in row_starts]
    b_columns = [at(b_base, start, AMX_GROUP_BYTES) for start in col_starts]
    groups_per_block = AMX_TILE_BYTES // AMX_GROUP_BYTES
    whole, tail = divmod(dag.axis("k").extent, groups_per_block)

    def block(sums: list, index, a_tiles_at) -> list:
        """`sums` plus the products of reduction block `index`, A's tiles read from
        `a_tiles_at` (pointer, row stride) per row tile."""
        block_lin = Lin(((index, 1),), 0) if isinstance(index, ir.Value) else Lin((), index)
        b_tiles = [b.call(ops["load"], [ir.Constant(I16, groups_per_block), shape.bytes,
                                        pointer(dag.rhs.name, base + block_lin.scale(b_block)),
                                        ir.Constant(I64, b_row)])
                   for base in b_columns]
        out_sums = []
        for r, (a_ptr, a_stride) in enumerate(a_tiles_at):
            # one A tile at a time: the accumulators, the B tiles and one A tile are live
            a_tile = b.call(ops["load"], [shape.rows, ir.Constant(I16, AMX_TILE_BYTES), a_ptr,
                                          ir.Constant(I64, a_stride)])
            for c, b_tile in enumerate(b_tiles):
                out_sums.append(b.call(ops["dot"], [
                    shape.rows, shape.bytes, ir.Constant(I16, AMX_TILE_BYTES),
                    sums[r * len(b_tiles) + c], a_tile, b_tile]))
        return out_sums

    sums = [b.call(ops["zero"], [shape.rows, shape.bytes])
            for _ in row_starts for _ in col_starts]
    if whole:
        # the accumulators are carried through the loop as SSA values: tile registers
        def step(index: ir.Value, carried: list) -> list:
            offset = b.mul(index, ir.Constant(I64, AMX_TILE_BYTES))
            return block(carried, index, [(b.gep(p, [offset], source_etype=I8), a_row)
                                          for p in a_rows])
        sums = carried_loop(b, whole, sums, step, "amx.k")
    if tail:
        sums = block(sums, whole, [(_tail_copy(b, fn, p, whole, tail, tile_rows, a_row),
                                    AMX_TILE_BYTES) for p in a_rows])
    for r, row_start in enumerate(row_starts):
        for c, col_start in enumerate(col_starts):
            offset = at(at(em._offset(origin, out), row_start, out_row), col_start, 1)
            b.call(ops["store"], [shape.rows, shape.bytes, pointer(out.ptr, offset, out.etype),
                                  ir.Constant(I64, out_row * INT32_BYTES),
                                  sums[r * len(col_starts) + c]])


def _tail_copy(b: ir.IRBuilder, fn, a_ptr: ir.Value, whole: int, tail: int, rows: int,
               a_row: int) -> ir.Value:
    """The last reduction block of a row tile's A (`tail` dot groups of its 16) copied to a
    tile of 64-byte rows on the stack, zero past them: the tile then has the shape of the
    others (B's packing holds zeros there), and no row is read past A's end."""
    copy = fn.alloca(ir.ArrayType(I8, rows * AMX_TILE_BYTES))
    mask = ir.Constant(ir.VectorType(ir.IntType(1), AMX_TILE_BYTES),
                       [i < tail * AMX_GROUP_BYTES for i in range(AMX_TILE_BYTES)])
    for row in range(rows):
        src = b.gep(a_ptr, [ir.Constant(I64, row * a_row + whole * AMX_TILE_BYTES)],
                    source_etype=I8)
        values = masked_load(b, src, mask, AMX_TILE_BYTES, I8,
                             ir.Constant(ir.VectorType(I8, AMX_TILE_BYTES), [0] * AMX_TILE_BYTES))
        dst = b.gep(copy, [ir.Constant(I64, row * AMX_TILE_BYTES)], source_etype=I8)
        b.store(values, dst, align=1)
    return copy
