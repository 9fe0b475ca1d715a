"""Where a kernel runs: the CPU as LLVM names it, its features, and the threads used.

Measurements are only compared, and records only replayed, within one target: a schedule tuned
for AVX-512 on two threads says little about another CPU. The key is stable across runs on the
same machine and short enough to index by.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Target:
    triple: str
    cpu: str
    features: str  # LLVM feature string, '+name' / '-name', comma separated, sorted
    threads: int

    @property
    def key(self) -> str:
        digest = hashlib.sha1(self.features.encode()).hexdigest()[:10]
        return f"{self.triple}/{self.cpu}/{digest}/threads={self.threads}"

    @property
    def vector_lanes(self) -> int:
        """float32 lanes of the widest vector register the features allow."""
        enabled = set(f[1:] for f in self.features.split(",") if f.startswith("+"))
        if "avx512f" in enabled:
            return 16
        if "avx" in enabled:
            return 8
        return 4

    def with_threads(self, threads: int) -> "Target":
        return Target(self.triple, self.cpu, self.features, threads)

    def to_json(self) -> dict:
        return {"triple": self.triple, "cpu": self.cpu, "features": self.features,
                "threads": self.threads}

    @staticmethod
    def from_json(data: dict) -> "Target":
        return Target(data["triple"], data["cpu"], data["features"], int(data["threads"]))


def host_target(threads: int | None = None) -> Target:
    """The CPU this process runs on, with `threads` (default: every core we may use)."""
    from tuner.llvm_init import llvm

    features = llvm.get_host_cpu_features().flatten()
    canonical = ",".join(sorted(f for f in features.split(",") if f))
    if threads is None:
        threads = len(os.sched_getaffinity(0))
    if threads < 1:
        from tuner.errors import TunerError

        raise TunerError(f"threads must be a positive integer, got {threads}")
    return Target(llvm.get_process_triple(), llvm.get_host_cpu_name(), canonical, threads)
