"""Lowering and featurizing a generation of genomes at once, on every core of the tuner's machine.

Each round of the evolutionary search lowers and featurizes ~800 new genomes (population 256,
three generations, the initial population's random samples): ~0.6 ms of pure Python each,
more than half of what a round cost in one process, and the part of a round that
parallelises, since the genomes are drawn first (all the randomness) and lowered after
(none). Between batches the measuring cores are idle, locally as on a cluster, so a
`LoweringPool` of one process per core of this machine lowers them, a chunk at a time while
the search draws the next. Measured on a 2-core Zen 3 (bench/proposals.py): 0.76-0.78 s a
round in one process, 0.46-0.63 with the pool (the three processes then share the two
cores; the spread is the shared host's).

    Lowered                      what a genome lowers to: schedule key, validity, feature row
    lower_genomes(...)           in this process
    Lowering                     `submit(genomes)` -> a job whose `result()` is their Lowered
    LowerHere(dag, target, ...)  a Lowering in this process
    LoweringPool.bind(...)       a task's Lowering on the pool's processes

The pool's processes are fresh interpreters (`python -m tuner.search.lowering`, as the
measurer starts its workers: never forked from a tuner that may hold threads, a Dask
client's or XGBoost's, and never re-importing the caller's `__main__`), in a session of their
own (the terminal's Ctrl-C is the tuner's to handle) and killed by the kernel when the tuner
dies. Each rebuilds a task's definition from its key and the target from its JSON and
answers with what it computed, in the order given: the same rows, bit for bit, as in this
process, so a search proposes the same schedules with or without a pool. Requests and
answers are pickled over a socket pair between the tuner and its own children (genomes and
feature rows; nothing read from a store, a file or the network). A pool whose process died
(the out-of-memory killer may take any) says so in one line and lowers in this process from
then on; a request a process failed on is lowered here, so its error is this process's.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np

from tuner.errors import ScheduleError
from tuner.ir.dag import ComputeDAG
from tuner.ir.schedule import LoopNest, Step, check_nest, schedule_to_json
from tuner.ir.target import Target
from tuner.ir.task import Task
from tuner.measure.measurer import ChildProcess
from tuner.search.annotate import Annotation, lower
from tuner.search.sketch import Sketch

Genome = tuple[Sketch, Annotation]
Featurizer = Callable[[LoopNest, Target], np.ndarray]

# below this many genomes a request is lowered here: sending it costs more than it saves
MIN_POOLED = 16


@dataclass(frozen=True, slots=True)
class Lowered:
    key: str                 # the canonical schedule JSON of the genome's steps
    valid: bool              # within the whole-nest limits (tuner.ir.schedule.check_nest)
    features: np.ndarray     # the cost model's row, from the nest whether valid or not
    # the steps and loop nest, when lowered in the search's own process (a proposed genome
    # then becomes a candidate without lowering it again); a pool sends neither back
    steps: tuple[Step, ...] | None = field(default=None, compare=False, repr=False)
    nest: LoopNest | None = field(default=None, compare=False, repr=False)


def lower_genomes(dag: ComputeDAG, target: Target, featurize: Featurizer,
                  genomes: Sequence[Genome], keep: bool = True) -> list[Lowered]:
    """`keep`: with the steps and nests."""
    out = []
    for sketch, ann in genomes:
        steps, nest = lower(dag, sketch, ann, target)
        try:
            check_nest(nest)
            valid = True
        except ScheduleError:
            valid = False
        key, features = schedule_to_json(steps), featurize(nest, target)
        out.append(Lowered(key, valid, features, steps, nest) if keep
                   else Lowered(key, valid, features))
    return out


_targets: dict[str, Target] = {}


def _lower_request(task_key: str, target_json: dict, featurize: Featurizer,
                   genomes: list[Genome]) -> list[tuple[str, bool, np.ndarray]]:
    """In a pool process: one request's answer."""
    target = _targets.get(str(target_json))
    if target is None:
        target = _targets[str(target_json)] = Target.from_json(target_json)
    return [(x.key, x.valid, x.features) for x in lower_genomes(
        Task.from_key(task_key).dag(), target, featurize, genomes, keep=False)]


class Lowering(Protocol):
    """Where a search's genomes are lowered: `submit(genomes)` returns a job whose `result()`
    is their `Lowered`, in order. The search submits a generation in chunks as it draws them,
    so that a pool lowers the first while the rest are drawn."""

    def submit(self, genomes: Sequence[Genome]) -> "Job": ...


class Job(Protocol):
    def result(self) -> list[Lowered]: ...


@dataclass(frozen=True, slots=True)
class _Done:
    lowered: list[Lowered]

    def result(self) -> list[Lowered]:
        return self.lowered


@dataclass(frozen=True, slots=True)
class LowerHere:
    """Lowering in this process, at submission."""
    dag: ComputeDAG
    target: Target
    featurize: Featurizer

    def submit(self, genomes: Sequence[Genome]) -> Job:
        return _Done(lower_genomes(self.dag, self.target, self.featurize, genomes))


