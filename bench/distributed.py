"""Tuning throughput on a Dask cluster against local tuning: what `--cluster` buys here.

    python bench/distributed.py MODEL.onnx [--trials 160] [--workers 1 2] [--threads 1]
                                [--out distributed.json]

Runs `tune model` in this process (tuner/cli.py) into a fresh store, once with the local
measurer and once per worker count with `--cluster local:N` (N worker processes on this
machine, each on its own share of the cores), and prints per run: trials per second, the ratio
to one worker, and where the wall time went:

- measure: the tuner waiting for its batches (compile, check and timing in the workers, plus
  scheduling and transfer for the cluster runs; workers measure their chunks in parallel);
- compile: the sum of the records' compile times (inside "measure"; overlapped across
  workers, and with timing in a local run with spare cores);
- timing: the sum of the timed calls (samples x calls x their cost; inside "measure");
- other: measure minus (compile + timing) / workers: the numpy checks, warm-up calls, worker
  start-up, scheduling and transfer, if the work split evenly (negative where a worker
  overlaps builds with timing);
- store: committing the batches;
- tuner: the rest (proposals: lowering, features, cost-model fits; warm start; resume).

On a 2-core machine one worker per core is the most a cluster can have; the goal of the
distributed issue is N workers reaching at least 0.8 x N times one worker's trials per second.
Figures are for the CPU this ran on: it prints it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# run as a script, this file's folder comes first on sys.path, and this file is named like the
# package it benchmarks: take the folder out, the repository root in
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]


def run(model: str, trials: int, threads: int, cluster: str | None) -> dict:
    from records import RecordStore
    from tuner import cli
    from tuner.measure.cluster import ClusterMeasurer
    from tuner.measure.measurer import Measurer

    spent = {"measure": 0.0, "store": 0.0}
    patched = [(Measurer, "measure"), (ClusterMeasurer, "measure"), (RecordStore, "add_many")]
    originals = {(cls, name): getattr(cls, name) for cls, name in patched}

    def timed(cls, name, bucket):
        original = originals[(cls, name)]

        def wrapper(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return original(self, *args, **kwargs)
            finally:
                spent[bucket] += time.perf_counter() - start
        return wrapper

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "records.db"
        for cls, name in patched:
            setattr(cls, name, timed(cls, name, "store" if name == "add_many" else "measure"))
        argv = ["model", model, "--trials", str(trials), "--threads", str(threads), "--quiet",
                "--db", str(db)] + (["--cluster", cluster] if cluster else [])
        start = time.perf_counter()
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # tune model's task table
                status = cli.main(argv)
        finally:
            for (cls, name), original in originals.items():
                setattr(cls, name, original)
        wall = time.perf_counter() - start
        with RecordStore(f"sqlite:///{db}") as store:
            records = [r for t, g, *_ in store.summary() for r in store.history(t, g)]
    if status != 0:
        raise SystemExit(f"tune model exited with {status}")
    compile_s = sum(r.result.compile_s for r in records)
    # the timed calls themselves: each sample is `number` calls of its cost
    timing_s = sum(sum(r.result.costs_s) * r.result.number for r in records)
    workers = int(cluster.split(":")[1]) if cluster and cluster.startswith("local:") else 1
    return {"cluster": cluster or "local", "trials": len(records), "wall_s": wall,
            "trials_per_s": len(records) / wall, "measure_s": spent["measure"],
            "compile_s": compile_s, "timing_s": timing_s,
            # what waiting on the workers cost beyond their compile and timing, if these
            # split evenly over the workers and did not overlap: checks against numpy, worker
            # start-up, scheduling and transfer (negative where a worker overlaps them)
            "other_s": spent["measure"] - (compile_s + timing_s) / workers,
            "store_s": spent["store"], "tuner_s": wall - spent["measure"] - spent["store"],
            "machines": sorted({r.result.machine for r in records if r.result.machine})}


def main(argv: list[str] | None = None) -> int:
    import llvmlite.binding as llvm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--trials", type=int, default=160)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="append the results as JSON lines to this file")
    args = parser.parse_args(argv)
    print(f"{Path(args.model).name}, {args.trials} trials, {args.threads} thread(s), on "
          f"{llvm.get_host_cpu_name()} ({len(os.sched_getaffinity(0))} cores), load "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    results = [run(args.model, args.trials, args.threads, None)]
    results += [run(args.model, args.trials, args.threads, f"local:{n}") for n in args.workers]
    one = next((r for r in results if r["cluster"] == "local:1"), None)
    print(f"{'measured by':>12s} {'trials/s':>9s} {'x 1 worker':>10s} {'wall s':>7s} "
          f"{'measure':>8s} {'compile':>8s} {'timing':>7s} {'other':>6s} {'store':>6s} "
          f"{'tuner':>6s}")
    for r in results:
        ratio = f"{r['trials_per_s'] / one['trials_per_s']:.2f}" if one else "-"
        print(f"{r['cluster']:>12s} {r['trials_per_s']:9.2f} {ratio:>10s} {r['wall_s']:7.1f} "
              f"{r['measure_s']:8.1f} {r['compile_s']:8.1f} {r['timing_s']:7.1f} "
              f"{r['other_s']:6.1f} {r['store_s']:6.1f} {r['tuner_s']:6.1f}")
    if args.out:
        with open(args.out, "a") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
