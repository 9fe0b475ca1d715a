"""The benchmark report: tuned kernels against numpy, onnxruntime and the machine's peak.

For every shape of shared/bench/shapes.json: tune with the evolutionary search (`--trials`
per shape, the default schedule included, as a user's run would), measure numpy / onnxruntime
on the same shape and this CPU's FP32 FMA peak (bench/peak.py), all in this run, and write a
Markdown table and a bar chart.

    python bench/report.py [--trials 200] [--threads 1] [--out report]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.kernels import comparators, load_tasks  # noqa: E402
from bench.peak import measure_fp32_peak  # noqa: E402
from costmodel.features import extract_features  # noqa: E402
from costmodel.model import XGBModel  # noqa: E402
from records import RecordStore  # noqa: E402
from tuner.measure import Measurer  # noqa: E402
from tuner.plot import Figure, to_png  # noqa: E402
from tuner.target import host_target  # noqa: E402
from tuner.tune import TuneConfig, tune  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--out", default="report", help="folder for report.md, report.png, "
                        "and the records database")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = host_target(args.threads)
    peak = measure_fp32_peak(args.threads)
    rows = []
    with RecordStore(f"sqlite:///{out / 'records.db'}") as store, Measurer(target) as measurer:
        for name, task in load_tasks():
            if args.only and name not in args.only:
                continue
            start = time.perf_counter()
            result = tune(task, target, store, measurer, TuneConfig(trials=args.trials),
                          XGBModel(), extract_features)
            ref = comparators(task, args.threads)
            rows.append((name, result.best_gflops, result.default_gflops, ref.get("numpy"),
                         ref.get("onnxruntime"), time.perf_counter() - start))
            print(name, f"{result.best_gflops:.1f}", flush=True)
    fmt = lambda x: f"{x:.1f}" if x else "-"  # noqa: E731
    ratio = lambda a, b: f"{a / b:.2f}" if a and b else "-"  # noqa: E731
    lines = [f"CPU {target.cpu}, {args.threads} thread(s), FP32 FMA peak {peak:.1f} GFLOPS "
             f"(measured in this run), {args.trials} trials per shape.", "",
             "| shape | tuned | default | numpy | onnxruntime | tuned/numpy | tuned/ort | "
             "tuned/peak | tuning s |", "|---|---|---|---|---|---|---|---|---|"]
    for name, tuned, default, np_g, ort_g, seconds in rows:
        lines.append(f"| {name} | {tuned:.1f} | {fmt(default)} | {fmt(np_g)} | {fmt(ort_g)} | "
                     f"{ratio(tuned, np_g)} | {ratio(tuned, ort_g)} | {ratio(tuned, peak)} | "
                     f"{seconds:.0f} |")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig = Figure(figsize=(max(8, 1.1 * len(rows)), 4.5))
    ax = fig.subplots()
    x = range(len(rows))
    width = 0.27
    for k, (label, index) in enumerate((("tuned", 1), ("numpy", 3), ("onnxruntime", 4))):
        ax.bar([i + (k - 1) * width for i in x], [r[index] or 0 for r in rows], width,
               label=label)
    ax.axhline(peak, color="black", linestyle="--", linewidth=1, label=f"FP32 peak {peak:.0f}")
    ax.set_xticks(list(x), [r[0] for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("GFLOPS")
    ax.set_title(f"{target.cpu}, {args.threads} thread(s), {args.trials} trials per shape")
    ax.legend(fontsize=8)
    fig.tight_layout()
    (out / "report.png").write_bytes(to_png(fig))
    print(f"wrote {out / 'report.md'} and {out / 'report.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
