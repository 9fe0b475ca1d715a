"""Schedules: JSON round trips, clear errors for steps that do not apply, default schedules."""

import json

import numpy as np
import pytest

from conftest import assert_matches_reference
from schedule_gen import random_schedule, random_task
from tuner.codegen.emit import emit_llvm
from tuner.search.default import default_schedule
from tuner.errors import ScheduleError, ShapeError
from tuner.codegen.jit import CompiledKernel
from tuner.ir.layout import MAX_CODE_SIZE, check_code_size
from tuner.codegen.pseudo import pseudo_code
from tuner.ir.schedule import (Annotate, CacheWrite, Fuse, LayoutRewrite, Pad, Reorder, Split,
                            apply_steps, schedule_from_json, schedule_to_json)
from tuner.ir.task import Task

MATMUL = Task.create("matmul", (32, 48, 16))
CONV = Task.create("conv2d", (1, 4, 9, 9, 8, 3, 3), pad=1)


@pytest.mark.parametrize("steps, message", [
    ((Split("x", (4,)),), "no loop named 'x'"),
    ((Split("i", (0,)),), "factors must be integers >= 1"),
    ((Split("i", (4,)), Split("i.1", (2,))), "not an unsplit axis"),
    ((Annotate("k", "vectorize"),), "cannot vectorize reduction loop 'k'"),
    ((Annotate("k", "parallel"),), "cannot parallelise reduction loop 'k'"),
    ((Annotate("i", "parallel"), Annotate("i", "unroll")), "already parallel"),
    ((Annotate("j", "parallel"),), "must be the outermost loop"),
    ((Annotate("i", "vectorize"),), "must be the innermost loop"),
    ((Annotate("i", "spin"),), "kind must be one of"),
    ((Reorder(("k", "i")),), "is not a permutation"),
    ((Split("i", (4,)), Reorder(("i.1", "i.0", "j", "k"))), "must stay inside the outer"),
    ((Fuse(("i", "k")),), "not consecutive"),
    ((Fuse(("j", "k")),), "mixes spatial and reduction"),
    ((CacheWrite("j"), Reorder(("k", "i", "j"))), "outside the tile"),
    ((CacheWrite("i"), CacheWrite("j")), "cache_write given twice"),
    ((LayoutRewrite("a"),), "is not constant"),
    ((LayoutRewrite("w"),), "no input operand 'w'"),
    ((Pad("a", "root"),), "has no padding"),
    ((Split("k", (8,)), Reorder(("i", "j", "k.0", "k.1")), Annotate("k.1", "unroll"),
      Annotate("i", "unroll")), None),
])
def test_invalid_steps_raise_clear_errors(steps, message):
    if message is None:  # a control: the same kind of schedule, legal
        apply_steps(MATMUL.dag(), steps)
        return
    with pytest.raises(ScheduleError, match=message):
        apply_steps(MATMUL.dag(), steps)


def test_limits_on_code_size_and_tile_size():
    big = Task.create("matmul", (512, 512, 64)).dag()
    unrolled = apply_steps(big, (Split("i", (64,)), Split("j", (64,)),
                                 Reorder(("i.0", "j.0", "k", "i.1", "j.1")),
                                 Annotate("i.1", "unroll"), Annotate("j.1", "unroll")))
    with pytest.raises(ScheduleError, match=f"IR instructions; at most {MAX_CODE_SIZE}"):
        check_code_size(unrolled, 16)
    with pytest.raises(ScheduleError, match="tile has 131072 floats"):
        apply_steps(big, (Split("i", (256,)), CacheWrite("i.0")))
    with pytest.raises(ScheduleError, match="has 512 lanes; at most 64"):
        apply_steps(big, (Reorder(("i", "k", "j")), Annotate("j", "vectorize")))
    with pytest.raises(ScheduleError, match="pad mode must be one of"):
        apply_steps(CONV.dag(), (Pad("data", "sideways"),))


@pytest.mark.parametrize("text, message", [
    ("{}", "a schedule is a JSON list"),
    ('[{"kind": "explode"}]', "not a schedule step"),
    ('[{"kind": "split", "axis": "i"}]', "must have exactly the fields"),
    ('[{"kind": "split", "axis": "i", "factors": [2.5]}]', "list of integers"),
    ('[{"kind": "reorder", "order": "ijk"}]', "list of loop names"),
    ('[{"kind": "cache_write", "at": 3}]', "must be a string"),
])
def test_malformed_json_is_refused(text, message):
    with pytest.raises(ScheduleError, match=message):
        schedule_from_json(text)


