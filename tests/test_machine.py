"""The machine model and named CPUs: register tiles that fit the register file they are
generated for, in the schedule and in the machine code; AVX2 code checked against numpy;
`--cpu` from the command line to a replayed kernel.

Two real targets are used throughout: x86-64-v3 (AVX2: 8 lanes, 16 ymm registers) and
x86-64-v4 (AVX-512: 16 lanes, 32 zmm registers). Code for both is only generated here
(`generated_target`, on AVX2 and AVX-512 hosts alike), except the differential tests, which
run x86-64-v3 code (any host this project runs on has AVX2).
"""

from __future__ import annotations

import functools
import math
import re

import numpy as np
import pytest

from conftest import (assert_matches_reference, assert_sampled_schedule_matches_reference,
                      generated_target)
from schedule_gen import random_task
from tuner.search.annotate import (expert_annotation, expert_seeds, fits, max_vector_lanes,
                            register_vectors, sample, to_steps)
from tuner.codegen.emit import emit_llvm
from tuner.search.default import default_schedule, register_tile
from tuner.errors import TunerError
from tuner.codegen.jit import CompiledKernel, optimize, target_machine
from tuner.ir.layout import SPARE_REGISTERS, code_size, spatial_tails
from tuner.ir.machine import describe
from tuner.ir.schedule import apply_steps
from tuner.search.sketch import generate_sketches
from tuner.ir.target import host_target, named_target
from tuner.ir.task import Task


@pytest.fixture(scope="module")
def v3():
    return named_target("x86-64-v3", 1)


# ------------------------------------------------------------------ the machine model

def test_avx2_features_give_8_lanes_and_16_registers():
    m = describe("x86-64-v3", "+avx,+avx2,+fma,-avx512f")
    assert (m.cpu, m.lanes, m.vector_bits, m.vector_registers, m.has_fma) == \
        ("x86-64-v3", 8, 256, 16, True)
    assert m.l1d_bytes > 0 and m.l2_bytes > 0 and m.l3_bytes > 0
    assert m.cores >= 1
    assert m.min_accumulators == m.fma_per_cycle * m.fma_latency > 0
    assert m.flops_per_cycle == 2 * 8 * m.fma_per_cycle


def test_avx512_features_give_16_lanes_and_32_registers():
    m = describe("x86-64-v4", "+avx,+avx2,+avx512f,+fma")
    assert (m.lanes, m.vector_bits, m.vector_registers, m.has_fma) == (16, 512, 32, True)
    assert m.l1d_bytes > 0 and m.l2_bytes > 0 and m.l3_bytes > 0


def test_sse_only_features_give_4_lanes_without_fma():
    m = describe("x86-64", "-avx,-avx2,-avx512f,-fma")
    assert (m.lanes, m.vector_registers, m.has_fma) == (4, 16, False)
    assert m.flops_per_cycle == 2 * 4


def test_fma_rate_comes_from_the_cpu_name():
    features = "+avx,+avx2,+avx512f,+fma"
    assert describe("znver4", features).fma_per_cycle == 1    # 512-bit ops double-pumped
    assert describe("znver5", features).fma_per_cycle == 2
    assert describe("some-future-cpu", features).fma_per_cycle == 2  # the common case


# ------------------------------------------------------------------ named targets

def test_an_unknown_cpu_is_refused_in_one_line():
    with pytest.raises(TunerError) as err:
        named_target("notacpu", 1)
    message = str(err.value)
    assert "'notacpu'" in message and "\n" not in message


@pytest.mark.parametrize("name", [None, "host"])
def test_host_and_none_are_the_host(name):
    assert named_target(name, 1) == host_target(1)
    assert named_target(name, 2) == host_target(2)
    assert named_target(name) == host_target()


def test_the_host_cpu_by_name_is_the_host():
    host = host_target(1)
    assert named_target(host.cpu, 1) == host


