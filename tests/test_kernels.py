"""Differential tests: every generated kernel against the operator's numpy reference."""

import numpy as np
import pytest

from conftest import assert_matches_reference, generated_target, skip_unless_host_runs
from schedule_gen import random_schedule, random_task
from tuner.errors import TunerError
from tuner.codegen.jit import CompiledKernel
from tuner.ir.schedule import apply_steps, schedule_from_json, schedule_to_json

CASES = 200


@pytest.mark.parametrize("seed", range(CASES))
def test_random_schedule_matches_reference(seed, target1, target2):
    rng = np.random.default_rng(seed)
    task = random_task(rng, ["conv2d", "matmul", "batch_matmul"][seed % 3])
    steps = random_schedule(rng, task)
    dag = task.dag()
    assert schedule_from_json(schedule_to_json(steps)) == steps
    target = target2 if seed % 4 == 0 else target1
    kernel = CompiledKernel(apply_steps(dag, steps), target)
    inputs = dag.random_inputs(rng)
    out = kernel(*inputs)
    assert_matches_reference(dag, out, inputs)
    # a second call on the same output buffer must not depend on its old contents
    again = kernel.new_output()
    again.fill(np.nan)
    kernel.run(again, *kernel.pack(*inputs))
    np.testing.assert_array_equal(again, out)


