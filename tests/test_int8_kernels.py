"""int8 kernels against the exact integer reference, over random valid schedules and shapes.

uint8 x int8 sums in int32 are exact, and the epilogues round the same float32 products as
the reference (tuner.ir.dag.Quantization), so every output must equal the reference bit for
bit: int32 sums, requantized uint8 and dequantized float32 alike. The dot product is emitted
for the target's instruction (tuner/codegen/quantized.py): vpmaddwd pairs on x86-64-v3 (no
VNNI), vpdpbusd on x86-64-v4 with AVX512-VNNI and on alderlake with AVX-VNNI (compiled and its
instruction checked; run where the host has it, else run with the instruction modelled in
plain IR, tests/vnni_model.py).
"""

import numpy as np
import pytest

from conftest import generated_target, kernel_assembly
from schedule_gen import random_int8_task, random_schedule
from tuner.codegen.jit import CompiledKernel
from tuner.ir.target import host_target
from vnni_model import modelled_vnni_kernel
from tuner.ir.schedule import apply_steps, schedule_from_json, schedule_to_json

CASES = 120


def _check(dag, steps, target, rng):
    kernel = CompiledKernel(apply_steps(dag, steps), target)
    inputs = dag.random_inputs(rng)
    out = kernel(*inputs)
    expected = dag.reference(*inputs)
    assert out.dtype == expected.dtype
    np.testing.assert_array_equal(out, expected)
    return kernel


@pytest.mark.parametrize("seed", range(CASES))
def test_random_int8_schedule_is_exact(seed, target1, target2):
    rng = np.random.default_rng(1000 + seed)
    task = random_int8_task(rng, ["conv2d", "matmul"][seed % 2])
    steps = random_schedule(rng, task)
    assert schedule_from_json(schedule_to_json(steps)) == steps
    dag = task.dag()
    target = [target1, target2, generated_target("x86-64-v3", 1)][seed % 3]
    _check(dag, steps, target, rng)


@pytest.mark.parametrize("seed", range(48))
def test_reduced_range_int8_schedule_is_exact(seed, target1, target2):
    """Weights of reduced range (tuner.ir.dag.REDUCED_WEIGHT_RANGE) on CPUs without VNNI are
    summed by vpmaddubsw (tuner/codegen/quantized.py): random schedules and shapes, exact,
    and the instruction in the code wherever a dot loop sits inside a vector loop."""
    from tuner.ir.layout import vector_loop

    rng = np.random.default_rng(9000 + seed)
    task = random_int8_task(rng, ["conv2d", "matmul"][seed % 2], reduce_range=True)
    steps = random_schedule(rng, task)
    dag = task.dag()
    assert dag.reduced_range
    target = [target1, target2, generated_target("x86-64-v3", 1)][seed % 3]
    nest = apply_steps(dag, steps)
    vec = vector_loop(nest)
    if target.machine.dot_instruction == "pmaddwd" and nest.loops[-1].kind == "dot" and \
            vec is not None and vec.extent > 1:
        assert "vpmaddubsw" in kernel_assembly(nest, target)
    _check(dag, steps, target, rng)


@pytest.mark.parametrize("op", ["conv2d", "matmul"])
@pytest.mark.parametrize("sign", [1, -1])
def test_reduced_range_extremes_do_not_saturate(op, sign, target1):
    """The largest pair sums the reduced range allows (255 x 64 twice, either sign: 32640,
    one step inside int16) through default and random schedules, on x86-64-v3 and the host."""
    from tuner.ir.task import Task
    from tuner.search.default import default_lowered

    task = Task.create(op, (1, 40, 5, 7, 24, 3, 3) if op == "conv2d" else (9, 40, 37),
                       "int8", bias=True, out_type=0, reduce_range=True,
                       **({"pad": 1} if op == "conv2d" else {}))
    dag = task.dag()
    rng = np.random.default_rng(3)
    inputs = list(dag.random_inputs(rng))
    inputs[0] = np.full_like(inputs[0], 255)
    inputs[1] = np.full_like(inputs[1], 64 * sign)
    inputs[-1] = np.array([255, 0], np.int32)  # padding reads 255 as well
    expected = dag.reference(*inputs)
    assert np.abs(expected).max() > 32640
    for target in (generated_target("x86-64-v3", 1), target1):
        schedules = [default_lowered(dag, target)[0]] + \
            [random_schedule(rng, task) for _ in range(4)]
        for steps in schedules:
            kernel = CompiledKernel(apply_steps(dag, steps), target)
            np.testing.assert_array_equal(kernel(*inputs), expected)


