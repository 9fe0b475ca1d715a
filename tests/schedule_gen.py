"""Random valid schedules and shapes for differential tests.

Deliberately wilder than the search's sampler: any split (tails included), any order that keeps
each axis's tiles nested, fused parallel prefixes, cache_write anywhere legal, unrolling of any
small loop, every padding mode and layout rewrite, so code generation meets every combination.
"""

from __future__ import annotations

import math

import numpy as np

from tuner.ir.layout import pad_at_root_where_local_fails
from tuner.ir.schedule import (MAX_TILE_FLOATS, Annotate, CacheWrite, Fuse, LayoutRewrite, Pad,
                            Reorder, Split, apply_steps)
from tuner.ir.task import Task


def random_int8_task(rng: np.random.Generator, op: str | None = None,
                     reduce_range: bool = False) -> Task:
    """An int8 conv2d, matmul or batch_matmul (`op`; conv2d or matmul if None): any output
    type, bias and ReLU or not, channel counts and K of every residue modulo the dot group
    (overhanging groups), depthwise and grouped; with `reduce_range`, weights of reduced
    range (the same draws)."""
    op = op or str(rng.choice(["conv2d", "matmul"]))
    epilogue = {"bias": bool(rng.integers(2)), "relu": int(rng.integers(2)),
                "out_type": int(rng.integers(3))}
    if reduce_range:
        epilogue["reduce_range"] = True
    if op == "batch_matmul":  # two uint8 activations, K of every residue modulo 4 too
        shape = tuple(int(x) for x in rng.integers(1, 21, size=4))
        orders = {name: int(rng.choice([123, 213])) for name in ("a_order", "b_order",
                                                                  "out_order")}
        return Task.create(op, shape, "int8", **orders, **epilogue)
    if op == "matmul":
        shape = tuple(int(x) for x in rng.integers(1, 41, size=3))
        return Task.create(op, shape, "int8", out_order=int(rng.choice([12, 12, 21])),
                           **epilogue)
    groups = int(rng.choice([1, 1, 2, 3]))
    c = groups * int(rng.integers(1, 10))
    k = groups * int(rng.integers(1, 6))
    if rng.random() < 0.2:  # depthwise
        groups = c = k
    r, s = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    stride, dilation, pad = int(rng.integers(1, 3)), int(rng.integers(1, 3)), int(rng.integers(0, 3))
    if rng.random() < 0.2:
        r = s = stride = 1
        pad = 0
    h = int(rng.integers(dilation * (r - 1) + 1, 14))
    w = int(rng.integers(dilation * (s - 1) + 1, 14))
    return Task.create(op, (int(rng.integers(1, 3)), c, h, w, k, r, s), "int8", stride=stride,
                       pad=pad, dilation=dilation, groups=groups, **epilogue)


def random_task(rng: np.random.Generator, op: str | None = None) -> Task:
    op = op or str(rng.choice(["conv2d", "matmul", "batch_matmul"]))
    epilogue = {"bias": bool(rng.integers(2)), "relu": int(rng.choice([0, 1, 6]))}
    if op != "batch_matmul" and not epilogue["relu"] and rng.random() < 0.3:
        epilogue["gelu"] = int(rng.choice([1, 2]))
    if op == "matmul":
        shape = tuple(int(x) for x in rng.integers(1, 41, size=3))
        if rng.random() < 0.25:  # C stored transposed (attention's keys), no residual then
            return Task.create(op, shape, out_order=21, **epilogue)
        return Task.create(op, shape, residual=bool(rng.random() < 0.3), **epilogue)
    if op == "batch_matmul":
        shape = (int(rng.integers(1, 4)),) + tuple(int(x) for x in rng.integers(1, 25, size=3))
        orders = {name: int(rng.choice([123, 213])) for name in ("a_order", "b_order",
                                                                  "out_order")}
        return Task.create(op, shape, **epilogue, **orders)
    groups = int(rng.choice([1, 1, 2, 3]))
    c = groups * int(rng.integers(1, 5))
    k = groups * int(rng.integers(1, 6))
    r, s = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    stride, dilation, pad = int(rng.integers(1, 3)), int(rng.integers(1, 3)), int(rng.integers(0, 3))
    if rng.random() < 0.2:  # pointwise: the template's other definition (a pixel axis)
        r = s = stride = 1
        pad = 0
    h = int(rng.integers(dilation * (r - 1) + 1, 14))
    w = int(rng.integers(dilation * (s - 1) + 1, 14))
    return Task.create(op, (int(rng.integers(1, 3)), c, h, w, k, r, s), stride=stride, pad=pad,
                       dilation=dilation, groups=groups, residual=bool(rng.random() < 0.3),
                       **epilogue)