@pytest.mark.parametrize("seed", range(24))
def test_a_transposed_copy_of_a_pointwise_input_matches_reference(seed, target1, target2):
    """1x1 convolutions whose vectors run along the output channels read their data from a
    copy with the channels innermost (tuner.ir.layout.transposed_copy), made once per call
    and shared among the threads: random shapes and schedules of that kind, on one and two
    threads, a second call on the freed heap."""
    from tuner.codegen.pseudo import pseudo_code
    from tuner.ir.layout import transposed_copy
    from tuner.ir.task import Task

    rng = np.random.default_rng(4000 + seed)
    n, c, h, w = (int(rng.integers(1, 3)),) + tuple(int(x) for x in
                                                     rng.integers(2, 24, size=3))
    task = Task.create("conv2d", (n, c, h, w, int(rng.integers(2, 24)), 1, 1),
                       bias=bool(rng.integers(2)), relu=int(rng.integers(2)))
    dag = task.dag()
    for _ in range(1000):  # a schedule whose vector loop is along the output channels
        steps = random_schedule(rng, task)
        nest = apply_steps(dag, steps)
        if transposed_copy(nest, dag.lhs):
            break
    else:
        raise AssertionError("no random schedule vectorizes the output channels")
    assert "data_transposed = swap_last_two_axes(data)" in pseudo_code(nest)
    kernel = CompiledKernel(nest, target2 if seed % 2 else target1)
    for _ in range(2):
        inputs = dag.random_inputs(rng)
        assert_matches_reference(dag, kernel(*inputs), inputs)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape, stride, pad, dilation, groups", [
    ((1, 32, 17, 23, 32, 3, 3), 1, 1, 1, 32),   # depthwise
    ((1, 8, 15, 16, 16, 5, 5), 2, 2, 1, 1),     # stride 2: more padding before than after
    ((1, 6, 9, 11, 8, 3, 3), 1, 2, 2, 1),       # dilated
    ((2, 3, 7, 5, 4, 3, 3), 1, 1, 1, 1),        # batch 2: padded rows of both images
])
def test_root_padded_copies_match_reference(shape, stride, pad, dilation, groups, threads):
    """The padded copy made per call (shared among the threads when there are several)
    holds the input where it lies and zeros everywhere else, for every padded dimension."""
    from tuner.search.default import default_schedule
    from tuner.ir.schedule import Pad
    from tuner.ir.target import host_target
    from tuner.ir.task import Task
    dag = Task.create("conv2d", shape, stride=stride, pad=pad, dilation=dilation,
                      groups=groups).dag()
    target = host_target(threads)
    steps = tuple(Pad(s.operand, "root") if isinstance(s, Pad) else s
                  for s in default_schedule(dag, target))
    assert Pad(dag.lhs.name, "root") in steps
    kernel = CompiledKernel(apply_steps(dag, steps), target)
    for seed in range(2):  # a second call reuses the heap the first one freed
        inputs = dag.random_inputs(np.random.default_rng(seed))
        assert_matches_reference(dag, kernel(*inputs), inputs)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape, stride, pad, dilation, groups, g_tile", [
    ((1, 32, 17, 23, 32, 3, 3), 1, 1, 1, 32, 4),   # depthwise, 4 channels per tile
    ((1, 30, 19, 21, 30, 3, 3), 2, 1, 1, 30, 7),   # stride 2, a tail tile of 2 channels
    ((1, 12, 9, 11, 24, 3, 3), 1, 2, 2, 6, 1),     # dilated, grouped, 2 output channels each
    ((3, 8, 7, 5, 8, 5, 5), 1, 2, 1, 8, 3),        # batch 3: tiles across images
])
def test_local_padded_copies_match_reference(shape, stride, pad, dilation, groups, g_tile,
                                             threads):
    """Local padding copies, per outer tile, the padded rows the tile reads into a buffer of
    the thread and reads them through a moved base pointer: every tile (a tail tile, tiles
    of several images, every thread's) reads its own input and zeros where it is padded.
    The copy sits where the plan says, in the pseudo-code too."""
    from tuner.ir.layout import local_pad_plan
    from tuner.codegen.pseudo import pseudo_code
    from tuner.ir.schedule import Annotate, CacheWrite, Fuse, Pad, Reorder, Split
    from tuner.ir.target import host_target
    from tuner.ir.task import Task
    dag = Task.create("conv2d", shape, stride=stride, pad=pad, dilation=dilation,
                      groups=groups).dag()
    target = host_target(threads)
    steps = [Split("g", (g_tile,)), Split("ow", (8,)),
             Reorder(("n", "g.0", "k", "oh", "ow.0", "c", "kh", "kw", "g.1", "ow.1")),
             Fuse(("n", "g.0")), Annotate("n+g.0", "parallel"), Annotate("ow.1", "vectorize"),
             Annotate("g.1", "unroll"), CacheWrite("ow.0"), Pad("data", "local")]
    nest = apply_steps(dag, steps)
    plan = local_pad_plan(nest, dag.lhs)
    assert plan.depth == 1 and plan.copies == shape[0] * -(-groups // g_tile)
    assert f"data_padded = pad(data)  # the {plan.rows} rows" in pseudo_code(nest)
    kernel = CompiledKernel(nest, target)
    for seed in range(2):
        inputs = dag.random_inputs(np.random.default_rng(seed))
        assert_matches_reference(dag, kernel(*inputs), inputs)


def test_local_padding_needs_a_small_enough_tile():
    """A dense convolution's outer tiles all read every input channel: no tile is small
    enough to copy, a clear ScheduleError names the operand; the sampler and the default
    fall back to the root copy there and use the local one for depthwise layers."""
    from tuner.search.default import default_schedule
    from tuner.errors import ScheduleError
    from tuner.ir.layout import local_pad_plan, local_padding_pays
    from tuner.ir.schedule import Pad
    from tuner.ir.target import host_target
    from tuner.ir.task import Task
    dense = Task.create("conv2d", (1, 128, 56, 56, 64, 3, 3), pad=1).dag()
    assert not local_padding_pays(dense)
    steps = tuple(Pad(s.operand, "local") if isinstance(s, Pad) else s
                  for s in default_schedule(dense, host_target(1)))
    with pytest.raises(ScheduleError, match="pad 'data' local: no outer loop reads at most"):
        local_pad_plan(apply_steps(dense, steps), dense.lhs)
    assert Pad("data", "root") in default_schedule(dense, host_target(1))
    depthwise = Task.create("conv2d", (1, 144, 57, 57, 144, 3, 3), stride=2, pad=1,
                            groups=144).dag()
    assert local_padding_pays(depthwise)
    assert Pad("data", "local") in default_schedule(depthwise, host_target(1))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape, groups, bias, relu", [
    ((1, 64, 56, 56, 256, 1, 1), 1, False, False),  # ResNet's expanding 1x1
    ((2, 12, 7, 9, 20, 1, 1), 4, True, True),       # batch 2, groups, odd pixels, epilogue
    ((1, 17, 1, 1, 5, 1, 1), 1, True, False),       # one pixel
])
def test_pointwise_convolution_is_a_product_over_pixels(shape, groups, bias, relu, threads):
    """A 1x1 stride-1 unpadded convolution indexes its image as N,C,H*W (one pixel axis the
    schedule can split into full vectors) while users pass and get NCHW arrays: the default
    schedule, and a kernel bound to its weight writing into `out=`, match the reference."""
    from tuner.search.default import default_schedule
    from tuner.ir.target import host_target
    from tuner.ir.task import Task
    n, c, h, w, k, _, _ = shape
    dag = Task.create("conv2d", shape, groups=groups, bias=bias, relu=relu).dag()
    assert [a.name for a in dag.spatial_axes][-2:] == ["k", "p"]
    assert dag.axis("p").extent == h * w
    assert dag.lhs.array_shape == (n, c, h, w) and dag.output.array_shape == (n, k, h, w)
    kernel = CompiledKernel(apply_steps(dag, default_schedule(dag, host_target(threads))),
                    host_target(threads))
    inputs = dag.random_inputs(np.random.default_rng(5))
    assert inputs[0].shape == (n, c, h, w)
    assert_matches_reference(dag, kernel(*inputs), inputs)
    bound = kernel.bind(**{op.name: arr for op, arr in zip(dag.inputs, inputs) if op.constant})
    out = np.full((n, k, h, w), np.nan, dtype=np.float32)
    assert bound(inputs[0], out=out) is out
    assert_matches_reference(dag, out, inputs)
    with pytest.raises(TunerError, match=r"data has shape \(1, 2, 3\)"):
        bound(np.zeros((1, 2, 3), np.float32))


