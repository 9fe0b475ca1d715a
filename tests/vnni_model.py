"""VNNI's `vpdpbusd` modelled in plain LLVM IR, so that the int8 kernels made for a VNNI CPU run,
and are checked against numpy, on a CPU without it.

A kernel for a VNNI CPU differs from the others in its layouts (the weight packed as groups of
4 bytes per output lane, the activation broadcast or interleaved into such groups:
tuner/codegen/quantized.py) and in one instruction, the intrinsic
`llvm.x86.avx512.vpdpbusd.{128,256,512}(acc, a, b)`: to each int32 lane of `acc` it adds the
four products of that lane's bytes of `a` (unsigned) and `b` (signed), as Intel defines it
(`_mm256_dpbusd_epi32(src, a, b)`: the 16-bit products are exact, their sum with the
accumulator wraps in 32 bits). `modelled_vnni_kernel` replaces each call by the same
arithmetic in plain IR (extend, multiply, add the four) and compiles the kernel for this host,
everything else as generated: LLVM splits its 512-bit vectors into 256-bit ones on AVX2. What
that checks is ours (the layouts, the reads, the epilogue); the instruction's selection is
LLVM's, checked by the assembly tests where the host cannot run it.

Code for an AVX-512 CPU narrows int32 lanes to bytes with vpmovdb
(`llvm.x86.avx512.mask.pmov.db.{128,256,512}`, tuner.codegen.irutil.low_bytes), which a host
without AVX-512 cannot select: it is modelled too (the low byte of each lane).

The kernels of a task whose operands are centered (tuner.ir.dag.Quantization.centered) sum
int16 pairs with `llvm.x86.avx512.vpdpwssd.{128,256,512}(acc, a, b)` on VNNI CPUs (each int32
lane of `acc` plus the two products of that lane's int16 halves of `a` and `b`) and, where
LLVM keeps one apart, the 512-bit `llvm.x86.avx512.pmaddw.d.512(a, b)` (AVX512BW's
vpmaddwd, the same without `acc`): both are modelled the same way.
"""

from __future__ import annotations

import re

from llvmlite import ir

from tuner.codegen.emit import emit_llvm
from tuner.codegen.jit import CompiledKernel, compile_ir_object
from tuner.ir.schedule import LoopNest
from tuner.ir.target import Target, host_target

I8, I16, I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
LANES_BY_BITS = {128: 4, 256: 8, 512: 16}


def model_function(bits: int) -> str:
    """The IR of `vpdpbusd_model.<bits>(acc, a, b)`, the instruction's arithmetic."""
    lanes = LANES_BY_BITS[bits]
    module = ir.Module()
    vector = ir.VectorType(I32, lanes)
    function = ir.Function(module, ir.FunctionType(vector, [vector] * 3),
                           name=f"vpdpbusd_model.{bits}")
    function.linkage = "internal"
    b = ir.IRBuilder(function.append_basic_block("entry"))
    acc, a, w = function.args
    as_bytes, wide = ir.VectorType(I8, 4 * lanes), ir.VectorType(I32, 4 * lanes)
    products = b.mul(b.zext(b.bitcast(a, as_bytes), wide), b.sext(b.bitcast(w, as_bytes), wide))
    total = acc
    for byte in range(4):
        pick = ir.Constant(ir.VectorType(I32, lanes), [4 * lane + byte for lane in range(lanes)])
        total = b.add(total, b.shuffle_vector(products, ir.Constant(wide, ir.Undefined), pick))
    b.ret(total)
    return str(function)


def pair_model_function(lanes: int, accumulate: bool) -> str:
    """The IR of `vpdpwssd_model.<bits>(acc, a, b)` (`accumulate`, int32 vectors) or
    `pmaddwd_model.<bits>(a, b)` (int16 vectors): `lanes` int32 lanes, each
    a[2l] b[2l] + a[2l+1] b[2l+1] of the int16 halves of `a` and `b` (plus acc[l])."""
    module = ir.Module()
    words, out = ir.VectorType(I16, 2 * lanes), ir.VectorType(I32, lanes)
    name = f"{'vpdpwssd' if accumulate else 'pmaddwd'}_model.{32 * lanes}"
    args = [out] * 3 if accumulate else [words] * 2
    function = ir.Function(module, ir.FunctionType(out, args), name=name)
    function.linkage = "internal"
    b = ir.IRBuilder(function.append_basic_block("entry"))
    wide = ir.VectorType(I32, 2 * lanes)
    a, w = (b.bitcast(v, words) for v in function.args[-2:])
    products = b.mul(b.sext(a, wide), b.sext(w, wide))
    halves = [b.shuffle_vector(products, ir.Constant(wide, ir.Undefined), ir.Constant(
        ir.VectorType(I32, lanes), [2 * lane + first for lane in range(lanes)]))
        for first in (0, 1)]
    total = b.add(*halves)
    b.ret(b.add(function.args[0], total) if accumulate else total)
    return str(function)


