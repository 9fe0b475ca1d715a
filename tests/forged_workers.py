"""Cluster workers that lie, for tests/test_cluster_answers.py: stand-ins for
`tuner.measure.cluster_worker.measure_chunk` that a test puts in its place in the tuner (Dask
then runs them on the workers, which import this module from the tests' folder). Each
measures honestly, then worker "0" of a `local:N` cluster forges its answer:

- `answers_for_schedules_not_sent`: its first chunk's results claim schedules the tuner never
  sent, with timings far better than any kernel (what would become "best" records);
- `answers_for_another_target`: every answer says it was measured for another target than
  the one its Dask resource advertises;
- `fails_once`: its first chunk raises (a worker that cannot start its measurer, say),
  having measured nothing.

Worker "1" stays honest, so tuning can go on."""

from __future__ import annotations

import hashlib

from distributed import get_worker

from tuner.measure.cluster_worker import TargetPlugin, measure_chunk

FORGED_COST_S = 1e-12  # a trillionth of a second: no kernel of any task is that fast
_forged_once: list[bool] = []


def _forger() -> bool:
    return str(get_worker().name) == "0"


def answers_for_schedules_not_sent(*args, **kwargs) -> dict:
    answer = measure_chunk(*args, **kwargs)
    if _forger() and not _forged_once:
        _forged_once.append(True)
        for n, result in enumerate(answer["results"]):
            result.update(schedule=hashlib.sha1(f"[forged {n}]".encode()).hexdigest(),
                          error="none", costs_s=[FORGED_COST_S] * 3, number=1)
    return answer


def answers_for_another_target(*args, **kwargs) -> dict:
    answer = measure_chunk(*args, **kwargs)
    if _forger():
        own = get_worker().plugins[TargetPlugin.name].target
        answer["target"] = own.with_threads(own.threads + 1).key
    return answer


def fails_once(*args, **kwargs) -> dict:
    if _forger() and not _forged_once:
        _forged_once.append(True)
        raise OSError("cannot start a build worker")
    return measure_chunk(*args, **kwargs)
