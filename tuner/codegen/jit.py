"""Compiling a LoopNest for the host CPU and calling it on numpy arrays.

`compile_nest(nest, target)` optimises the module for the target's CPU and features,
JIT-compiles it with MCJIT and returns a `CompiledKernel`. MCJIT takes ownership of its
TargetMachine, so every engine gets a new one (reusing one aborts the next compile; a
TargetMachine costs ~0.3 ms). Parallel kernels call libgomp, loaded once into the process: the
system's `libgomp.so.1`, else the copy scikit-learn's wheel ships.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import time
from functools import cache

import numpy as np

from tuner.buffers import aligned_copy, aligned_empty

from tuner.codegen.emit import emit_llvm, pack_function_name
from tuner.errors import ScheduleError
from tuner.ir.layout import ir_instructions, packed_dtype, packed_layout
from tuner.ir.dag import DTYPES, as_element_type
from tuner.errors import CodegenError, TunerError
from tuner.ir.llvm_init import llvm
from tuner.ir.schedule import LoopNest
from tuner.ir.target import Target

OPT_LEVEL = 3


@cache
def load_libgomp() -> str:
    candidates = [ctypes.util.find_library("gomp") or "libgomp.so.1"]
    try:
        import sklearn
        libs = os.path.join(os.path.dirname(os.path.dirname(sklearn.__file__)),
                            "scikit_learn.libs")
        candidates += sorted(glob.glob(os.path.join(libs, "libgomp*.so*")))
    except ImportError:
        pass
    for path in candidates:
        try:
            llvm.load_library_permanently(path)
            return path
        except RuntimeError:
            continue
    raise TunerError("no libgomp found for parallel kernels; install the system package "
                     "libgomp1 or run with --threads 1")


def target_machine(target: Target, reloc: str = "default"):
    t = llvm.Target.from_triple(target.triple)
    return t.create_target_machine(cpu=target.cpu, features=target.features, opt=OPT_LEVEL,
                                   reloc=reloc, codemodel="jitdefault" if reloc == "default"
                                   else "default")


LIGHT_PIPELINE = ("sroa", "instruction_combine", "simplify_cfg", "new_gvn",
                  "instruction_combine", "aggressive_dce", "simplify_cfg")


def optimize(ir_text: str, target: Target, tm=None):
    """Parses, verifies and optimises for the target; returns the module.

    A light pipeline, not O3: the generator already emits explicit vectors, unrolled register
    tiles and folded indices, so promoting the accumulators (SROA) and cleaning up is all that
    is left. Measured here: the same GFLOPS as O3 on the default schedules (conv2d 3x3 173 vs
    173, matmul 1024 167 vs 163) at half the compile time, and no pathological case: O3's
    LoopLoadElimination took 75 s on one sampled schedule with a 28K-float local tile."""
    try:
        mod = llvm.parse_assembly(ir_text)
        mod.verify()
    except RuntimeError as err:
        raise CodegenError(f"generated IR does not verify: {err}") from None
    mod.triple = target.triple
    tm = tm or target_machine(target)
    mod.data_layout = str(tm.target_data)
    pb = llvm.create_pass_builder(tm, llvm.create_pipeline_tuning_options(speed_level=OPT_LEVEL))
    pm = llvm.create_new_module_pass_manager()
    for name in LIGHT_PIPELINE:
        getattr(pm, f"add_{name}_pass")()
    pm.run(mod, pb)
    return mod


def compile_object(nest: LoopNest, target: Target, name: str = "kernel",
                   max_instructions: int | None = None) -> bytes:
    """Position-independent machine code for the target: loadable by MCJIT in another process
    (the measurement runner) and linkable into a shared library (AOT export). With
    `max_instructions`, IR longer than that is refused (ScheduleError) before LLVM sees it:
    compile time grows with it (tuner/ir/layout.py)."""
    ir_text = str(emit_llvm(nest, target, name))
    if max_instructions is not None:
        count = ir_instructions(ir_text)
        if count > max_instructions:
            raise ScheduleError(f"the kernel is {count} IR instructions; at most "
                                f"{max_instructions} (unroll fewer loops, or gather less)")
    return compile_ir_object(ir_text, target)


def compile_ir_object(ir_text: str, target: Target) -> bytes:
    """Position-independent machine code for the target from LLVM IR text."""
    tm = target_machine(target, reloc="pic")
    return tm.emit_object(optimize(ir_text, target, tm))


class CompiledKernel:
    """A compiled schedule: `kernel(*inputs) -> out`, or `run(out, *args)` on packed args.

    Built from the nest in this process, or from an object file `compile_object` made
    elsewhere (the measurement workers compile in one process and time in another)."""

    def __init__(self, nest: LoopNest, target: Target, name: str = "kernel",
                 obj: bytes | None = None):
        self.nest, self.target, self.name = nest, target, name
        self.dag = nest.dag
        start = time.perf_counter()
        if target.threads > 1:
            load_libgomp()
        tm = target_machine(target)
        if obj is None:
            self.ir_text = str(emit_llvm(nest, target, name))
            self._engine = llvm.create_mcjit_compiler(optimize(self.ir_text, target, tm), tm)
        else:
            self.ir_text = None
            self._engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), tm)
            self._engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self._engine.finalize_object()
        n_args = 1 + len(self.dag.inputs)
        proto = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * n_args))
        self._fn = proto(self._address(name))
        pack_proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
        self._packers = {op: pack_proto(self._address(pack_function_name(name, op)))
                         for op in nest.layout_rewrite}
        self.compile_s = time.perf_counter() - start

    def _address(self, symbol: str) -> int:
        address = self._engine.get_function_address(symbol)
        if not address:
            raise CodegenError(f"compiled code has no function {symbol!r}")
        return address

    def packed_shape(self, operand: str) -> tuple[int, ...]:
        parts = packed_layout(self.nest, self.dag.operand(operand), self.target.machine)
        return tuple(p.extent for p in parts)

    def packed_dtype(self, operand: str) -> np.dtype:
        return DTYPES[packed_dtype(self.nest, self.dag.operand(operand), self.target.machine)]

    def pack(self, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        """User inputs -> kernel arguments: float32, C-contiguous, constants packed."""
        ops = self.dag.inputs
        if len(inputs) != len(ops):
            raise TunerError(f"{self.dag.op} kernel takes {len(ops)} arrays "
                             f"({', '.join(o.name for o in ops)}), got {len(inputs)}")
        return tuple(self.prepare(op.name, arr) for op, arr in zip(ops, inputs))

    def prepare(self, operand: str, array: np.ndarray, align: bool = True) -> np.ndarray:
        """One user input as the kernel takes it: of the operand's type (float32 unless the
        kernel is int8), C-contiguous, packed if rewritten; with `align`, on a cache line
        (tuner/buffers.py: a copy where it is not; packed operands always are)."""
        op = self.dag.operand(operand)
        arr = np.ascontiguousarray(as_element_type(array, op.dtype, op.name, op.value_range))
        if arr.shape != op.array_shape:
            raise TunerError(f"{op.name} has shape {arr.shape}, expected {op.array_shape}")
        arr = arr.reshape(op.shape)  # a view: C-contiguous, same bytes
        if op.name in self._packers:
            packed = aligned_empty(self.packed_shape(op.name), self.packed_dtype(op.name))
            self._packers[op.name](packed.ctypes.data, arr.ctypes.data)
            return packed
        return aligned_copy(arr) if align else arr

    def new_output(self) -> np.ndarray:
        return aligned_empty(self.dag.output.array_shape, DTYPES[self.dag.output.dtype])

    def run(self, out: np.ndarray, *args: np.ndarray) -> None:
        """The timed call: no conversion, no packing, no allocation."""
        self.run_at(out.ctypes.data, *(a.ctypes.data for a in args))

    def run_at(self, out: int, *args: int) -> None:
        """`run` on addresses: the caller keeps the arrays alive for the call."""
        self._fn(out, *args)

    def __call__(self, *inputs: np.ndarray) -> np.ndarray:
        """Converts and packs the inputs on every call; see `bind` for constant weights."""
        out = self.new_output()
        self.run(out, *self.pack(*inputs))
        return out

    def bind(self, **constants: np.ndarray) -> "BoundKernel":
        """Fixes constant operands (e.g. `weight=`), packed once now: the returned callable
        takes only the remaining inputs, in order."""
        names = [op.name for op in self.dag.inputs]
        unknown = sorted(set(constants) - {op.name for op in self.dag.inputs if op.constant})
        if unknown:
            raise TunerError(f"{self.dag.op} has no constant operand {unknown[0]!r}; constant "
                             f"operands: {[op.name for op in self.dag.inputs if op.constant]}")
        return BoundKernel(self, names, constants)

    def close(self) -> None:
        if getattr(self, "_engine", None) is not None:
            self._engine.close()
            self._engine = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: llvmlite may already be gone
            pass


class BoundKernel:
    """A kernel with its constant operands packed once: `bound(data) -> out`.

    A bound kernel is called again and again on the same arrays (a model's activations, a
    preallocated `out`), and in Python an array's address costs about 1.5 us
    (`.ctypes.data`): a third of the whole call overhead, a few percent of a kernel as small
    as a 127x257x131 matmul. So the packed constants' addresses are taken once, and the last
    array seen in each position is kept with its address: the same object again (checked by
    identity, and still the right dtype, shape and layout) reuses it. Holding the array keeps
    its memory alive and in place (numpy refuses to resize an array something else
    references), so the address stays valid; an array that had to be converted is never
    kept, since its copy would not see the caller's later writes."""

    def __init__(self, kernel: CompiledKernel, names: list[str], constants: dict[str, np.ndarray]):
        self.kernel = kernel
        self._free = [n for n in names if n not in constants]
        self._packed = {name: kernel.prepare(name, arr) for name, arr in constants.items()}
        self._addresses = {name: arr.ctypes.data for name, arr in self._packed.items()}
        self._shapes = {op.name: op.array_shape for op in kernel.dag.inputs}
        self._dtypes = {op.name: DTYPES[op.dtype] for op in kernel.dag.inputs}
        self._out_dtype = DTYPES[kernel.dag.output.dtype]
        self._last: dict[str, tuple[np.ndarray, int]] = {}  # position -> (array, address)

    def _input_address(self, name: str, array, kept: list) -> int:
        last = self._last.get(name)
        if last is not None and last[0] is array and array.dtype == self._dtypes[name] \
                and array.shape == self._shapes[name] and array.flags.c_contiguous:
            return last[1]
        # the caller's array as it is, aligned or not: a copy per call costs more than it saves
        prepared = self.kernel.prepare(name, array, align=False)
        kept.append(prepared)  # alive until the call returns
        address = prepared.ctypes.data
        if isinstance(array, np.ndarray) and prepared.base is array or prepared is array:
            self._last[name] = (array, address)  # the caller's own memory: reusable
        return address

    def _output_address(self, out) -> int:
        last = self._last.get("out")
        if last is not None and last[0] is out and out.dtype == self._out_dtype \
                and out.shape == self.kernel.dag.output.array_shape \
                and out.flags.c_contiguous and out.flags.writeable:
            return last[1]
        if (not isinstance(out, np.ndarray) or out.dtype != self._out_dtype
                or out.shape != self.kernel.dag.output.array_shape
                or not out.flags.c_contiguous or not out.flags.writeable):
            raise TunerError(f"out must be a writeable C-contiguous "
                             f"{self.kernel.dag.output.dtype} array of shape "
                             f"{self.kernel.dag.output.array_shape}, got "
                             f"{getattr(out, 'dtype', type(out).__name__)} "
                             f"{getattr(out, 'shape', '')}")
        address = out.ctypes.data
        self._last["out"] = (out, address)
        return address

    def __call__(self, *inputs: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The output, written into `out` if given (of the output's type, C-contiguous, the
        output's shape): a caller that reuses one buffer saves the allocation and the page faults of a
        fresh output on every call."""
        if len(inputs) != len(self._free):
            raise TunerError(f"this kernel takes {len(self._free)} arrays "
                             f"({', '.join(self._free)}), got {len(inputs)}")
        given = dict(zip(self._free, inputs))
        kept: list[np.ndarray] = []
        addresses = []
        for op in self.kernel.dag.inputs:
            address = self._addresses.get(op.name)
            if address is None:
                address = self._input_address(op.name, given[op.name], kept)
            addresses.append(address)
        if out is None:
            out = self.kernel.new_output()
            out_address = out.ctypes.data
        else:
            out_address = self._output_address(out)
        self.kernel.run_at(out_address, *addresses)
        return out
