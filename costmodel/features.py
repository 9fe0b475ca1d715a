"""Features of a lowered loop nest, in the spirit of Ansor's (TVM auto_scheduler/feature.cc).

One fixed-length float vector per program, made of
- GLOBAL features (the whole program: work, parallelism, tails, register tile, allocations),
- LEVEL features for each of the innermost `LEVELS` loops of the compute statement, innermost
  first, zero where the nest is shallower: the loop's extent and annotation, and for each buffer
  (lhs, rhs, the accumulation target) the bytes and cache lines it touches inside that loop and
  how often each touched element is reused there, plus the arithmetic intensity of the subtree.

Every program has the same statements (one multiply-accumulate, one output pass), so a vector
per program needs no per-statement sum as Ansor's model does. All sizes enter as log2(1 + x):
trees split on ratios. Hardware enters through the machine model (tuner/ir/machine.py): vector
chunks in the target's lanes, register pressure against its register file, footprints against
its cache sizes, and the analytic estimate (costmodel/estimate.py), so that what the model
learns on one task and CPU carries over to the next. `FEATURE_NAMES` documents every entry; bump
`FEATURE_VERSION` whenever
the meaning of any entry changes, since saved models are only valid for their version.
"""

from __future__ import annotations

import math

import numpy as np

from costmodel.estimate import BUFFERS, buffer_stride, estimate_gflops, footprints
from tuner.ir.layout import (access_class, inline_guards, local_pad_bytes, root_pad_bytes,
                          tile_operand_registers, vector_chunks, vector_loop)
from tuner.ir.schedule import LoopNest
from tuner.ir.target import Target

FEATURE_VERSION = 8
LEVELS = 10
KINDS = ("serial", "parallel", "unroll", "vectorize", "dot", "amx")
GLOBAL_FEATURES = (
    ("flops", "log2 floating-point operations of the whole program"),
    ("loops", "number of loops in the compute nest"),
    ("vector_lanes", "lanes of the vectorized loop (0: scalar code)"),
    ("vector_chunks", "native vectors per vectorized iteration (lanes / machine lanes)"),
    ("unrolled_bodies", "log2 product of the extents of unrolled loops"),
    ("register_tile", "log2 floats of the accumulator tile when it is fully unrolled (registers)"),
    ("register_vectors", "accumulator vectors of the register tile, if any"),
    ("register_pressure", "(accumulator + operand vectors) / the machine's vector registers"),
    ("latency_cover", "accumulator vectors / (FMA issue rate x latency): < 1 is latency-bound"),
    ("estimate", "log2 GFLOPS of the analytic estimate (costmodel/estimate.py)"),
    ("machine_lanes", "float32 lanes of the machine's vectors"),
    ("machine_registers", "vector registers of the machine"),
    ("machine_flops_per_cycle", "FP32 flops per cycle per core of the machine"),
    ("local_tile", "log2 floats of the local accumulator (cache_write), 0 without one"),
    ("local_in_registers", "1 if every loop of the local tile is unrolled or vectorized"),
    ("reduction_inside_tile", "log2 reduction iterations per local tile (0 without one)"),
    ("parallel_extent", "log2 iterations of the parallel loop (0 without one)"),
    ("work_per_thread", "log2 flops per thread"),
    ("parallel_imbalance", "ceil(iterations / threads) * threads / iterations"),
    ("threads", "threads the program runs on"),
    ("tail_waste", "log2 of padded iteration space / real iteration space (tails)"),
    ("vector_tail", "1 if the vectorized loop's extent does not divide its axis' tile"),
    ("pad_inline", "1 if padded reads are bounds-checked in the inner loop"),
    ("pad_root", "log2 bytes of the padded copy made per call"),
    ("pad_local", "log2 bytes copied per call into the buffers of local padding"),
    ("packed_operands", "number of constant operands packed at build time"),
    ("lhs_stride", "log2(1+|stride|) of lhs along the innermost loop (0: broadcast)"),
    ("rhs_stride", "log2(1+|stride|) of rhs along the innermost loop (0: broadcast)"),
    ("acc_stride", "log2(1+|stride|) of the accumulation target along the innermost loop"),
    ("lhs_gather", "1 if lhs is read lane by lane in the vector loop (a stride that is not "
                   "0, 1 or loaded whole: tuner.ir.layout.access_class)"),
    ("rhs_gather", "1 if rhs is read lane by lane in the vector loop"),
    ("out_scatter", "1 if the output is written with a stride other than 1 in the vector loop"),
    ("output_bytes", "log2 bytes of the output"),
    ("epilogue_passes", "extra passes over the output (bias, residual and ReLU without "
                        "cache_write)"),
    ("int8", "1 for an int8 kernel (uint8 x int8 summed in int32), 0 for float32"),
    ("machine_int8_macs_per_cycle", "int8 multiply-accumulates per cycle per core of the "
                                    "machine's dot instruction (vpdpbusd or vpmaddwd)"),
    ("int8_bytes_unwidened", "1 where an int8 kernel's dot groups are multiplied as the "
                             "bytes are loaded (vpdpbusd; vpmaddubsw for weights of reduced "
                             "range), 0 where widened to int16 first (vpmaddwd) or float32"),
)
LEVEL_FEATURES = (
    ("extent", "log2 trips of this loop"),
    *((f"is_{k}", f"1 if the loop is {k}") for k in KINDS),
    ("is_reduce", "1 if the loop runs over a reduction axis"),
    *(item for b in BUFFERS for item in (
        (f"{b}_bytes", f"log2 bytes of {b} touched inside this loop"),
        (f"{b}_lines", f"log2 cache lines of {b} touched inside this loop"),
        (f"{b}_reuse", f"log2 accesses per touched element of {b} inside this loop"))),
    ("intensity", "log2 flops per byte touched inside this loop"),
    *((f"vs_{c}", f"log2 bytes touched inside this loop / the machine's {c} size")
      for c in ("l1", "l2", "l3")),
)
FEATURE_NAMES = tuple(n for n, _ in GLOBAL_FEATURES) + tuple(
    f"L{level}.{n}" for level in range(LEVELS) for n, _ in LEVEL_FEATURES)
