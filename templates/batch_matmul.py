"""batch_matmul: C[b] = A[b] @ B[b] (+ bias[N]) (ReLU), A: [B,M,K], B: [B,K,N].

Both operands are activations (attention's Q·K^T), so neither is packed at build time.
"""

from __future__ import annotations

import numpy as np

from templates._common import check_shape, fill_attrs, relu_reference
from tuner.dag import Axis, ComputeDAG, Operand, aff

NAME = "batch_matmul"
SHAPE_FORM = "B,M,N,K"
DEFAULTS = {"bias": False, "relu": 0}


def normalize_attrs(shape, attrs: dict) -> dict:
    return fill_attrs(NAME, attrs, DEFAULTS)


def definition(shape, bias: bool = False, relu: int = 0) -> ComputeDAG:
    nb, m, n, k = check_shape(shape, 4, SHAPE_FORM, NAME)
    axes = (Axis("b", nb), Axis("i", m), Axis("j", n), Axis("k", k, reduce=True))
    a = Operand("a", (nb, m, k), (aff(("b", 1)), aff(("i", 1)), aff(("k", 1))))
    b = Operand("b", (nb, k, n), (aff(("b", 1)), aff(("k", 1)), aff(("j", 1))))
    out = Operand("out", (nb, m, n), (aff(("b", 1)), aff(("i", 1)), aff(("j", 1))))
    bias_op = Operand("bias", (n,), (aff(("j", 1)),), constant=True) if bias else None

    def reference(a_val, b_val, bias_val=None):
        res = np.matmul(a_val.astype(np.float64), b_val.astype(np.float64))
        if bias_val is not None:
            res = res + bias_val
        return relu_reference(res, relu)

    return ComputeDAG(NAME, axes, out, a, b, bias_op, relu, 2.0 * nb * m * n * k, reference)
