"""Where a kernel runs: the CPU as LLVM names it, its features, and the threads used.

Measurements are only compared, and records only replayed, within one target: a schedule tuned
for AVX-512 on two threads says little about another CPU. The key is stable across runs on the
same machine and short enough to index by.

A target is the host (`host_target`: LLVM's name and feature string for this CPU) or a CPU
named by the user (`named_target("znver3")`, `--cpu`): code is generated for that CPU and
measured here, so an AVX-512 host can tune AVX2 code for deployment elsewhere. LLVM has no
query for a named CPU's features, so they are read off the code it generates for that CPU
(`tuner.ir.cpu_probe`), in a child process because LLVM aborts its process on a name it does not
know. A named CPU whose ISA this host cannot run is refused: its code could not be measured.

The hardware facts that kernels depend on (lanes, registers, FMA rate, caches) are derived
from the CPU name and features by `tuner.ir.machine`, never stored in the key.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from functools import cache

from tuner.errors import TunerError
from tuner.ir.machine import Machine, describe, usable_cores


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
    def machine(self) -> Machine:
        return describe(self.cpu, self.features)

    def with_threads(self, threads: int) -> "Target":
        return Target(self.triple, self.cpu, self.features, threads)

    def to_json(self) -> dict:
        return {"triple": self.triple, "cpu": self.cpu, "features": self.features,
                "threads": self.threads}

    @staticmethod
    def from_json(data: dict) -> "Target":
        return Target(data["triple"], data["cpu"], data["features"], int(data["threads"]))


def _check_threads(threads: int | None) -> int:
    if threads is None:
        return usable_cores()
    if threads < 1:
        raise TunerError(f"threads must be a positive integer, got {threads}")
    return threads


@cache
def _host() -> tuple[str, str, str]:
    from tuner.ir.llvm_init import llvm

    features = llvm.get_host_cpu_features().flatten()
    canonical = ",".join(sorted(f for f in features.split(",") if f))
    return llvm.get_process_triple(), llvm.get_host_cpu_name(), canonical


def host_target(threads: int | None = None) -> Target:
    """The CPU this process runs on, with `threads` (default: every core we may use)."""
    triple, cpu, features = _host()
    return Target(triple, cpu, features, _check_threads(threads))


@cache
def _probe(cpu: str) -> str:
    """The ISA features LLVM uses for `cpu`, as a sorted feature string (child process)."""
    done = subprocess.run([sys.executable, "-m", "tuner.ir.cpu_probe", cpu], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    if done.returncode != 0 or not done.stdout.strip():
        raise TunerError(f"--cpu {cpu!r} is not a CPU LLVM knows (try znver3, znver4, "
                         f"skylake-avx512, x86-64-v3, x86-64-v4 or 'host')")
    features = json.loads(done.stdout)
    # AMX: a second child, which LLVM ends where the CPU has none (no AMX, not an error)
    amx = subprocess.run([sys.executable, "-m", "tuner.ir.cpu_probe", "--amx", cpu],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    if amx.returncode == 0 and amx.stdout.strip():
        features += json.loads(amx.stdout)
    return ",".join(sorted(features))


def named_target(cpu: str | None, threads: int | None = None) -> Target:
    """Code for the CPU LLVM calls `cpu` (None or 'host': this one), measured on this host."""
    host = host_target(threads)
    if cpu is None or cpu in ("host", host.cpu):
        return host
    features = _probe(cpu)
    have = {f[1:] for f in host.features.split(",") if f.startswith("+")}
    missing = [f[1:] for f in features.split(",") if f.startswith("+") and f[1:] not in have]
    if missing:
        raise TunerError(f"--cpu {cpu!r} needs {', '.join(missing)}, which this host "
                         f"({host.cpu}) lacks: its kernels could not be measured here")
    return Target(host.triple, cpu, features, host.threads)
