"""A cluster worker held back, for tests/test_cluster.py: a stand-in for
`tuner.measure.cluster_worker.measure_chunk` that a test puts in its place in the tuner (Dask
then runs it on the workers, which import this module from the tests' folder).

`first_chunk_of_worker_0_waits`: worker "0" of a `local:N` cluster holds its first chunk until
worker "1" has measured `HELD_UNTIL` chunks (each chunk's worker and size are written to the
file named by $HELD_WORKERS_LOG), or `HOLD_LIMIT_S` passed. A batch cut into chunks that are
handed out as workers free up lets worker 1 take them all meanwhile; a batch cut into one
chunk per worker leaves worker 1 idle after its own, and the hold runs out."""

from __future__ import annotations

import os
import time
from pathlib import Path

from distributed import get_worker

from tuner.measure.cluster_worker import measure_chunk

HELD_UNTIL = 3
HOLD_LIMIT_S = 60.0


def _log() -> Path:
    return Path(os.environ["HELD_WORKERS_LOG"])


def _chunks_of(worker: str) -> int:
    if not _log().exists():
        return 0
    return sum(1 for line in _log().read_text().splitlines() if line.split()[0] == worker)


def first_chunk_of_worker_0_waits(task_json, options_json, schedules, *args, **kwargs):
    worker = str(get_worker().name)
    if worker == "0" and _chunks_of("0") == 0:
        deadline = time.monotonic() + HOLD_LIMIT_S
        while _chunks_of("1") < HELD_UNTIL and time.monotonic() < deadline:
            time.sleep(0.05)
    answer = measure_chunk(task_json, options_json, schedules, *args, **kwargs)
    with _log().open("a") as log:
        log.write(f"{worker} {len(schedules)}\n")
    return answer
