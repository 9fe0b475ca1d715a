"""Hashes of the LLVM IR emitted for many random kernels: a refactoring's proof that code
generation did not change.

    python bench/ir_hashes.py make --count 600 -o kernels.json   # random tasks and schedules
    python bench/ir_hashes.py hash kernels.json [-o hashes.json]  # one SHA-256 per kernel

`make` draws tasks and schedules two ways: the differential tests' wild generator
(tests/schedule_gen.py: tails, fused parallel loops, every padding mode and layout rewrite) and
the search's own sampler (sketches and annotations, as tuning proposes them), for generic AVX2
(x86-64-v3) and AVX-512 (x86-64-v4) code. Code for either is generated on any host; nothing
here runs a kernel. `hash` reads the kernels back (task key, target, schedule JSON only, so an
older or newer tree of the tuner can hash the same list) and prints each kernel's digest and
one digest over all: run it in two trees and compare the last lines.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CPUS = ("x86-64-v3", "x86-64-v4")


def make(count: int, seed: int) -> list[dict]:
    sys.path.insert(0, str(ROOT / "tests"))
    from schedule_gen import random_schedule, random_task

    from tuner.search.annotate import lower, sample
    from tuner.ir.cpu_probe import probe
    from tuner.errors import TunerError
    from tuner.ir.schedule import schedule_to_json
    from tuner.search.sketch import generate_sketches
    from tuner.ir.target import Target, host_target

    host = host_target(1)
    targets = [Target(host.triple, cpu, ",".join(probe(cpu)), threads)
               for cpu in CPUS for threads in (1, 2)]
    rng = np.random.default_rng(seed)
    kernels: list[dict] = []
    while len(kernels) < count:
        target = targets[int(rng.integers(len(targets)))]
        task = random_task(rng)
        try:
            if rng.random() < 0.5:
                steps = random_schedule(rng, task)
            else:
                dag = task.dag()
                sketches = generate_sketches(dag)
                sketch = sketches[int(rng.integers(len(sketches)))]
                steps, _ = lower(dag, sketch, sample(rng, dag, sketch, target), target)
        except TunerError:
            continue
        kernels.append({"task": task.key, "target": target.to_json(),
                        "schedule": json.loads(schedule_to_json(steps))})
    return kernels


def digest(kernel: dict) -> str:
    from tuner.codegen.emit import emit_llvm
    from tuner.ir.schedule import apply_steps, schedule_from_json
    from tuner.ir.target import Target
    from tuner.ir.task import Task

    task = Task.from_key(kernel["task"])
    nest = apply_steps(task.dag(), schedule_from_json(json.dumps(kernel["schedule"])))
    text = str(emit_llvm(nest, Target.from_json(kernel["target"])))
    return hashlib.sha256(text.encode()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("make")
    p.add_argument("--count", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True)
    p = sub.add_parser("hash")
    p.add_argument("kernels")
    p.add_argument("-o", "--output")
    args = parser.parse_args(argv)
    if args.command == "make":
        kernels = make(args.count, args.seed)
        Path(args.output).write_text(json.dumps(kernels) + "\n")
        print(f"wrote {len(kernels)} kernels to {args.output}")
        return 0
    kernels = json.loads(Path(args.kernels).read_text())
    digests = [digest(k) for k in kernels]
    if args.output:
        Path(args.output).write_text(json.dumps(digests, indent=0) + "\n")
    total = hashlib.sha256("".join(digests).encode()).hexdigest()
    print(f"{len(digests)} kernels, all: {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