@pytest.mark.parametrize("cpu", ["x86-64-v3", "x86-64-v4"])
@pytest.mark.parametrize("stride, width, groups", [
    (2, 8, 1), (2, 16, 1), (2, 32, 1), (3, 16, 1), (4, 8, 1), (2, 16, 6), (4, 16, 6),
])
def test_strided_lanes_are_loaded_whole(stride, width, groups, cpu):
    """Vectors along the output columns of a strided convolution read the input `stride`
    elements apart: with root padding (no bounds checks) the lanes come from contiguous
    loads and a shuffle, not one scalar load per lane; full vectors and the tail (21 output
    columns) both match the reference, and nothing past the padded input is read."""
    from dataclasses import replace as change
    from tuner.search.default import register_tile, tiled_schedule
    from tuner.ir.layout import access_class
    from tuner.ir.task import Task
    target = generated_target(cpu, 1)
    pad = 1
    w = (21 - 1) * stride + 3 - 2 * pad  # 21 output columns: full vectors and a tail
    dag = Task.create("conv2d", (1, 6, 7, w, 6, 3, 3), stride=stride, pad=pad,
                      groups=groups).dag()
    assert dag.axis("ow").extent == 21
    tile = change(register_tile(dag, target), vector_axis="ow", width=width,
                  unrolled_axis="k", count=dag.axis("k").extent, reduce_axis="kw",
                  reduce_unroll=3)
    nest = apply_steps(dag, tiled_schedule(dag, target, tile))
    assert access_class(nest, dag.lhs) == "strided"
    kernel = CompiledKernel(nest, target)
    skip_unless_host_runs(target)
    for seed in range(2):
        inputs = dag.random_inputs(np.random.default_rng(seed))
        assert_matches_reference(dag, kernel(*inputs), inputs)


@pytest.mark.parametrize("shape, stride, pad, groups", [
    ((1, 144, 57, 57, 144, 3, 3), 2, 1, 144),   # MobileNet's stride-2 depthwise
    ((1, 24, 45, 45, 40, 5, 5), 2, 2, 1),
    ((1, 32, 40, 40, 32, 3, 3), 5, 1, 32),      # a stride read lane by lane (gathers)
    ((1, 3, 224, 224, 64, 7, 7), 2, 3, 1),
])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cpu", ["x86-64-v3", "x86-64-v4"])
def test_the_default_schedule_always_builds(shape, stride, pad, groups, cpu, threads):
    """However long its gathers make the body, the default schedule stays within the code
    size a build accepts (it unrolls less), so tuning can always start from it."""
    from tuner.codegen.emit import emit_llvm
    from tuner.search.default import default_schedule
    from tuner.ir.layout import MAX_CODE_SIZE, code_size, ir_instructions
    from tuner.ir.schedule import check_nest
    from tuner.ir.task import Task
    target = generated_target(cpu, threads)
    dag = Task.create("conv2d", shape, stride=stride, pad=pad, groups=groups).dag()
    nest = apply_steps(dag, default_schedule(dag, target))
    check_nest(nest)
    assert code_size(nest, target.machine.lanes) <= MAX_CODE_SIZE
    assert ir_instructions(str(emit_llvm(nest, target))) <= MAX_CODE_SIZE


