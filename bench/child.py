"""One measurement, one process: run `python -m bench.<module>` and read its JSON answer.

Benchmarks time each library (numpy's OpenBLAS, onnxruntime, the FMA peak kernel) in a
process of its own, so that no thread pool left spinning by one of them runs on a core while
another is timed (bench/comparators.py says why). The child gets the thread count in every
variable the libraries read when they load, runs from the repository root (`bench` is a
package there, not an installed one), and prints one JSON object as its last line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
TIMEOUT_S = 600.0


def child_env(threads: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment with every thread-count variable of the libraries set to `threads`
    (read when a library loads, before threadpoolctl or a session could change it), and
    `extra` on top."""
    env = dict(os.environ)
    env.update({name: str(threads) for name in THREAD_ENV})
    env.update(extra or {})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_child(module: str, argv: list[str], threads: int, timeout_s: float = TIMEOUT_S,
              env: dict[str, str] | None = None) -> dict | None:
    """Runs `python -m module *argv` with `threads` in its environment and returns the JSON
    object of its last output line; None, and a note on stderr, if it fails, hangs past
    `timeout_s` or prints no JSON."""
    what = f"python -m {module} {' '.join(argv)}"
    try:
        done = subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT,
                              env=child_env(threads, env), capture_output=True, text=True,
                              timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        print(f"warning: {what}: no answer in {timeout_s:.0f} s", file=sys.stderr)
        return None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"warning: {what}: exit {done.returncode}: {tail}", file=sys.stderr)
        return None
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        print(f"warning: {what}: not JSON: {lines[-1][:200]}", file=sys.stderr)
        return None
