"""Small helpers for emitting LLVM IR with llvmlite: symbolic linear indices, loops, vectors.

Index arithmetic is kept symbolic (`Lin`: a sum of IR values times Python integers plus a
constant) until an access needs it, so the loop variables of unrolled loops, which are Python
integers, fold into constant offsets and every unrolled copy of a body shares one dynamic base
that GVN merges: the generated IR is already in the shape that reaches peak, so a light pass
pipeline suffices (tuner/codegen/emit.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from llvmlite import ir

F32 = ir.FloatType()
I1 = ir.IntType(1)
I8 = ir.IntType(8)
I16 = ir.IntType(16)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
PTR = ir.PointerType()
VOID = ir.VoidType()


@dataclass(frozen=True, slots=True)
class Lin:
    terms: tuple[tuple[ir.Value, int], ...] = ()
    const: int = 0

    def __add__(self, other: "Lin | int") -> "Lin":
        if isinstance(other, int):
            return Lin(self.terms, self.const + other)
        terms = list(self.terms)
        for value, coef in other.terms:
            for k, (v, c) in enumerate(terms):
                if v is value:
                    terms[k] = (v, c + coef)
                    break
            else:
                terms.append((value, coef))
        return Lin(tuple((v, c) for v, c in terms if c), self.const + other.const)

    def scale(self, k: int) -> "Lin":
        if k == 0:
            return Lin()
        return Lin(tuple((v, c * k) for v, c in self.terms), self.const * k)


def var(value: ir.Value) -> Lin:
    return Lin(((value, 1),), 0)


def materialize(b: ir.IRBuilder, lin: Lin) -> ir.Value:
    """The i64 value of `lin`. The dynamic part is computed once per basic block and reused
    (a value dominates the rest of its block), so the hundreds of unrolled bodies of a
    register tile share one address computation instead of leaving GVN to merge them."""
    if not lin.terms:
        return ir.Constant(I64, lin.const)
    cache = b.__dict__.setdefault("_lin_cache", {})
    key = (id(b.block), tuple((id(v), c) for v, c in lin.terms))
    acc = cache.get(key)
    if acc is None:
        for value, coef in lin.terms:
            term = value if coef == 1 else b.mul(value, ir.Constant(I64, coef))
            acc = term if acc is None else b.add(acc, term)
        cache[key] = acc
    return b.add(acc, ir.Constant(I64, lin.const)) if lin.const else acc


def as_value(x: "int | ir.Value") -> ir.Value:
    return ir.Constant(I64, x) if isinstance(x, int) else x


def smin(b: ir.IRBuilder, x: "int | ir.Value", y: "int | ir.Value") -> ir.Value:
    x, y = as_value(x), as_value(y)
    return b.select(b.icmp_signed("<", x, y), x, y)


def ceil_div(b: ir.IRBuilder, x: "int | ir.Value", d: int) -> "int | ir.Value":
    if isinstance(x, int):
        return -(-x // d)
    return b.sdiv(b.add(x, ir.Constant(I64, d - 1)), ir.Constant(I64, d))


def runtime_loop(b: ir.IRBuilder, start, stop, body, name: str = "l") -> None:
    """for (v = start; v < stop; ++v) body(v): a plain counted loop LLVM's passes recognise."""
    func = b.function
    pre = b.block
    head = func.append_basic_block(f"{name}.head")
    loop = func.append_basic_block(f"{name}.body")
    done = func.append_basic_block(f"{name}.end")
    b.branch(head)
    b.position_at_end(head)
    phi = b.phi(I64, name=name)
    phi.add_incoming(as_value(start), pre)
    b.cbranch(b.icmp_signed("<", phi, as_value(stop)), loop, done)
    b.position_at_end(loop)
    body(phi)
    phi.add_incoming(b.add(phi, ir.Constant(I64, 1)), b.block)
    b.branch(head)
    b.position_at_end(done)


def carried_loop(b: ir.IRBuilder, trips: int, state: list[ir.Value],
                 body: Callable[[ir.Value, list[ir.Value]], list[ir.Value]],
                 name: str = "carried") -> list[ir.Value]:
    """for (i = 0; i < trips; ++i) state = body(i, state), the state in phis (vectors, or
    AMX tiles, which live only in SSA values); the state after the last trip (trips >= 1)."""
    if trips == 1:
        return body(ir.Constant(I64, 0), state)
    function, pre = b.function, b.block
    head = function.append_basic_block(f"{name}.head")
    loop = function.append_basic_block(f"{name}.body")
    done = function.append_basic_block(f"{name}.end")
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(I64, name=name)
    i.add_incoming(ir.Constant(I64, 0), pre)
    phis = []
    for value in state:
        phi = b.phi(value.type)
        phi.add_incoming(value, pre)
        phis.append(phi)
    b.cbranch(b.icmp_signed("<", i, ir.Constant(I64, trips)), loop, done)
    b.position_at_end(loop)
    after = body(i, phis)
    i.add_incoming(b.add(i, ir.Constant(I64, 1)), b.block)
    for phi, value in zip(phis, after):
        phi.add_incoming(value, b.block)
    b.branch(head)
    b.position_at_end(done)
    return phis