def test_a_named_cpu_generates_for_that_cpu(v3):
    t = named_target("x86-64-v3")
    assert t.cpu == "x86-64-v3" and t.machine.lanes == 8 and t.machine.vector_registers == 16
    assert t.threads == host_target().threads
    assert t.triple == host_target().triple
    assert "+avx2" in t.features.split(",") and "-avx512f" in t.features.split(",")
    assert t.key != host_target().key and t.key == named_target("x86-64-v3").key
    assert (v3.cpu, v3.threads, v3.machine.lanes) == ("x86-64-v3", 1, 8)
    assert generated_target("x86-64-v3", 1) == v3
    v4 = generated_target("x86-64-v4", 1)
    assert v4.machine.lanes == 16 and "+avx512f" in v4.features.split(",")
    host = host_target(1)
    if "+avx512f" in host.features.split(","):
        assert named_target("x86-64-v4", 1) == v4
    else:  # code for it can be generated (above), not measured here
        with pytest.raises(TunerError) as err:
            named_target("x86-64-v4", 1)
        message = str(err.value)
        assert "avx512f" in message and host.cpu in message and "\n" not in message


def _fake_host_without_avx512(monkeypatch):
    """This process's host, as an AVX2 machine (`_host` is cached: the attribute is replaced)."""
    import tuner.ir.target

    triple = tuner.ir.target._host()[0]
    features = "+avx,+avx2,+fma,+sse4.2,-avx512f"
    monkeypatch.setattr(tuner.ir.target, "_host", lambda: (triple, "fakecpu", features))


def test_a_cpu_needing_features_the_host_lacks_is_refused(monkeypatch):
    _fake_host_without_avx512(monkeypatch)
    assert host_target(1).cpu == "fakecpu"
    with pytest.raises(TunerError) as err:
        named_target("x86-64-v4", 1)
    message = str(err.value)
    assert "avx512f" in message and "fakecpu" in message and "x86-64-v4" in message
    assert "\n" not in message
    assert named_target("x86-64-v3", 1).cpu == "x86-64-v3"  # AVX2 is still fine there


# ------------------------------------------------------------------ register tiles fit

SHAPES = {
    "matmul_1024": Task.create("matmul", (1024, 1024, 1024)),
    "conv3x3_resnet": Task.create("conv2d", (1, 64, 56, 56, 64, 3, 3), pad=1),
    "conv1x1": Task.create("conv2d", (1, 64, 56, 56, 256, 1, 1)),
    "conv1x1_channels": Task.create("conv2d", (1, 256, 28, 28, 128, 1, 1)),  # vectors along k
    "matmul_m197": Task.create("matmul", (197, 768, 768)),
}
TARGETS = ("x86-64-v3", "x86-64-v4")


