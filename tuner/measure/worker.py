"""The worker side of measurement: code that runs in child processes a kernel may kill.

Two roles. A *builder* lowers a schedule and compiles it to position-independent machine code
(`build`). A *runner* loads that code, checks its first result against the numpy reference and
times it (`run`). Both answer every request with a plain dict: either the payload or an error
kind and a short detail, never an exception, so the parent only has to handle a worker that
died or hung. Requests and answers are plain data (JSON texts, numbers, object-file bytes).
"""

from __future__ import annotations

import importlib
import itertools
import os
import resource
import time
import traceback

import numpy as np

from tuner.buffers import aligned_clone
from tuner.errors import CodegenError, ScheduleError, ShapeError
from tuner.measure.result import ErrorKind
from tuner.ir.dag import DTYPES

_INPUTS: dict[str, tuple] = {}  # runner: per task, random inputs and the reference output
# Copies of the weights a cold-weight timing rotates through: together twice the L3, so that
# each call's copy was evicted since its last use; at most this many (tiny weights).
MAX_WEIGHT_COPIES = 4096


def _error(kind: ErrorKind, detail: str) -> dict:
    return {"ok": False, "error": kind.value, "detail": detail[:500]}


def build(request: dict) -> dict:
    from tuner.codegen.jit import compile_object
    from tuner.ir.layout import MAX_CODE_SIZE, check_code_size
    from tuner.ir.schedule import apply_steps, schedule_from_json
    from tuner.ir.target import Target
    from tuner.ir.task import Task

    start = time.perf_counter()
    target = Target.from_json(request["target"])
    try:
        task = Task.from_json(request["task"])
        nest = apply_steps(task.dag(), schedule_from_json(request["schedule"]))
        check_code_size(nest, target.machine.lanes)  # keeps every compile short
        obj = compile_object(nest, target, max_instructions=MAX_CODE_SIZE)
    except (ScheduleError, ShapeError) as err:
        return _error(ErrorKind.INVALID_SCHEDULE, str(err))
    except (CodegenError, RuntimeError) as err:
        return _error(ErrorKind.COMPILE_ERROR, str(err))
    return {"ok": True, "object": obj, "compile_s": time.perf_counter() - start}


def _task_data(task, seed: int):
    key = task.key
    if key not in _INPUTS:
        dag = task.dag()
        inputs = dag.random_inputs(np.random.default_rng(seed))
        _INPUTS.clear()  # one task at a time: inputs of large layers are hundreds of MB
        expected = dag.reference(*inputs).astype(DTYPES[dag.output.dtype])
        _INPUTS[key] = (inputs, expected)
    return _INPUTS[key]


def run(request: dict) -> dict:
    from tuner.codegen.jit import CompiledKernel
    from tuner.ir.schedule import apply_steps, schedule_from_json
    from tuner.ir.target import Target
    from tuner.ir.task import Task
    from tuner.measure.timing import time_callable

    task = Task.from_json(request["task"])
    dag = task.dag()
    nest = apply_steps(dag, schedule_from_json(request["schedule"]))
    target = Target.from_json(request["target"])
    try:
        kernel = CompiledKernel(nest, target, obj=request["object"])
    except (CodegenError, RuntimeError) as err:
        return _error(ErrorKind.COMPILE_ERROR, f"loading the object failed: {err}")
    try:
        inputs, expected = _task_data(task, request["seed"])
        args = kernel.pack(*inputs)
        out = kernel.new_output()
        if request["check"]:
            # an output element the kernel never writes cannot pass: NaN, or for an int8
            # kernel's integers the expected value with its lowest bit flipped
            if out.dtype == np.float32:
                out.fill(np.nan)
            else:
                np.bitwise_xor(expected, 1, out=out)
            kernel.run(out, *args)
            rtol, atol = dag.tolerance()
            if not np.allclose(out, expected, rtol=rtol, atol=atol):
                bad = np.argwhere(~np.isclose(out, expected, rtol=rtol, atol=atol))
                where = tuple(int(x) for x in bad[0])
                return _error(ErrorKind.WRONG_RESULT,
                              f"{len(bad)} of {out.size} outputs differ from the reference; "
                              f"first at {where}: {out[where]!r} vs {expected[where]!r}")
        call = (rotating_weights(kernel, out, args, [op.constant for op in dag.inputs],
                                 2 * target.machine.l3_bytes)
                if request.get("cold_weights") else lambda: kernel.run(out, *args))
        timing = time_callable(call, min_sample_s=request["min_sample_s"],
                               samples=request["samples"], warmup=request["warmup"],
                               max_total_s=request["max_total_s"])
    except MemoryError:
        return _error(ErrorKind.OUT_OF_MEMORY, f"out of memory for {task.key}")
    finally:
        kernel.close()
    return {"ok": True, "costs_s": list(timing.costs_s), "number": timing.number}


