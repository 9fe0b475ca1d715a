"""Measuring candidates on this CPU, safely: worker processes a kernel may crash or hang.

`Measurer(target, options).measure([MeasureInput]) -> [MeasureResult]` returns one result per
candidate, in order, whatever happens to it. Builders (compile to machine code) and a runner
(check against numpy, then time) are persistent processes, each a fresh interpreter (`python -m
tuner.measure.worker`), so none inherits OpenMP threads (a fork after OpenMP threads ran breaks
OpenMP in the child) and the caller's `__main__` is never re-imported. A segfault shows up as
EOF on the pipe and the exit signal, a hang as a missed deadline; either way the worker is
replaced and the batch goes on.

Cores: timing never shares a core with other work. There is a builder on every core, pinned to
it, and the runner is pinned to the last `threads` cores; the runner starts only while no
builder on its cores is building. Builders on the other (spare) cores build all the time;
those on the runner's cores take a build only while the runner has nothing to time, or, with
no spare core, until the batch is built (then it is timed). Compiling costs several times what
loading, checking and timing do (tuning light SqueezeNet at 1 thread on Zen 3: 130-175 s of
compiles against ~35 s): on a 2-core machine timing 1-thread kernels both cores now compile,
where a builder on the spare core alone had left the other idle for most of a batch; with many
spare cores the runner's builders rarely get a turn, and timing overlaps building.
Builders are recycled every `recycle_after` builds because LLVM's O3 pipeline leaks
(~200 kB per module). Timing protocol: warm-up, then `samples` samples of at least
`min_sample_s` each (tuner/measure/timing.py); caches are not flushed between samples (a
warm-cache policy, the same for every candidate).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

from tuner.errors import ScheduleError, ShapeError
from tuner.measure.result import ErrorKind, MeasureResult
from tuner.ir.schedule import LoopNest, Step, apply_steps, schedule_to_json
from tuner.ir.target import Target
from tuner.ir.task import Task


@dataclass(frozen=True, slots=True)
class MeasureInput:
    task: Task
    steps: tuple[Step, ...]
    # the checked loop nest of `steps`, if the caller has it (the search does): not lowered again
    nest: LoopNest | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class MeasureOptions:
    build_timeout_s: float = 15.0    # lowering + LLVM: ~0.1 s typically, seconds at the limits
    run_timeout_s: float = 20.0      # loading, checking and timing one candidate
    min_sample_s: float = 1e-3       # a sample repeats the call until it lasts this long
    samples: int = 7                 # the median of 7 varied 2-4% between runs
    warmup: int = 1
    max_total_s: float = 0.5         # timing budget per candidate: slow ones get fewer samples
    check: bool = True               # compare the first run with the numpy reference
    # Time every call with the constant operands (weights) read from memory, as in a model,
    # where the rest of the network evicts a layer's weights before it runs again (each call
    # reads another copy of them: measure_worker.rotating_weights); the input and output
    # stay as warm as a loop leaves them, as the previous layer leaves its output.
    cold_weights: bool = False
    seed: int = 0                    # inputs are random arrays drawn with this seed
    recycle_after: int = 200         # builds per builder process before it is replaced
    memory_fraction: float = 0.75    # address-space limit per worker, of physical memory
    builder: str = "tuner.measure.worker:build"


def _physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# What measuring a task holds at once, in multiples of its float32 operands and output: the
# user's arrays, the packed / padded copies, the kernel's output and numpy's float64 reference.
MEASURE_MEMORY_FACTOR = 4


def check_task_fits_memory(task: Task, options: MeasureOptions = MeasureOptions()) -> None:
    """Refuses at once a task whose arrays cannot be allocated on this machine, naming the
    size, instead of failing every candidate after minutes."""
    dag = task.dag()
    data = 4 * sum(op.size for op in dag.inputs + (dag.output,))
    limit = _physical_memory() * options.memory_fraction
    if data * MEASURE_MEMORY_FACTOR > limit:
        raise ShapeError(f"{task.key}: its operands and output take {data / 2**30:.1f} GiB; "
                         f"measuring needs about {MEASURE_MEMORY_FACTOR}x that, and workers "
                         f"here may use {limit / 2**30:.1f} GiB")


def _death(exitcode: int | None) -> tuple[ErrorKind, str]:
    if exitcode is not None and exitcode < 0:
        sig = signal.Signals(-exitcode)
        if sig is signal.SIGKILL:
            return ErrorKind.OUT_OF_MEMORY, "worker killed by SIGKILL (the out-of-memory killer?)"
        return ErrorKind.CRASH, f"worker killed by {sig.name}"
    return ErrorKind.CRASH, f"worker exited with status {exitcode}"


class ChildProcess:
    """A fresh interpreter running `python -m MODULE FD *ARGS`, and our end of its socket
    (FD in it). It imports what this process can import (a builder may live anywhere), and
    runs in a session of its own: the terminal's Ctrl-C reaches this process alone, which
    stops its children itself (and they die with it: worker.die_with_parent). The measurer's
    workers are these, and so are the search's lowering processes (tuner/search/lowering.py)."""

    def __init__(self, module: str, *args: str):
        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, str(theirs.fileno()), *args],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env,
            start_new_session=True)
        theirs.close()
        self.conn = Connection(ours.detach())

    def exitcode(self, wait_s: float) -> int | None:
        try:
            return self.proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """Asks it to end (None), and kills it if it has not within a second."""
        if self.proc.poll() is None:
            try:
                self.conn.send(None)
            except OSError:
                pass
            if self.exitcode(1.0) is None:
                self.proc.kill()
                self.proc.wait()
        self.conn.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.conn.close()