def test_a_bound_kernel_reuses_addresses_only_of_the_same_unconverted_arrays():
    """A bound kernel keeps the last array of each position with its address: calling it
    again on the same array sees what the caller wrote into it since, a float64 input (a
    converted copy) is converted anew each call, another array is read from its own memory,
    and an `out` made read-only after it was used is refused."""
    from tuner.search.default import default_schedule
    from tuner.ir.target import host_target
    from tuner.ir.task import Task
    dag = Task.create("matmul", (5, 24, 7)).dag()
    target = host_target(1)
    kernel = CompiledKernel(apply_steps(dag, default_schedule(dag, target)), target)
    rng = np.random.default_rng(3)
    a, b = dag.random_inputs(rng)
    bound = kernel.bind(b=b)
    out = kernel.new_output()
    for _ in range(2):
        assert bound(a, out=out) is out
        np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)
        a[...] = rng.uniform(-1, 1, a.shape)  # written in place: the next call must see it
    wide = a.astype(np.float64)
    for _ in range(2):
        np.testing.assert_allclose(bound(wide, out=out), wide @ b, rtol=1e-5, atol=1e-5)
        wide[...] = rng.uniform(-1, 1, wide.shape)
    other = rng.uniform(-1, 1, a.shape).astype(np.float32)
    np.testing.assert_allclose(bound(other, out=out), other @ b, rtol=1e-5, atol=1e-5)
    out.flags.writeable = False
    with pytest.raises(TunerError, match="out must be a writeable"):
        bound(a, out=out)


@pytest.mark.parametrize("op, shape, attrs", [
    ("conv2d", (1, 16, 9, 9, 32, 3, 3), {"pad": 1, "bias": True, "relu": 1}),
    ("conv2d", (1, 48, 7, 7, 24, 1, 1), {"relu": 6}),  # pointwise: N,K,H*W indexing
    ("conv2d", (1, 24, 10, 10, 24, 3, 3), {"pad": 1, "groups": 24}),
    ("matmul", (13, 40, 70), {"bias": True, "relu": 1}),
])
@pytest.mark.parametrize("cache_write", [True, False])
def test_residual_is_added_before_the_relu(op, shape, attrs, cache_write):
    """A residual (an input of the output's shape, a skip connection) is added after the bias
    and before the ReLU, on write-back of the local tile and, without one, in the init pass;
    the task key names it only when set, so keys made before it existed are unchanged."""
    from tuner.search.default import default_schedule
    from tuner.ir.schedule import CacheWrite
    from tuner.ir.target import host_target
    from tuner.ir.task import Task
    task = Task.create(op, shape, residual=True, **attrs)
    plain = Task.create(op, shape, **attrs)
    assert "residual=1" in task.key and "residual" not in plain.key
    assert Task.create(op, shape, residual=False, **attrs) == plain
    assert Task.from_key(task.key) == task
    dag = task.dag()
    assert dag.inputs[-1].name == "residual" and not dag.inputs[-1].constant
    assert dag.inputs[-1].array_shape == dag.output.array_shape
    target = host_target(1)
    steps = default_schedule(dag, target)
    if not cache_write:
        steps = tuple(s for s in steps if not isinstance(s, CacheWrite))
    kernel = CompiledKernel(apply_steps(dag, steps), target)
    inputs = list(dag.random_inputs(np.random.default_rng(7)))
    inputs[-1] = inputs[-1] * 8  # the residual decides the sign of many outputs
    out = kernel(*inputs)
    assert_matches_reference(dag, out, inputs)
    without = plain.dag().reference(*inputs[:-1])
    assert not np.allclose(out, without, atol=1e-3)