def vec_type(width: int, etype: ir.Type = F32) -> ir.VectorType:
    return ir.VectorType(etype, width)


def type_name(t: ir.Type) -> str:
    """The suffix LLVM's overloaded intrinsics use for `t`: f32, i8, v8f32, v16i8."""
    if isinstance(t, ir.VectorType):
        return f"v{t.count}{type_name(t.element)}"
    return "f32" if t == F32 else f"i{t.width}"


def byte_size(t: ir.Type) -> int:
    """Bytes of one element of type `t` (a scalar)."""
    return 4 if t == F32 else t.width // 8


def splat(b: ir.IRBuilder, value: ir.Value, width: int) -> ir.Value:
    vt = ir.VectorType(value.type, width)
    one = b.insert_element(ir.Constant(vt, ir.Undefined), value, ir.Constant(I32, 0))
    return b.shuffle_vector(one, ir.Constant(vt, ir.Undefined),
                            ir.Constant(ir.VectorType(I32, width), [0] * width))


def lane_offsets(width: int, stride: int) -> ir.Constant:
    return ir.Constant(ir.VectorType(I64, width), [stride * lane for lane in range(width)])


def elem_ptr(b: ir.IRBuilder, base: ir.Value, offset: ir.Value,
             etype: ir.Type = F32) -> ir.Value:
    return b.gep(base, [offset], source_etype=etype)


def intrinsic(module: ir.Module, name: str, ret, args) -> ir.Function:
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(ret, args), name=name)
    return fn


def outlined_function(module: ir.Module, name: str) -> ir.Function:
    """`void name(ptr)`, internal: a body that `gomp_parallel` runs on every thread."""
    function = ir.Function(module, ir.FunctionType(VOID, [PTR]), name=name)
    function.linkage = "internal"
    function.type = PTR  # passed as a plain `ptr`; llvmlite would print a typed function pointer
    return function


def gomp_parallel(b: ir.IRBuilder, outlined: ir.Function, data: ir.Value,
                  pointers: list[ir.Value], threads: int) -> None:
    """Stores `pointers` in `data` (an array of as many `ptr` in the caller's frame) and runs
    `outlined(data)` on `threads` threads: libgomp's GOMP_parallel, which returns when all
    have (`shared_pointers` and `static_block` are the outlined side)."""
    for i, pointer in enumerate(pointers):
        b.store(pointer, b.gep(data, [ir.Constant(I64, i)], source_etype=PTR))
    gomp = intrinsic(b.module, "GOMP_parallel", VOID, [PTR, PTR, I32, I32])
    b.call(gomp, [outlined, data, ir.Constant(I32, threads), ir.Constant(I32, 0)])


def shared_pointers(b: ir.IRBuilder, outlined: ir.Function, count: int) -> list[ir.Value]:
    """Inside `outlined`: the `count` pointers `gomp_parallel` passed it."""
    return [b.load(b.gep(outlined.args[0], [ir.Constant(I64, i)], source_etype=PTR), typ=PTR)
            for i in range(count)]


def static_block(b: ir.IRBuilder, trips: int) -> tuple[ir.Value, ir.Value]:
    """Inside a function `gomp_parallel` runs: this thread's block [lo, hi) of range(trips),
    the threads' blocks splitting it evenly in thread order."""
    module = b.module
    tid = b.sext(b.call(intrinsic(module, "omp_get_thread_num", I32, []), []), I64)
    nthr = b.sext(b.call(intrinsic(module, "omp_get_num_threads", I32, []), []), I64)
    count = ir.Constant(I64, trips)
    lo = b.sdiv(b.mul(tid, count), nthr)
    hi = b.sdiv(b.mul(b.add(tid, ir.Constant(I64, 1)), count), nthr)
    return lo, hi


def _transpose_side(rows: int, width: int) -> int:
    return 1 << (max(rows, width) - 1).bit_length()


def transpose_shuffles(rows: int, width: int) -> int:
    """The shuffles `transpose` emits for `rows` vectors of `width` lanes: n * log2(n)."""
    side = _transpose_side(rows, width)
    return side * (side.bit_length() - 1)