def test_a_weight_outside_the_reduced_range_is_refused(target1):
    """A kernel of reduced range refuses a weight it would sum wrongly, with one line naming
    the range and the values; the same weight is taken by the full-range task."""
    from tuner.errors import TunerError
    from tuner.ir.task import Task

    full = Task.create("matmul", (4, 8, 12), "int8", out_type=0)
    reduced = Task.create("matmul", (4, 8, 12), "int8", out_type=0, reduce_range=True)
    assert full.key != reduced.key and "reduce_range=1" in reduced.key
    assert Task.from_key(reduced.key) == reduced
    inputs = list(reduced.dag().random_inputs(np.random.default_rng(0)))
    inputs[1][2, 3] = 65
    target = generated_target("x86-64-v3", 1)
    from tuner.search.default import default_lowered

    kernel = CompiledKernel(default_lowered(reduced.dag(), target)[1], target)
    with pytest.raises(TunerError, match=r"b must be a int8 array of reduced range "
                                         r"\(integers in \[-64, 64\]\), got int8 values in "
                                         r"\[-\d+, 65\]"):
        kernel(*inputs)
    full_kernel = CompiledKernel(default_lowered(full.dag(), target)[1], target)
    np.testing.assert_array_equal(full_kernel(*inputs), full.dag().reference(*inputs))


@pytest.mark.parametrize("dtype, message", [
    ("float32", "matmul attribute reduce_range is for int8 kernels; this one is float32"),
    ("int8", "matmul attribute reduce_range expects 0 or 1, got 2")])
def test_reduce_range_attribute_errors(dtype, message):
    from tuner.errors import ShapeError
    from tuner.ir.task import Task

    with pytest.raises(ShapeError, match=message):
        Task.create("matmul", (4, 8, 12), dtype, reduce_range=1 if dtype == "float32" else 2)


def test_reduced_range_on_avx512_without_vnni_is_512_bit_vpmaddubsw():
    """skylake-avx512 (AVX-512BW, no VNNI): the 512-bit instruction; with VNNI, vpdpbusd
    whatever the range."""
    from tuner.ir.task import Task
    from tuner.search.default import default_lowered

    task = Task.create("matmul", (16, 64, 64), "int8", out_type=1, reduce_range=True)
    target = generated_target("skylake-avx512", 1)
    assert target.machine.int8_instruction(True) == "pmaddubsw"
    asm = kernel_assembly(default_lowered(task.dag(), target)[1], target)
    assert "vpmaddubsw\t%zmm" in asm
    vnni = _vnni_target("x86-64-v4")
    assert "vpdpbusd" in kernel_assembly(default_lowered(task.dag(), vnni)[1], vnni)


@pytest.mark.parametrize("seed", range(24))
def test_regrouped_activation_is_exact(seed, target1, target2):
    """Convolutions whose activation is read from its regrouped copy (channels in groups of 4
    innermost, with the padding: tuner.ir.layout.regroup_dim), random schedules padded at the
    root: rows wider and narrower than the copy's 16-byte step, channel counts of every
    residue modulo 4 (the last group part zero point), grouped convolutions whose groups
    hold whole channel groups, strides, dilation, 1 and 2 threads."""
    from tuner.ir.layout import regroup_dim
    from tuner.ir.schedule import Pad
    from tuner.ir.task import Task

    rng = np.random.default_rng(7000 + seed)
    groups = int(rng.choice([1, 1, 1, 2]))
    c = groups * (4 * int(rng.integers(1, 4)) if groups > 1 else int(rng.integers(1, 14)))
    r = int(rng.choice([1, 3]))
    stride, dilation = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    pad = int(rng.integers(0, 3)) if r > 1 else 0
    low = dilation * (r - 1) + 1
    h, w = int(rng.integers(low, 12)), int(rng.integers(low, 45))
    shape = (int(rng.integers(1, 3)), c, h, w, groups * int(rng.integers(1, 9)), r, r)
    task = Task.create("conv2d", shape, "int8", stride=stride, pad=pad, dilation=dilation,
                       groups=groups, bias=bool(rng.integers(2)), out_type=int(rng.integers(3)))
    dag = task.dag()
    steps = tuple(s for s in random_schedule(rng, task)
                  if not (isinstance(s, Pad) and s.operand == "data"))
    if dag.inputs[0].padded:
        steps += (Pad("data", "root"),)
    assert regroup_dim(apply_steps(dag, steps), dag.inputs[0]) == 1
    target = [target1, target2, generated_target("x86-64-v3", 2)][seed % 3]
    _check(dag, steps, target, rng)


