"""Measuring on many machines: a batch's candidates farmed out to Dask workers.

    with ClusterMeasurer("tls://HOST:8786", target, options, tls=TlsFiles(ca, cert, key)) \
            as measurer:                          # or "local:N", or "tcp://HOST:8786"
        results = measurer.measure(inputs)       # one result (or None: not measured) each

The tuner keeps everything else (the search, the cost model, the records): a `ClusterMeasurer`
stands in for the local `Measurer` and nothing above it changes but one thing: a candidate
whose answer was dropped (below) comes back as None, which the tuning loop stores nowhere and
measures again later (tuner/search/tune.py). Dask distributed (`distributed` on the package
index, the `cluster` extra) is the engine: a scheduler the user runs (`dask scheduler`), and
on each target machine one `tune worker SCHEDULER` (tuner/measure/cluster_worker.py), or
`local:N` for a `LocalCluster` of N worker processes on this machine (for trying it out and
for tests), each on its own share of the cores when there are enough.

- **The cluster is a door; TLS shuts it.** A Dask worker runs whatever its scheduler sends
  it, and Dask's peers exchange pickles, so whoever can join a scheduler can run code on every
  target machine and feed the tuner timings. Over `tls://` (Dask's own TLS,
  tuner/measure/tls.py) only holders of a certificate of the cluster's CA can join or submit;
  plain `tcp://` is for a trusted network only. `local:N` always runs over TLS with a
  certificate made for the run: its loopback port is open to every user of the machine.
- **Only machines of the target time its candidates.** A worker advertises the target it
  measures for as a Dask resource (`target_resource`: CPU name, threads and a digest of the
  target key), with a count of 1 and one thread: a candidate is only ever sent to a worker of
  its target, and a worker times one chunk at a time, on the cores its target names.
- **Results are checked where they land.** An answer names the worker's own target (the one
  it was started with) and, for each result, the task and the digest of the schedule it
  measured. The tuner matches them to the candidates of the chunk it sent (the batch it
  claimed in the store, tuner/search/tune.py) by task and schedule, not by position: an
  answer for anything else, or a second one for the same candidate, is dropped, counted in one
  line, and its candidate stays unmeasured (None). A worker reporting another target than the
  resource it advertised (or none: a Dask worker not started by `tune worker`) is refused: all
  its answers are dropped, it is retired from the cluster, and one line says so. The numbers
  themselves are checked field by field (`_result_from_json`).
- **Crashes and hangs stay in the worker's own processes.** Each Dask worker keeps one local
  `Measurer` (its builder and runner processes, tuner/measure/measurer.py) for the life of the
  worker process, so a kernel that segfaults or hangs costs that candidate a typed error, as it
  does locally, and never the Dask worker.
- **What travels is data, and no secret.** A chunk is the task's and the options' JSON and
  the schedules' JSON (not the target: a worker measures for its own); an answer is a dict of
  numbers and strings. No records URL (no password) goes to a worker: the tuner commits every
  result itself, once, in the batch it measured, so a result reaches the store exactly once
  however Dask retried its chunk, and workers never write to the store.
- **A worker that dies mid-batch** (killed, or its network gone): Dask runs its chunk again on a
  worker that remains (up to its `allowed-failures`), and the tuner says in one line which
  workers left. A chunk that took that many workers with it is stored as crashes; one that
  failed on its worker with an error (a worker that cannot start its measurer, say) is not
  the candidates' doing: they stay unmeasured, and one line says so. With no worker left for
  the target, the batch's unfinished candidates are released and the run stops with one line
  (TunerError); what was stored stays.

A batch is split into one chunk per worker serving the target, so each worker's `Measurer`
builds a chunk on all its cores at once and overlaps builds with timings as it does locally.
Finer chunks handed out as workers free up were tried (bench/distributed.py, two one-core
workers on Zen 3: 1.67x one worker against 1.64x, within the runs' spread) and not kept: a
worker with many cores would build half as many candidates at a time. The chunks are
balanced by what their candidates cost instead (`balanced_chunks`): a batch waits for its
slowest chunk, and compiling, most of a candidate's cost, varies 0.02-1.3 s between
candidates of one model.
"""