@pytest.mark.parametrize("op, shape, attrs", [
    ("conv2d", (1, 16, 9, 9, 32, 3, 3), {"pad": 1, "bias": True}),
    ("matmul", (13, 40, 70), {}),
    ("batch_matmul", (2, 5, 24, 30), {"bias": True}),
])
@pytest.mark.parametrize("cache_write", [True, False])
def test_relu6_clips_at_zero_and_six(op, shape, attrs, cache_write):
    """ReLU6 (relu=6) is applied on write-back of the local tile and, without one, in a pass
    over the output; both clip at 0 and at 6, and the task key keeps relu=1 for plain ReLU."""
    from tuner.search.default import default_schedule
    from tuner.ir.schedule import CacheWrite
    from tuner.ir.target import host_target
    from tuner.ir.task import Task
    task = Task.create(op, shape, relu=6, **attrs)
    assert "relu=6" in task.key and "relu=1" in Task.create(op, shape, relu=True, **attrs).key
    dag = task.dag()
    target = host_target(1)
    steps = default_schedule(dag, target)
    if not cache_write:
        steps = tuple(s for s in steps if not isinstance(s, CacheWrite))
    kernel = CompiledKernel(apply_steps(dag, steps), target)
    inputs = [x * 4 for x in dag.random_inputs(np.random.default_rng(6))]
    out = kernel(*inputs)
    assert (out == 6).any() and (out == 0).any() and ((out > 0) & (out < 6)).any()
    assert_matches_reference(dag, out, inputs)


@pytest.mark.parametrize("cpu", ["x86-64-v3", "x86-64-v4"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape, attrs, unrolled, count, width", [
    # 11 columns of 40 channels: chunks of a full vector and a tail, 3 tiles of k (the last
    # one partial, so the general path writes back too)
    ((1, 16, 9, 11, 40, 3, 3), {"pad": 1, "bias": True, "relu": 1, "residual": True},
     "ow", 11, 16),
    # pointwise, 35 pixels unrolled in one tile: rows in chunks of 16, 16 and 3 lanes on
    # AVX-512 (the last too few to transpose: lane-wise beside transposed blocks), 8s and 3
    # on AVX2
    ((1, 24, 5, 7, 48, 1, 1), {"relu": 6, "residual": True}, "p", 35, 32),
    # 7 rows (ResNet's last stage) beside 2 vectors, plain bias
    ((1, 32, 7, 7, 64, 1, 1), {"bias": True}, "p", 7, 32),
])
def test_tiles_vectorized_across_output_rows_are_transposed_on_write_back(
        shape, attrs, unrolled, count, width, threads, cpu, monkeypatch):
    """A register tile vectorized along the output channels (not contiguous in NCHW) and
    unrolled along the output row is transposed in registers on write-back, so the row is
    stored (and its residual loaded) as vectors: the transposed path is taken, and every
    tile, full or partial, with bias, residual and ReLU / ReLU6, matches the reference."""
    from dataclasses import replace as change
    from tuner.codegen import emit as codegen
    from tuner.search.default import register_tile, tiled_schedule
    from tuner.ir.task import Task
    calls = []
    real = codegen.transpose
    monkeypatch.setattr(codegen, "transpose", lambda b, rows, w: calls.append(
        (len(rows), w)) or real(b, rows, w))
    target = generated_target(cpu, threads)
    dag = Task.create("conv2d", shape, **attrs).dag()
    tile = change(register_tile(dag, target), vector_axis="k", width=width,
                  unrolled_axis=unrolled, count=count)
    kernel = CompiledKernel(apply_steps(dag, tiled_schedule(dag, target, tile)), target)
    lanes = target.machine.lanes
    assert calls and all(rows > 1 and w > 1 and w <= lanes and rows <= lanes
                         for rows, w in calls)
    skip_unless_host_runs(target)
    inputs = list(dag.random_inputs(np.random.default_rng(11)))
    if attrs.get("residual"):
        inputs[-1] = inputs[-1] * 8
    out = kernel(*inputs)
    assert_matches_reference(dag, out, inputs)
