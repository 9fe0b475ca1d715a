"""The outcome of measuring one candidate: run times, or a typed error.

Candidate failures never propagate as exceptions: a worker turns each into a `MeasureResult`
with an `ErrorKind` and a short detail, as TVM's auto_scheduler does, so a batch always returns
one result per candidate. Only results with `ErrorKind.NONE` may ever become "best".
`NewRecord` is what the tuning loop hands the record store for each measured candidate.
"""

from __future__ import annotations

import enum
import statistics
from dataclasses import dataclass


class ErrorKind(str, enum.Enum):
    NONE = "none"
    INVALID_SCHEDULE = "invalid_schedule"
    COMPILE_ERROR = "compile_error"
    WRONG_RESULT = "wrong_result"
    CRASH = "crash"
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"
    RUNTIME_ERROR = "runtime_error"


@dataclass(frozen=True, slots=True)
class MeasureResult:
    error: ErrorKind
    detail: str = ""
    costs_s: tuple[float, ...] = ()  # each sample: mean seconds of `number` back-to-back calls
    number: int = 0                  # calls per sample
    compile_s: float = 0.0
    timestamp: float = 0.0           # wall-clock seconds since the epoch when measured
    machine: str = ""                # the cluster worker that measured it; "" for this machine

    @property
    def ok(self) -> bool:
        return self.error is ErrorKind.NONE

    @property
    def median_s(self) -> float:
        return statistics.median(self.costs_s) if self.costs_s else float("inf")

    @property
    def min_s(self) -> float:
        return min(self.costs_s) if self.costs_s else float("inf")

    def gflops(self, flops: float) -> float:
        return flops / self.median_s / 1e9 if self.ok and self.costs_s else 0.0


@dataclass(frozen=True, slots=True)
class NewRecord:
    """One entry of a batch for `RecordStore.add_many`: a measured candidate of the batch's
    task on the batch's target."""
    schedule_json: str
    result: MeasureResult
    trial: int
    predicted: float | None = None  # the cost model's score when the candidate was picked
    strategy: str | None = None     # the search strategy that proposed it
