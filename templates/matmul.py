"""matmul / dense: C[M,N] = A[M,K] @ B[K,N] (+ bias[N]) (+ residual[M,N]) (ReLU or GELU).

B is declared constant, as the weight of a dense layer is, so schedules may pack it into panels
once at build time; for a product of two activations use batch_matmul with B=1.

`out_order` 21 stores C transposed, as C^T [N, M]: attention's key projection, whose heads the
scores read as K^T (tuner/network/attention.py); written by tiles transposed in registers
(tuner/codegen/emit.py). A residual is read where C is written, so it is not offered with it.
"""

from __future__ import annotations

import numpy as np

from templates._common import (check_shape, epilogue_reference, fill_attrs, residual_operand,
                              split_inputs)
from tuner.ir.dag import Axis, ComputeDAG, Operand, aff
from tuner.errors import ShapeError

NAME = "matmul"
SHAPE_FORM = "M,N,K"
DEFAULTS = {"bias": False, "relu": 0, "residual": False, "gelu": 0, "out_order": 12}


def normalize_attrs(shape, attrs: dict) -> dict:
    full = fill_attrs(NAME, attrs, DEFAULTS)
    if full["out_order"] not in (12, 21):
        raise ShapeError(f"{NAME} attribute out_order expects 12 (C) or 21 (C transposed), "
                         f"got {full['out_order']!r}")
    if full["out_order"] == 21 and full["residual"]:
        raise ShapeError(f"{NAME} takes no residual with out_order=21 (C transposed)")
    return full


def definition(shape, bias: bool = False, relu: int = 0, residual: bool = False,
               gelu: int = 0, out_order: int = 12) -> ComputeDAG:
    m, n, k = check_shape(shape, 3, SHAPE_FORM, NAME)
    axes = (Axis("i", m), Axis("j", n), Axis("k", k, reduce=True))
    a = Operand("a", (m, k), (aff(("i", 1)), aff(("k", 1))))
    b = Operand("b", (k, n), (aff(("k", 1)), aff(("j", 1))), constant=True)
    out = Operand("out", (m, n), (aff(("i", 1)), aff(("j", 1)))) if out_order == 12 else \
        Operand("out", (n, m), (aff(("j", 1)), aff(("i", 1))))
    bias_op = Operand("bias", (n,), (aff(("j", 1)),), constant=True) if bias else None

    def reference(a_val, b_val, *rest):
        bias_val, residual_val = split_inputs(rest, bias, residual)
        res = a_val.astype(np.float64) @ b_val.astype(np.float64)
        res = epilogue_reference(res, relu, bias_val, residual_val, gelu)
        return res if out_order == 12 else np.ascontiguousarray(res.T)

    return ComputeDAG(NAME, axes, out, a, b, bias_op, relu, 2.0 * m * n * k, reference,
                      residual_operand(out) if residual else None, gelu)
