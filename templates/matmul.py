"""matmul / dense: C[M,N] = A[M,K] @ B[K,N] (+ bias[N]) (+ residual[M,N]) (ReLU or GELU).

B is declared constant, as the weight of a dense layer is, so schedules may pack it into panels
once at build time; for a product of two activations use batch_matmul with B=1.
"""

from __future__ import annotations

import numpy as np

from templates._common import (check_shape, epilogue_reference, fill_attrs, residual_operand,
                              split_inputs)
from tuner.dag import Axis, ComputeDAG, Operand, aff

NAME = "matmul"
SHAPE_FORM = "M,N,K"
DEFAULTS = {"bias": False, "relu": 0, "residual": False, "gelu": 0}


def normalize_attrs(shape, attrs: dict) -> dict:
    return fill_attrs(NAME, attrs, DEFAULTS)


def definition(shape, bias: bool = False, relu: int = 0, residual: bool = False,
               gelu: int = 0) -> ComputeDAG:
    m, n, k = check_shape(shape, 3, SHAPE_FORM, NAME)
    axes = (Axis("i", m), Axis("j", n), Axis("k", k, reduce=True))
    a = Operand("a", (m, k), (aff(("i", 1)), aff(("k", 1))))
    b = Operand("b", (k, n), (aff(("k", 1)), aff(("j", 1))), constant=True)
    out = Operand("out", (m, n), (aff(("i", 1)), aff(("j", 1))))
    bias_op = Operand("bias", (n,), (aff(("j", 1)),), constant=True) if bias else None

    def reference(a_val, b_val, *rest):
        bias_val, residual_val = split_inputs(rest, bias, residual)
        res = a_val.astype(np.float64) @ b_val.astype(np.float64)
        return epilogue_reference(res, relu, bias_val, residual_val, gelu)

    return ComputeDAG(NAME, axes, out, a, b, bias_op, relu, 2.0 * m * n * k, reference,
                      residual_operand(out) if residual else None, gelu)
