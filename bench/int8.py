"""int8 kernels against onnxruntime's int8 operators and against our own float32 kernels.

For each public shape (shared/bench/shapes.json) two tasks are tuned, one thread, `--trials`
candidates each, into one records database: the int8 task that onnxruntime's quantized
operator computes (conv2d: uint8 data, int8 weight, int32 bias, requantized to uint8 =
QLinearConv; matmul: uint8 x int8 requantized to uint8 = QLinearMatMul; batch_matmul: uint8 x
uint8, each with its zero point, requantized = QLinearMatMul of two inputs) and the float32
task of the same shape (conv2d with its bias, the products plain). onnxruntime's float32
batched product is not timed (its MatMul would take the second operand as a constant).
Then, each in a process of its own and in this order, at the same moment of the machine:
our int8 kernel and our float32 kernel as `tuner.build` replays them (bench/comparators.py,
kind "tuned"), onnxruntime's int8 operator and onnxruntime's float32 Conv / MatMul.

Printed: GOPS (2 x multiply-accumulates per second, as GFLOPS for float32), int8 / onnxruntime
int8, int8 / our float32, and geometric means. Our int8 kernels are exact (uint8 x int8 sums
in int32); on a CPU without VNNI, onnxruntime's MLAS uses vpmaddubsw, which saturates a pair of
products to int16 (tuner/codegen/quantized.py says why we do not). With `--reduce-range` the
weights (ours and onnxruntime's) lie in [-64, 64], as onnxruntime's quantizer writes them with
reduce_range=True: no pair saturates, and our kernels use vpmaddubsw too.

    python bench/int8.py [--trials 64] [--threads 1] [--only resnet50.res2.3x3 ...]
                         [--db /tmp/bench_int8.db] [--no-tune] [--reduce-range]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.comparators import measure_in_subprocess  # noqa: E402
from bench.kernels import load_tasks  # noqa: E402
from costmodel.features import extract_features  # noqa: E402
from costmodel.xgb import XGBCostModel  # noqa: E402
from records import RecordStore  # noqa: E402
from tuner.ir.target import host_target  # noqa: E402
from tuner.ir.task import Task  # noqa: E402
from tuner.measure.measurer import Measurer  # noqa: E402
from tuner.search.tune import TuneConfig, tune  # noqa: E402


def int8_task(task: Task, reduce_range: bool = False) -> Task:
    """The int8 task onnxruntime's QLinearConv / QLinearMatMul computes for `task`'s shape;
    with `reduce_range`, of weights in [-64, 64] (what onnxruntime's quantizer writes with
    reduce_range=True)."""
    attrs = {k: v for k, v in task.attr_dict.items() if k not in ("relu", "gelu", "residual")}
    attrs["out_type"] = 1
    if reduce_range and task.op != "batch_matmul":  # its second operand is no weight
        attrs["reduce_range"] = True
    if task.op == "conv2d":
        attrs["bias"] = True
    return Task.create(task.op, task.shape, "int8", **attrs)


def float_task(task: Task) -> Task:
    attrs = {k: v for k, v in task.attr_dict.items() if k not in ("relu", "gelu", "residual")}
    if task.op == "conv2d":
        attrs["bias"] = True
    return Task.create(task.op, task.shape, **attrs)


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--db", default="/tmp/bench_int8.db")
    parser.add_argument("--no-tune", action="store_true",
                        help="time what --db holds (tuned before)")
    parser.add_argument("--reduce-range", action="store_true",
                        help="int8 weights in [-64, 64] (7-bit, onnxruntime's reduce_range) for "
                        "both: on CPUs without VNNI ours then use vpmaddubsw, exactly")
    args = parser.parse_args(argv)
    target = host_target(args.threads)
    url = f"sqlite:///{args.db}"
    shapes = [(name, task) for name, task in load_tasks()
              if not args.only or name in args.only]
    print(f"# {target.cpu} ({target.machine.int8_instruction(args.reduce_range)}), "
          f"{args.threads} thread(s), "
          f"{args.trials} trials per task")
    if not args.no_tune:
        with RecordStore(url) as store, Measurer(target) as measurer:
            for name, task in shapes:
                for tuned in (int8_task(task, args.reduce_range), float_task(task)):
                    result = tune(tuned, target, store, measurer,
                                  TuneConfig(trials=args.trials), XGBCostModel(),
                                  extract_features)
                    print(f"tuned {name} {tuned.dtype}: {result.best_gflops:.1f} in "
                          f"{result.elapsed_s:.0f} s", file=sys.stderr, flush=True)
    print("| shape | int8 GOPS | onnxruntime int8 | int8/ort | our float32 | ort float32 | "
          "int8/our float32 |")
    print("|---|---|---|---|---|---|---|")
    vs_ort, vs_float = [], []
    for name, task in shapes:
        quantized = int8_task(task, args.reduce_range)
        ours = measure_in_subprocess("tuned", quantized, args.threads, db=url, cpu=None)
        ours_float = measure_in_subprocess("tuned", float_task(task), args.threads, db=url,
                                           cpu=None)
        ort = measure_in_subprocess("onnxruntime", quantized, args.threads)
        ort_float = measure_in_subprocess("onnxruntime", float_task(task), args.threads) \
            if task.op != "batch_matmul" else None

        def fmt(x):
            return f"{x:.1f}" if x else "-"

        ratio = ours / ort if ours and ort else None
        speedup = ours / ours_float if ours and ours_float else None
        if ratio:
            vs_ort.append(ratio)
        if speedup:
            vs_float.append(speedup)
        print(f"| {name} | {fmt(ours)} | {fmt(ort)} | {ratio:.2f} | {fmt(ours_float)} | "
              f"{fmt(ort_float)} | {speedup:.2f} |" if ratio and speedup else
              f"| {name} | {fmt(ours)} | {fmt(ort)} | - | {fmt(ours_float)} | "
              f"{fmt(ort_float)} | - |", flush=True)
    print(f"\ngeomean int8 / onnxruntime int8: {geomean(vs_ort):.2f} over {len(vs_ort)} shapes")
    print(f"geomean int8 / our float32: {geomean(vs_float):.2f} over {len(vs_float)} shapes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
