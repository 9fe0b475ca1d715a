"""batch_matmul: C[b] = A[b] @ B[b] (+ bias[N]) (ReLU), A: [B,M,K], B: [B,K,N].

Both operands are activations (attention's Q·K^T), so neither is packed at build time.

Each of A, B and C may be stored with its batch axis elsewhere than first (`a_order`,
`b_order`, `out_order`): the order of the stored array's axes, as the 1-based positions of the
logical axes, 123 being [batch, rows, columns] and 213 [rows, batch, columns]. Attention reads
its heads this way: a projection's output [sequence, heads x head size] is, unchanged, Q as
[M, B, K] (213) and V as [K, B, N] (213), and the context [sequence, heads x head size] it
writes is C as [M, B, N] (213), so the Reshape/Transpose pairs an exporter writes around the
products are no copies. Only orders that keep the last axis last are offered: they move whole
rows, so every operand stays contiguous along the axis the kernels vectorize.

dtype int8: uint8 A and uint8 B, both quantized activations with zero points of their own
(zero_points [A's, the output's, B's]), as attention's products are in a statically quantized
model (QDQ MatMul of two activations, ONNX QLinearMatMul). No sum of either operand is known
before the call to fold a zero point into, so the kernel subtracts both
(tuner.ir.dag.Quantization.centered) and sums (a - za) * (b - zb) exactly in int32; K is
reduced in groups of four as for matmul, a last group that overhangs K reading A's zero point.
The int32 bias, ReLU and `out_type` are as for the int8 matmul; the scale is per column.
"""

from __future__ import annotations

import numpy as np

from templates._common import (check_dtype, check_shape, dot_split, fill_attrs, quantization,
                              quantized_reference, relu_reference)
from tuner.ir.dag import OUT_TYPES, Axis, ComputeDAG, Operand, aff
from tuner.errors import ShapeError

NAME = "batch_matmul"
SHAPE_FORM = "B,M,N,K"
DEFAULT_ORDER = 123
ORDERS = (123, 213)
DEFAULTS = {"bias": False, "relu": 0, "a_order": DEFAULT_ORDER, "b_order": DEFAULT_ORDER,
            "out_order": DEFAULT_ORDER, "out_type": 0}


def normalize_attrs(shape, attrs: dict, dtype: str = "float32") -> dict:
    full = fill_attrs(NAME, attrs, DEFAULTS)
    check_dtype(NAME, dtype, full)
    for name in ("a_order", "b_order", "out_order"):
        if full[name] not in ORDERS:
            raise ShapeError(f"{NAME} attribute {name} expects one of "
                             f"{', '.join(map(str, ORDERS))}, got {full[name]!r}")
    return full


def _stored(name: str, logical: tuple[tuple[int, object], ...], order: int,
            **kinds) -> Operand:
    """An operand whose logical axes (extent, index) are stored in `order`."""
    picked = [logical[int(digit) - 1] for digit in str(order)]
    return Operand(name, tuple(extent for extent, _ in picked),
                   tuple(index for _, index in picked), **kinds)


def _to_logical(value: np.ndarray, order: int) -> np.ndarray:
    """A stored array as [batch, rows, columns]."""
    return np.transpose(value, np.argsort([int(d) - 1 for d in str(order)]))


def definition(shape, bias: bool = False, relu: int = 0, a_order: int = DEFAULT_ORDER,
               b_order: int = DEFAULT_ORDER, out_order: int = DEFAULT_ORDER, out_type: int = 0,
               dtype: str = "float32") -> ComputeDAG:
    nb, m, n, k = check_shape(shape, 4, SHAPE_FORM, NAME)
    if dtype == "int8":
        return _int8(nb, m, n, k, bias, relu, a_order, b_order, out_order, out_type)
    axes = (Axis("b", nb), Axis("i", m), Axis("j", n), Axis("k", k, reduce=True))
    batch, rows, columns = (nb, aff(("b", 1))), (m, aff(("i", 1))), (n, aff(("j", 1)))
    a = _stored("a", (batch, rows, (k, aff(("k", 1)))), a_order)
    b = _stored("b", (batch, (k, aff(("k", 1))), columns), b_order)
    out = _stored("out", (batch, rows, columns), out_order)
    bias_op = Operand("bias", (n,), (aff(("j", 1)),), constant=True) if bias else None

    def reference(a_val, b_val, bias_val=None):
        res = np.matmul(_to_logical(a_val, a_order).astype(np.float64),
                        _to_logical(b_val, b_order).astype(np.float64))
        if bias_val is not None:
            res = res + bias_val
        stored = np.transpose(relu_reference(res, relu),
                              [int(d) - 1 for d in str(out_order)])
        return np.ascontiguousarray(stored)

    return ComputeDAG(NAME, axes, out, a, b, bias_op, relu, 2.0 * nb * m * n * k, reference)


def _int8(nb: int, m: int, n: int, k: int, bias: bool, relu: int, a_order: int, b_order: int,
          out_order: int, out_type: int) -> ComputeDAG:
    """uint8 A times uint8 B less their zero points, K in groups of four where K > 1."""
    reduction, kk, overhang = dot_split(aff(), k, "k") if k > 1 else \
        ([Axis("k", k, reduce=True)], aff(("k", 1)), False)
    axes = (Axis("b", nb), Axis("i", m), Axis("j", n)) + tuple(reduction)

    batch, rows, columns = (nb, aff(("b", 1))), (m, aff(("i", 1))), (n, aff(("j", 1)))
    a = _stored("a", (batch, rows, (k, kk)), a_order, padded=overhang, dtype="uint8",
                fill_zero_point=True)
    b = _stored("b", (batch, (k, kk), columns), b_order, padded=overhang, dtype="uint8")
    out = _stored("out", (batch, rows, columns), out_order, dtype=OUT_TYPES[out_type])
    bias_op = Operand("bias", (n,), (aff(("j", 1)),), constant=True, dtype="int32") \
        if bias else None
    quant = quantization(out_type, aff(("j", 1)), n, centered=True)

    def reference(a_val, b_val, *rest):
        rest = list(rest)
        bias_val = rest.pop(0) if bias else None
        scale_val = rest.pop(0) if out_type else None
        zero_points = rest[0]
        centred_a = _to_logical(a_val, a_order).astype(np.int64) - int(zero_points[0])
        centred_b = _to_logical(b_val, b_order).astype(np.int64) - int(zero_points[2])
        res = quantized_reference(np.matmul(centred_a, centred_b), relu, out_type, bias_val,
                                  scale_val, zero_points, (1, 1, n))
        return np.ascontiguousarray(np.transpose(res, [int(d) - 1 for d in str(out_order)]))

    return ComputeDAG(NAME, axes, out, a, b, bias_op, relu, 2.0 * nb * m * n * k, reference,
                      quant=quant, dot_axis="ki" if len(reduction) > 1 else None)