from __future__ import annotations

import asyncio
import math
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable

from tuner.errors import ScheduleError, TunerError, one_line
from tuner.ir.layout import code_size
from tuner.ir.schedule import apply_steps, schedule_to_json
from tuner.ir.target import Target
from tuner.measure.cluster_worker import (TargetPlugin, measure_chunk, schedule_digest,
                                          target_resource)
from tuner.measure.measurer import MeasureInput, MeasureOptions
from tuner.measure.result import ErrorKind, MeasureResult
from tuner.measure.tls import (TlsFiles, check_accepted, cluster_security, handshake_refused,
                               temporary_security)

LOCAL = "local:"
# A candidate's cost to a worker in IR instructions of its kernel (tuner.ir.layout.code_size)
# plus this many for the rest. Fitted on Zen 3 to 286 candidates of light SqueezeNet measured
# at 1 thread: compiling took 0.053 s + 4.5e-5 s per instruction (correlation 0.74; 0.02-1.3 s
# in all), and loading, checking and timing ~0.05 s more: 0.1 s, or ~2,300 instructions.
CANDIDATE_COST = 2300.0
# how long a batch waits with no worker left for its target before it gives up, and how long
# the first batch waits for one to join (workers started with the tuner may still be joining)
NO_WORKER_GRACE_S = 30.0
JOIN_GRACE_S = 10.0
POLL_S = 1.0
CONNECT_TIMEOUT_S = 30.0  # how long the tuner tries to reach the scheduler at its start


def _result_from_json(data) -> MeasureResult:
    """A worker's result, checked field by field (a worker is another machine)."""
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


@dataclass(frozen=True, slots=True)
class CheckedAnswer:
    """A chunk's answer matched to what was sent (see the docstring)."""
    target: str | None                  # the target the worker says it measured for
    results: dict[int, MeasureResult]   # batch index of a candidate sent -> its result
    dropped: int                        # results for no candidate sent, or for one again


def check_answer(answer, sent: dict[tuple[str, str], int]) -> CheckedAnswer:
    """Matches a worker's answer to the candidates of its chunk; `sent` maps (task key,
    schedule digest) to the batch index of each. Reads nothing but strings and numbers."""
    if not isinstance(answer, dict) or not isinstance(answer.get("results"), list):
        return CheckedAnswer(None, {}, 1)
    target = answer.get("target")
    results: dict[int, MeasureResult] = {}
    dropped = 0
    for item in answer["results"]:
        index = sent.get(_names(item))
        if index is None or index in results:
            dropped += 1
        else:
            results[index] = _result_from_json(item)
    return CheckedAnswer(target if isinstance(target, str) else None, results, dropped)


