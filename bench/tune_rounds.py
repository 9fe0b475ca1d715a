"""What `tune model` spends between measurements: the task rounds' own overhead.

    python bench/tune_rounds.py MODEL.onnx --trials 320 [--records FILLED.db] [--threads 1]
                                [--out rounds.json]

Runs `tune model` in this process (tuner/cli.py, as a user types it) into a fresh copy of
`--records` (another model's records, say; default: an empty store) and times every call of
the measurer, which compiles, checks and times a batch in its worker processes. The rest of
the wall time is the tuner's own: proposing candidates (lowering, features, the cost model's
fits and predictions), warm start and resume, and committing records. Printed:

- trials per second over the whole run;
- the overhead, wall time minus time in the measurer, in all and per round;
- a task's first round (the gap before its first measurement: the tuner set up for it and
  proposed its first batch) against its later rounds.

Any figure from this script is for the CPU it ran on: it prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _host_cpu() -> str:
    import llvmlite.binding as llvm

    return llvm.get_host_cpu_name()


def run(model: str, trials: int, records: str | None, threads: int, seed: int) -> dict:
    from tuner import cli
    try:
        from tuner.measure.measurer import Measurer
    except ImportError:  # a tree from before the stages were folders (for "before" figures)
        from tuner.measure import Measurer

    calls: list[tuple[str, float, float, int]] = []  # task key, start, end, candidates
    measure = Measurer.measure

    def timed(self, inputs):
        start = time.perf_counter()
        try:
            return measure(self, inputs)
        finally:
            calls.append((inputs[0].task.key if inputs else "", start, time.perf_counter(),
                          len(inputs)))

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "records.db"
        if records:
            shutil.copyfile(records, db)
        Measurer.measure = timed
        argv = ["model", model, "--trials", str(trials), "--threads", str(threads),
                "--seed", str(seed), "--quiet", "--db", str(db)]
        start = time.perf_counter()
        try:
            status = cli.main(argv)
        finally:
            Measurer.measure = measure
        wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"tune model exited with {status}")
    gaps, first, later = [], [], []
    seen: set[str] = set()
    previous_end = start
    for key, begin, end, _ in calls:
        gap = begin - previous_end
        gaps.append(gap)
        (later if key in seen else first).append(gap)
        seen.add(key)
        previous_end = end
    measured_s = sum(end - begin for _, begin, end, _ in calls)
    done = sum(n for *_, n in calls)
    return {"cpu": _host_cpu(), "model": Path(model).name, "trials": done,
            "prefilled": records, "wall_s": wall, "measure_s": measured_s,
            "overhead_s": wall - measured_s, "trials_per_s": done / wall,
            "rounds": len(calls), "overhead_per_round_s": statistics.mean(gaps),
            "first_round_s": statistics.mean(first) if first else None,
            "later_round_s": statistics.mean(later) if later else None,
            "tasks": len(seen)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--trials", type=int, default=320)
    parser.add_argument("--records", help="a records database to start from (copied)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="append the result as a JSON line to this file")
    args = parser.parse_args(argv)
    result = run(args.model, args.trials, args.records, args.threads, args.seed)
    result["load_avg"] = os.getloadavg()
    print(f"{result['model']} on {result['cpu']}, {args.threads} thread(s), "
          f"{'store of ' + args.records if args.records else 'empty store'}")
    print(f"  {result['trials']} trials in {result['wall_s']:.1f} s "
          f"({result['trials_per_s']:.2f} trials/s), {result['rounds']} rounds over "
          f"{result['tasks']} tasks")
    print(f"  measurer {result['measure_s']:.1f} s, overhead {result['overhead_s']:.1f} s "
          f"({result['overhead_per_round_s']:.2f} s a round; a task's first round "
          f"{result['first_round_s']:.2f} s, later rounds "
          f"{result['later_round_s'] or 0:.2f} s)")
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
