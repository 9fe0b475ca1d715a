"""Code generation: a loop nest to LLVM IR to machine code.

    emit.py        LoopNest -> LLVM IR (explicit vectors, unrolling, tails, OpenMP)
    irutil.py      symbolic indices and IR helpers
    quantized.py   int8 kernels: the dot-product instruction (vpdpbusd / vpmaddwd), the
                   requantizing epilogue
    vmath.py       float32 exp, erf, tanh, GELU as branch-free IR (epilogues, rows)
    jit.py         IR -> machine code; CompiledKernel, callable on numpy arrays
    pseudo.py      LoopNest -> readable pseudo-code
"""
