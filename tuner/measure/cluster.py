"""Measuring on many machines: a batch's candidates farmed out to Dask workers.

    with ClusterMeasurer("tcp://HOST:8786", target, options) as measurer:   # or "local:N"
        results = measurer.measure(inputs)       # as Measurer.measure: one result each, in order

The tuner keeps everything else (the search, the cost model, the records): a `ClusterMeasurer`
stands in for the local `Measurer` and nothing above it changes. Dask distributed
(`distributed` on the package index, the `cluster` extra) is the engine: a scheduler the user
runs (`dask scheduler`), and on each target machine one `tune worker SCHEDULER` (serve_worker
below), or `local:N` for a `LocalCluster` of N worker processes on this machine (for trying it
out and for tests), each on its own share of the cores when there are enough.

- **Only machines of the target time its candidates.** A worker advertises the target it
  measures for as a Dask resource (`target_resource`: CPU name, threads and a digest of the
  target key), with a count of 1 and one thread: a candidate is only ever sent to a worker of
  its target, and a worker times one chunk at a time, on the cores its target names.
- **Crashes and hangs stay in the worker's own processes.** Each Dask worker keeps one local
  `Measurer` (its builder and runner processes, tuner/measure/measurer.py) for the life of the
  worker process, so a kernel that segfaults or hangs costs that candidate a typed error, as it
  does locally, and never the Dask worker.
- **What travels is data.** A chunk is the task's, the target's and the options' JSON and the
  schedules' JSON; a result comes back as a dict of numbers and strings, checked here into a
  `MeasureResult`, with the name of the worker that measured it (stored beside the record:
  `tune show` lists them). No records URL (no password) goes to a worker: the tuner commits
  every result itself, once, in the batch it measured, so a result reaches the store exactly
  once however Dask retried its chunk.
- **A worker that dies mid-batch** (killed, or its network gone): Dask runs its chunk again on a
  worker that remains (up to its `allowed-failures`), and the tuner says in one line which
  workers left. With none left for the target, the batch's unfinished candidates are released
  and the run stops with one line (TunerError); what was stored stays.

A batch is split into one chunk per worker serving the target, so each worker's `Measurer`
overlaps builds with timings as it does locally.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from dataclasses import asdict
from typing import Callable

from tuner.errors import TunerError
from tuner.ir.schedule import schedule_to_json
from tuner.ir.target import Target
from tuner.ir.task import Task
from tuner.measure.measurer import MeasureInput, Measurer, MeasureOptions
from tuner.measure.result import ErrorKind, MeasureResult

LOCAL = "local:"
# how long a batch waits with no worker left for its target before it gives up, and how long
# the first batch waits for one to join (workers started with the tuner may still be joining)
NO_WORKER_GRACE_S = 30.0
JOIN_GRACE_S = 10.0
POLL_S = 1.0


def target_resource(target: Target) -> str:
    """The Dask resource a worker measuring for `target` advertises: readable, and exact
    through the digest of the target key (CPU name, LLVM features, threads)."""
    digest = hashlib.sha1(target.key.encode()).hexdigest()[:12]
    return f"tuner-{target.cpu}-x{target.threads}-{digest}"


# ---------------------------------------------------------------- on the worker
_MEASURERS: dict[tuple[str, str], Measurer] = {}


def measure_chunk(task_json: dict, target_json: dict, options_json: dict,
                  schedules: list[str], local_workers: int = 0) -> list[dict]:
    """Runs in a Dask worker: measures schedules of one task with the worker's own Measurer
    (made at its first chunk, kept for the worker's life). `local_workers`: the size of a
    `local:N` cluster, whose workers share this machine and each take a share of its cores
    first, so that no two time on the same core."""
    from tuner.ir.schedule import schedule_from_json

    task, target = Task.from_json(task_json), Target.from_json(target_json)
    options = MeasureOptions(**options_json)
    key = (target.key, repr(sorted(options_json.items())))
    measurer = _MEASURERS.get(key)
    if measurer is None:
        if local_workers and not _MEASURERS:
            _take_share_of_cores(int(_worker_name()), local_workers)
        measurer = _MEASURERS[key] = Measurer(target, options)
    inputs = [MeasureInput(task, schedule_from_json(s)) for s in schedules]
    machine = str(_worker_name())
    return [_result_to_json(r, machine) for r in measurer.measure(inputs)]


def _take_share_of_cores(index: int, workers: int) -> None:
    """Worker `index` of `workers` on one machine keeps its share of the cores this process
    may use (its Measurer then builds and times there); with more workers than cores, all
    share them."""
    cores = sorted(os.sched_getaffinity(0))
    if workers <= len(cores):
        share = len(cores) // workers
        os.sched_setaffinity(0, cores[index * share:(index + 1) * share])


def _worker_name() -> str:
    from distributed import get_worker

    return get_worker().name


def _result_to_json(r: MeasureResult, machine: str) -> dict:
    return {"error": r.error.value, "detail": r.detail, "costs_s": list(r.costs_s),
            "number": r.number, "compile_s": r.compile_s, "timestamp": r.timestamp,
            "machine": machine}


def _result_from_json(data) -> MeasureResult:
    """A worker's answer, checked field by field (a worker is another machine)."""
    try:
        costs = tuple(float(c) for c in data["costs_s"])
        result = MeasureResult(ErrorKind(data["error"]), str(data["detail"]), costs,
                               int(data["number"]), float(data["compile_s"]),
                               float(data["timestamp"]), str(data["machine"])[:128])
        if result.ok and not (costs and all(0 < c < math.inf for c in costs)
                              and result.number >= 1):
            raise ValueError(f"a success needs positive finite costs, got {costs[:3]} x "
                             f"{result.number}")
        return result
    except (KeyError, TypeError, ValueError) as err:
        return MeasureResult(ErrorKind.CRASH, f"a worker answered a malformed result: {err}",
                             timestamp=time.time())


# ---------------------------------------------------------------- in the tuner
class ClusterMeasurer:
    """`Measurer`'s interface over a Dask cluster; use as a context manager or `close()`.
    `say` receives the one-line notes (workers gone); stderr by default."""

    def __init__(self, address: str, target: Target, options: MeasureOptions = MeasureOptions(),
                 say: Callable[[str], None] | None = None):
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise TunerError("--cluster needs Dask distributed: pip install -e \".[cluster]\"") \
                from None
        self.address, self.target, self.options = address, target, options
        self.resource = target_resource(target)
        self.say = say or (lambda line: print(f"tune: {line}", file=sys.stderr, flush=True))
        self._cluster = None
        self._local_workers = 0
        try:
            if address.startswith(LOCAL):
                count = address[len(LOCAL):]
                if not count.isdigit() or int(count) < 1:
                    raise TunerError(f"--cluster local:N takes a positive worker count, got "
                                     f"{address!r}")
                self._cluster = LocalCluster(
                    n_workers=int(count), threads_per_worker=1, processes=True,
                    resources={self.resource: 1}, dashboard_address=None,
                    silence_logs=40)
                self.client = Client(self._cluster)
                self._local_workers = int(count)
            else:
                self.client = Client(address, timeout=30)
        except TunerError:
            self.close()
            raise
        except (OSError, TimeoutError, ValueError) as err:
            self.close()
            raise TunerError(f"cannot reach the Dask scheduler at {address}: "
                             f"{' '.join(str(err).split())}") from None
        self._known = set(self.workers())

    def _all_workers(self) -> dict[str, dict]:
        """Address -> the scheduler's description of every worker of the cluster."""
        try:
            info = self.client.scheduler_info(n_workers=-1)
        except TypeError:  # an older distributed lists every worker without being asked
            info = self.client.scheduler_info()
        return info["workers"]

    def workers(self) -> dict[str, str]:
        """Address -> name of the workers that measure for this target."""
        return {address: str(w.get("name", address))
                for address, w in self._all_workers().items()
                if w.get("resources", {}).get(self.resource, 0) >= 1}

    def served_targets(self) -> list[str]:
        """The tuner targets (resources) the cluster's workers advertise, for messages."""
        return sorted({r for w in self._all_workers().values() for r in w.get("resources", {})
                       if r.startswith("tuner-")})

    def describe(self) -> str:
        return f"{len(self.workers())} worker(s)"

    def _no_worker(self) -> TunerError:
        served = ", ".join(self.served_targets()) or "none"
        return TunerError(f"no worker of the cluster at {self.address} measures for "
                          f"{self.target.cpu} with {self.target.threads} thread(s) "
                          f"({self.resource}); its workers serve: {served}. Start `tune worker "
                          f"{self.address}` on a machine of that target (--cpu, --threads as "
                          f"for tuning)")

    def measure(self, inputs: list[MeasureInput]) -> list[MeasureResult]:
        from distributed import wait

        if not inputs:
            return []
        workers = self.workers()
        deadline = time.monotonic() + JOIN_GRACE_S
        while not workers and time.monotonic() < deadline:
            time.sleep(POLL_S / 4)
            workers = self.workers()
        if not workers:
            raise self._no_worker()
        self._note_departures(workers)
        task = inputs[0].task
        if any(item.task != task for item in inputs):
            raise ValueError("a batch measures one task")
        count = min(len(workers), len(inputs))
        chunks = [list(range(i, len(inputs), count)) for i in range(count)]
        options = asdict(self.options)
        futures = [self.client.submit(
            measure_chunk, task.to_json(), self.target.to_json(), options,
            [schedule_to_json(inputs[i].steps) for i in chunk], self._local_workers,
            resources={self.resource: 1}, pure=False) for chunk in chunks]
        alone_since = None
        try:
            while True:
                try:
                    wait(futures, timeout=POLL_S)
                    break
                except TimeoutError:  # some still running: who is left to run them?
                    pass
                workers = self.workers()
                self._note_departures(workers)
                if workers:
                    alone_since = None
                elif alone_since is None:
                    alone_since = time.monotonic()
                elif time.monotonic() - alone_since > NO_WORKER_GRACE_S:
                    raise self._no_worker()
        except BaseException:
            self.client.cancel(futures)
            raise
        results: list[MeasureResult | None] = [None] * len(inputs)
        for chunk, future in zip(chunks, futures):
            if future.status == "finished":
                answers = future.result()
                if not isinstance(answers, list) or len(answers) != len(chunk):
                    answers = [{}] * len(chunk)
                for i, answer in zip(chunk, answers):
                    results[i] = _result_from_json(answer)
            else:  # the chunk failed on every worker it was given (KilledWorker)
                detail = " ".join(str(future.exception()).split())[:300]
                for i in chunk:
                    results[i] = MeasureResult(ErrorKind.CRASH, f"the worker measuring it "
                                               f"died: {detail}", timestamp=time.time())
        return results

    def _note_departures(self, workers: dict[str, str]) -> None:
        gone = self._known - set(workers)
        if gone:
            self.say(f"worker(s) {', '.join(sorted(gone))} left; going on with "
                     f"{len(workers)} for {self.resource}")
        self._known = set(workers)

    def close(self) -> None:
        client, cluster = getattr(self, "client", None), self._cluster
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()

    def __enter__(self) -> "ClusterMeasurer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve_worker(scheduler: str, target: Target, name: str | None = None) -> None:
    """`tune worker SCHEDULER`: a Dask worker on this machine that measures for `target`
    (one thread, the target's resource), until it is stopped (Ctrl-C or SIGTERM)."""
    import asyncio

    try:
        from distributed import Nanny
    except ImportError:
        raise TunerError("tune worker needs Dask distributed: pip install -e \".[cluster]\"") \
            from None

    async def run() -> None:
        # the Nanny restarts the worker process if it dies, so one machine keeps serving
        async with Nanny(scheduler, nthreads=1, resources={target_resource(target): 1},
                         name=name or f"{os.uname().nodename}-{os.getpid()}") as nanny:
            await nanny.finished()

    try:
        asyncio.run(run())
    except (OSError, TimeoutError) as err:
        raise TunerError(f"cannot join the Dask scheduler at {scheduler}: "
                         f"{' '.join(str(err).split())}") from None
