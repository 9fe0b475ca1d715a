"""Tuning benchmark: every shape of shared/bench/shapes.json, each strategy, one process.

For each shape and strategy: a fresh record database, `--trials` measured candidates on one
thread (the default schedule is left out, so strategies are compared on their own search),
then the tuned GFLOPS beside numpy / onnxruntime measured in the same run, the trial at which
the strategy reached 90% of its final best, the trial at which evolutionary search reached the
best that random search found in all its trials, and the tuning wall time. The comparators run
in processes of their own (bench/comparators.py).

    python bench/tune.py [--trials 200] [--cpu NAME] [--strategies evolutionary random optuna]
                         [--only resnet50.res2.3x3 ...] [--out /tmp/bench_tune]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.comparators import isa_limits, measure_peers  # noqa: E402
from bench.kernels import load_tasks  # noqa: E402
from costmodel.features import extract_features  # noqa: E402
from costmodel.xgb import XGBCostModel  # noqa: E402
from records import RecordStore  # noqa: E402
from tuner.errors import TunerError  # noqa: E402
from tuner.measure.measurer import Measurer  # noqa: E402
from tuner.ir.target import host_target, named_target  # noqa: E402
from tuner.search.tune import STRATEGIES, TuneConfig, tune  # noqa: E402


def first_reaching(curve, level: float) -> int | None:
    for i, (_, _, best) in enumerate(curve):
        if best >= level:
            return i + 1
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cpu", help="LLVM CPU name to generate code for (default: this one)")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--out", default="/tmp/bench_tune", help="folder for the databases")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        target = named_target(args.cpu, args.threads)
    except TunerError as err:
        parser.error(str(err))
    print(f"# {target.cpu}, {args.threads} thread(s), {args.trials} trials per strategy")
    print("| shape | strategy | tuned GFLOPS | numpy | onnxruntime | tuned/ref | "
          "trial to 90% | evo trial to random's best | tuning s |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary: dict[str, dict[str, float]] = {}
    for name, task in load_tasks():
        if args.only and name not in args.only:
            continue
        ref = measure_peers(task, args.threads, isa_limits(target, host_target(1)))
        reference = ref.get("onnxruntime") if task.op == "conv2d" else ref.get("numpy")
        results = {}
        for strategy in args.strategies:
            db = out / f"{name}.{strategy}.db"
            db.unlink(missing_ok=True)
            config = TuneConfig(trials=args.trials, strategy=strategy, include_default=False)
            with RecordStore(f"sqlite:///{db}") as store, Measurer(target) as measurer:
                results[strategy] = tune(task, target, store, measurer, config, XGBCostModel(),
                                         extract_features)
        random_best = results["random"].best_gflops if "random" in results else None
        for strategy, r in results.items():
            to90 = first_reaching(r.curve, 0.9 * r.best_gflops)
            beat = first_reaching(r.curve, random_best) if strategy == "evolutionary" \
                and random_best else None
            fmt = lambda x: f"{x:.1f}" if x else "-"  # noqa: E731
            ratio = f"{r.best_gflops / reference:.2f}" if reference else "-"
            print(f"| {name} | {strategy} | {r.best_gflops:.1f} | {fmt(ref.get('numpy'))} | "
                  f"{fmt(ref.get('onnxruntime'))} | {ratio} | {to90} | "
                  f"{beat if beat else ('-' if strategy != 'evolutionary' else 'never')} | "
                  f"{r.elapsed_s:.0f} |", flush=True)
            summary.setdefault(strategy, {})[name] = r.best_gflops / reference \
                if reference else float("nan")
    for strategy, ratios in summary.items():
        conv = [v for k, v in ratios.items() if "resnet" in k or "mobilenet" in k]
        if conv:
            geo = math.exp(sum(math.log(v) for v in conv) / len(conv))
            print(f"\n{strategy}: geomean tuned/onnxruntime over conv2d shapes = {geo:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
