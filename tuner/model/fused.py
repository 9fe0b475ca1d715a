"""numpy implementations of the fused task nodes, for `run_graph(..., impls=...)`.

A tuned model replaces these with compiled kernels; until then (and as the check on them) a
rewritten graph runs with `FUSED_OPS`, fast numpy on the folded weights, or with
`reference_impls()`, the template's own `task.dag().reference`, which is the definition a kernel
is verified against. Both must give the original graph's outputs: that is the test of the
folding in tasks.py.
"""

from __future__ import annotations

import numpy as np

from templates._common import relu_reference
from tuner.model import ops_nn


def tuner_conv(node, args):
    x, weight = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    a = node.attributes["task"].attr_dict
    attrs = {"strides": [a["stride"]] * 2, "pads": [a["pad"]] * 4,
             "dilations": [a["dilation"]] * 2, "group": a["groups"]}
    out = ops_nn.conv([x, weight, bias], attrs, 13)[0]
    return [relu_reference(out, a["relu"])]


def tuner_matmul(node, args):
    x, weight = args[0], args[1]
    out = x.reshape(-1, x.shape[-1]) @ weight
    if len(args) > 2:
        out += args[2]
    out = relu_reference(out, node.attributes["task"].attr_dict["relu"])
    return [out.reshape(x.shape[:-1] + (weight.shape[1],))]


def _reference(node, args):
    x = args[0]
    task = node.attributes["task"]
    lhs = x.reshape(-1, x.shape[-1]) if task.op == "matmul" else x
    out = task.dag().reference(lhs, *args[1:]).astype(np.float32)
    return [out.reshape(x.shape[:-1] + (out.shape[-1],)) if task.op == "matmul" else out]


FUSED_OPS = {"TunerConv": tuner_conv, "TunerMatMul": tuner_matmul}


def reference_impls():
    """The fused nodes computed by their templates' numpy references (slower: float64, and a
    Python loop over groups for convolutions)."""
    return {"TunerConv": _reference, "TunerMatMul": _reference}
