"""The target machine's side of the cluster (tuner/measure/cluster.py tells the design):
`tune worker SCHEDULER` (`serve_worker`), and `measure_chunk`, which such a worker runs for a
tuner.

A worker is started for one target (its CPU, `--cpu` and `--threads`) and knows it through a
Dask worker plugin (`TargetPlugin`): it measures every chunk for that target (a chunk names
none) and names it in its answer, so a tuner can refuse a worker whose answers are for
another target than the resource it advertises. A Dask worker not started by `tune worker`
has no such plugin, measures nothing and says so (target None).

What travels, both ways, is data: the chunk is the task's and the options' JSON and the
schedules' JSON; the answer is `{"target": key, "results": [...]}`, one dict of numbers and
strings per schedule, naming the task and the digest of the schedule it measured
(`schedule_digest`), so that the tuner matches answers to the candidates it sent by what they
are, not by where they stand.
"""

from __future__ import annotations

import hashlib
import os

from tuner.errors import TunerError, one_line
from tuner.ir.target import Target
from tuner.ir.task import Task
from tuner.measure.measurer import MeasureInput, Measurer, MeasureOptions
from tuner.measure.result import MeasureResult
from tuner.measure.tls import TlsFiles, check_accepted, cluster_security

try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # no Dask, no worker: ClusterMeasurer and serve_worker say what to install
    WorkerPlugin = object

# how long `tune worker` tries to reach its scheduler before it gives up in one line
JOIN_TIMEOUT_S = 60.0


def target_resource(target: Target) -> str:
    """The Dask resource a worker measuring for `target` advertises: readable, and exact
    through the digest of the target key (CPU name, LLVM features, threads)."""
    digest = hashlib.sha1(target.key.encode()).hexdigest()[:12]
    return f"tuner-{target.cpu}-x{target.threads}-{digest}"


def schedule_digest(schedule_json: str) -> str:
    """What names a schedule in a worker's answer: the SHA-1 of its JSON as sent."""
    return hashlib.sha1(schedule_json.encode()).hexdigest()


class TargetPlugin(WorkerPlugin):
    """The target a Dask worker was started to measure for (`tune worker`, or a `local:N`
    cluster's workers, whose target is the tuner's)."""
    name = "tuner-target"

    def __init__(self, target: Target):
        self.target = target


_MEASURERS: dict[tuple[str, str], Measurer] = {}


def measure_chunk(task_json: dict, options_json: dict, schedules: list[str],
                  local_workers: int = 0) -> dict:
    """Runs in a Dask worker: measures schedules of one task for the worker's own target
    with the worker's own Measurer (made at its first chunk, kept for the worker's life).
    `local_workers`: the size of a `local:N` cluster, whose workers share this machine and
    each take a share of its cores first, so that no two time on the same core."""
    from distributed import get_worker
    from tuner.ir.schedule import schedule_from_json

    worker = get_worker()
    plugin = worker.plugins.get(TargetPlugin.name)
    if not isinstance(plugin, TargetPlugin):
        return {"target": None, "results": []}  # not a `tune worker`: no target to time for
    task, target = Task.from_json(task_json), plugin.target
    options = MeasureOptions(**options_json)
    key = (target.key, repr(sorted(options_json.items())))
    measurer = _MEASURERS.get(key)
    if measurer is None:
        if local_workers and not _MEASURERS:
            _take_share_of_cores(int(worker.name), local_workers)
        measurer = _MEASURERS[key] = Measurer(target, options)
    inputs = [MeasureInput(task, schedule_from_json(s)) for s in schedules]
    results = measurer.measure(inputs)
    return {"target": target.key,
            "results": [_result_to_json(r, task.key, schedule_digest(s), str(worker.name))
                        for r, s in zip(results, schedules)]}


def _take_share_of_cores(index: int, workers: int) -> None:
    """Worker `index` of `workers` on one machine keeps its share of the cores this process
    may use (its Measurer then builds and times there); with more workers than cores, all
    share them."""
    cores = sorted(os.sched_getaffinity(0))
    if workers <= len(cores):
        share = len(cores) // workers
        os.sched_setaffinity(0, cores[index * share:(index + 1) * share])


def _result_to_json(r: MeasureResult, task_key: str, schedule: str, machine: str) -> dict:
    return {"task": task_key, "schedule": schedule, "error": r.error.value,
            "detail": r.detail, "costs_s": list(r.costs_s), "number": r.number,
            "compile_s": r.compile_s, "timestamp": r.timestamp, "machine": machine}


def serve_worker(scheduler: str, target: Target, name: str | None = None,
                 tls: TlsFiles = TlsFiles()) -> None:
    """`tune worker SCHEDULER`: a Dask worker on this machine that measures for `target`
    (one thread, the target's resource), until it is stopped (Ctrl-C or SIGTERM). It first
    connects once to check that the scheduler is there and accepts it (over tls://, `tls`'s
    certificate: tuner/measure/tls.py): refused, or with no scheduler within
    JOIN_TIMEOUT_S, it stops with one line where a Dask worker would wait for ever."""
    import asyncio

    try:
        from distributed import Nanny
    except ImportError:
        raise TunerError("tune worker needs Dask distributed: pip install -e \".[cluster]\"") \
            from None
    security = cluster_security(scheduler, tls, "worker")

    async def run() -> None:
        await check_accepted(scheduler, security, "worker", JOIN_TIMEOUT_S)
        # the Nanny restarts the worker process if it dies, so one machine keeps serving
        async with Nanny(scheduler, nthreads=1, resources={target_resource(target): 1},
                         name=name or f"{os.uname().nodename}-{os.getpid()}",
                         security=security, plugins=(TargetPlugin(target),)) as nanny:
            await nanny.finished()

    try:
        asyncio.run(run())
    except (OSError, TimeoutError) as err:
        raise TunerError(f"cannot join the Dask scheduler at {scheduler}: "
                         f"{one_line(err)}") from None