class _Worker(ChildProcess):
    """A measure worker process (tuner/measure/worker.py) and the job it has."""

    def __init__(self, role: str, cpus, options: MeasureOptions):
        config = {"role": role, "cpus": cpus, "builder": options.builder,
                  "memory_bytes": int(_physical_memory() * options.memory_fraction),
                  "parent": os.getpid()}
        super().__init__("tuner.measure.worker", json.dumps(config))
        self.role, self.cpus = role, cpus
        self.job: int | None = None
        self.deadline = 0.0
        self.served = 0

    def submit(self, job: int, request: dict, timeout_s: float) -> bool:
        """Sends a job; False if the worker is gone (killed while idle: the caller replaces
        it and submits again)."""
        if self.proc.poll() is not None:
            return False
        try:
            self.conn.send(request)
        except OSError:  # BrokenPipeError, ConnectionResetError
            return False
        self.job, self.deadline = job, time.monotonic() + timeout_s
        return True


class Measurer:
    """Owns the worker processes; use as a context manager or call `close()`."""

    def __init__(self, target: Target, options: MeasureOptions = MeasureOptions()):
        self.target, self.options = target, options
        cores = sorted(os.sched_getaffinity(0))
        self._run_cpus = cores[-min(target.threads, len(cores)):]
        self._builders = [_Worker("build", [core], options) for core in cores]
        self._runner = _Worker("run", self._run_cpus, options)
        self._spare_cores = len(cores) > len(self._run_cpus)

    def _beside_runner(self, builder: _Worker) -> bool:
        """Whether `builder` runs on a core the runner times on."""
        return builder.cpus[0] in self._run_cpus

    def _replace(self, worker: _Worker, kill: bool) -> _Worker:
        if kill:
            worker.kill()
        else:
            worker.stop()
        new = _Worker(worker.role, worker.cpus, self.options)
        if worker.role == "run":
            self._runner = new
        else:
            self._builders[self._builders.index(worker)] = new
        return new

    def _submit(self, worker: _Worker, job: int, request: dict, timeout_s: float) -> None:
        """Submits a job, replacing a worker that died while idle (the out-of-memory killer
        may take any process): twice, then the job fails like a crash would."""
        for _ in range(2):
            if worker.submit(job, request, timeout_s):
                return
            worker = self._replace(worker, kill=True)
        if not worker.submit(job, request, timeout_s):
            raise OSError(f"cannot start a {worker.role} worker")

    def close(self) -> None:
        for worker in self._builders + [self._runner]:
            worker.stop()

    def __enter__(self) -> "Measurer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def measure(self, inputs: list[MeasureInput]) -> list[MeasureResult]:
        opts = self.options
        results: list[MeasureResult | None] = [None] * len(inputs)
        requests, compile_s, objects = {}, {}, {}
        to_build: deque[int] = deque()
        for i, item in enumerate(inputs):
            try:
                if item.nest is None:
                    apply_steps(item.task.dag(), item.steps)
            except ScheduleError as err:
                results[i] = MeasureResult(ErrorKind.INVALID_SCHEDULE, str(err),
                                           timestamp=time.time())
                continue
            requests[i] = {"task": item.task.to_json(), "schedule": schedule_to_json(item.steps),
                           "target": self.target.to_json()}
            to_build.append(i)
        to_run: deque[int] = deque()

        def finish(i: int, kind: ErrorKind, detail: str) -> None:
            results[i] = MeasureResult(kind, detail, compile_s=compile_s.get(i, 0.0),
                                       timestamp=time.time())

        while to_build or to_run or any(w.job is not None for w in self._builders) \
                or self._runner.job is not None:
            # with no spare core, the batch is built first and timed after
            yield_to_timing = self._spare_cores and (self._runner.job is not None
                                                     or bool(to_run))
            for worker in self._builders:
                if worker.job is None and to_build and not (
                        yield_to_timing and self._beside_runner(worker)):
                    if worker.served >= opts.recycle_after:
                        worker = self._replace(worker, kill=False)
                    i = to_build.popleft()
                    self._submit(worker, i, requests[i], opts.build_timeout_s)
            building_beside = any(w.job is not None for w in self._builders
                                  if self._beside_runner(w))
            if self._runner.job is None and to_run and not building_beside:
                i = to_run.popleft()
                request = {**requests[i], "object": objects.pop(i), "check": opts.check,
                           "seed": opts.seed, "min_sample_s": opts.min_sample_s,
                           "samples": opts.samples, "warmup": opts.warmup,
                           "max_total_s": opts.max_total_s, "cold_weights": opts.cold_weights}
                self._submit(self._runner, i, request, opts.run_timeout_s)
            busy = [w for w in self._builders + [self._runner] if w.job is not None]
            if not busy:
                continue
            timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            ready = wait([w.conn for w in busy], timeout=timeout)
            for worker in busy:
                if worker.conn in ready:
                    self._collect(worker, finish, compile_s, objects, to_run, results)
                elif time.monotonic() >= worker.deadline:
                    i, worker.job = worker.job, None
                    limit = opts.run_timeout_s if worker.role == "run" else opts.build_timeout_s
                    finish(i, ErrorKind.TIMEOUT, f"{worker.role} exceeded {limit:g} s")
                    self._replace(worker, kill=True)
        return results

    def _collect(self, worker: _Worker, finish, compile_s, objects, to_run, results) -> None:
        i = worker.job
        try:
            answer = worker.conn.recv()
        except (EOFError, OSError):
            worker.job = None
            kind, detail = _death(worker.exitcode(5.0))
            finish(i, kind, f"{detail} while {'timing' if worker.role == 'run' else 'compiling'}")
            self._replace(worker, kill=True)
            return
        worker.job = None
        worker.served += 1
        if not answer["ok"]:
            finish(i, ErrorKind(answer["error"]), answer["detail"])
        elif worker.role == "build":
            compile_s[i] = answer["compile_s"]
            objects[i] = answer["object"]
            to_run.append(i)
        else:
            results[i] = MeasureResult(ErrorKind.NONE, "", tuple(answer["costs_s"]),
                                       answer["number"], compile_s.get(i, 0.0), time.time())
