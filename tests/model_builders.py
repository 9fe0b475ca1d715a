"""Small ONNX models built with `onnx.helper` for the model tests: a node list, random
weights as initializers, one float input (its batch dimension may be symbolic)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper


def make_model(nodes, inputs: dict, output: str, weights: dict, opset: int = 17):
    """`inputs` maps a name to its shape (a str dimension is symbolic)."""
    graph = helper.make_graph(
        nodes, "generated",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in inputs.items()],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=8)


def bn_weights(rng, prefix: str, k: int) -> dict:
    return {f"{prefix}_scale": rng.uniform(0.5, 1.5, k).astype(np.float32),
            f"{prefix}_bias": rng.standard_normal(k).astype(np.float32),
            f"{prefix}_mean": rng.standard_normal(k).astype(np.float32),
            f"{prefix}_var": rng.uniform(0.5, 2.0, k).astype(np.float32)}


def bn_node(prefix: str, x: str, y: str):
    return helper.make_node("BatchNormalization", [x] + [f"{prefix}_{p}" for p in
                                                         ("scale", "bias", "mean", "var")],
                            [y], epsilon=1e-3)


def randn(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)
