"""numpy implementations of the fused task nodes, for `run_graph(..., impls=...)`.

A tuned model replaces these with compiled kernels; until then (and as the check on them) a
rewritten graph runs with `FUSED_OPS`, fast numpy on the folded weights, or with
`reference_impls()`, the template's own `task.dag().reference`, which is the definition a kernel
is verified against. Both must give the original graph's outputs: that is the test of the
folding in tasks.py.
"""

from __future__ import annotations

import numpy as np

from templates._common import gelu_reference, relu_reference, split_inputs
from tuner.ir.dag import DTYPES
from tuner.network import ops_nn


def tuner_conv(node, args):
    if node.attributes["task"].dtype == "int8":  # exact integer sums: the template's own
        return _reference(node, args)
    a = node.attributes["task"].attr_dict
    x, weight = args[0], args[1]
    bias, residual = split_inputs(args[2:], a["bias"], a.get("residual", False))
    attrs = {"strides": [a["stride"]] * 2, "pads": [a["pad"]] * 4,
             "dilations": [a["dilation"]] * 2, "group": a["groups"]}
    out = ops_nn.conv([x, weight, bias], attrs, 13)[0]
    if residual is not None:
        out += residual
    return [_activation(out, a)]


def _activation(values, attrs: dict):
    """The task's ReLU, ReLU6 or GELU of float32 `values`."""
    if attrs.get("gelu"):
        return gelu_reference(values, attrs["gelu"]).astype(np.float32)
    return relu_reference(values, attrs["relu"])


def tuner_matmul(node, args):
    if node.attributes["task"].dtype == "int8":
        return _reference(node, args)
    a = node.attributes["task"].attr_dict
    x, weight = args[0], args[1]
    bias, residual = split_inputs(args[2:], a["bias"], a.get("residual", False))
    out = x.reshape(-1, x.shape[-1]) @ weight
    if bias is not None:
        out += bias
    if residual is not None:
        out += residual.reshape(out.shape)
    out = _activation(out, a)
    if a.get("out_order") == 21:  # written transposed, as the views it replaced read it
        return [np.ascontiguousarray(out.T).reshape(node.attributes["result_shape"])]
    return [out.reshape(x.shape[:-1] + (weight.shape[1],))]


def _reference(node, args):
    x = args[0]
    task = node.attributes["task"]
    rows = (lambda a: a.reshape(-1, a.shape[-1])) if task.op == "matmul" else (lambda a: a)
    residual = task.attr_dict.get("residual", False)
    rest = list(args[1:-1]) + [rows(args[-1])] if residual else list(args[1:])
    dag = task.dag()
    out = dag.reference(rows(x), *rest).astype(DTYPES[dag.output.dtype])
    if "result_shape" in node.attributes:
        return [out.reshape(node.attributes["result_shape"])]
    return [out.reshape(x.shape[:-1] + (out.shape[-1],)) if task.op == "matmul" else out]


def tuner_batch_matmul(node, args):
    """A[b] @ B[b], each operand read and the result written in its stored order (an int8
    task's: exact integer sums, then its epilogue)."""
    task = node.attributes["task"]
    dag = task.dag()
    out = dag.reference(args[0].reshape(dag.lhs.shape), args[1].reshape(dag.rhs.shape),
                        *args[2:])
    return [out.astype(DTYPES[dag.output.dtype]).reshape(node.attributes["result_shape"])]


# The fused node type of each template's tasks (tasks.py and quantized.py make them).
FUSED_OP_TYPES = {"conv2d": "TunerConv", "matmul": "TunerMatMul",
                  "batch_matmul": "TunerBatchMatMul"}

FUSED_OPS = {"TunerConv": tuner_conv, "TunerMatMul": tuner_matmul,
             "TunerBatchMatMul": tuner_batch_matmul}


def reference_impls():
    """The fused nodes computed by their templates' numpy references (slower: float64, and a
    Python loop over groups for convolutions)."""
    return {"TunerConv": _reference, "TunerMatMul": _reference,
            "TunerBatchMatMul": tuner_batch_matmul}  # the template's reference already
