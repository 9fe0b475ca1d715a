"""int8 matmuls summed by AMX tiles (tuner/codegen/amx.py) against the exact integer reference.

The AMX sketch is offered where the CPU has AMX (`amx-tile`, `amx-int8`): its kernels, over
random shapes (fewer rows or columns than a tile, K of every residue modulo a tile's 64 bytes
and the dot group's 4) and random AMX annotations, equal the reference bit for bit. They run
where the host has AMX; elsewhere the same kernels run with the tile instructions modelled in
plain IR (tests/amx_model.py), and the code for an AMX CPU is compiled and read.
"""

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from amx_model import modelled_amx_kernel
from conftest import c_program_calls_int8_matmul, generated_target, kernel_assembly
from schedule_gen import random_int8_task
from tuner.codegen.jit import CompiledKernel
from tuner.errors import ScheduleError
from tuner.ir.machine import amx_tile_counts, has_amx
from tuner.ir.schedule import Annotate, apply_steps, schedule_from_json, schedule_to_json
from tuner.ir.target import Target, host_target
from tuner.ir.task import Task
from tuner.search.annotate import (AMX_SHAPES, amx_annotation, expert_annotation, fits,
                                   genome_from_steps, lower, mutate, sample)
from tuner.search.sketch import amx_applies, generate_sketches

ROOT = Path(__file__).resolve().parent.parent
AMX_FEATURES = ("+amx-int8", "+amx-tile")


def host_has_amx() -> bool:
    return host_target(1).machine.amx


def amx_target(threads: int = 1) -> Target:
    """The host where it has AMX, else code for an AMX CPU (Sapphire Rapids), modelled."""
    if host_has_amx():
        return host_target(threads)
    named = generated_target("sapphirerapids", threads)
    features = sorted(set(named.features.split(",")) | set(AMX_FEATURES))
    return Target(named.triple, named.cpu, ",".join(features), threads)


def _amx_task(rng) -> Task:
    while True:
        task = random_int8_task(rng, "matmul")
        if amx_applies(task.dag(), amx_target().machine):
            return task


def _amx_sketch(dag, target):
    sketches = [s for s in generate_sketches(dag, target.machine) if s.amx]
    assert len(sketches) == 1
    return sketches[0]


def _kernel(nest, target):
    if host_has_amx():
        return CompiledKernel(nest, target)
    return modelled_amx_kernel(nest, target)


def _check(dag, steps, target, rng):
    kernel = _kernel(apply_steps(dag, steps), target)
    for _ in range(2):
        inputs = dag.random_inputs(rng)
        out = kernel(*inputs)
        expected = dag.reference(*inputs)
        assert out.dtype == expected.dtype
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("seed", range(40))
def test_random_amx_schedule_is_exact(seed):
    rng = np.random.default_rng(11000 + seed)
    task = _amx_task(rng)
    if seed % 4 == 0:  # matrices larger than a few tiles, K past several blocks
        m, n, k = (int(x) for x in rng.integers(17, 90, size=3))
        task = Task.create("matmul", (m, n, 4 * k + int(rng.integers(4))), "int8",
                           **{**task.attr_dict, "out_order": 12})
    target = amx_target(1 + seed % 2)
    dag = task.dag()
    sketch = _amx_sketch(dag, target)
    ann = sample(rng, dag, sketch, target) if seed % 5 else expert_annotation(dag, sketch,
                                                                               target)
    steps, _ = lower(dag, sketch, ann, target)
    assert Annotate("k.1", "amx") in steps
    assert schedule_from_json(schedule_to_json(steps)) == steps
    _check(dag, steps, target, rng)


