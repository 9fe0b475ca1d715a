"""Compile time against the code-size estimate: the data behind `tuner.ir.layout.MAX_CODE_SIZE`.

Compilation is the cost of a trial, so the search must not propose schedules that take
seconds to compile. `tuner.ir.layout.code_size` estimates the IR instructions the generator emits
once unrolled; this script samples schedules of every benchmark shape (with the size limit
lifted), and prints for each its estimate, the IR instructions really emitted and the compile
time in a builder process (the same one tuning uses), then how well the estimate predicts both
and the compile time of the largest schedules under the current limit.

    python bench/compile_time.py [--cpu x86-64-v3] [--per-shape 12] [--out compile.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import tuner.search.annotate as annotate  # noqa: E402
from bench.kernels import load_tasks  # noqa: E402
from tuner.codegen.emit import emit_llvm  # noqa: E402
from tuner.ir.layout import MAX_CODE_SIZE, code_size, ir_instructions  # noqa: E402
from tuner.measure.measurer import MeasureInput, MeasureOptions, Measurer  # noqa: E402
from tuner.ir.schedule import apply_steps  # noqa: E402
from tuner.search.sketch import generate_sketches  # noqa: E402
from tuner.ir.target import named_target  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", default=None)
    parser.add_argument("--per-shape", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the samples as JSON")
    args = parser.parse_args(argv)
    target = named_target(args.cpu, 1)
    lanes = target.machine.lanes
    annotate.MAX_CODE_SIZE = 10 ** 9  # sample past the limit: that is what is being measured
    rng = np.random.default_rng(args.seed)
    inputs, rows = [], []
    for name, task in load_tasks():
        dag = task.dag()
        sketches = generate_sketches(dag)
        for _ in range(args.per_shape):
            sketch = sketches[int(rng.integers(len(sketches)))]
            steps = annotate.to_steps(dag, sketch, annotate.sample(rng, dag, sketch, target),
                                      target)
            nest = apply_steps(dag, steps)
            inputs.append(MeasureInput(task, steps))
            rows.append({"shape": name, "estimate": code_size(nest, lanes),
                         "ir": ir_instructions(str(emit_llvm(nest, target)))})
    options = MeasureOptions(build_timeout_s=60.0, check=False, samples=1, max_total_s=0.05)
    with Measurer(target, options) as measurer:
        results = measurer.measure(inputs)
    for row, result in zip(rows, results):
        row["compile_s"] = result.compile_s if result.compile_s else None
        row["error"] = result.error.value
    done = [r for r in rows if r["compile_s"]]
    est = np.array([r["estimate"] for r in done], dtype=float)
    ir = np.array([r["ir"] for r in done], dtype=float)
    secs = np.array([r["compile_s"] for r in done])
    print(f"# {target.cpu} ({lanes} lanes): {len(done)} of {len(rows)} schedules compiled")
    print(f"log-log correlation: estimate~IR {np.corrcoef(np.log(est), np.log(ir))[0, 1]:.3f}, "
          f"estimate~seconds {np.corrcoef(np.log(est), np.log(secs))[0, 1]:.3f}, "
          f"IR~seconds {np.corrcoef(np.log(ir), np.log(secs))[0, 1]:.3f}")
    print("| estimate up to | schedules | IR median | compile median s | compile max s |")
    print("|---|---|---|---|---|")
    for high in (500, 1000, 2000, 4000, 8000, MAX_CODE_SIZE, 16000, 32000, 10 ** 9):
        sel = [r for r in done if r["estimate"] <= high]
        if sel:
            print(f"| {high} | {len(sel)} | {statistics.median(r['ir'] for r in sel):.0f} | "
                  f"{statistics.median(r['compile_s'] for r in sel):.3f} | "
                  f"{max(r['compile_s'] for r in sel):.2f} |")
    worst = sorted(done, key=lambda r: -r["compile_s"])[:8]
    print("slowest:", [(r["shape"], r["estimate"], r["ir"], round(r["compile_s"], 2))
                       for r in worst])
    timeouts = [r for r in rows if r["error"] == "timeout"]
    if timeouts:
        print("timed out:", [(r["shape"], r["estimate"], r["ir"]) for r in timeouts])
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
