"""Which vector ISA LLVM generates for a named CPU, read off the code it generates.

    python -m tuner.ir.cpu_probe znver3     ->  ["+avx", "+avx2", "+fma", "-avx512f"]

llvmlite exposes no query for the features of a CPU name, so a small function that would use
each feature is compiled for that CPU and its assembly is read: a 16-lane float add on zmm
registers means AVX-512, an 8-lane float add on ymm means AVX, an 8-lane integer add on ymm
means AVX2, a vfmadd instruction means FMA, and a sum of uint8 x int8 products that LLVM
turns into `vpdpbusd` means VNNI: AVX512-VNNI, or AVX-VNNI where it is VEX-encoded
(`{vex} vpdpbusd`). The VNNI flags are listed only where present, so that the feature string,
and with it the target key of the records, of every CPU without VNNI stays what it was. Run as its own process: LLVM ends the process on
a CPU name it does not know ("64-bit code requested on a subtarget that doesn't support it"),
and prints a warning to the C stderr first; the parent treats any failure as an unknown name.
"""

from __future__ import annotations

import json
import sys

PROBE_IR = """
define void @probe(ptr noalias %p, ptr noalias %q, ptr noalias %r, ptr noalias %s) {
  %a = load <16 x float>, ptr %p
  %a2 = load <16 x float>, ptr %q
  %b = fadd <16 x float> %a, %a2
  store <16 x float> %b, ptr %p
  %c = load <8 x float>, ptr %r
  %c2 = load <8 x float>, ptr %s
  %d = fadd <8 x float> %c, %c2
  store <8 x float> %d, ptr %r
  %e = load <8 x i32>, ptr %q
  %e2 = load <8 x i32>, ptr %s
  %f = add <8 x i32> %e, %e2
  store <8 x i32> %f, ptr %q
  %g = load <4 x float>, ptr %s
  %g2 = load <4 x float>, ptr %p
  %h = call <4 x float> @llvm.fma.v4f32(<4 x float> %g, <4 x float> %g2, <4 x float> %g)
  store <4 x float> %h, ptr %s
  ret void
}
declare <4 x float> @llvm.fma.v4f32(<4 x float>, <4 x float>, <4 x float>)

define void @dot(ptr noalias %p, ptr noalias %q, ptr noalias %r) {
  %a = load <32 x i8>, ptr %p
  %b = load <32 x i8>, ptr %q
  %za = zext <32 x i8> %a to <32 x i32>
  %sb = sext <32 x i8> %b to <32 x i32>
  %m = mul <32 x i32> %za, %sb
  %s = call i32 @llvm.vector.reduce.add.v32i32(<32 x i32> %m)
  store i32 %s, ptr %r
  ret void
}
declare i32 @llvm.vector.reduce.add.v32i32(<32 x i32>)
"""


AMX_PROBE_IR = """
define void @tile(ptr %p) {
  %a = call x86_amx @llvm.x86.tileloadd64.internal(i16 16, i16 64, ptr %p, i64 64)
  %c = call x86_amx @llvm.x86.tdpbusd.internal(i16 16, i16 64, i16 64, x86_amx %a, x86_amx %a,
                                               x86_amx %a)
  call void @llvm.x86.tilestored64.internal(i16 16, i16 64, ptr %p, i64 64, x86_amx %c)
  ret void
}
declare x86_amx @llvm.x86.tileloadd64.internal(i16, i16, ptr, i64)
declare x86_amx @llvm.x86.tdpbusd.internal(i16, i16, i16, x86_amx, x86_amx, x86_amx)
declare void @llvm.x86.tilestored64.internal(i16, i16, ptr, i64, x86_amx)
"""


def probe_amx(cpu: str) -> list[str]:
    """The AMX int8 features of `cpu` where LLVM compiles a tile product for it: `tdpbusd` in
    its assembly. Run as its own process too: for a CPU without AMX, LLVM cannot select the
    tile instructions and ends the process, which the parent reads as no AMX."""
    from tuner.ir.llvm_init import llvm

    target = llvm.Target.from_triple(llvm.get_process_triple())
    tm = target.create_target_machine(cpu=cpu, features="", opt=2)
    module = llvm.parse_assembly(AMX_PROBE_IR)
    module.verify()
    return ["+amx-int8", "+amx-tile"] if "tdpbusd" in tm.emit_assembly(module) else []


def probe(cpu: str) -> list[str]:
    from tuner.ir.llvm_init import llvm

    target = llvm.Target.from_triple(llvm.get_process_triple())
    tm = target.create_target_machine(cpu=cpu, features="", opt=2)
    module = llvm.parse_assembly(PROBE_IR)
    module.verify()
    asm = tm.emit_assembly(module)
    lines = [line.split() for line in asm.splitlines()]
    ops = [(words[0], " ".join(words[1:])) for words in lines if words]
    has = {
        "avx512f": any(op.startswith("vaddps") and "zmm" in args for op, args in ops),
        "avx": any(op.startswith("vaddps") and "ymm" in args for op, args in ops)
        or any("zmm" in args for _, args in ops),
        "avx2": any(op.startswith("vpaddd") and ("ymm" in args or "zmm" in args)
                    for op, args in ops),
        "fma": any(op.startswith("vfmadd") for op, _ in ops),
    }
    features = [("+" if on else "-") + name for name, on in has.items()]
    dot = [line for line in asm.splitlines() if "vpdpbusd" in line]
    if dot:
        features.append("+avxvnni" if any("{vex}" in line for line in dot) else "+avx512vnni")
    return sorted(features)


if __name__ == "__main__":
    if sys.argv[1] == "--amx":
        print(json.dumps(probe_amx(sys.argv[2])))
    else:
        print(json.dumps(probe(sys.argv[1])))