def transpose(b: ir.IRBuilder, rows: list[ir.Value], width: int) -> list[ir.Value]:
    """Columns of a matrix given as rows (vectors of `width` lanes each): column j as a vector
    of len(rows) lanes. Padded to n x n (n a power of two) and transposed with two-input
    shuffles in log2(n) rounds, each round swapping one bit of the row index with the same
    bit of the column index: n * log2(n) shuffles (`transpose_shuffles`), where a lane at a
    time takes len(rows) * width extracts and inserts."""
    count = len(rows)
    n = _transpose_side(count, width)

    def resize(v: ir.Value, have: int, want: int) -> ir.Value:
        if have == want:
            return v
        mask = ir.Constant(ir.VectorType(I32, want), [min(i, have - 1) for i in range(want)])
        return b.shuffle_vector(v, v, mask)

    square = [resize(v, width, n) for v in rows]
    square += [ir.Constant(ir.VectorType(rows[0].type.element, n), ir.Undefined)] * (n - count)
    d = n // 2
    while d:
        low = ir.Constant(ir.VectorType(I32, n), [c if not c & d else n + c - d for c in range(n)])
        high = ir.Constant(ir.VectorType(I32, n), [c + d if not c & d else n + c for c in range(n)])
        for i in range(n):
            if not i & d:
                x, y = square[i], square[i + d]
                square[i], square[i + d] = b.shuffle_vector(x, y, low), b.shuffle_vector(x, y, high)
        d //= 2
    return [resize(v, n, count) for v in square[:width]]


def low_bytes(b: ir.IRBuilder, value: ir.Value, avx512: bool) -> ir.Value:
    """`value` (int32, a vector or a scalar) truncated to int8. On AVX-512 a vector is
    narrowed by `vpmovdb` (its intrinsic), not by `trunc`: LLVM 22 stores a `trunc` of
    int32 lanes to bytes, under a masked store it proves writes one lane, as a 4-byte
    `vmovd`, over the 3 bytes past it (another thread's, or past the buffer). The intrinsic
    is opaque to that combine, and its masked stores are still `vpmovdb` with a mask."""
    if not isinstance(value.type, ir.VectorType):
        return b.trunc(value, I8)
    count = value.type.count
    if not avx512:
        return b.trunc(value, ir.VectorType(I8, count))
    width = next(w for w in (4, 8, 16) if count <= w)
    if count != width:
        value = b.shuffle_vector(value, ir.Constant(value.type, ir.Undefined), ir.Constant(
            ir.VectorType(I32, width), [min(i, count - 1) for i in range(width)]))
    bytes16 = ir.VectorType(I8, 16)
    mask_type = ir.IntType(max(8, width))
    narrow = intrinsic(b.module, f"llvm.x86.avx512.mask.pmov.db.{32 * width}", bytes16,
                       [value.type, bytes16, mask_type])
    packed = b.call(narrow, [value, ir.Constant(bytes16, [0] * 16), ir.Constant(mask_type, -1)])
    return b.shuffle_vector(packed, ir.Constant(bytes16, ir.Undefined),
                            ir.Constant(ir.VectorType(I32, count), list(range(count))))


def fma(b: ir.IRBuilder, x, y, z) -> ir.Value:
    t = x.type
    suffix = f"v{t.count}f32" if isinstance(t, ir.VectorType) else "f32"
    return b.call(intrinsic(b.module, f"llvm.fma.{suffix}", t, [t, t, t]), [x, y, z])


def masked_load(b: ir.IRBuilder, ptr: ir.Value, mask: ir.Value, width: int,
                etype: ir.Type = F32, passthru: ir.Value | None = None) -> ir.Value:
    """A vector load of the lanes `mask` selects; the others are `passthru` (zeros)."""
    vt = vec_type(width, etype)
    fn = intrinsic(b.module, f"llvm.masked.load.{type_name(vt)}.p0", vt,
                   [PTR, I32, ir.VectorType(I1, width), vt])
    fill = ir.Constant(vt, None) if passthru is None else passthru
    return b.call(fn, [ptr, ir.Constant(I32, byte_size(etype)), mask, fill])


def masked_store(b: ir.IRBuilder, value: ir.Value, ptr: ir.Value, mask: ir.Value) -> None:
    vt = value.type
    fn = intrinsic(b.module, f"llvm.masked.store.{type_name(vt)}.p0", VOID,
                   [vt, PTR, I32, ir.VectorType(I1, vt.count)])
    b.call(fn, [value, ptr, ir.Constant(I32, byte_size(vt.element)), mask])


def relu(b: ir.IRBuilder, x: ir.Value, kind: int = 1) -> ir.Value:
    """max(x, 0), and for ReLU6 (`kind` 6, templates/_common.RELU_VALUES) min(that, 6)."""
    zero = ir.Constant(x.type, None)
    out = b.select(b.fcmp_ordered(">", x, zero), x, zero)
    if kind == 6:
        six = ir.Constant(x.type, [6.0] * x.type.count) if isinstance(x.type, ir.VectorType) \
            else ir.Constant(x.type, 6.0)
        out = b.select(b.fcmp_ordered("<", out, six), out, six)
    return out
