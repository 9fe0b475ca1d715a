"""AMX's tile instructions modelled in plain LLVM IR, so that the kernels made for an AMX CPU
run, and are checked against numpy, on a CPU without it (tests/vnni_model.py does the same
for vpdpbusd).

A kernel for an AMX CPU (tuner/codegen/amx.py) holds its register tile's sums in tile values
(LLVM's `x86_amx`) and uses four intrinsics, as Intel defines them (`_tile_loadd`,
`_tile_stored`, `_tile_zero`, `_tile_dpbusd`; the shapes are rows and bytes per row):
- `tileloadd64(rows, bytes, ptr, stride)`: `rows` rows of `bytes` bytes, `stride` bytes apart;
- `tilestored64(rows, bytes, ptr, stride, tile)`: the same rows written;
- `tilezero(rows, bytes)`: zeros;
- `tdpbusd(M, N, K, C, A, B)`: C[m][n] (int32, n < N / 4) plus the sum over k < K / 4 and
  q < 4 of A[m][4k + q] (uint8) times B[k][4n + q] (int8), wrapping in 32 bits.

AVX-512's vpmovdb, which the epilogue narrows with, is modelled as in tests/vnni_model.py.
`modelled_amx_kernel` gives a tile the type of 1 KiB of int32 lanes (a tile register's size,
16 rows of 64 bytes, row r at lane 16 r), replaces each call by a function doing the same
through memory in scalar loops, and compiles the kernel for this host. What that checks is
ours (the tiles' places, shapes and strides, the edge tiles, the reduction's tail, the
epilogue); the instructions' selection and the tile configuration are LLVM's, checked by the
assembly tests where the host cannot run them.
"""

from __future__ import annotations

import re

from llvmlite import ir

from tuner.codegen.emit import emit_llvm
from tuner.codegen.irutil import runtime_loop
from tuner.codegen.jit import CompiledKernel, compile_ir_object
from tuner.ir.schedule import LoopNest
from tuner.ir.target import Target, host_target
from vnni_model import with_modelled_pmov

