"""Where a packaged model's kernels lose time in the graph: each fused node timed inside the
graph and then alone, in one process.

bench/model.py times each task alone (warm caches, as the search measures it) and the package
end to end; their difference is more than the numpy operators. This probe runs the package
`--calls` times, timing every fused node's call inside the graph (its weights and output
buffer not in cache unless the previous layers left them there), then calls each node again
in a loop on the same inputs (everything hot), and prints both sums and the nodes that lose
most:

    python bench/model_nodes.py report-models/resnet50.threads1 [--calls 15] [--top 12]

Run it with the thread environment of the package (bench/child.py sets OMP_NUM_THREADS and
OPENBLAS_NUM_THREADS to the package's threads) on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tuner import load_package  # noqa: E402


def node_times(directory: Path, calls: int) -> list[tuple[str, float, float]]:
    """(node name, median s in the graph, median s alone) per fused node, in graph order."""
    package = load_package(directory)
    (name, shape), = package.inputs.items()
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    in_graph: dict[str, list[float]] = defaultdict(list)
    last_call = {}
    for op, impl in list(package._impls.items()):
        def timed(node, args, impl=impl):
            start = time.perf_counter()
            out = impl(node, args)
            in_graph[node.name].append(time.perf_counter() - start)
            last_call[node.name] = (impl, node, args)
            return out
        package._impls[op] = timed
    for _ in range(3):
        package(x)
    in_graph.clear()
    for _ in range(calls):
        package(x)
    rows = []
    for node_name, (impl, node, args) in last_call.items():
        impl(node, args)
        alone = []
        for _ in range(calls):
            start = time.perf_counter()
            impl(node, args)
            alone.append(time.perf_counter() - start)
        rows.append((node_name, float(np.median(in_graph[node_name])), float(np.median(alone))))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path, help="a directory `tune build --model` wrote")
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    rows = node_times(args.package, args.calls)
    graph = sum(r[1] for r in rows) * 1e3
    alone = sum(r[2] for r in rows) * 1e3
    print(f"{len(rows)} fused nodes: {graph:.3f} ms in the graph, {alone:.3f} ms alone "
          f"({graph / alone:.2f}x)")
    for node_name, in_graph, by_itself in sorted(rows, key=lambda r: r[2] - r[1])[:args.top]:
        print(f"  {node_name:32s} {in_graph * 1e3:8.3f} ms in the graph, "
              f"{by_itself * 1e3:8.3f} alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