@pytest.mark.parametrize("seed", range(12))
def test_vnni_int8_schedule_is_exact(seed):
    """vpdpbusd code: one instruction per group and lane vector, exact where it runs."""
    rng = np.random.default_rng(5000 + seed)
    task = random_int8_task(rng, ["conv2d", "matmul"][seed % 2])
    dag = task.dag()
    while dag.dot_axis is None:
        task = random_int8_task(rng, ["conv2d", "matmul"][seed % 2])
        dag = task.dag()
    from tuner.search.default import default_lowered
    target = generated_target("x86-64-v4", 1)
    target = type(target)(target.triple, target.cpu,
                          ",".join(sorted(set(target.features.split(",")) - {"-avx512vnni"}
                                          | {"+avx512vnni"})), 1)
    assert target.machine.dot_instruction == "vpdpbusd"
    steps, nest = default_lowered(dag, target)
    assert "vpdpbusd" in kernel_assembly(nest, target)
    _check_vnni(dag, steps, target, rng)


def _vnni_target(cpu: str):
    """`cpu`'s target with VNNI: x86-64-v4 plus AVX512-VNNI, or alderlake (AVX-VNNI, 256-bit
    vectors, no AVX-512)."""
    target = generated_target(cpu, 1)
    if cpu == "x86-64-v4":
        features = sorted(set(target.features.split(",")) - {"-avx512vnni"} | {"+avx512vnni"})
        target = type(target)(target.triple, target.cpu, ",".join(features), 1)
    return target


@pytest.mark.parametrize("cpu", ["x86-64-v4", "alderlake"])
@pytest.mark.parametrize("seed", range(16))
def test_random_vnni_schedules_compile_to_vpdpbusd(cpu, seed):
    """Random schedules (broadcast, packed and interleaved groups, partial vectors) for the
    512-bit and the 256-bit (AVX-VNNI) instruction: valid IR, and vpdpbusd wherever a dot
    loop sits inside a vector loop; run and checked where this host has the ISA."""
    from tuner.ir.layout import vector_loop

    target = _vnni_target(cpu)
    assert target.machine.dot_instruction == "vpdpbusd"
    rng = np.random.default_rng(7000 + seed)
    task = random_int8_task(rng, ["conv2d", "matmul"][seed % 2])
    steps = random_schedule(rng, task)
    nest = apply_steps(task.dag(), steps)
    vec = vector_loop(nest)
    if nest.loops[-1].kind == "dot" and vec is not None and vec.extent > 1:
        assert "vpdpbusd" in kernel_assembly(nest, target)
    _check_vnni(task.dag(), steps, target, rng)


def _check_vnni(dag, steps, target, rng):
    """`_check` of a VNNI target's kernel where this host has the ISA; elsewhere the same
    kernel with vpdpbusd modelled in plain IR (vnni_model.py), so that its layouts are
    checked against numpy on every host."""
    have = set(host_target(1).features.split(","))
    if all(f in have for f in target.features.split(",") if f.startswith("+")):
        return _check(dag, steps, target, rng)
    kernel = modelled_vnni_kernel(apply_steps(dag, steps), target)
    inputs = dag.random_inputs(rng)
    np.testing.assert_array_equal(kernel(*inputs), dag.reference(*inputs))


