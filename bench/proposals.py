"""The search's own cost: seconds per round of evolutionary proposals, nothing measured.

    python bench/proposals.py [--rounds 6] [--batch 16] [--processes N]

For three tasks (a padded 3x3 convolution, a 1x1 convolution, a BERT-sized matmul), an
`EvolutionarySearch` with the XGBoost cost model proposes `--batch` candidates a round for
`--rounds` rounds; each round's candidates are "measured" at once by the analytic estimate
times a seeded random factor, so the cost model is fitted every round as in tuning. What is
timed is `propose` (lowering, features, cost-model fit and predictions, evolution) and
`observe`: the tuner's share of a round, which a cluster does not parallelise. Genomes are
lowered and featurized on a `LoweringPool` of `--processes` (default: one per core, as `tune`
does; 1: in this process), started before the clock.

The digest printed at the end is over every proposed schedule: a change that is meant to make
proposals cheaper without changing them leaves it as it was. Figures are for the CPU named.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

TASKS = (("conv2d", (1, 64, 56, 56, 64, 3, 3), {"pad": 1}),
         ("conv2d", (1, 256, 14, 14, 1024, 1, 1), {}),
         ("matmul", (128, 768, 768), {}))


class _Estimated:
    """A stand-in measurement: `gflops` whatever the task's flops."""

    def __init__(self, gflops: float):
        self._gflops = gflops

    def gflops(self, flops: float) -> float:
        return self._gflops


def main(argv: list[str] | None = None) -> int:
    import llvmlite.binding as llvm

    from tuner.ir.target import host_target
    from tuner.search.lowering import LoweringPool

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--processes", type=int, default=None,
                        help="lowering processes (default: one per core; 1: none)")
    args = parser.parse_args(argv)
    target = host_target(1)
    pool = LoweringPool(args.processes)
    print(f"{args.rounds} rounds of {args.batch}, {pool.processes} lowering process(es), on "
          f"{llvm.get_host_cpu_name()}")
    digest, total = hashlib.sha1(), 0.0
    with pool:
        pool.start(wait=True)  # its processes started before the clock
        total = _rounds(args, target, pool, digest)
    print(f"mean {total / args.rounds / len(TASKS):.2f} s a round; proposals digest "
          f"{digest.hexdigest()[:12]}")
    return 0


def _rounds(args, target, pool, digest) -> float:
    import numpy as np

    from costmodel.estimate import estimate_gflops
    from costmodel.features import extract_features
    from costmodel.xgb import XGBCostModel
    from tuner.ir.task import Task
    from tuner.search.strategies import EvolutionarySearch

    total = 0.0
    for op, shape, attrs in TASKS:
        task = Task.create(op, shape, **attrs)
        search = EvolutionarySearch(task.dag(), target, np.random.default_rng(0),
                                    XGBCostModel(), extract_features,
                                    lowering=pool.bind(task, target, extract_features))
        noise = np.random.default_rng(1)
        measured: set[str] = set()
        start = time.perf_counter()
        for _ in range(args.rounds):
            batch = search.propose(args.batch, measured)
            measured |= {c.key for c in batch}
            for c in batch:
                digest.update(c.key.encode())
            search.observe(batch, [_Estimated(estimate_gflops(c.nest, target)
                                              * noise.uniform(0.5, 1.5) if c.nest else 0.0)
                                   for c in batch])
        spent = time.perf_counter() - start
        total += spent
        print(f"{task.key}: {spent / args.rounds:.2f} s a round")
    return total


if __name__ == "__main__":
    sys.exit(main())