def _register_tile_of_nest(nest, lanes: int) -> tuple[int, int]:
    """(accumulator vectors, vector chunks) read off a lowered schedule: the spatial loops
    inside the innermost reduction loop, the vectorized one counted in native vectors."""
    loops = nest.loops
    last_reduce = max(i for i, loop in enumerate(loops) if loop.reduce)
    inner = loops[last_reduce + 1:]
    vec = loops[-1] if loops[-1].kind == "vectorize" else None
    chunks = -(-vec.extent // lanes) if vec else 1
    rows = math.prod(loop.extent for loop in inner if loop is not vec)
    return rows * chunks, chunks


@pytest.mark.parametrize("cpu", TARGETS)
@pytest.mark.parametrize("shape", SHAPES)
def test_register_tiles_fit_the_register_file(shape, cpu):
    """Counted from the schedule: the default schedule's register tile and the expert seed of
    every sketch keep accumulators + one step's operands within the vector registers."""
    target = generated_target(cpu, 1)
    machine = target.machine
    dag = SHAPES[shape].dag()
    tile = register_tile(dag, target)
    chunks = -(-tile.width // machine.lanes)
    accumulators = tile.count * chunks
    assert accumulators + chunks + SPARE_REGISTERS <= machine.vector_registers, tile
    assert accumulators >= machine.min_accumulators, tile  # enough to hide the FMA latency
    nest = apply_steps(dag, default_schedule(dag, target))
    assert _register_tile_of_nest(nest, machine.lanes) == (accumulators, chunks)
    seeds = expert_seeds(dag, generate_sketches(dag), target)
    for sketch, ann in seeds:
        acc, operands = register_vectors(dag, ann, machine)
        assert acc + operands <= machine.vector_registers, (sketch.name, ann)
        assert fits(dag, sketch, ann, machine)
        seed_nest = apply_steps(dag, to_steps(dag, sketch, ann, target))
        assert _register_tile_of_nest(seed_nest, machine.lanes)[0] == acc, (sketch.name, ann)
    assert seeds


# --- the same, read off the machine code

_VECTOR_REG = re.compile(r"%[xyz]mm\d+")
_LABEL = re.compile(r"^(\.L\w+):")
_JUMP = re.compile(r"^\s+j[a-z]+\s+(\.L\w+)")


def _functions(asm: str) -> dict[str, list[str]]:
    out, name = {}, None
    for line in asm.splitlines():
        m = re.match(r"^([A-Za-z_][\w.$]*):", line)
        if m:
            name = m.group(1)
            out[name] = []
        elif name is not None:
            if line.startswith(".Lfunc_end"):
                name = None
            else:
                out[name].append(line)
    return out


def _stack_vector_accesses(lines: list[str], frame_pointer: bool) -> list[str]:
    """Vector loads and stores addressed off the stack pointer (and off %rbp where it is the
    frame pointer; elsewhere LLVM uses %rbp as one more general register, e.g. for data)."""
    base = re.compile(r"\((%rsp|%rbp)" if frame_pointer else r"\(%rsp")
    return [line.strip() for line in lines if _VECTOR_REG.search(line) and base.search(line)]


def _innermost_loops(lines: list[str]) -> list[list[str]]:
    """Loop bodies as LLVM lays them out: a label and a later jump back to it, with no other
    such span inside."""
    labels, spans = {}, []
    for i, line in enumerate(lines):
        m = _LABEL.match(line)
        if m:
            labels[m.group(1)] = i
        m = _JUMP.match(line)
        if m and m.group(1) in labels:
            spans.append((labels[m.group(1)], i))
    return [lines[a:b + 1] for a, b in spans
            if not any((c, d) != (a, b) and a <= c and d <= b for c, d in spans)]


def _reduction_loops(nest, target) -> tuple[list[list[str]], bool]:
    """The innermost loops with FMAs in the kernel's assembly, and whether %rbp is its frame
    pointer."""
    module = optimize(str(emit_llvm(nest, target)), target)
    kernel = _functions(target_machine(target).emit_assembly(module))["kernel"]
    frame_pointer = any(re.match(r"\s+movq\s+%rsp, %rbp\s*$", line) for line in kernel)
    hot = [body for body in _innermost_loops(kernel) if any("vfmadd" in l for l in body)]
    return hot, frame_pointer


def _forward_branches(body: list[str]) -> list[str]:
    """Jumps to a label further down the same loop body: branches around guarded code."""
    labels = {m.group(1): i for i, line in enumerate(body) if (m := _LABEL.match(line))}
    return [line for i, line in enumerate(body)
            if (m := _JUMP.match(line)) and labels.get(m.group(1), -1) > i]


def _fmas(body: list[str]) -> int:
    return sum("vfmadd" in line for line in body)


@pytest.mark.parametrize("cpu", TARGETS)
@pytest.mark.parametrize("shape", [
    "matmul_1024",
    "conv3x3_resnet",
    "conv1x1",
    "conv1x1_channels",
    "matmul_m197",
])
def test_default_tiles_keep_their_accumulators_in_registers(shape, cpu):
    """From the assembly of the default schedule: the full-tile reduction loop does one FMA
    per accumulator vector and reduction step, into as many distinct registers, and no
    reduction loop (full tile or tail) loads or stores a vector on the stack."""
    target = generated_target(cpu, 1)
    dag = SHAPES[shape].dag()
    tile = register_tile(dag, target)
    accumulators = tile.count * -(-tile.width // target.machine.lanes)
    hot, frame_pointer = _reduction_loops(apply_steps(dag, default_schedule(dag, target)),
                                          target)
    full = [body for body in hot if _fmas(body) == accumulators * tile.reduce_unroll]
    assert full, (f"no loop with {accumulators} x {tile.reduce_unroll} FMAs; FMA loops have "
                  f"{[_fmas(body) for body in hot]}")
    for body in full:
        targets = {l.rsplit(",", 1)[-1].strip() for l in body if "vfmadd" in l}
        assert len(targets) == accumulators, sorted(targets)
    spills = [line for body in hot for line in _stack_vector_accesses(body, frame_pointer)]
    assert not spills, (f"{len(spills)} vector stack accesses in the reduction loops of "
                        f"{shape} on {cpu} ({tile}):\n" + "\n".join(spills[:20]))


@pytest.mark.parametrize("cpu", TARGETS)
@pytest.mark.parametrize("cache_write", ["S1", "S0", None])
def test_expert_seeds_keep_their_accumulators_in_registers(cache_write, cpu):
    """The full-tile reduction loop of every sketch's expert seed (matmul 1024, the packed
    and the unpacked sketch) has no vector on the stack. (Their tail paths may: not checked.)"""
    target = generated_target(cpu, 1)
    dag = SHAPES["matmul_1024"].dag()
    tile = register_tile(dag, target)
    accumulators = tile.count * -(-tile.width // target.machine.lanes)
    sketches = [s for s in generate_sketches(dag) if s.cache_write == cache_write]
    assert len(sketches) == 2
    for sketch in sketches:
        ann = expert_annotation(dag, sketch, target)
        assert ann is not None, sketch.name
        nest = apply_steps(dag, to_steps(dag, sketch, ann, target))
        hot, frame_pointer = _reduction_loops(nest, target)
        # the full-tile path is straight-line code (a tail path guards each unrolled copy)
        full = [body for body in hot if _fmas(body) == accumulators * tile.reduce_unroll
                and not _forward_branches(body)]
        assert full, (sketch.name, [_fmas(body) for body in hot])
        spills = [line for body in full for line in _stack_vector_accesses(body, frame_pointer)]
        assert not spills, (f"{len(spills)} vector stack accesses in the full-tile loop of "
                            f"{sketch.name} on {cpu}:\n" + "\n".join(spills[:20]))


def test_the_asm_reader_sees_a_spill():
    """The reader above is not vacuous: it finds the stack accesses of a tile that cannot
    fit (48 ymm accumulators on a 16-register machine)."""
    from dataclasses import replace
    from tuner.search.default import tiled_schedule
    target = named_target("x86-64-v3", 1)
    dag = Task.create("matmul", (96, 64, 64)).dag()
    tile = replace(register_tile(dag, target), count=24, reduce_unroll=1)
    hot, frame_pointer = _reduction_loops(apply_steps(dag, tiled_schedule(dag, target, tile)),
                                          target)
    assert hot and any(_stack_vector_accesses(body, frame_pointer) for body in hot)


def test_thousands_of_avx2_samples_fit_the_registers(v3):
    machine = v3.machine
    rng = np.random.default_rng(17)
    count = 0
    while count < 3000:
        dag = random_task(rng).dag()
        for sketch in generate_sketches(dag):
            ann = sample(rng, dag, sketch, v3)
            count += 1
            assert fits(dag, sketch, ann, machine), (dag.op, sketch.name, ann)
            acc, operands = register_vectors(dag, ann, machine)
            assert acc + operands <= machine.vector_registers, (dag.op, sketch.name, ann)
            if ann.vector_axis is not None:
                assert ann.tile(ann.vector_axis)[-1] <= max_vector_lanes(machine) == 32
            # the schedule made from it has that register tile: its level-3 spatial loops
            nest = apply_steps(dag, to_steps(dag, sketch, ann, v3))
            s3 = [loop for loop in nest.loops
                  if not loop.reduce and loop.parts[-1].level == 3]
            vec = nest.loops[-1] if nest.loops[-1].kind == "vectorize" else None
            chunks = -(-vec.extent // machine.lanes) if vec else 1
            rows = math.prod(loop.extent for loop in s3 if loop is not vec)
            # 16 registers: the next reduction step's loads are not counted (32: they are)
            loaded = chunks
            assert (rows * chunks, loaded + max(SPARE_REGISTERS, _window(dag, ann))) == \
                (acc, operands), (dag.op, sketch.name, ann)


def _window(dag, ann) -> int:
    """The rows of a register tile whose input elements slide along an inner reduction tile:
    a row axis and a reduction axis, both with inner tiles > 1, in one input index."""
    inner = {a: f[-1] for a, f in ann.tiles}
    rows = [a.name for a in dag.spatial_axes
            if a.name != ann.vector_axis and inner.get(a.name, 1) > 1]
    sliding = [r for r in rows for op in dag.inputs for expr in op.index
               if expr.coef(r) and any(expr.coef(k.name) and inner.get(k.name, 1) > 1
                                       for k in dag.reduce_axes)]
    return math.prod(inner[r] for r in set(sliding)) if sliding else 0


@pytest.mark.parametrize("cpu", TARGETS)
def test_a_sliding_window_tile_is_budgeted(cpu):
    """A 3x3 conv tile of ow rows with kw unrolled: the tile the budget allows (rows +
    accumulators + loaded vectors within the registers) has no vector on the stack in its
    reduction loop, and the next larger one, which the budget refuses, spills: so the
    window count is the real cost, not a guess."""
    from dataclasses import replace
    from tuner.search.default import tiled_schedule
    from tuner.ir.layout import operand_registers
    target = generated_target(cpu, 1)
    machine = target.machine
    dag = SHAPES["conv3x3_resnet"].dag()
    base = replace(register_tile(dag, target), reduce_axis="kw", reduce_unroll=3)
    chunks = -(-base.width // machine.lanes)

    def budget(rows):
        unrolled = {"ow": rows, "kw": 3, base.vector_axis: base.width}
        return rows * chunks + operand_registers(dag, unrolled, base.vector_axis, chunks, machine)

    rows = max(r for r in range(1, 20) if budget(r) <= machine.vector_registers)
    for count, spills_expected in ((rows, False), (rows + 2, True)):
        nest = apply_steps(dag, tiled_schedule(dag, target, replace(base, count=count)))
        hot, frame_pointer = _reduction_loops(nest, target)
        spills = [l for body in hot for l in _stack_vector_accesses(body, frame_pointer)]
        assert bool(spills) == spills_expected, (cpu, count, budget(count), spills[:5])


@pytest.mark.parametrize("cpu", TARGETS)
@pytest.mark.parametrize("shape", ["matmul_1024", "conv1x1_channels"])
def test_an_unrolled_reduction_is_budgeted(shape, cpu, monkeypatch):
    """Rows of 2 vectors with the reduction unrolled 4 times: the most rows the budget
    allows keep their accumulators in registers; on 32 registers one row more spills (the
    next step's loads are live: what the budget counts there), on 16 it is refused anyway.
    The register tile alone: the weights' prefetch (its address arithmetic) changes how
    LLVM schedules the loop, and with it whether one row over the budget spills."""
    from dataclasses import replace
    import tuner.codegen.emit
    monkeypatch.setattr(tuner.codegen.emit, "prefetch_panel", lambda *args: None)
    from tuner.search.default import tiled_schedule
    from tuner.ir.layout import operand_registers
    target = generated_target(cpu, 1)
    machine = target.machine
    dag = SHAPES[shape].dag()
    base = replace(register_tile(dag, target), width=2 * machine.lanes, reduce_unroll=4)
    chunks = 2

    def needed(rows):
        unrolled = {base.unrolled_axis: rows, base.reduce_axis: 4, base.vector_axis: base.width}
        return rows * chunks + operand_registers(dag, unrolled, base.vector_axis, chunks,
                                                 machine)

    rows = max(r for r in range(1, 20) if needed(r) <= machine.vector_registers)
    expected = [(rows, False)] + ([(rows + 1, True)] if machine.vector_registers == 32 else [])
    for count, spills_expected in expected:
        nest = apply_steps(dag, tiled_schedule(dag, target, replace(base, count=count)))
        hot, frame_pointer = _reduction_loops(nest, target)
        spills = [l for body in hot for l in _stack_vector_accesses(body, frame_pointer)]
        assert bool(spills) == spills_expected, (cpu, count, needed(count), spills[:5])


# ------------------------------------------------------------------ AVX2 code computes right

@pytest.mark.parametrize("seed", range(16))
def test_sampled_avx2_schedules_compute_the_right_thing(seed):
    rng = np.random.default_rng(900 + seed)
    assert_sampled_schedule_matches_reference(rng, named_target("x86-64-v3", 1 + seed % 2))


SMALL_SHAPES = {  # the four shapes above, small, with the same kinds of tails
    "matmul": Task.create("matmul", (40, 48, 32)),
    "conv3x3": Task.create("conv2d", (1, 8, 10, 10, 16, 3, 3), pad=1),
    "conv1x1": Task.create("conv2d", (1, 16, 10, 10, 24, 1, 1)),
    "matmul_m197": Task.create("matmul", (197, 32, 16)),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", SMALL_SHAPES)
def test_default_avx2_schedules_compute_the_right_thing(shape, threads):
    target = named_target("x86-64-v3", threads)
    dag = SMALL_SHAPES[shape].dag()
    kernel = CompiledKernel(apply_steps(dag, default_schedule(dag, target)), target)
    inputs = dag.random_inputs(np.random.default_rng(3))
    assert_matches_reference(dag, kernel(*inputs), inputs)


# ------------------------------------------------------------------ code size

def _ir_instructions(module) -> int:
    """Instructions of an LLVM module as text: indented lines that are not comments."""
    return sum(1 for line in str(module).splitlines()
               if line[:1] in (" ", "\t") and line.strip() and not line.strip().startswith(";"))


# Below this estimate the fixed part of a module (function entry, loop control, the pack and
# pad functions: a few hundred instructions) dominates what the estimate counts (measured: up
# to 20x the estimate at 28-100); compile time is no concern there.
CODE_SIZE_FLOOR = 200


@functools.cache
def _code_size_rows(cpu: str, seed: int, multi_tail: bool, wanted: int) -> tuple:
    """(emitted / estimated, estimated, emitted, tails, task, sketch) of sampled schedules
    with an estimate of at least CODE_SIZE_FLOOR and at most one (or at least two) spatial
    axes with a tail."""
    target = generated_target(cpu, 1)
    rng = np.random.default_rng(seed)
    rows = []
    while len(rows) < wanted:
        task = random_task(rng)
        dag = task.dag()
        sketches = generate_sketches(dag)
        sketch = sketches[int(rng.integers(len(sketches)))]
        nest = apply_steps(dag, to_steps(dag, sketch, sample(rng, dag, sketch, target), target))
        size = code_size(nest, target.machine.lanes)
        tails = spatial_tails(nest)
        if size < CODE_SIZE_FLOOR or (tails >= 2) != multi_tail:
            continue
        emitted = _ir_instructions(emit_llvm(nest, target))
        rows.append((round(emitted / size, 2), size, emitted, tails, task.key, sketch.name))
    return tuple(rows)


@pytest.mark.parametrize("cpu", TARGETS)
def test_code_size_tracks_the_emitted_ir(cpu):
    """`layout.code_size` (which bounds compile time) is within 0.2x..5x of the instructions
    the generator emits, for schedules with at most one spatial tail (measured over ~500
    samples: 0.48x to 3.98x)."""
    rows = _code_size_rows(cpu, 31, False, 20)
    bad = [r for r in rows if not 0.2 <= r[0] <= 5.0]
    assert not bad, bad


def test_code_size_does_not_underestimate_schedules_with_several_tails():
    rows = _code_size_rows("x86-64-v3", 41, True, 12)
    bad = [r for r in rows if r[0] > 5.0]
    assert not bad, bad


def test_code_size_does_not_overestimate_schedules_with_several_tails():
    rows = _code_size_rows("x86-64-v3", 41, True, 12)
    bad = [r for r in rows if r[0] < 0.2]
    assert not bad, bad


# ------------------------------------------------------------------ the command line

def test_cli_refuses_an_unknown_cpu_in_one_line(capsys, tmp_path):
    from tuner.cli import main
    db = str(tmp_path / "r.db")
    for argv in (["matmul", "--shape", "16,16,16", "--cpu", "notacpu", "--db", db, "--quiet"],
                 ["build", "matmul", "--shape", "16,16,16", "--cpu", "notacpu", "--db", db,
                  "-o", str(tmp_path / "out")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("tune: error: ") and err.count("\n") == 1, err
        assert "notacpu" in err


def test_cli_refuses_a_cpu_the_host_cannot_run(capsys, tmp_path, monkeypatch):
    from tuner.cli import main
    _fake_host_without_avx512(monkeypatch)
    assert main(["matmul", "--shape", "16,16,16", "--cpu", "x86-64-v4", "--threads", "1",
                 "--db", str(tmp_path / "r.db"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "avx512f" in err, err


def test_cli_tunes_for_a_named_cpu_and_build_replays_it(tmp_path, capsys):
    import tuner
    from records import RecordStore
    from tuner.cli import main
    db = str(tmp_path / "r.db")
    common = ["--shape", "16,16,16", "--trials", "4", "--batch-size", "4", "--threads", "1",
              "--cpu", "x86-64-v3", "--db", db, "--quiet"]
    assert main(["matmul", *common, "--strategy", "random"]) == 0
    assert "x86-64-v3" in capsys.readouterr().out
    with RecordStore(f"sqlite:///{db}") as store:
        [(task, target, n, failed, best)] = store.summary()
    assert (target.cpu, target.threads, n, failed) == ("x86-64-v3", 1, 4, 0)
    assert target == named_target("x86-64-v3", 1) and target.key != host_target(1).key
    assert task.key == Task.create("matmul", (16, 16, 16)).key and best is not None

    built = tuner.build("matmul", (16, 16, 16), db=db, threads=1, cpu="x86-64-v3")
    assert built.tuned and built.target == target
    inputs = built.kernel.dag.random_inputs(np.random.default_rng(4))
    assert_matches_reference(built.kernel.dag, built(*inputs), inputs)

    # --no-seed: the search alone, every candidate ranked by the model (an expert seed would
    # come first, unranked); recorded under the same target
    assert main(["matmul", *common, "--strategy", "evolutionary", "--no-seed"]) == 0
    capsys.readouterr()
    with RecordStore(f"sqlite:///{db}") as store:
        [(_, again, n, failed, _)] = store.summary()
        history = store.history(task, again)
    assert again == target and (n, failed) == (8, 0)
    searched = [r for r in history if r.strategy == "evolutionary"]
    assert len(searched) == 4 and all(r.predicted is not None for r in searched)


DEPTHWISE = {
    "dw3x3_112": Task.create("conv2d", (1, 32, 112, 112, 32, 3, 3), pad=1, groups=32),
    "dw3x3_56": Task.create("conv2d", (1, 144, 56, 56, 144, 3, 3), pad=1, groups=144),
    "dw3x3_stride2_odd": Task.create("conv2d", (1, 144, 57, 57, 144, 3, 3), pad=1,
                                     groups=144, stride=2),
}


@pytest.mark.parametrize("cpu", TARGETS)
@pytest.mark.parametrize("shape", DEPTHWISE)
def test_depthwise_default_unrolls_the_window_in_registers(shape, cpu):
    """Depthwise convolution loads its input as vectors along `ow`: the default unrolls `kh`
    beside rows of `oh` (each loaded row feeds up to 3 rows), with equal tiles of 1-2 vectors
    (56 columns: 2 tiles of 28 on AVX-512, 7 of 8 on AVX2), and the full-tile loop keeps its
    accumulators in registers."""
    from tuner.search.default import window_rows, window_width
    target = generated_target(cpu, 1)
    machine = target.machine
    dag = DEPTHWISE[shape].dag()
    tile = register_tile(dag, target)
    ow = dag.axis("ow").extent
    assert (tile.vector_axis, tile.unrolled_axis, tile.reduce_axis, tile.reduce_unroll) == \
        ("ow", "oh", "kh", 3)
    assert tile.width == window_width(ow, machine.lanes)
    tiles = -(-ow // tile.width)
    chunks = -(-tile.width // machine.lanes)
    assert chunks in (1, 2) and tiles * tile.width - ow < tiles  # equal tiles
    assert tile.count <= window_rows(machine, chunks, 3)
    accumulators = tile.count * chunks
    hot, frame_pointer = _reduction_loops(apply_steps(dag, default_schedule(dag, target)),
                                          target)
    full = [body for body in hot if _fmas(body) == accumulators * 3]
    assert full, (tile, [_fmas(body) for body in hot])
    spills = [line for body in full for line in _stack_vector_accesses(body, frame_pointer)]
    assert not spills, "\n".join(spills[:20])


def test_window_width_prefers_equal_tiles_of_two_vectors():
    from tuner.search.default import window_width
    assert window_width(56, 16) == 28    # 2 x (16 + 12), not 3 x 16 and a tail of 8
    assert window_width(28, 16) == 28
    assert window_width(112, 16) == 16   # 7 full vectors beat 4 tiles of 28
    assert window_width(56, 8) == 8      # 7 full ymm
    assert window_width(29, 16) == 29
    assert window_width(5, 16) == 5


# ResNet-50's res5 1x1 (2048 -> 512) as the search found it, on a smaller shape: 16 panels of
# 32 output channels (k.0), each read in 7 passes over the pixels (p.0), 4 input channels per
# step of c.0
PANEL_TASK = Task.create("conv2d", (1, 256, 7, 7, 512, 1, 1), bias=1, relu=1)
PANEL_SCHEDULE = (
    '[{"axis":"k","factors":[32],"kind":"split"},{"axis":"p","factors":[7],"kind":"split"},'
    '{"axis":"c","factors":[4],"kind":"split"},'
    '{"kind":"reorder","order":["k.0","n","p.0","c.0","c.1","p.1","k.1"]},'
    '{"annotation":"unroll","kind":"annotate","loop":"c.1"},'
    '{"annotation":"unroll","kind":"annotate","loop":"p.1"},'
    '{"annotation":"vectorize","kind":"annotate","loop":"k.1"},'
    '{"at":"p.0","kind":"cache_write"},{"kind":"layout_rewrite","operand":"weight"}]')
# the classifier: each panel of b read once (a matrix-vector product)
STREAM_TASK = Task.create("matmul", (1, 1000, 2048), bias=1)
STREAM_SCHEDULE = (
    '[{"axis":"j","factors":[15,1,64],"kind":"split"},{"axis":"k","factors":[8],"kind":"split"},'
    '{"kind":"reorder","order":["j.0","i","j.1","k.0","j.2","k.1","j.3"]},'
    '{"annotation":"vectorize","kind":"annotate","loop":"j.3"},'
    '{"annotation":"unroll","kind":"annotate","loop":"k.1"},'
    '{"annotation":"unroll","kind":"annotate","loop":"j.2"},'
    '{"at":"j.1","kind":"cache_write"},{"kind":"layout_rewrite","operand":"b"}]')


def _nest(task, schedule_json):
    from tuner.ir.schedule import schedule_from_json
    return apply_steps(task.dag(), schedule_from_json(schedule_json))


def test_prefetch_panel_follows_the_loops():
    from tuner.ir.layout import prefetch_panel
    nest = _nest(PANEL_TASK, PANEL_SCHEDULE)
    plan = prefetch_panel(nest, PANEL_TASK.dag().operand("weight"))
    # a panel: 256 input channels x 32 output channels, read in 7 passes, 64 steps each
    assert (plan.part, plan.stride, plan.reuse, plan.steps) == \
        (("k", 0), 256 * 32, (("p", 0),), (("c", 0),))
    # only a packed operand is prefetched; the data is not
    assert prefetch_panel(nest, PANEL_TASK.dag().operand("data")) is None
    # a panel read once is left to the hardware's stream prefetcher
    stream = _nest(STREAM_TASK, STREAM_SCHEDULE)
    assert prefetch_panel(stream, STREAM_TASK.dag().operand("b")) is None
    # the passes (p.0) inside the innermost step (c.0) re-read one step's lines, which L1
    # holds: nothing to prefetch
    whole = PANEL_SCHEDULE.replace('"order":["k.0","n","p.0","c.0","c.1","p.1","k.1"]',
                                   '"order":["k.0","n","c.0","p.0","c.1","p.1","k.1"]'
                                   ).replace('{"at":"p.0","kind":"cache_write"},', '')
    assert prefetch_panel(_nest(PANEL_TASK, whole), PANEL_TASK.dag().operand("weight")) is None


@pytest.mark.parametrize("cpu", TARGETS)
def test_each_step_prefetches_its_share_of_the_next_panel(cpu):
    """7 passes x 64 steps of c.0 share the next panel's 512 lines: 2 prefetcht1 per step,
    in the FMA loop, without a branch around them; none where each panel is read once."""
    target = generated_target(cpu, 1)
    nest = _nest(PANEL_TASK, PANEL_SCHEDULE)
    hot, _ = _reduction_loops(nest, target)
    lines = 256 * 32 * 4 // target.machine.cache_line_bytes
    share = -(-lines // (7 * 64))
    assert [sum("prefetcht1" in line for line in body) for body in hot] == [share] * len(hot)
    assert not any(_forward_branches(body) for body in hot)
    stream = _nest(STREAM_TASK, STREAM_SCHEDULE)
    assert "prefetch" not in str(emit_llvm(stream, target))


@pytest.mark.parametrize("threads", [1, 2])
def test_prefetching_kernels_match_the_reference(threads):
    """Past the last panel the prefetch names addresses outside the weights (harmless, as a
    prefetch never faults); a tail panel (500 = 15 x 32 + 20) and a split of the panels
    between threads change nothing in the result."""
    task = Task.create("conv2d", (1, 96, 7, 7, 500, 1, 1), bias=1, relu=1, residual=1)
    steps = PANEL_SCHEDULE.replace('"loop":"k.1"}', '"loop":"k.1"},'
                                   '{"annotation":"parallel","kind":"annotate","loop":"k.0"}')
    nest = _nest(task, steps if threads > 1 else PANEL_SCHEDULE)
    target = host_target(threads)
    kernel = CompiledKernel(nest, target)
    assert "llvm.prefetch" in kernel.ir_text
    inputs = task.dag().random_inputs(np.random.default_rng(7))
    assert_matches_reference(task.dag(), kernel(*inputs), inputs)