N_FEATURES = len(FEATURE_NAMES)


def _lg(x: float) -> float:
    return math.log2(1.0 + max(0.0, x))


def extract_features(nest: LoopNest, target: Target) -> np.ndarray:
    dag, loops = nest.dag, nest.loops
    machine = target.machine
    threads, lanes = target.threads, machine.lanes
    levels = footprints(nest, machine)  # innermost first
    total_flops = dag.flops
    out: list[float] = []

    inner = loops[-1]
    vec = vector_loop(nest)
    unrolled = math.prod(l.extent for l in loops if l.kind == "unroll")
    tile_loops = nest.tile_loops
    tile = math.prod(l.extent for l in tile_loops if not l.reduce) if tile_loops else 0
    in_registers = bool(tile_loops) and all(
        l.kind in ("unroll", "vectorize") for l in tile_loops if not l.reduce)
    register_tile = tile if in_registers else 0
    tile_reduction = math.prod(l.extent for l in tile_loops if l.reduce) if tile_loops else 0
    parallel = loops[0] if loops[0].kind == "parallel" and threads > 1 else None
    par_extent = parallel.extent if parallel else 1
    per_thread = -(-par_extent // threads) if parallel else par_extent
    padded_space = math.prod(l.extent for l in loops)
    real_space = math.prod(a.extent for a in dag.axes)
    vec_tail = 0.0
    if vec is not None:
        part = vec.parts[0]
        axis_extent = dag.axis(part.axis).extent
        vec_tail = float(axis_extent % vec.extent != 0 and axis_extent > vec.extent)
    root_pad = root_pad_bytes(nest)
    inline_pad = float(any(inline_guards(nest, op) for op in dag.inputs))
    strides = {r: buffer_stride(nest, r, inner) for r in BUFFERS}
    out_flat = dag.output.flat()
    out_scatter = float(vec is not None
                        and out_flat.coef(vec.parts[0].axis) * vec.parts[0].step != 1)
    chunks = vector_chunks(nest, lanes)
    register_vectors = math.ceil(register_tile / (vec.extent if vec else 1)) * chunks \
        if register_tile else 0
    operand_vectors = tile_operand_registers(nest, machine) if register_tile else 0
    epilogue = 0 if nest.cache_write_at is not None else \
        len(dag.addends) + dag.activated + 1
    out += [
        _lg(total_flops), len(loops), vec.extent if vec else 0,
        chunks if vec else 0, _lg(unrolled), _lg(register_tile),
        register_vectors,
        (register_vectors + operand_vectors) / machine.vector_registers,
        register_vectors / machine.min_accumulators,
        _lg(estimate_gflops(nest, target, levels)), lanes, machine.vector_registers,
        machine.flops_per_cycle, _lg(tile),
        float(in_registers), _lg(tile_reduction), _lg(par_extent if parallel else 0),
        _lg(total_flops / (threads if parallel else 1)),
        per_thread * threads / par_extent if parallel else 1.0, threads,
        math.log2(padded_space / real_space), vec_tail, inline_pad, _lg(root_pad),
        _lg(local_pad_bytes(nest)), len(nest.layout_rewrite), _lg(abs(strides["lhs"])),
        _lg(abs(strides["rhs"])),
        _lg(abs(strides["acc"])),
        float(access_class(nest, dag.lhs) == "gather"),
        float(access_class(nest, dag.rhs) == "gather"), out_scatter,
        _lg(4 * dag.output.size), epilogue,
        float(dag.quant is not None), machine.int8_macs_per_cycle,
        float(dag.quant is not None and machine.int8_instruction(dag.reduced_range,
                                                              dag.centered)
              in ("vpdpbusd", "pmaddubsw")),
    ]

    accesses = 1
    flops_per_access = total_flops / max(1, real_space)  # 2 per multiply-accumulate
    for depth in range(LEVELS):
        if depth >= len(loops):
            out += [0.0] * len(LEVEL_FEATURES)
            continue
        level = levels[depth]
        loop = level.loop
        accesses *= loop.extent
        row = [_lg(loop.extent)] + [float(loop.kind == k) for k in KINDS] + [float(loop.reduce)]
        touched = 0.0
        for elements, lines in zip(level.elements, level.lines):
            touched += 4 * elements
            row += [_lg(4 * elements), _lg(lines), _lg(accesses / max(1.0, elements))]
        row.append(_lg(accesses * flops_per_access / max(1.0, touched)))
        row += [math.log2(max(1.0, touched) / size) for size in
                (machine.l1d_bytes, machine.l2_bytes, machine.l3_bytes)]
        out += row
    return np.asarray(out, dtype=np.float32)