def _replaced(ir_text: str, name: str, model: str, model_ir) -> str:
    """`ir_text` with the intrinsic `name` declared and called as the function `model`."""
    if name not in ir_text:
        return ir_text
    ir_text = re.sub(rf"^declare .*@\"?{re.escape(name)}\"?\(.*$", "", ir_text,
                     flags=re.MULTILINE)
    ir_text = ir_text.replace(f'@"{name}"', f'@"{model}"').replace(f"@{name}", f'@"{model}"')
    return ir_text + "\n" + model_ir()


def pmov_model_function(lanes: int) -> str:
    """The IR of `pmovdb_model.<bits>(v, passthru, mask)`: AVX-512's `vpmovdb` with every
    lane selected, as our code calls it (tuner.codegen.irutil.low_bytes): the low byte of
    each of `lanes` int32 lanes, in the first bytes of a 16-byte vector, zeros after."""
    module = ir.Module()
    bytes16 = ir.VectorType(I8, 16)
    function = ir.Function(module, ir.FunctionType(bytes16, [
        ir.VectorType(I32, lanes), bytes16, ir.IntType(max(8, lanes))]),
        name=f"pmovdb_model.{32 * lanes}")
    function.linkage = "internal"
    b = ir.IRBuilder(function.append_basic_block("entry"))
    low = b.trunc(function.args[0], ir.VectorType(I8, lanes))
    if lanes < 16:
        low = b.shuffle_vector(low, ir.Constant(low.type, [0] * lanes), ir.Constant(
            ir.VectorType(I32, 16), [i if i < lanes else lanes for i in range(16)]))
    b.ret(low)
    return str(function)


def with_modelled_pmov(ir_text: str) -> str:
    """`ir_text` with AVX-512's vpmovdb (`llvm.x86.avx512.mask.pmov.db.*`) modelled."""
    for lanes in (4, 8, 16):
        ir_text = _replaced(ir_text, f"llvm.x86.avx512.mask.pmov.db.{32 * lanes}",
                            f"pmovdb_model.{32 * lanes}", lambda: pmov_model_function(lanes))
    return ir_text


def with_modelled_vpdpbusd(ir_text: str) -> str:
    """`ir_text` with every vpdpbusd and vpdpwssd intrinsic replaced by its model
    (`model_function`, `pair_model_function`), and the 512-bit vpmaddwd too."""
    for bits, lanes in LANES_BY_BITS.items():
        ir_text = _replaced(ir_text, f"llvm.x86.avx512.vpdpbusd.{bits}",
                            f"vpdpbusd_model.{bits}", lambda: model_function(bits))
        ir_text = _replaced(ir_text, f"llvm.x86.avx512.vpdpwssd.{bits}",
                            f"vpdpwssd_model.{bits}", lambda: pair_model_function(lanes, True))
    ir_text = _replaced(ir_text, "llvm.x86.avx512.pmaddw.d.512", "pmaddwd_model.512",
                        lambda: pair_model_function(16, False))
    return with_modelled_pmov(ir_text)


def modelled_vnni_kernel(nest: LoopNest, target: Target) -> CompiledKernel:
    """The kernel `target` (a VNNI CPU) gets, its vpdpbusd modelled, compiled for this host."""
    ir_text = with_modelled_vpdpbusd(str(emit_llvm(nest, target, "kernel")))
    for name in ("vpdpbusd.", "vpdpwssd."):
        assert name not in ir_text.replace(name.replace(".", "_model."), "")
    assert "pmaddw.d.512" not in ir_text
    return CompiledKernel(nest, target, obj=compile_ir_object(ir_text,
                                                              host_target(target.threads)))