@pytest.mark.parametrize("seed", range(40))
def test_random_int8_batch_matmul_schedule_is_exact(seed, target1, target2):
    """Products of two uint8 activations less their zero points (tuner.ir.dag.Quantization
    .centered): random schedules, shapes, stored orders and epilogues, exact on the host, on
    x86-64-v3 and on both VNNI CPUs (modelled where this host lacks them); summed as int16
    pairs, by vpdpwssd on the VNNI CPUs and vpmaddwd on the others, never by vpdpbusd
    (which multiplies uint8 by int8)."""
    from tuner.ir.layout import vector_loop

    rng = np.random.default_rng(11000 + seed)
    task = random_int8_task(rng, "batch_matmul")
    steps = random_schedule(rng, task)
    assert schedule_from_json(schedule_to_json(steps)) == steps
    dag = task.dag()
    assert dag.centered and dag.quant.zero_points.shape == (3,)
    target = [target1, target2, generated_target("x86-64-v3", 1), _vnni_target("x86-64-v4"),
              _vnni_target("alderlake")][seed % 5]
    nest = apply_steps(dag, steps)
    vec = vector_loop(nest)
    if nest.loops[-1].kind == "dot" and vec is not None and vec.extent > 1:
        assembly = kernel_assembly(nest, target)
        pairs = "vpdpwssd" if target.machine.dot_instruction == "vpdpbusd" else "vpmaddwd"
        assert pairs in assembly and "vpdpbusd" not in assembly
    _check_vnni(dag, steps, target, rng)


@pytest.mark.parametrize("cpu", ["host", "x86-64-v3", "x86-64-v4"])
@pytest.mark.parametrize("sign", [1, -1])
def test_centered_extremes_are_exact(cpu, sign, target1):
    """The largest products centered operands give, (0 - 255) x (0 - 255) or
    (255 - 0) x (0 - 255), summed over K = 67 (pairs of +-130050 in vpmaddwd) through the
    default schedule, written as int32."""
    from tuner.ir.task import Task
    from tuner.search.default import default_lowered

    dag = Task.create("batch_matmul", (2, 5, 19, 67), "int8").dag()
    target = target1 if cpu == "host" else _vnni_target(cpu)
    steps, _ = default_lowered(dag, target)
    a = np.zeros((2, 5, 67), np.uint8) if sign > 0 else np.full((2, 5, 67), 255, np.uint8)
    b = np.zeros((2, 67, 19), np.uint8)
    zero_points = np.array([255 if sign > 0 else 0, 0, 255], np.int32)
    expected = np.full((2, 5, 19), sign * 67 * 255 * 255, np.int32)
    np.testing.assert_array_equal(dag.reference(a, b, zero_points), expected)
    have = set(host_target(1).features.split(","))
    kernel = CompiledKernel(apply_steps(dag, steps), target) \
        if all(f in have for f in target.features.split(",") if f.startswith("+")) \
        else modelled_vnni_kernel(apply_steps(dag, steps), target)
    np.testing.assert_array_equal(kernel(a, b, zero_points), expected)


@pytest.mark.parametrize("cpu, flag", [("znver4", "+avx512vnni"), ("icelake-server",
                                                                   "+avx512vnni"),
                                       ("alderlake", "+avxvnni"), ("znver3", None),
                                       ("skylake-avx512", None)])
def test_a_named_cpu_knows_its_dot_instruction(cpu, flag):
    """The features read off a named CPU's code include VNNI where it has it (and nothing
    new where it has not, so that those CPUs' target keys stay as they were)."""
    from tuner.ir.cpu_probe import probe
    from tuner.ir.machine import dot_instruction_of

    features = probe(cpu)
    assert [f for f in features if "vnni" in f] == ([flag] if flag else [])
    assert dot_instruction_of(",".join(features)) == ("vpdpbusd" if flag else "pmaddwd")


