"""Replaying a tuning log: the rebuilt kernel against what was measured while tuning.

Tunes one shape briefly into a fresh database (or uses --db), then times `tuner.build` from the
log (cold: compile; warm: the in-process cache) and measures the replayed kernel with the same
protocol; its GFLOPS should agree with the record's within noise.

    python bench/replay.py [--trials 64] [--db records.db]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tuner  # noqa: E402
from costmodel.features import extract_features  # noqa: E402
from costmodel.xgb import XGBCostModel  # noqa: E402
from records import RecordStore  # noqa: E402
from tuner.measure.measurer import Measurer  # noqa: E402
from tuner.ir.lowered import schedule_applies  # noqa: E402
from tuner.ir.target import host_target  # noqa: E402
from tuner.ir.task import Task  # noqa: E402
from tuner.measure.timing import time_callable  # noqa: E402
from tuner.search.tune import TuneConfig, tune  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--db")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    task = Task.create("conv2d", (1, 64, 56, 56, 64, 3, 3), pad=1)
    target = host_target(args.threads)
    db = args.db or str(Path(tempfile.mkdtemp()) / "replay.db")
    with RecordStore(f"sqlite:///{db}") as store:
        if store.best(task, target, schedule_applies) is None:
            with Measurer(target) as measurer:
                tune(task, target, store, measurer, TuneConfig(trials=args.trials),
                     XGBCostModel(), extract_features)
        record = store.best(task, target, schedule_applies)
    start = time.perf_counter()
    kernel = tuner.build("conv2d", task.shape, pad=1, db=db, threads=args.threads)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    tuner.build("conv2d", task.shape, pad=1, db=db, threads=args.threads)
    warm = time.perf_counter() - start
    data, weight = task.dag().random_inputs(np.random.default_rng(0))
    bound = kernel.bind(weight=weight)
    out = kernel.kernel.new_output()
    args_packed = kernel.kernel.pack(data, weight)
    replayed = time_callable(lambda: kernel.kernel.run(out, *args_packed), min_sample_s=0.02)
    gflops = task.dag().flops / replayed.median_s / 1e9
    np.testing.assert_allclose(bound(data), task.dag().reference(data, weight), rtol=1e-4,
                               atol=1e-3)
    print(f"task {task.key} on {target.cpu} x{target.threads}")
    print(f"recorded while tuning  {record.gflops:7.1f} GFLOPS (trial {record.trial})")
    print(f"replayed from the log  {gflops:7.1f} GFLOPS (ratio {gflops / record.gflops:.2f})")
    print(f"build from the log     {cold * 1e3:7.1f} ms cold, {warm * 1e3:.2f} ms cached")
    return 0


if __name__ == "__main__":
    sys.exit(main())