def rotating_weights(kernel, out, args: tuple, constant: list[bool], total_bytes: int):
    """A call of the kernel that reads another copy of its constant operands each time,
    cycling through enough copies to fill `total_bytes` (at least 2, at most
    MAX_WEIGHT_COPIES); the other arguments are the same arrays each time."""
    weight_bytes = sum(a.nbytes for a, c in zip(args, constant) if c)
    if not weight_bytes:
        return lambda: kernel.run(out, *args)
    count = min(MAX_WEIGHT_COPIES, max(2, -(-total_bytes // weight_bytes)))
    copies = [[aligned_clone(a) if c else a for a, c in zip(args, constant)]
              for _ in range(count)]
    addresses = itertools.cycle([(out.ctypes.data, *(a.ctypes.data for a in copy))
                                 for copy in copies])

    def call(copies=copies) -> None:
        # `copies` is bound to keep the arrays alive: `addresses` holds integers only
        kernel.run_at(*next(addresses))
    return call


def resolve(path: str):
    """'module:function' -> the function (the builder can be swapped, e.g. by tests)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when its parent dies (PR_SET_PDEATHSIG), however
    it dies: a worker stuck in a hanging candidate would otherwise spin a core for ever. The
    parent may already be gone by the time this runs: then exit now."""
    import ctypes
    import signal
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):  # not Linux: the parent check on every wait remains
        pass
    if os.getppid() != parent:
        os._exit(0)


def blas_on_one_thread() -> None:
    """Holds numpy's BLAS to this thread for good. The runner computes each task's reference
    with numpy (a float64 matmul goes through OpenBLAS), and OpenBLAS's workers then
    busy-wait some 0.1 s before they sleep: while the task's first candidate was timed, so it
    shared its cores with them. Measured on Zen 5: the default of prime.mnk (127x257x131) at
    2 threads read 1.1 GFLOPS in the search and runs at 308 alone; bert.ffn1's at 1 thread
    75-90 against 224-240. A reference on one thread takes longer, once per task."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # then the first candidate of a matmul task may read low
        return
    threadpool_limits(limits=1, user_api="blas")


def worker_main(conn, role: str, cpus: list[int] | None, memory_bytes: int | None,
                builder: str, parent: int | None = None) -> None:
    """Serves the builder's or the runner's requests (`serve`)."""
    if parent is not None:
        die_with_parent(parent)
    if cpus:
        os.sched_setaffinity(0, cpus)
    if role == "run":
        blas_on_one_thread()
    if memory_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    handler = resolve(builder) if role == "build" else run

    def answer(request: dict) -> dict:
        try:
            return handler(request)
        except MemoryError:
            return _error(ErrorKind.OUT_OF_MEMORY, "out of memory")
        except Exception:  # a bug of ours: report it with the candidate, keep serving
            return _error(ErrorKind.RUNTIME_ERROR, traceback.format_exc(limit=3))
    serve(conn, answer)


def serve(conn, answer) -> None:
    """Sends `answer(request)` for each request until the parent sends None or goes away
    (then returns quietly: nobody is left to read an answer or a traceback). `answer` turns
    its own failures into answers. The measure workers serve so, and the search's lowering
    processes (tuner/search/lowering.py)."""
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if request is None:
            return
        try:
            conn.send(answer(request))
        except OSError:  # the parent is gone (BrokenPipeError, ConnectionResetError)
            return


if __name__ == "__main__":
    # started by tuner.measure.measurer as `python -m tuner.measure.worker FD JSON`: a fresh
    # interpreter, so no OpenMP threads are inherited and the caller's __main__ is never
    # re-imported
    import json
    import signal
    import sys
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    config = json.loads(sys.argv[2])
    worker_main(Connection(int(sys.argv[1])), config["role"], config["cpus"],
                config["memory_bytes"], config["builder"], config.get("parent"))