def _check_scheduler_answers(address: str, security) -> None:
    """`check_accepted` as the tuner, before its Dask client connects: the client's timeout
    bounds reaching the scheduler, not the handshake after it, so a peer that accepts and never
    answers would hold the tuner for ever. On a thread of its own, as the caller may be inside
    an event loop already (a notebook's)."""
    errors: list[BaseException] = []

    def check() -> None:
        try:
            asyncio.run(check_accepted(address, security, "client", CONNECT_TIMEOUT_S))
        except BaseException as err:  # raised again in the caller's thread
            errors.append(err)

    thread = threading.Thread(target=check, daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def candidate_cost(item: MeasureInput, lanes: int) -> float:
    """What measuring `item` costs a worker, in IR instructions (`CANDIDATE_COST`)."""
    try:
        nest = item.nest if item.nest is not None else apply_steps(item.task.dag(), item.steps)
    except ScheduleError:
        return CANDIDATE_COST
    return CANDIDATE_COST + code_size(nest, lanes)


def balanced_chunks(costs: list[float], count: int) -> list[list[int]]:
    """The indices of `costs` in `count` chunks of near-equal total cost: the costliest first,
    each to the chunk with the least so far (longest processing time first: within 4/3 of the
    best split, and far closer with many small items); each chunk in ascending order."""
    chunks: list[list[int]] = [[] for _ in range(count)]
    totals = [0.0] * count
    for i in sorted(range(len(costs)), key=lambda i: -costs[i]):
        least = totals.index(min(totals))
        chunks[least].append(i)
        totals[least] += costs[i]
    return [sorted(chunk) for chunk in chunks]


def _names(item) -> tuple[str, str] | None:
    """(task key, schedule digest) a worker's result says it is for."""
    if isinstance(item, dict) and isinstance(item.get("task"), str) \
            and isinstance(item.get("schedule"), str):
        return item["task"], item["schedule"]
    return None


class ClusterMeasurer:
    """`Measurer`'s interface over a Dask cluster; use as a context manager or `close()`.
    `say` receives the one-line notes (workers gone, answers dropped, workers refused);
    stderr by default. `tls`: the certificate for a tls:// scheduler (tuner/measure/tls.py)."""

    def __init__(self, address: str, target: Target, options: MeasureOptions = MeasureOptions(),
                 say: Callable[[str], None] | None = None, tls: TlsFiles = TlsFiles()):
        try:
            from distributed import Client
            from distributed.comm.core import CommClosedError
        except ImportError:
            raise TunerError("--cluster needs Dask distributed: pip install -e \".[cluster]\"") \
                from None
        self.address, self.target, self.options = address, target, options
        self.resource = target_resource(target)
        self.say = say or (lambda line: print(f"tune: {line}", file=sys.stderr, flush=True))
        self._cluster = None
        self._local_workers = 0
        self._refused: set[str] = set()  # addresses of workers refused (see the docstring)
        try:
            if address.startswith(LOCAL):
                self._start_local_cluster(address, tls)
                self.client = Client(self._cluster)
            else:
                security = cluster_security(address, tls, "client")
                _check_scheduler_answers(address, security)
                self.client = Client(address, timeout=CONNECT_TIMEOUT_S, security=security)
        except TunerError:
            self.close()
            raise
        except CommClosedError as err:  # TLS or Dask's handshake failed
            self.close()
            raise handshake_refused(address, "client", err) from None
        except (OSError, TimeoutError, ValueError) as err:
            self.close()
            raise TunerError(f"cannot reach the Dask scheduler at {address}: "
                             f"{one_line(err)}") from None
        self._known = set(self.workers())

    def _start_local_cluster(self, address: str, tls: TlsFiles) -> None:
        """`local:N`: N worker processes on this machine for this tuner's target, over TLS
        with a certificate made for the run (tuner/measure/tls.py says why)."""
        from distributed import LocalCluster

        count = address[len(LOCAL):]
        if not count.isdigit() or int(count) < 1:
            raise TunerError(f"--cluster local:N takes a positive worker count, got "
                             f"{address!r}")
        if tls.flags():
            raise TunerError(f"{', '.join(tls.flags())} are for a tls:// scheduler; "
                             f"{address} makes its own certificate for the run")
        self._cluster = LocalCluster(
            n_workers=int(count), threads_per_worker=1, processes=True,
            resources={self.resource: 1}, plugins=(TargetPlugin(self.target),),
            security=temporary_security(), dashboard_address=None, silence_logs=40)
        self._local_workers = int(count)

    def _all_workers(self) -> dict[str, dict]:
        """Address -> the scheduler's description of every worker of the cluster."""
        try:
            info = self.client.scheduler_info(n_workers=-1)
        except TypeError:  # an older distributed lists every worker without being asked
            info = self.client.scheduler_info()
        return info["workers"]

    def workers(self) -> dict[str, str]:
        """Address -> name of the workers that measure for this target (none refused)."""
        return {address: str(w.get("name", address))
                for address, w in self._all_workers().items()
                if w.get("resources", {}).get(self.resource, 0) >= 1
                and address not in self._refused}

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

    def measure(self, inputs: list[MeasureInput]) -> list[MeasureResult | None]:
        """One result per input, in order; None for a candidate whose answer was dropped
        (see the docstring) or whose chunk failed on its worker with an error (not by the
        worker's death): it was not measured."""
        from distributed import KilledWorker

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
        lanes = self.target.machine.lanes
        chunks = balanced_chunks([candidate_cost(item, lanes) for item in inputs],
                                 min(len(workers), len(inputs)))
        schedules = [schedule_to_json(item.steps) for item in inputs]
        futures = [self.client.submit(
            measure_chunk, task.to_json(), asdict(self.options), [schedules[i] for i in chunk],
            self._local_workers, resources={self.resource: 1}, pure=False) for chunk in chunks]
        try:
            self._wait(futures)
            results: list[MeasureResult | None] = [None] * len(inputs)
            dropped: dict[str, int] = {}           # worker name -> its answers dropped
            refused: dict[str, str | None] = {}    # worker address -> the target it reported
            for chunk, future in zip(chunks, futures):
                if future.status != "finished":
                    error = future.exception()
                    detail = one_line(error)[:300]
                    if isinstance(error, KilledWorker):  # it took every worker it went to
                        for i in chunk:
                            results[i] = MeasureResult(
                                ErrorKind.CRASH, f"the worker measuring it died: {detail}",
                                timestamp=time.time())
                    else:  # the worker failed, not the candidates: measured again later
                        self.say(f"a worker failed on a chunk of {len(chunk)} candidate(s) "
                                 f"({type(error).__name__}: {detail}); they stay unmeasured")
                    continue
                checked = check_answer(future.result(), {
                    (task.key, schedule_digest(schedules[i])): i for i in chunk})
                if checked.target != self.target.key:
                    refused[self._worker_of(future)] = checked.target
                    continue
                for i, result in checked.results.items():
                    results[i] = result
                if checked.dropped:
                    name = self._name_of(self._worker_of(future))
                    dropped[name] = dropped.get(name, 0) + checked.dropped
        finally:
            self.client.cancel(futures)  # what stays on the workers is not needed
        unmeasured = results.count(None)
        if dropped:
            self.say(f"dropped {sum(dropped.values())} answer(s) of worker(s) "
                     f"{', '.join(sorted(dropped))} for candidates this tuner did not send "
                     f"them; {unmeasured} candidate(s) of the batch stay unmeasured")
        for address, reported in refused.items():
            self._refuse(address, reported)
        return results

    def _wait(self, futures) -> None:
        """Until every chunk is done, saying which workers leave; raises TunerError (and
        cancels the chunks) once no worker of the target has been left for a while."""
        from distributed import wait

        alone_since = None
        try:
            while True:
                try:
                    wait(futures, timeout=POLL_S)
                    return
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

    def _worker_of(self, future) -> str:
        """The address of the worker that computed a finished chunk, as the scheduler
        knows it (not as the worker says)."""
        holders = self.client.who_has(future).get(future.key, ())
        return holders[0] if holders else "an unknown worker"

    def _name_of(self, address: str) -> str:
        return str(self._all_workers().get(address, {}).get("name", address))

    def _refuse(self, address: str, reported: str | None) -> None:
        """Drops a worker that reports another target than its resource advertises: it gets
        no more candidates of this tuner, and leaves the cluster."""
        name = self._name_of(address)
        self._refused.add(address)
        self._known.discard(address)
        if address in self._all_workers():
            self.client.retire_workers(workers=[address])
        self.say(f"refused worker {name} ({address}): it advertises {self.resource} but "
                 f"reports target {reported or 'none (not a `tune worker`)'}, not "
                 f"{self.target.key}; its answers are dropped and it is retired from the "
                 f"cluster")

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
