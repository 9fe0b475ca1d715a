"""Readable pseudo-code of a loop nest: what `tune` prints and what a reviewer reads first."""

from __future__ import annotations

from tuner.ir.dag import DOT_GROUP, Affine
from tuner.errors import ScheduleError
from tuner.ir.layout import (local_pad_plans, packed_parts, read_operand, regroup_dim,
                             transposed_copy)
from tuner.ir.machine import Machine
from tuner.ir.schedule import LoopNest


def _affine_text(expr: Affine) -> str:
    parts = [a if c == 1 else f"{c}*{a}" for a, c in expr.terms]
    if expr.const or not parts:
        parts.append(str(expr.const))
    return "+".join(parts).replace("+-", "-")


def _access_text(nest: LoopNest, name: str) -> str:
    op = nest.dag.operand(name)
    if name in nest.layout_rewrite:
        idx = ", ".join(f"{p.axis}.{p.level}" for p in packed_parts(nest, op))
        return f"{name}_packed[{idx}]"
    if transposed_copy(nest, op):
        idx = ", ".join(_affine_text(e) for e in read_operand(nest, op).index)
        return f"{name}_transposed[{idx}]"
    idx = ", ".join(_affine_text(e) for e in op.index)
    if regroup_dim(nest, op) is not None:
        return f"{name}_grouped[{idx}]"
    suffix = "_padded" if op.padded and nest.pad_mode(name) in ("root", "local") else ""
    return f"{name}{suffix}[{idx}]"


def _local_pad_lines(nest: LoopNest, depth: int) -> list[str]:
    try:
        plans = local_pad_plans(nest)
    except ScheduleError as err:
        return [f"# {err}"] if depth == 1 else []
    return [f"{plan.operand}_padded = pad({plan.operand})  # the {plan.rows} rows this "
            f"iteration reads ({plan.buffer_bytes // 1024} KiB, a buffer of the thread)"
            for plan in plans if plan.depth == depth]


def pseudo_code(nest: LoopNest, machine: Machine | None = None) -> str:
    """The nest as indented loops; with the `machine` it runs on, an int8 kernel's dot
    product names the instruction that sums it (Machine.int8_instruction, or tdpbusd in
    an AMX kernel, whose tile instruction sums the loops inside its amx loop)."""
    dag = nest.dag
    dot = "dot product over" if machine is None or dag.quant is None else \
        f"dot product ({machine.int8_instruction(dag.reduced_range, dag.centered)}) over"
    if any(loop.kind == "amx" for loop in nest.loops):  # the tile instruction sums it all
        dot = "dot product (tdpbusd) over"
    lines: list[str] = []
    for op in dag.inputs:
        if regroup_dim(nest, op) is not None:
            lines.append(f"{op.name}_grouped = regroup({op.name})  # channels in groups of "
                         f"{DOT_GROUP} innermost, padded, once per call")
        elif transposed_copy(nest, op):
            lines.append(f"{op.name}_transposed = swap_last_two_axes({op.name})  # the "
                         f"reduction innermost, once per call")
        elif op.padded and nest.pad_mode(op.name) == "root":
            lines.append(f"{op.name}_padded = pad({op.name})  # zeros around, once per call")
    for name in nest.layout_rewrite:
        lines.append(f"{name}_packed = pack({name})  # once, when the kernel is built")
    out = _access_text(nest, "out")
    addends = [_access_text(nest, op.name) for op in dag.addends]
    epilogue = " + ".join(["acc"] + addends)
    activation = ({1: "relu", 6: "relu6"}.get(dag.relu)
                  or {1: "gelu", 2: "gelu_tanh"}.get(dag.gelu))
    if activation:
        epilogue = f"{activation}({epilogue})"
    if dag.quant is not None and dag.quant.out_type != "int32":
        epilogue = f"{dag.quant.out_type}(({epilogue}) * scale)"
    depth = 0
    target = out
    if nest.cache_write_at is None:
        init = " + ".join(addends) or "0"
        lines.append(f"{out} = {init}  # for every output element")
    for i, loop in enumerate(nest.loops):
        detail = " * ".join(f"{p.axis}.{p.level}:{p.extent}" for p in loop.parts) \
            if len(loop.parts) > 1 else str(loop.extent)
        keyword = {"serial": "for", "parallel": "parallel for", "unroll": "unroll",
                   "vectorize": "vectorize", "dot": dot,
                   "amx": "amx tiles over"}[loop.kind]
        lines.append("  " * depth + f"{keyword} {loop.name} in 0..{detail}:")
        depth += 1
        lines += ["  " * depth + text for text in _local_pad_lines(nest, i + 1)]
        if nest.cache_write_at == i:
            tile = [l.name for l in nest.tile_loops if not l.reduce]
            lines.append("  " * depth + f"acc[{', '.join(tile)}] = 0  # local tile")
            target = f"acc[{', '.join(tile)}]"
    lhs, rhs = _access_text(nest, dag.lhs.name), _access_text(nest, dag.rhs.name)
    if dag.centered:
        lhs, rhs = f"({lhs} - zero_points[0])", f"({rhs} - zero_points[2])"
    lines.append("  " * depth + f"{target} += {lhs} * {rhs}")
    if nest.cache_write_at is not None:
        depth = nest.cache_write_at + 1
        lines.append("  " * depth + f"{out} = {epilogue}  # write-back over the tile")
    elif activation:
        lines.append(f"{out} = {activation}({out})  # for every output element")
    return "\n".join(lines)