def test_a_default_tile_the_builder_would_refuse_is_not_taken():
    """The default's own check agrees with the builder's: a tile whose code-size estimate is
    past the limit does not build (tuner.search.default._builds), whatever its emitted IR."""
    from dataclasses import replace

    from tuner.ir.layout import MAX_CODE_SIZE, code_size
    from tuner.ir.task import Task
    from tuner.search.default import _builds, register_tile, tiled_schedule
    target = generated_target("x86-64-v3", 1)
    dag = Task.create("conv2d", (1, 1024, 13, 13, 255, 1, 1), "int8", bias=True,
                      out_type=1).dag()
    wide = replace(register_tile(dag, target), width=32, count=3)
    nest = apply_steps(dag, tiled_schedule(dag, target, wide))
    assert code_size(nest, target.machine.lanes) > MAX_CODE_SIZE
    assert not _builds(nest, target)


def test_the_cost_model_tells_the_instructions_apart():
    """The same schedule of a full-range and a reduced-range task: features equal but for
    `int8_bytes_unwidened`, 0 and 1 on a CPU without VNNI, and the register pressure (the
    widened pairs take more registers: tuner.ir.layout.operand_registers); with VNNI both
    are 1 and nothing differs."""
    from costmodel.features import FEATURE_NAMES, extract_features
    from tuner.ir.task import Task
    from tuner.search.default import default_lowered

    at = FEATURE_NAMES.index("int8_bytes_unwidened")
    full = Task.create("matmul", (16, 64, 64), "int8", out_type=1)
    reduced = Task.create("matmul", (16, 64, 64), "int8", out_type=1, reduce_range=True)
    for target, expected in ((generated_target("x86-64-v3", 1), (0.0, 1.0)),
                             (_vnni_target("x86-64-v4"), (1.0, 1.0))):
        steps = default_lowered(full.dag(), target)[0]
        rows = [extract_features(apply_steps(t.dag(), steps), target) for t in (full, reduced)]
        assert (rows[0][at], rows[1][at]) == expected
        differ = {FEATURE_NAMES[i] for i in range(len(FEATURE_NAMES)) if rows[0][i] != rows[1][i]}
        assert differ == ({"int8_bytes_unwidened", "register_pressure"} if expected[0] == 0
                          else set())


@pytest.mark.parametrize("lanes", [16, 8, 5])
def test_a_one_lane_masked_byte_store_writes_one_byte(lanes):
    """int32 lanes narrowed to bytes (`low_bytes`, as every int8 epilogue narrows them) and
    stored under a mask that LLVM proves selects only the first lane: one byte is written.
    LLVM 22 stores a `trunc` there as 4 bytes on AVX-512 (over another thread's output, or
    past the buffer); the host's vector width decides which narrowing is checked."""
    import ctypes

    from llvmlite import ir

    from tuner.codegen.irutil import (F32, I32, I64, PTR, VOID, low_bytes, masked_store,
                                      splat, vec_type)
    from tuner.codegen.jit import compile_ir_object
    from tuner.ir.llvm_init import llvm
    from tuner.codegen.jit import target_machine

    target = host_target(1)
    module = ir.Module(name="narrow")
    fn = ir.Function(module, ir.FunctionType(VOID, [PTR, PTR, I64, I32]), name="narrow")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    out, src, count, zero_point = fn.args
    values = b.load(src, typ=vec_type(lanes, F32), align=4)
    sums = b.add(b.fptosi(values, vec_type(lanes, I32)), splat(b, zero_point, lanes))
    # the lanes below `count`, stored where count is 1: there LLVM proves the mask constant
    mask = b.icmp_signed("<", ir.Constant(vec_type(lanes, I64), list(range(lanes))),
                         splat(b, count, lanes))
    with b.if_then(b.icmp_signed("==", count, ir.Constant(I64, 1))):
        masked_store(b, low_bytes(b, sums, target.machine.vector_bits == 512), out, mask)
    b.ret_void()
    engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), target_machine(target))
    engine.add_object_file(llvm.ObjectFileRef.from_data(compile_ir_object(str(module),
                                                                          target)))
    engine.finalize_object()
    call = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                            ctypes.c_int32)(engine.get_function_address("narrow"))
    canary = np.full(32, 0xAA, np.uint8)
    floats = np.arange(1, lanes + 1, dtype=np.float32) * 10
    call(canary.ctypes.data, floats.ctypes.data, 1, 3)
    assert canary[0] == 13 and (canary[1:] == 0xAA).all(), canary[:8]