def _factors(rng: np.random.Generator, extent: int) -> tuple[int, ...]:
    count = int(rng.integers(1, 4))
    out = []
    for _ in range(count):
        if rng.random() < 0.5:
            divisors = [d for d in range(1, extent + 1) if extent % d == 0]
            out.append(int(rng.choice(divisors)))
        else:
            out.append(int(rng.integers(1, max(2, extent) + 1)))
    return tuple(out)


def random_schedule(rng: np.random.Generator, task: Task):
    """A random valid schedule. An int8 task's always accumulates locally (cache_write), and
    mostly sums its dot axis, unsplit and innermost, with the dot instruction."""
    dag = task.dag()
    int8 = dag.quant is not None
    dot = dag.dot_axis if dag.dot_axis and rng.random() < 0.8 else None
    steps = []
    levels: dict[str, list[str]] = {}
    for axis in dag.axes:
        if axis.extent > 1 and axis.name != dot and rng.random() < 0.7:
            factors = _factors(rng, axis.extent)
            steps.append(Split(axis.name, factors))
            levels[axis.name] = [f"{axis.name}.{i}" for i in range(len(factors) + 1)]
        else:
            levels[axis.name] = [axis.name]
    while True:  # an int8 nest needs a spatial loop outside every reduction (cache_write)
        # a random interleaving that keeps each axis's levels in order
        pending = {a: list(names) for a, names in levels.items() if a != dot}
        order = []
        while pending:
            axis = str(rng.choice(sorted(pending)))
            order.append(pending[axis].pop(0))
            if not pending[axis]:
                del pending[axis]
        order += [dot] if dot else []
        first = order[0].split(".")[0]
        if not int8 or not dag.axis(first).reduce:
            break
    steps.append(Reorder(tuple(order)))
    nest = apply_steps(dag, steps, check=False)
    loops = list(nest.loops)
    reduce_of = {l.name: l.reduce for l in loops}
    extent_of = {l.name: l.extent for l in loops}

    names = [l.name for l in loops]
    if not reduce_of[names[0]] and rng.random() < 0.5:
        span = 1
        while span < len(names) and not reduce_of[names[span]] and rng.random() < 0.5:
            span += 1
        if span > 1:
            steps.append(Fuse(tuple(names[:span])))
            names = ["+".join(names[:span])] + names[span:]
            reduce_of[names[0]] = False
            extent_of[names[0]] = math.prod(extent_of[n] for n in names[0].split("+"))
        steps.append(Annotate(names[0], "parallel"))
    inner = names[-2] if dot else names[-1]
    if not reduce_of[inner] and "+" not in inner and extent_of[inner] <= 64 \
            and rng.random() < 0.7 and len(names) > 1 + bool(dot):
        steps.append(Annotate(inner, "vectorize"))
    if dot:
        steps.append(Annotate(dot, "dot"))
    unrolled = 1
    for name in names[1:-1 - bool(dot)]:
        if "+" not in name and extent_of[name] <= 8 and unrolled * extent_of[name] <= 64 \
                and rng.random() < 0.3:
            steps.append(Annotate(name, "unroll"))
            unrolled *= extent_of[name]
    legal = []
    for i, name in enumerate(names):
        if any(reduce_of[n] for n in names[:i + 1]):
            break
        tile = math.prod(extent_of[n] for n in names[i + 1:] if not reduce_of[n])
        if tile <= MAX_TILE_FLOATS:
            legal.append(name)
    if int8 and not legal:  # no local tile fits: another schedule
        return random_schedule(rng, task)
    if legal and (int8 or rng.random() < 0.7):
        steps.append(CacheWrite(str(rng.choice(legal))))
    for op in dag.inputs:
        if op.padded and rng.random() < 0.6:
            steps.append(Pad(op.name, str(rng.choice(["inline", "root", "local"]))))
        if op.constant and op.name != "bias" and rng.random() < 0.5:
            steps.append(LayoutRewrite(op.name))
    # valid by construction (fail loudly here if not); no outer tile small enough to copy
    # for local padding: pad at the root
    steps, _ = pad_at_root_where_local_fails(tuple(steps), apply_steps(dag, steps))
    return tuple(steps)
