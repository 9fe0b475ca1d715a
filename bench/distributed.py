"""Tuning throughput on a Dask cluster against local tuning: what `--cluster` buys here.

    python bench/distributed.py MODEL.onnx [--trials 576] [--workers 1 2] [--threads 1]
                                [--local-cluster] [--out distributed.json]

Runs `tune model` in this process (tuner/cli.py) into a fresh store, once with the local
measurer and once per worker count N with a cluster as the README deploys one: a `dask
scheduler` and N `tune worker` processes on this machine, over TLS with the README's
certificates, **each worker pinned to a core of its own** (worker i on core i), so that N
workers are N one-core machines and "1 worker" is one of them; the tuner itself is not pinned.
With `--local-cluster`, `--cluster local:N` instead (N worker processes sharing the cores
evenly: one worker then has all of them, and builds on one core while it times on the other).
Prints per run: trials per second, the ratio to one worker, and where the wall time went:

- measure: the tuner waiting for its batches (compile, check and timing in the workers, plus
  scheduling and transfer for the cluster runs; workers measure their chunks in parallel);
- compile: the sum of the records' compile times (inside "measure"; overlapped across
  workers, and with timing in a local run with spare cores);
- timing: the sum of the timed calls (samples x calls x their cost; inside "measure");
- other: measure minus (compile + timing) / workers: the numpy checks, warm-up calls, worker
  start-up, uneven chunks, scheduling and transfer, if the work split evenly (negative where a
  worker overlaps builds with timing);
- store: committing the batches;
- tuner: the rest (proposals: lowering, features, cost-model fits; warm start; resume).

The distributed issue's goal is N workers reaching at least 0.8 x N times one worker's trials
per second. On a 2-core machine, two one-core workers are the most there is room for, and the
tuner's proposals run on the same cores between batches. Figures are for the CPU this ran on:
it prints it. Needs the `cluster` extra and the openssl command (for the certificates).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# run as a script, this file's folder comes first on sys.path, and this file is named like the
# package it benchmarks: take the folder out, the repository root in
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def pinned_workers(count: int, threads: int, certificates: Path):
    """A `dask scheduler` and `count` `tune worker`s on this machine, worker i pinned to core
    i (modulo the cores), all as the README starts them over TLS; yields the `tune` flags
    that reach them (--cluster tls://... and the tuner's certificate) once all have joined."""
    from tests.cluster_helpers import tls_files, tls_flags
    from distributed import Client
    from tuner.measure.tls import cluster_security

    address = f"tls://127.0.0.1:{_free_port()}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cores = sorted(os.sched_getaffinity(0))
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler",
                               "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                               "--no-dashboard", *tls_flags(certificates, "scheduler")],
                              **quiet)]
    try:
        for i in range(count):
            core = {cores[i % len(cores)]}
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tuner.cli", "worker", address, "--threads",
                 str(threads), "--name", f"worker{i}", *tls_flags(certificates, "worker1")],
                preexec_fn=lambda core=core: os.sched_setaffinity(0, core), **quiet))
        flags = ["--cluster", address, *tls_flags(certificates, "tuner")]
        files = tls_files(certificates, "tuner")
        deadline = time.monotonic() + 120
        with Client(address, security=cluster_security(address, files, "client"),
                    timeout=60) as client:
            while len(client.scheduler_info()["workers"]) < count:
                if time.monotonic() > deadline:
                    raise SystemExit(f"only {len(client.scheduler_info()['workers'])} of "
                                     f"{count} workers joined {address} within 120 s")
                time.sleep(0.5)
        yield flags
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def run(model: str, trials: int, threads: int, label: str, flags: list[str]) -> dict:
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
                "--db", str(db)] + flags
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
    workers = len({r.result.machine for r in records if r.result.machine}) or 1
    return {"cluster": label, "trials": len(records), "wall_s": wall,
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
    parser.add_argument("--trials", type=int, default=576)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--local-cluster", action="store_true",
                        help="--cluster local:N instead of pinned `tune worker`s")
    parser.add_argument("--out", help="append the results as JSON lines to this file")
    args = parser.parse_args(argv)
    print(f"{Path(args.model).name}, {args.trials} trials, {args.threads} thread(s), on "
          f"{llvm.get_host_cpu_name()} ({len(os.sched_getaffinity(0))} cores), load "
          f"{os.getloadavg()[0]:.2f}", flush=True)
    results = [run(args.model, args.trials, args.threads, "local", [])]
    if args.local_cluster:
        results += [run(args.model, args.trials, args.threads, f"local:{n}",
                        ["--cluster", f"local:{n}"]) for n in args.workers]
    else:
        from tests.cluster_helpers import make_certificates

        with tempfile.TemporaryDirectory() as folder:
            certificates = make_certificates(Path(folder))
            for n in args.workers:
                with pinned_workers(n, args.threads, certificates) as flags:
                    results.append(run(args.model, args.trials, args.threads,
                                       f"{n} pinned", flags))
    one = results[1] if len(results) > 1 and args.workers[0] == 1 else None
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
