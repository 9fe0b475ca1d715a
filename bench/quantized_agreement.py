"""Our quantized package against onnxruntime on the same quantized file: top-1 and the largest
output differences, over random inputs.

Two onnxruntime sessions of the file: one with all graph optimisations (what users run), one
with none (ONNX's definition, node by node: DequantizeLinear -> float Conv -> QuantizeLinear,
whose float sums round where our integer sums are exact, so a value at a rounding tie may land
one step apart). Where the model's output is a DequantizeLinear, differences are also given in
its steps (its scale).

    python bench/quantized_agreement.py MODEL.onnx PACKAGE_DIR [--inputs 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def output_step(model) -> float | None:
    """The scale of the DequantizeLinear that makes the graph's first output, if any."""
    from onnx import numpy_helper
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.output[0] in outputs \
                and node.input[1] in consts:
            return float(consts[node.input[1]].reshape(-1)[0])
    return None


def main(argv: list[str] | None = None) -> int:
    import onnx
    import onnxruntime as ort

    from tuner.network.deploy import load_package

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("package")
    parser.add_argument("--inputs", type=int, default=8)
    args = parser.parse_args(argv)
    package = load_package(args.package)
    step = output_step(onnx.load(args.model))
    optimised = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    plain = ort.SessionOptions()
    plain.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    unoptimised = ort.InferenceSession(args.model, plain, providers=["CPUExecutionProvider"])
    given = optimised.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in given.shape]
    rng = np.random.default_rng(0)
    same = 0
    worst = {"optimised": 0.0, "unoptimised": 0.0}
    magnitude = 0.0
    for _ in range(args.inputs):
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        ours = package(x)[0]
        theirs = optimised.run(None, {given.name: x})[0]
        exact = unoptimised.run(None, {given.name: x})[0]
        same += int(np.argmax(ours.reshape(-1)) == np.argmax(theirs.reshape(-1)))
        worst["optimised"] = max(worst["optimised"], float(np.abs(ours - theirs).max()))
        worst["unoptimised"] = max(worst["unoptimised"], float(np.abs(ours - exact).max()))
        magnitude = max(magnitude, float(np.abs(exact).max()))
    print(f"{args.model}: top-1 (argmax of the first output) equal on {same}/{args.inputs}; "
          f"largest output {magnitude:.3g}")
    for session, value in worst.items():
        steps = f" = {value / step:.1f} output steps" if step else ""
        print(f"  max |ours - onnxruntime {session}| {value:.4g}{steps}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
