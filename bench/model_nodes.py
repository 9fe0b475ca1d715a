"""Where a packaged model's kernels lose time in the graph: each fused node timed inside the
graph and then alone, in one process.

bench/model.py times each task alone (warm caches, as the search measures it) and the package
end to end; their difference is more than the numpy operators. This probe runs the package
`--calls` times, timing every fused node's call inside the graph (its weights and output
buffer not in cache unless the previous layers left them there), then calls each node again
in a loop on the same inputs (everything hot), and prints both sums and the nodes that lose
most. With `--cold`, each of those nodes' kernels is also timed with its weights cold (each
call reads another copy of them, the copies together larger than the caches) and with its
output cold (another output buffer each call), everything else as in a loop:

    python bench/model_nodes.py report-models/resnet50.threads1 [--calls 15] [--top 12] [--cold]

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

from tuner.network.deploy import load_package  # noqa: E402


COLD_BYTES = 96 << 20  # more than any L3 this project has met (32 MiB on Zen 5)


def cold_times(package, node_name: str, args: list, calls: int) -> dict[str, float]:
    """Seconds per call of the node's kernel: warm, with its weights cold and with its
    output cold (`module docstring`)."""
    node = next(n for n in package.graph.nodes if n.name == node_name)
    kernel = package._kernels[node.outputs[0]]
    inputs = [np.ascontiguousarray(a, dtype=np.float32) for a in args]
    weights = kernel.constants
    weight_bytes = max(1, sum(w.nbytes for w in weights))
    out_bytes = 4 * int(np.prod(kernel.output_shape))
    weight_copies = [[w.copy() for w in weights] for _ in range(max(2, COLD_BYTES // weight_bytes))]
    outputs = [np.zeros(kernel.output_shape, np.float32)
               for _ in range(max(2, COLD_BYTES // out_bytes))]

    def arguments(out, consts):
        given, bound = iter(inputs), iter(consts)
        return [out.ctypes.data] + [(next(given) if a is None else next(bound)).ctypes.data
                                    for a in kernel.arguments]
    result = {}
    for mode in ("warm", "weights cold", "output cold"):
        plan = [arguments(outputs[i % len(outputs)] if mode == "output cold" else outputs[0],
                          weight_copies[i % len(weight_copies)] if mode == "weights cold"
                          else weights) for i in range(4 * calls)]
        for call in plan[:calls]:
            kernel.function(*call)
        start = time.perf_counter()
        for call in plan:
            kernel.function(*call)
        result[mode] = (time.perf_counter() - start) / len(plan)
    return result


def node_times(directory: Path, calls: int):
    """(node name, median s in the graph, median s alone) per fused node, in graph order,
    the package, and the last arguments of each node."""
    package = load_package(directory, segments=False)  # each kernel node timed alone
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
    return rows, package, {name: call[2] for name, call in last_call.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path, help="a directory `tune build --model` wrote")
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--cold", action="store_true",
                        help="also time the top nodes' kernels with cold weights / output")
    args = parser.parse_args(argv)
    rows, package, last_args = node_times(args.package, args.calls)
    graph = sum(r[1] for r in rows) * 1e3
    alone = sum(r[2] for r in rows) * 1e3
    print(f"{len(rows)} fused nodes: {graph:.3f} ms in the graph, {alone:.3f} ms alone "
          f"({graph / alone:.2f}x)")
    for node_name, in_graph, by_itself in sorted(rows, key=lambda r: r[2] - r[1])[:args.top]:
        line = (f"  {node_name:32s} {in_graph * 1e3:8.3f} ms in the graph, "
                f"{by_itself * 1e3:8.3f} alone")
        if args.cold:
            cold = cold_times(package, node_name, last_args[node_name], args.calls)
            line += "; kernel " + ", ".join(f"{mode} {s * 1e3:.3f}" for mode, s in cold.items())
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
