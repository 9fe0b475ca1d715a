"""What one trial costs: worker round trip, compilation and timing, per candidate.

Measures a batch of small random schedules (so the kernels themselves take microseconds) with
the real measurer, and splits the wall time per candidate into compile time (reported by the
builder), time spent running the kernel for timing, and the rest: pipes, process hops,
loading the object, the numpy check. At one kernel thread builds overlap with timing.

    python bench/measure_overhead.py [--candidates 48] [--cpu NAME]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from tuner.errors import TunerError  # noqa: E402
from tuner.measure.measurer import MeasureInput, MeasureOptions, Measurer  # noqa: E402
from tuner.search.strategies import RandomSearch  # noqa: E402
from tuner.ir.target import named_target  # noqa: E402
from tuner.ir.task import Task  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=48)
    parser.add_argument("--cpu", help="LLVM CPU name to generate code for (default: this one)")
    args = parser.parse_args(argv)
    try:
        base = named_target(args.cpu, 1)
    except TunerError as err:
        parser.error(str(err))
    task = Task.create("matmul", (64, 64, 64))
    print("| threads | candidates | wall s / candidate | compile s (median) | "
          "timing s (mean) | rest s / candidate |")
    print("|---|---|---|---|---|---|")
    for threads in (1, 2):
        target = base.with_threads(threads)
        search = RandomSearch(task.dag(), target, np.random.default_rng(0))
        batch = [MeasureInput(task, c.steps) for c in search.propose(args.candidates, set())]
        options = MeasureOptions()
        with Measurer(target, options) as measurer:
            measurer.measure(batch[:2])  # start the workers and import everything once
            start = time.perf_counter()
            results = measurer.measure(batch)
            wall = (time.perf_counter() - start) / len(batch)
        ok = [r for r in results if r.ok]
        compile_s = statistics.median(r.compile_s for r in results)
        # warm-up + calibration + samples: every call the runner made, roughly
        timing = statistics.mean(sum(r.costs_s) * r.number * 1.5 for r in ok) if ok else 0.0
        serial = compile_s + timing if threads >= 2 else max(compile_s, timing)
        print(f"| {threads} | {len(batch)} ({len(ok)} ok) | {wall:.3f} | {compile_s:.3f} | "
              f"{timing:.3f} | {max(0.0, wall - serial):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