@pytest.mark.parametrize("rows, columns", [(16, 16), (32, 32), (48, 16), (16, 48), (5, 9)])
def test_every_tile_shape_is_exact_at_ragged_edges(rows, columns):
    """M, N and K one past a tile, a tile's rows and columns cut to the matrix, blocks of
    tiles in a cache tile: edge tiles shifted back over their neighbours, and a reduction
    ending in a partial block and a partial dot group."""
    rng = np.random.default_rng(rows * 100 + columns)
    target = amx_target(1)
    for shape in [(rows + 1, columns + 1, 64 + 5), (2 * rows + 3, 3 * columns + 1, 131),
                  (rows, columns, 64)]:
        dag = Task.create("matmul", shape, "int8", bias=True, relu=1, out_type=1).dag()
        sketch = _amx_sketch(dag, target)
        tiles = -(-min(rows, shape[0]) // 16), -(-min(columns, shape[1]) // 16)
        ann = amx_annotation(dag, target, *tiles, row_blocks=2, column_blocks=1)
        assert fits(dag, sketch, ann, target.machine)
        steps, _ = lower(dag, sketch, ann, target)
        _check(dag, steps, target, rng)


def test_amx_code_is_tile_instructions():
    """Code for an AMX CPU: tdpbusd for the products, no vpdpbusd (the register tile has no
    vector products left), the tiles configured once, not per tile."""
    target = amx_target(1)
    dag = Task.create("matmul", (64, 96, 300), "int8", bias=True, out_type=1).dag()
    sketch = _amx_sketch(dag, target)
    steps, nest = lower(dag, sketch, expert_annotation(dag, sketch, target), target)
    asm = kernel_assembly(apply_steps(dag, steps), target)
    assert "tdpbusd" in asm and "tileloadd" in asm and "tilestored" in asm
    # configured in the kernel's entry, and again after its call asking for the tiles
    assert 1 <= asm.count("ldtilecfg") <= 2
    assert "vpdpbusd" not in asm
    from tuner.codegen.pseudo import pseudo_code

    text = pseudo_code(apply_steps(dag, steps), target.machine)
    assert "amx tiles over k.1 in 0..16:" in text and "dot product (tdpbusd) over ki" in text
    assert "vpdpbusd" not in text


def test_the_amx_sketch_is_offered_only_where_the_cpu_has_amx():
    dag = Task.create("matmul", (64, 64, 64), "int8").dag()
    assert any(s.amx for s in generate_sketches(dag, amx_target().machine))
    for cpu in ("x86-64-v4", "znver4"):  # VNNI, no AMX
        machine = generated_target(cpu, 1).machine
        assert not machine.amx
        assert not any(s.amx for s in generate_sketches(dag, machine))
    float_dag = Task.create("matmul", (64, 64, 64)).dag()
    centered = Task.create("batch_matmul", (1, 64, 64, 64), "int8").dag()
    for other in (float_dag, centered, Task.create("matmul", (64, 1, 64), "int8").dag()):
        assert not amx_applies(other, amx_target().machine)
    assert has_amx("+amx-int8,+amx-tile,+avx512f") and not has_amx("+amx-tile,+avx512f")


def test_tile_registers_bound_the_register_tile():
    assert amx_tile_counts(32, 32) == (2, 2)       # 4 sums + 2 A + 2 B = 8
    assert amx_tile_counts(48, 16) == (3, 1)
    assert amx_tile_counts(48, 32) is None         # 6 + 3 + 2 = 11
    assert amx_tile_counts(17, 16) == (2, 1)
    assert (2, 2) in AMX_SHAPES and (3, 2) not in AMX_SHAPES


def test_the_search_keeps_amx_genomes_valid_and_recognises_them():
    rng = np.random.default_rng(3)
    target = amx_target(2)
    dag = Task.create("matmul", (200, 120, 512), "int8", bias=True, out_type=1).dag()
    sketch = _amx_sketch(dag, target)
    sketches = generate_sketches(dag, target.machine)
    ann = sample(rng, dag, sketch, target)
    for _ in range(60):
        ann = mutate(rng, dag, sketch, ann, target)
        assert fits(dag, sketch, ann, target.machine)
        steps, nest = lower(dag, sketch, ann, target)
        apply_steps(dag, steps)  # the whole-nest checks, check_amx among them
        found = genome_from_steps(dag, steps, target, sketches)
        assert found is not None and found[0] == sketch
        assert lower(dag, *found, target)[0] == steps


def _amx_steps(dag, target):
    sketch = _amx_sketch(dag, target)
    steps, _ = lower(dag, sketch, amx_annotation(dag, target, 2, 2), target)
    return steps


@pytest.mark.parametrize("change, message", [
    ("float", "only an int8 matmul"),
    ("unpacked", "must be packed"),
    ("block", "must be k.1 of extent 16"),
    ("too_many_tiles", "more than the 8 tile registers"),
    ("narrow", "at least 16"),
])
def test_impossible_amx_schedules_are_refused(change, message):
    from tuner.ir.schedule import LayoutRewrite, Split

    target = amx_target(1)
    dag = Task.create("matmul", (96, 96, 256), "int8", bias=True, out_type=1).dag()
    steps = list(_amx_steps(dag, target))
    if change == "float":  # a float32 register tile, its k.1 marked amx
        from tuner.search.annotate import Annotation
        from tuner.search.sketch import Sketch

        dag = Task.create("matmul", (96, 96, 256), bias=True).dag()
        ann = Annotation((("i", (1, 1, 4)), ("j", (1, 1, 16)), ("k", (16,))), "j", 0, 0)
        sketch = Sketch(("multi_level_tiling", "cache_write_S1"), "S1")
        steps = list(lower(dag, sketch, ann, target)[0]) + [Annotate("k.1", "amx")]
    elif change == "unpacked":
        steps = [s for s in steps if not isinstance(s, LayoutRewrite)]
    elif change == "block":
        steps = [Split("k", (8,)) if isinstance(s, Split) and s.axis == "k" else s
                 for s in steps]
    elif change == "narrow":
        steps = [Split(s.axis, (1, 1, 8)) if isinstance(s, Split) and s.axis == "j" else s
                 for s in steps]
    else:
        steps = [Split(s.axis, (1, 1, 48)) if isinstance(s, Split) and s.axis in "ij" else s
                 for s in steps]
    with pytest.raises(ScheduleError, match=message):
        apply_steps(dag, tuple(steps))


def test_a_target_without_amx_refuses_amx_code():
    from tuner.codegen.emit import emit_llvm

    target = amx_target(1)
    dag = Task.create("matmul", (32, 32, 64), "int8").dag()
    nest = apply_steps(dag, _amx_steps(dag, target))
    plain = generated_target("x86-64-v4", 1)
    with pytest.raises(ScheduleError, match="has no AMX int8 tiles"):
        emit_llvm(nest, plain)


@pytest.mark.skipif(not host_target(1).machine.amx, reason="the host has no AMX tiles: its "
                    "permission request cannot be shown here (the model needs none)")
def test_a_new_process_runs_amx_code_without_asking_first():
    """Linux refuses tile instructions (SIGILL) to a process that has not asked for them,
    and exec drops the permission: a kernel asks itself, on its first call."""
    script = textwrap.dedent("""
        import numpy as np
        from tuner.ir.target import host_target
        from tuner.ir.task import Task
        from tuner.search.annotate import amx_annotation, lower
        from tuner.search.sketch import amx_sketch
        from tuner.codegen.jit import CompiledKernel
        from tuner.ir.schedule import apply_steps
        target = host_target(2)
        dag = Task.create("matmul", (40, 40, 200), "int8", bias=True, out_type=1).dag()
        steps, nest = lower(dag, amx_sketch(dag), amx_annotation(dag, target, 2, 2), target)
        inputs = dag.random_inputs(np.random.default_rng(0))
        out = CompiledKernel(apply_steps(dag, steps), target)(*inputs)
        assert np.array_equal(out, dag.reference(*inputs))
        print("exact")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "exact"


@pytest.mark.skipif(not host_target(1).machine.amx, reason="the host has no AMX tiles: a "
                    "library of AMX code can be built here, not run")
@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_a_c_program_calls_an_amx_kernel_from_the_library(tmp_path):
    """The shared library's AMX kernel in a C program of its own (a new process, which has
    not asked Linux for the tiles): exact."""
    from tuner.replay.aot import build_library, c_name
    from tuner.replay.source import Choice

    target = host_target(2)
    task = Task.create("matmul", (40, 50, 100), "int8", bias=True, out_type=1)
    dag = task.dag()
    steps, _ = lower(dag, _amx_sketch(dag, target), amx_annotation(dag, target, 2, 2), target)
    nest = apply_steps(dag, steps)
    lib = build_library([Choice(task, target, steps, True, "test", 1.0, target, nest)],
                        tmp_path)
    a, b, bias, scale, zero_points = dag.random_inputs(np.random.default_rng(8))
    assert lib.header.name == "tuner_kernels.h"
    out = c_program_calls_int8_matmul(tmp_path, c_name(task), (40, 50, 100),
                                      (a, b, bias, scale, zero_points), packed=True)
    np.testing.assert_array_equal(out, dag.reference(a, b, bias, scale, zero_points))


def test_a_named_cpu_with_amx_is_probed_for_it():
    """`--cpu sapphirerapids` (from any host that can run its code) tunes with AMX: the probe
    compiles a tile product for the named CPU in a process of its own."""
    from tuner.ir.target import _probe

    assert {"+amx-int8", "+amx-tile"} <= set(_probe("sapphirerapids").split(","))
    assert "amx" not in _probe("znver4") and "amx" not in _probe("x86-64-v3")