I8, I16, I32, I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
PTR = ir.PointerType()
TILE_BYTES = 1024
TILE = ir.VectorType(I32, TILE_BYTES // 4)
BUFFER = ir.ArrayType(I8, TILE_BYTES)


def _function(module: ir.Module, name: str, ret, args) -> tuple[ir.Function, ir.IRBuilder]:
    function = ir.Function(module, ir.FunctionType(ret, args), name=name)
    function.linkage = "internal"
    return function, ir.IRBuilder(function.append_basic_block("entry"))


def _buffer(b: ir.IRBuilder) -> ir.Value:
    slot = b.alloca(BUFFER)
    slot.align = 64
    slot.type = PTR  # llvmlite still types allocas; the IR it prints is opaque anyway
    return slot


def _byte(b: ir.IRBuilder, base: ir.Value, offset: ir.Value) -> ir.Value:
    return b.gep(base, [offset], source_etype=I8)


def _copy_rows(b: ir.IRBuilder, rows, row_bytes, src, src_stride, dst, dst_stride) -> None:
    def row(r):
        def byte(c):
            value = b.load(_byte(b, src, b.add(b.mul(r, src_stride), c)), typ=I8)
            b.store(value, _byte(b, dst, b.add(b.mul(r, dst_stride), c)))
        runtime_loop(b, 0, row_bytes, byte)
    runtime_loop(b, 0, rows, row)


def model_ir() -> str:
    """The IR of the four models, `amx_model.load`, `.store`, `.zero` and `.dot`."""
    module = ir.Module()
    sixty_four = ir.Constant(I64, 64)

    load, b = _function(module, "amx_model.load", TILE, [I16, I16, PTR, I64])
    buffer = _buffer(b)
    b.store(ir.Constant(BUFFER, None), buffer, align=64)
    rows, row_bytes = (b.zext(a, I64) for a in load.args[:2])
    _copy_rows(b, rows, row_bytes, load.args[2], load.args[3], buffer, sixty_four)
    b.ret(b.load(buffer, typ=TILE, align=64))

    store, b = _function(module, "amx_model.store", ir.VoidType(), [I16, I16, PTR, I64, TILE])
    buffer = _buffer(b)
    b.store(store.args[4], buffer, align=64)
    rows, row_bytes = (b.zext(a, I64) for a in store.args[:2])
    _copy_rows(b, rows, row_bytes, buffer, sixty_four, store.args[2], store.args[3])
    b.ret_void()

    zero, b = _function(module, "amx_model.zero", TILE, [I16, I16])
    b.ret(ir.Constant(TILE, None))

    dot, b = _function(module, "amx_model.dot", TILE, [I16, I16, I16, TILE, TILE, TILE])
    c, a, w = (_buffer(b) for _ in range(3))
    for buffer, value in zip((c, a, w), dot.args[3:]):
        b.store(value, buffer, align=64)
    m_rows = b.zext(dot.args[0], I64)
    n_sums = b.udiv(b.zext(dot.args[1], I64), ir.Constant(I64, 4))
    k_groups = b.udiv(b.zext(dot.args[2], I64), ir.Constant(I64, 4))

    def row(m):
        def column(n):
            sum_ptr = _byte(b, c, b.add(b.mul(m, sixty_four), b.mul(n, ir.Constant(I64, 4))))

            def group(k):
                total = b.load(sum_ptr, typ=I32)
                for q in range(4):
                    x = b.load(_byte(b, a, b.add(b.mul(m, sixty_four),
                                                 b.add(b.mul(k, ir.Constant(I64, 4)),
                                                       ir.Constant(I64, q)))), typ=I8)
                    y = b.load(_byte(b, w, b.add(b.mul(k, sixty_four),
                                                 b.add(b.mul(n, ir.Constant(I64, 4)),
                                                       ir.Constant(I64, q)))), typ=I8)
                    total = b.add(total, b.mul(b.zext(x, I32), b.sext(y, I32)))
                b.store(total, sum_ptr)
            runtime_loop(b, 0, k_groups, group)
        runtime_loop(b, 0, n_sums, column)
    runtime_loop(b, 0, m_rows, row)
    b.ret(b.load(c, typ=TILE, align=64))
    return "\n".join(line for line in str(module).splitlines()
                     if not line.startswith(("target ", "; ModuleID", "source_filename")))


MODELLED = {"llvm.x86.tileloadd64.internal": "amx_model.load",
            "llvm.x86.tilestored64.internal": "amx_model.store",
            "llvm.x86.tilezero.internal": "amx_model.zero",
            "llvm.x86.tdpbusd.internal": "amx_model.dot"}


def with_modelled_amx(ir_text: str) -> str:
    """`ir_text` with its tiles as int32 vectors and every tile intrinsic replaced by its
    model (`model_ir`)."""
    for name, model in MODELLED.items():
        ir_text = re.sub(rf"^declare .*@\"?{re.escape(name)}\"?\(.*$", "", ir_text,
                         flags=re.MULTILINE)
        ir_text = ir_text.replace(f'@"{name}"', f'@"{model}"').replace(f"@{name}",
                                                                      f'@"{model}"')
    return with_modelled_pmov(ir_text.replace("x86_amx", str(TILE)) + "\n" + model_ir())


def modelled_amx_kernel(nest: LoopNest, target: Target) -> CompiledKernel:
    """The kernel `target` (an AMX CPU) gets, its tile instructions modelled, compiled for
    this host. Its request for the tile registers stays: a host without them refuses it,
    and the model needs none."""
    ir_text = with_modelled_amx(str(emit_llvm(nest, target, "kernel")))
    assert "x86_amx" not in ir_text and ".internal" not in ir_text
    return CompiledKernel(nest, target, obj=compile_ir_object(ir_text,
                                                              host_target(target.threads)))
