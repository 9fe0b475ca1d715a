"""Hand-written expert schedules against numpy (OpenBLAS) and onnxruntime (MLAS), one run.

For every shape of shared/bench/shapes.json: the default schedule (tuner/search/default.py, the
register-blocked recipe its docstring describes) and a small hand sweep of its register tile (vector
width x unrolled rows), at one and at two threads, next to numpy's matmul and onnxruntime's
Conv / MatMul with the same timing protocol, each of those in a process of its own
(bench/comparators.py says why). The sweep is sized from the target's machine model
(tuner/ir/machine.py): vectors of `machine.lanes` floats, and at most as many accumulators as the
register file holds beside the operands of one reduction step (the tile's loaded vectors and a
broadcast), so AVX2 code (`--cpu x86-64-v3`, 16 ymm) gets smaller tiles than AVX-512 (32 zmm).

    python bench/kernels.py [--cpu NAME] [--threads 1 2] [--only resnet50.res2.3x3 ...]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.comparators import isa_limits, measure_peers  # noqa: E402
from tuner.search.default import register_tile, tiled_schedule  # noqa: E402
from tuner.errors import ScheduleError, TunerError  # noqa: E402
from tuner.codegen.jit import CompiledKernel  # noqa: E402
from tuner.ir.schedule import apply_steps  # noqa: E402
from tuner.ir.target import host_target, named_target  # noqa: E402
from tuner.ir.task import Task  # noqa: E402
from tuner.measure.timing import time_callable  # noqa: E402

SHAPES = Path(__file__).resolve().parents[2] / "shared" / "bench" / "shapes.json"


def load_tasks(path: Path = SHAPES) -> list[tuple[str, Task]]:
    data = json.loads(path.read_text())
    tasks = []
    for e in data.get("conv2d", []):
        tasks.append((e["name"], Task.create("conv2d", e["shape"], stride=e["stride"],
                                             pad=e["pad"], dilation=e["dilation"],
                                             groups=e["groups"])))
    for e in data.get("matmul", []):
        tasks.append((e["name"], Task.create("matmul", e["shape"])))
    for e in data.get("batch_matmul", []):
        tasks.append((e["name"], Task.create("batch_matmul", e["shape"])))
    return tasks


def measure_schedule(task: Task, target, steps) -> float:
    dag = task.dag()
    kernel = CompiledKernel(apply_steps(dag, steps), target)
    import numpy as np
    args = kernel.pack(*dag.random_inputs(np.random.default_rng(0)))
    out = kernel.new_output()
    result = time_callable(lambda: kernel.run(out, *args), min_sample_s=0.02)
    kernel.close()
    return dag.flops / result.median_s / 1e9


def tile_variants(task: Task, target):
    dag = task.dag()
    base = register_tile(dag, target)
    if base is None:
        return [()]
    machine = target.machine
    lanes = machine.lanes
    variants = {tiled_schedule(dag, target, base)}
    extent = dag.axis(base.vector_axis).extent
    for width in (lanes, 2 * lanes, 3 * lanes, 4 * lanes):
        if width > max(extent, lanes):
            continue
        vectors = math.ceil(width / lanes)
        # rows of `vectors` accumulators each, beside `vectors` loaded operands + a broadcast
        budget = machine.accumulator_budget(vectors + 1) // vectors
        for count in (4, 6, 7, 8, 12, 14):
            if count > budget or (base.unrolled_axis and
                                  count > dag.axis(base.unrolled_axis).extent):
                continue
            try:
                variants.add(tiled_schedule(dag, target, replace(base, width=width,
                                                                  count=count)))
            except ScheduleError:
                continue
    return sorted(variants, key=str)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", help="LLVM CPU name to generate code for (default: this one)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--only", nargs="*", help="shape names to run")
    args = parser.parse_args(argv)
    try:
        host = named_target(args.cpu)
    except TunerError as err:
        parser.error(str(err))
    print(f"# CPU {host.cpu} ({host.triple}), target key {host.key}")
    print(f"# machine model {json.dumps(host.machine.to_json())}")
    print("| shape | threads | default | best hand tile | numpy | onnxruntime | "
          "best/numpy | best/ort |")
    print("|---|---|---|---|---|---|---|---|")
    for name, task in load_tasks():
        if args.only and name not in args.only:
            continue
        for threads in args.threads:
            target = host.with_threads(threads)
            variants = tile_variants(task, target)
            default = measure_schedule(task, target, variants[0] if len(variants) == 1 else
                                       tiled_schedule(task.dag(), target,
                                                      register_tile(task.dag(), target)))
            best = max([default] + [measure_schedule(task, target, v) for v in variants])
            ref = measure_peers(task, threads, isa_limits(target, host_target(1)))
            np_g, ort_g = ref.get("numpy"), ref.get("onnxruntime")
            fmt = lambda x: f"{x:.1f}" if x else "-"  # noqa: E731
            ratio = lambda a, b: f"{a / b:.2f}" if b else "-"  # noqa: E731
            print(f"| {name} | {threads} | {default:.1f} | {best:.1f} | {fmt(np_g)} | "
                  f"{fmt(ort_g)} | {ratio(best, np_g)} | {ratio(best, ort_g)} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