def test_json_round_trip_is_exact_and_canonical():
    rng = np.random.default_rng(7)
    for _ in range(200):
        task = random_task(rng)
        steps = random_schedule(rng, task)
        text = schedule_to_json(steps)
        assert schedule_from_json(text) == steps
        assert schedule_to_json(schedule_from_json(json.loads(text))) == text


@pytest.mark.parametrize("op, shape, attrs, message", [
    ("conv2d", (1, 64, 0, 56, 64, 3, 3), {}, "7 positive integers"),
    ("conv2d", (1, 64, 56, 56, 64, 3), {}, "N,C,H,W,K,R,S"),
    ("conv2d", (1, 6, 8, 8, 4, 3, 3), {"groups": 4}, "must divide C=6"),
    ("conv2d", (1, 4, 2, 2, 4, 5, 5), {}, "empty output"),
    ("conv2d", (1, 4, 8, 8, 4, 3, 3), {"stride": 0}, "stride expects an integer >= 1"),
    ("conv2d", (1, 4, 8, 8, 4, 3, 3), {"padding": 1}, "no attribute 'padding'"),
    ("conv2d", (1, 4, 8, 8, 4, 3, 3), {"relu": 2},
     r"relu expects one of 0 \(none\), 1 \(ReLU\), 6 \(ReLU6\)"),
    ("matmul", (4, 4), {}, "M,N,K"),
    ("batch_matmul", (1, 2, 3, -4), {}, "B,M,N,K"),
    ("softmax", (4,), {}, "unknown operator 'softmax'"),
])
def test_invalid_shapes_raise_clear_errors(op, shape, attrs, message):
    with pytest.raises(ShapeError, match=message):
        Task.create(op, shape, **attrs)


@pytest.mark.parametrize("seed", range(40))
def test_default_schedule_is_valid_and_correct(seed, target1, target2):
    rng = np.random.default_rng(1000 + seed)
    task = random_task(rng)
    target = target2 if seed % 2 else target1
    dag = task.dag()
    kernel = CompiledKernel(apply_steps(dag, default_schedule(dag, target)), target)
    inputs = dag.random_inputs(rng)
    assert_matches_reference(dag, kernel(*inputs), inputs)


@pytest.mark.parametrize("task", [
    Task.create("matmul", (97, 131, 67), bias=True, relu=True),          # primes: tails
    Task.create("conv2d", (1, 7, 13, 11, 19, 3, 3), stride=2, pad=1),
    Task.create("conv2d", (2, 12, 10, 10, 12, 3, 3), pad=2, dilation=2, groups=12),  # depthwise
    Task.create("conv2d", (1, 8, 9, 9, 6, 1, 1), groups=2, bias=True),
    Task.create("batch_matmul", (3, 17, 33, 5), relu=True),
])
def test_default_schedule_on_awkward_shapes(task, target2):
    dag = task.dag()
    kernel = CompiledKernel(apply_steps(dag, default_schedule(dag, target2)), target2)
    inputs = dag.random_inputs(np.random.default_rng(3))
    assert_matches_reference(dag, kernel(*inputs), inputs)


def test_ir_and_pseudo_code_can_be_printed(target2):
    dag = CONV.dag()
    nest = apply_steps(dag, default_schedule(dag, target2))
    text = str(emit_llvm(nest, target2))
    assert "define void @\"kernel\"" in text and "GOMP_parallel" in text
    assert "llvm.fma.v" in text and "pack_weight" in text
    code = pseudo_code(nest)
    assert "vectorize" in code and "weight_packed" in code and "data_padded" in code


def test_kernel_checks_its_inputs(target1):
    dag = MATMUL.dag()
    kernel = CompiledKernel(apply_steps(dag, ()), target1)
    a, b = dag.random_inputs(np.random.default_rng(0))
    from tuner.errors import TunerError
    with pytest.raises(TunerError, match="takes 2 arrays"):
        kernel(a)
    with pytest.raises(TunerError, match=r"b has shape \(48, 16\), expected \(16, 48\)"):
        kernel(a, b.reshape(48, 16))
