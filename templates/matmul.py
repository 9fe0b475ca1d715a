"""matmul / dense: C[M,N] = A[M,K] @ B[K,N] (+ bias[N]) (+ residual[M,N]) (ReLU or GELU).

B is declared constant, as the weight of a dense layer is, so schedules may pack it into panels
once at build time; for a product of two activations use batch_matmul with B=1.

`out_order` 21 stores C transposed, as C^T [N, M]: attention's key projection, whose heads the
scores read as K^T (tuner/network/attention.py); written by tiles transposed in registers
(tuner/codegen/emit.py). A residual is read where C is written, so it is not offered with it.

dtype int8: uint8 A, int8 B, int32 bias and sums, and the epilogue `out_type` names
(templates/_common.OUT_TYPE_VALUES); K is reduced in groups of four (`k` and `ki`,
tuner.ir.dag.DOT_GROUP), a last group that overhangs K reading zeros of B. `reduce_range`:
B takes only tuner.ir.dag.REDUCED_WEIGHT_RANGE.
"""

from __future__ import annotations

import numpy as np

from templates._common import (check_dtype, check_shape, dot_split, epilogue_reference,
                              fill_attrs, quantization, quantized_reference, residual_operand,
                              split_inputs)
from tuner.ir.dag import OUT_TYPES, REDUCED_WEIGHT_RANGE, Axis, ComputeDAG, Operand, aff
from tuner.errors import ShapeError

NAME = "matmul"
SHAPE_FORM = "M,N,K"
DEFAULTS = {"bias": False, "relu": 0, "residual": False, "gelu": 0, "out_order": 12,
            "out_type": 0, "reduce_range": False}


def normalize_attrs(shape, attrs: dict, dtype: str = "float32") -> dict:
    full = fill_attrs(NAME, attrs, DEFAULTS)
    check_dtype(NAME, dtype, full)
    if full["out_order"] not in (12, 21):
        raise ShapeError(f"{NAME} attribute out_order expects 12 (C) or 21 (C transposed), "
                         f"got {full['out_order']!r}")
    if full["out_order"] == 21 and full["residual"]:
        raise ShapeError(f"{NAME} takes no residual with out_order=21 (C transposed)")
    return full


def definition(shape, bias: bool = False, relu: int = 0, residual: bool = False,
               gelu: int = 0, out_order: int = 12, out_type: int = 0,
               reduce_range: bool = False, dtype: str = "float32") -> ComputeDAG:
    m, n, k = check_shape(shape, 3, SHAPE_FORM, NAME)
    if dtype == "int8":
        return _int8(m, n, k, bias, relu, out_order, out_type, reduce_range)
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


def _int8(m: int, n: int, k: int, bias: bool, relu: int, out_order: int,
          out_type: int, reduce_range: bool) -> ComputeDAG:
    """uint8 A times int8 B, K in groups of four where K > 1 (`k`, `ki`)."""
    reduction, kk, overhang = dot_split(aff(), k, "k") if k > 1 else \
        ([Axis("k", k, reduce=True)], aff(("k", 1)), False)
    axes = (Axis("i", m), Axis("j", n)) + tuple(reduction)
    a = Operand("a", (m, k), (aff(("i", 1)), kk), padded=overhang, dtype="uint8",
                fill_zero_point=True)
    b = Operand("b", (k, n), (kk, aff(("j", 1))), constant=True, padded=overhang, dtype="int8",
                value_range=REDUCED_WEIGHT_RANGE if reduce_range else None)
    out_dtype = OUT_TYPES[out_type]
    out = Operand("out", (m, n), (aff(("i", 1)), aff(("j", 1))), dtype=out_dtype) \
        if out_order == 12 else Operand("out", (n, m), (aff(("j", 1)), aff(("i", 1))),
                                        dtype=out_dtype)
    bias_op = Operand("bias", (n,), (aff(("j", 1)),), constant=True, dtype="int32") \
        if bias else None

    def reference(a_val, b_val, *rest):
        rest = list(rest)
        bias_val = rest.pop(0) if bias else None
        scale_val = rest.pop(0) if out_type else None
        res = quantized_reference(a_val.astype(np.int64) @ b_val.astype(np.int64), relu,
                                  out_type, bias_val, scale_val, rest[0], (1, n))
        return res if out_order == 12 else np.ascontiguousarray(res.T)

    return ComputeDAG(NAME, axes, out, a, b, bias_op, relu, 2.0 * m * n * k, reference,
                      quant=quantization(out_type, aff(("j", 1)), n),
                      dot_axis="ki" if len(reduction) > 1 else None)
