"""Ahead-of-time export for C and C++ builds: an object file, a shared library, a header.

Each kernel is compiled for the target as position-independent code under a C name derived
from its task (`tuner_conv2d_1x64x56x56x64x3x3_s1_p1_d1_g1`), the objects are linked into one
relocatable object and one shared library with the system C compiler (`$CC`, else `cc`), and
the header declares every kernel and weight-packing function with a comment naming the task,
the target, where the schedule came from, its measured GFLOPS and the schedule itself.
Parallel kernels call libgomp: link with -lgomp (the shared library already does).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tuner.version import __version__
from tuner.replay.source import Choice
from tuner.codegen.emit import pack_function_name
from tuner.ir.dag import DTYPES
from tuner.ir.layout import packed_dtype, packed_parts
from tuner.errors import TunerError
from tuner.codegen.jit import compile_object
from tuner.ir.schedule import schedule_to_json
from tuner.ir.task import Task


@dataclass(frozen=True)
class LinkedFunction:
    """A function compiled elsewhere that goes into the library beside the kernels (a model
    package's segment functions), with its declaration for the header."""

    symbol: str
    object_code: bytes
    declaration: str


@dataclass(frozen=True)
class Library:
    object_file: Path
    shared_library: Path
    header: Path
    symbols: tuple[str, ...]


# The C type of each operand element type (tuner.ir.dag.DTYPES).
C_TYPES = {"float32": "float", "uint8": "uint8_t", "int8": "int8_t", "int32": "int32_t",
           "int16": "int16_t"}


def c_name(task: Task) -> str:
    attrs = task.attr_dict
    name = f"tuner_{task.op}_{'x'.join(map(str, task.shape))}"
    if task.op == "conv2d":
        name += f"_s{attrs['stride']}_p{attrs['pad']}_d{attrs['dilation']}_g{attrs['groups']}"
    name += "_bias" if attrs.get("bias") else ""
    name += "_residual" if attrs.get("residual") else ""
    name += {0: "", 6: "_relu6"}.get(int(attrs.get("relu", 0)), "_relu")
    name += {0: "", 1: "_gelu"}.get(int(attrs.get("gelu", 0)), "_gelu_tanh")
    for order in ("a_order", "b_order", "out_order"):  # named in the key only when not plain
        name += f"_{order.replace('_order', '')}{attrs[order]}" if order in attrs else ""
    if task.dtype != "float32":
        name += f"_{task.dtype}" + {0: "", 1: "_u8out", 2: "_f32out"}[attrs.get("out_type", 0)]
        name += "_reduced" if attrs.get("reduce_range") else ""
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def _declarations(choice: Choice, symbol: str) -> str:
    dag = choice.task.dag()
    nest = choice.nest
    origin = (f"tuned, from {choice.source}, measured {choice.gflops:.1f} GFLOPS"
              + ("" if choice.record_target is None or choice.record_target.key ==
                 choice.target.key else f" on another target ({choice.record_target.key})")
              if choice.tuned else f"default schedule (no tuned record in {choice.source})")
    upper = symbol.upper()
    lines = ["/*", f" * task:     {choice.task.key}",
             f" * target:   {choice.target.key} ({choice.target.cpu}, "
             f"{choice.target.threads} threads)",
             f" * schedule: {origin}",
             f" * steps:    {schedule_to_json(choice.steps)}", " */"]
    out_shape = "x".join(map(str, dag.output.array_shape))
    # float32 kernels count floats, as they always have; int8 ones count elements
    unit = "FLOATS" if dag.quant is None else "ELEMENTS"
    lines.append(f"#define {upper}_OUT_{unit} {dag.output.size}  /* out[{out_shape}] */")
    params = [f"{C_TYPES[dag.output.dtype]} *restrict out"]
    for op in dag.inputs:
        packed = op.name in nest.layout_rewrite
        ctype = C_TYPES[op.dtype]
        if packed:
            size = math.prod(p.extent for p in packed_parts(nest, op))
            shape = "x".join(map(str, op.array_shape))
            packed_type = C_TYPES[packed_dtype(nest, op, choice.target.machine)]
            lines.append(f"#define {upper}_{op.name.upper()}_PACKED_{unit} {size}")
            if dag.quant is not None:  # elements of the packed type, which may be wider
                width = DTYPES[packed_dtype(nest, op, choice.target.machine)]().itemsize
                lines.append(f"#define {upper}_{op.name.upper()}_PACKED_BYTES {size * width}")
            lines.append(f"/* {op.name}[{shape}] -> its packed layout ({packed_type}), once "
                         f"per weight */")
            lines.append(f"void {pack_function_name(symbol, op.name)}({packed_type} "
                         f"*restrict dst, const {ctype} *restrict {op.name});")
            ctype = packed_type
        if dag.quant is not None and op is dag.quant.zero_points:
            names = [f"{dag.lhs.name}'s", "the output's"] + \
                ([f"{dag.rhs.name}'s (subtracted from both)"] if dag.centered else [])
            lines.append(f"/* zero_points: {', '.join(names)} */")
        if op.value_range is not None:
            low, high = op.value_range
            lines.append(f"/* every {op.name} value in [{low}, {high}]: others give wrong "
                         f"sums */")
        params.append(f"const {ctype} *restrict {op.name}{'_packed' if packed else ''}")
    lines.append(f"void {symbol}({', '.join(params)});")
    return "\n".join(lines)


def _cc() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise TunerError("no C compiler found to link the library; install one or set $CC")
    return cc


def build_library(choices: list[Choice], out_dir: str | Path, name: str = "tuner_kernels",
                  functions: tuple[LinkedFunction, ...] = ()) -> Library:
    if not choices and not functions:
        raise TunerError("nothing to build: no tasks given")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    symbols = [c_name(c.task) for c in choices]
    if len(set(symbols)) != len(symbols):
        raise TunerError("the same task is listed twice")
    cc = _cc()
    with tempfile.TemporaryDirectory() as tmp:
        objects = []
        for choice, symbol in zip(choices, symbols):
            path = Path(tmp) / f"{symbol}.o"
            path.write_bytes(compile_object(choice.nest, choice.target, symbol))
            objects.append(str(path))
        for function in functions:
            path = Path(tmp) / f"{function.symbol}.o"
            path.write_bytes(function.object_code)
            objects.append(str(path))
        obj = out / f"{name}.o"
        so = out / f"lib{name}.so"
        for command in ([cc, "-r", "-o", str(obj)] + objects,
                        [cc, "-shared", "-o", str(so), str(obj), "-lgomp"]):
            proc = subprocess.run(command, capture_output=True, text=True)
            if proc.returncode:
                raise TunerError(f"{' '.join(command[:3])} failed: {proc.stderr.strip()}")
    guard = f"{name.upper()}_H"
    header = out / f"{name}.h"
    header.write_text(
        f"/* Generated by tuner {__version__}: kernels for one CPU. Link with -l{name} "
        f"(or {name}.o -lgomp). */\n#ifndef {guard}\n#define {guard}\n\n#include <stdint.h>\n\n"
        f"#ifdef __cplusplus\n"
        f"extern \"C\" {{\n#define restrict __restrict__\n#endif\n\n"
        + "\n\n".join([_declarations(c, s) for c, s in zip(choices, symbols)]
                      + [f.declaration for f in functions])
        + f"\n\n#ifdef __cplusplus\n}}\n#endif\n#endif /* {guard} */\n")
    return Library(obj, so, header, tuple(symbols) + tuple(f.symbol for f in functions))


def task_from_spec(spec: str) -> Task:
    """'conv2d:1,64,56,56,64,3,3:pad=1,stride=1' -> Task (the CLI's --task); `dtype=int8`
    among the attributes makes an int8 task."""
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise TunerError(f"--task expects OP:SHAPE[:k=v,...], got {spec!r}")
    try:
        shape = tuple(int(x) for x in parts[1].split(","))
        attrs = dict(kv.split("=") for kv in parts[2].split(",")) if len(parts) == 3 else {}
        dtype = attrs.pop("dtype", "float32")
        return Task.create(parts[0], shape, dtype, **{k: int(v) for k, v in attrs.items()})
    except ValueError:
        raise TunerError(f"--task expects OP:SHAPE[:k=v,...] with integers, got {spec!r}") \
            from None