class _PoolJob:
    """A request queued on, or being lowered by, a pool process."""

    def __init__(self, pool: "LoweringPool", request: tuple, here: LowerHere,
                 genomes: list[Genome]):
        self.pool, self.request, self.here, self.genomes = pool, request, here, genomes
        self.lowered: list[Lowered] | None = None
        self.failed = False  # the process raised: lowered here, to raise here

    def result(self) -> list[Lowered]:
        while self.lowered is None and not self.failed and self.pool.usable:
            self.pool.pump(wait=True)
        if self.lowered is None:
            self.lowered = self.here.submit(self.genomes).result()
        return self.lowered


class _Process(ChildProcess):
    """A pool process (`python -m tuner.search.lowering`) and the request it has."""

    def __init__(self):
        super().__init__("tuner.search.lowering", str(os.getpid()))
        self.job: _PoolJob | None = None


@dataclass(frozen=True, slots=True)
class _PoolLowering:
    pool: "LoweringPool"
    task: Task
    target: Target
    featurize: Featurizer
    here: LowerHere

    def submit(self, genomes: Sequence[Genome]) -> Job:
        genomes = list(genomes)
        if not self.pool.usable or len(genomes) < MIN_POOLED:
            return self.here.submit(genomes)
        request = (self.task.key, self.target.to_json(), self.featurize, genomes)
        return self.pool.submit(_PoolJob(self.pool, request, self.here, genomes))


class LoweringPool:
    """One process per core of this machine (or `processes`), started at the first request;
    use as a context manager or call `close()`. With one core it starts none."""

    def __init__(self, processes: int | None = None,
                 say: Callable[[str], None] | None = None):
        self.processes = processes or len(os.sched_getaffinity(0))
        self.say = say or (lambda line: print(f"tune: {line}", file=sys.stderr, flush=True))
        self._procs: list[_Process] = []
        self._queue: deque[_PoolJob] = deque()
        self._broken = False

    @property
    def usable(self) -> bool:
        return self.processes > 1 and not self._broken

    def bind(self, task: Task, target: Target, featurize: Featurizer) -> Lowering:
        """The `Lowering` of one task: on the pool when a request is large enough to pay for
        sending it, else in this process."""
        return _PoolLowering(self, task, target, featurize,
                             LowerHere(task.dag(), target, featurize))

    def start(self, wait: bool = False) -> None:
        """Starts the processes now rather than at the first request; with `wait`, returns
        once each has imported what lowering needs (a benchmark's clock starts after)."""
        if self.usable and not self._procs:
            self._procs = [_Process() for _ in range(self.processes)]
            if wait:
                for proc in self._procs:
                    proc.conn.send("ready?")
                for proc in self._procs:
                    proc.conn.recv()

    def submit(self, job: _PoolJob) -> _PoolJob:
        try:
            self.start()
        except OSError as err:  # no process to be had (a limit on processes, memory)
            self._lost(err)
            return job  # lowered here when its result is asked for
        self._queue.append(job)
        self.pump(wait=False)
        return job

    def pump(self, wait: bool) -> None:
        """Collects the answers that are in (with `wait`, at least one) and hands queued
        requests to the processes that are free."""
        from multiprocessing.connection import wait as ready

        try:
            self._hand_out()
            busy = {p.conn: p for p in self._procs if p.job is not None}
            for conn in ready(list(busy), timeout=None if wait else 0) if busy else ():
                proc = busy[conn]
                status, answer = conn.recv()
                if status == "ok":
                    proc.job.lowered = [Lowered(*x) for x in answer]
                else:
                    proc.job.failed = True
                proc.job = None
            self._hand_out()
        except (EOFError, OSError) as err:
            self._lost(err)

    def _hand_out(self) -> None:
        for proc in self._procs:
            if proc.job is None and self._queue:
                proc.job = self._queue.popleft()
                proc.conn.send(proc.job.request)

    def _lost(self, err: BaseException) -> None:
        """A process died or could not start: said once; what was queued or under way is
        lowered here."""
        statuses = [p.proc.poll() for p in self._procs]
        self._broken = True
        self.say(f"a lowering process is lost ({type(err).__name__}: {err}; exit statuses "
                 f"{statuses}): lowering in the tuner's process from now on")
        self.close()

    def close(self) -> None:
        for proc in self._procs:
            proc.stop()
        self._procs = []
        self._queue.clear()

    def __enter__(self) -> "LoweringPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _serve(conn, parent: int) -> None:
    """A pool process: answers requests until the tuner sends None or is gone."""
    import traceback

    from tuner.measure.worker import die_with_parent, serve

    def answer(request) -> tuple:
        try:
            return "ok", [] if request == "ready?" else _lower_request(*request)
        except Exception:  # lowered again in the tuner's process, which raises it there
            return "error", traceback.format_exc(limit=3)

    die_with_parent(parent)
    serve(conn, answer)


if __name__ == "__main__":
    import signal
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the tuner's to handle
    _serve(Connection(int(sys.argv[1])), int(sys.argv[2]))
